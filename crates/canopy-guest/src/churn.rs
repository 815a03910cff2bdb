// SPDX-License-Identifier: GPL-2.0-only
//! `cgroup-churn`: N cycles of mkdir / move a process in / move it back out / rmdir on scopes
//! below one parent cgroup, done with direct syscalls. The shell loop it replaces forked for
//! every step and spent about 32 ms per cycle under TCG (162 s for issue 10 g's 5,000 cycles);
//! the kernel and the daemon see the same four events per cycle either way. Reports kind
//! `cgroup-churn`: cycles, seconds, and how many rmdirs had to be retried (EBUSY).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::cgroup::group_path;
use crate::result::emit;

#[derive(Args, Debug)]
pub struct ChurnArgs {
    /// Cycles to run.
    #[arg(long)]
    cycles: u32,
    /// The cgroup the scopes are made in (relative to /sys/fs/cgroup), e.g. `churn`.
    #[arg(long)]
    parent: String,
    /// Scope name suffix: cycle i makes `<parent>/c<i><suffix>`.
    #[arg(long, default_value = ".scope")]
    suffix: String,
    /// The process moved into each scope and back out.
    #[arg(long)]
    pid: u32,
    /// Where the process goes back to before the rmdir (relative to /sys/fs/cgroup).
    #[arg(long)]
    back: String,
}

/// Writes `pid` to `group`'s cgroup.procs.
fn move_to(group: &Path, pid: &str) -> Result<()> {
    std::fs::write(group.join("cgroup.procs"), pid)
        .with_context(|| format!("moving pid {pid} into {}", group.display()))
}

/// Removes `scope`, retrying while the kernel still counts it populated (EBUSY) for up to 1 s;
/// returns the number of retries.
fn remove(scope: &Path) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut retries = 0;
    loop {
        match std::fs::remove_dir(scope) {
            Ok(()) => return Ok(retries),
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("removing {}", scope.display()));
            }
        }
    }
}

pub fn run(args: &ChurnArgs) -> Result<()> {
    let parent = group_path(&args.parent);
    let back = group_path(&args.back);
    let pid = args.pid.to_string();
    if !parent.is_dir() {
        bail!(
            "cgroup-churn: parent cgroup {} does not exist",
            parent.display()
        );
    }
    let started = Instant::now();
    let mut rmdir_retries = 0;
    for cycle in 0..args.cycles {
        let scope: PathBuf = parent.join(format!("c{cycle}{}", args.suffix));
        match std::fs::create_dir(&scope) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(error).with_context(|| format!("making {}", scope.display()));
            }
        }
        move_to(&scope, &pid)?;
        move_to(&back, &pid)?;
        rmdir_retries += remove(&scope)?;
    }
    emit(
        "cgroup-churn",
        json!({
            "cycles": args.cycles,
            "seconds": started.elapsed().as_secs_f64(),
            "rmdir_retries": rmdir_retries,
        }),
    )
}
