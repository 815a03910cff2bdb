//! Fork, thread-create and PR_SET_NAME rename storm (filled in after milestone 1).

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct StormArgs {}

pub fn run(_args: &StormArgs) -> Result<()> {
    bail!("storm: not implemented yet")
}

/// Renames the calling thread (comm, at most 15 bytes).
pub fn set_thread_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}
