// SPDX-License-Identifier: GPL-2.0-only
//! `run-as`: exec a command as another user (uid, gid, no supplementary groups), for
//! authorization scenarios such as a non-root `canopy ctl` caller. Optionally joins a cgroup
//! first (while still root), e.g. the user's `user@UID.service`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct RunAsArgs {
    #[arg(long)]
    uid: u32,
    /// Defaults to the uid.
    #[arg(long)]
    gid: Option<u32>,
    /// Join this cgroup (relative to /sys/fs/cgroup unless absolute) before dropping root.
    #[arg(long)]
    cgroup: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: &RunAsArgs) -> Result<()> {
    if let Some(group) = &args.cgroup {
        let procs: PathBuf = crate::cgroup::group_path(group).join("cgroup.procs");
        std::fs::write(&procs, "0").with_context(|| format!("joining {}", procs.display()))?;
    }
    let gid = args.gid.unwrap_or(args.uid);
    // SAFETY: dropping supplementary groups; no pointers besides the null list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setgroups");
    }
    let error = Command::new(&args.command[0])
        .args(&args.command[1..])
        .uid(args.uid)
        .gid(gid)
        .exec();
    Err(error).with_context(|| format!("exec {:?} as {}:{gid}", args.command, args.uid))
}
