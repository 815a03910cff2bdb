// SPDX-License-Identifier: GPL-2.0-only
//! `dmesg`: the kernel log (syslog(2) READ_ALL) as a CANOPY-RESULT, optionally only lines that
//! contain a pattern, e.g. `canopy-guest dmesg --grep sched_ext` to check that the kernel logged
//! a scheduler's registration or unregistration (hidden from the console by `quiet`).

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::result::emit;

#[derive(Args, Debug)]
pub struct DmesgArgs {
    /// Keep only lines containing this text. Repeatable (any matches).
    #[arg(long)]
    grep: Vec<String>,
    /// Result kind.
    #[arg(long, default_value = "dmesg")]
    kind: String,
}

const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
const SYSLOG_ACTION_SIZE_BUFFER: libc::c_int = 10;

pub fn run(args: &DmesgArgs) -> Result<()> {
    let lines: Vec<String> = read_kernel_log()?
        .lines()
        .filter(|line| {
            args.grep.is_empty()
                || args
                    .grep
                    .iter()
                    .any(|pattern| line.contains(pattern.as_str()))
        })
        .map(String::from)
        .collect();
    emit(&args.kind, json!({ "grep": args.grep, "lines": lines }))
}

pub fn read_kernel_log() -> Result<String> {
    // SAFETY: size query, no buffer.
    let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
    let size = if size > 0 { size as usize } else { 1 << 20 };
    let mut buffer = vec![0u8; size];
    // SAFETY: the kernel writes at most `size` bytes into our buffer.
    let read = unsafe {
        libc::klogctl(
            SYSLOG_ACTION_READ_ALL,
            buffer.as_mut_ptr().cast(),
            size as libc::c_int,
        )
    };
    if read < 0 {
        return Err(std::io::Error::last_os_error()).context("syslog(READ_ALL)");
    }
    buffer.truncate(read as usize);
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}
