// SPDX-License-Identifier: GPL-2.0-only
//! Small cgroup2 helpers for the guest: create a group, set cpu.weight, read cpu.stat, and
//! start a command already inside a group (it joins before exec, so no CPU is charged elsewhere).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, Result};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `/sys/fs/cgroup/<relative>` unless `relative` is already absolute.
pub fn group_path(relative: &str) -> PathBuf {
    if relative.starts_with('/') {
        PathBuf::from(relative)
    } else {
        Path::new(CGROUP_ROOT).join(relative)
    }
}

pub fn create(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

pub fn set_weight(path: &Path, weight: u32) -> Result<()> {
    std::fs::write(path.join("cpu.weight"), weight.to_string())
        .with_context(|| format!("writing cpu.weight={weight} in {}", path.display()))
}

/// The group's current cpu.weight.
pub fn weight(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path.join("cpu.weight"))
        .with_context(|| format!("reading {}/cpu.weight", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("cpu.weight `{}` in {}", text.trim(), path.display()))
}

/// `usage_usec` from the group's cpu.stat.
pub fn usage_usec(path: &Path) -> Result<u64> {
    let stat = std::fs::read_to_string(path.join("cpu.stat"))
        .with_context(|| format!("reading {}/cpu.stat", path.display()))?;
    stat.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}/cpu.stat", path.display()))
}

/// Spawns `command` so that the child moves itself into `group` before exec.
pub fn spawn_in(group: &Path, command: &mut Command) -> Result<Child> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(group.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", group.display()))?;
    let fd = procs.as_raw_fd();
    // SAFETY: only write(2) on an fd opened before fork; async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {command:?} in {}", group.display()))?;
    drop(procs);
    Ok(child)
}
