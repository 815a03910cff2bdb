// SPDX-License-Identifier: GPL-2.0-only
//! Guest setup run by `/init`: the pseudo file systems, the cgroup2 controllers scenarios need,
//! and the `boot` result (kernel release, CPUs, sched_ext state) the harness requires.

use std::ffi::CString;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cgroup::CGROUP_ROOT;
use crate::result::emit;

/// (source, target, fstype, required)
const MOUNTS: &[(&str, &str, &str, bool)] = &[
    ("proc", "/proc", "proc", true),
    ("sysfs", "/sys", "sysfs", true),
    ("devtmpfs", "/dev", "devtmpfs", true),
    ("devpts", "/dev/pts", "devpts", false),
    ("tmpfs", "/dev/shm", "tmpfs", true),
    ("tmpfs", "/tmp", "tmpfs", true),
    ("tmpfs", "/run", "tmpfs", true),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", true),
    ("bpf", "/sys/fs/bpf", "bpf", true),
    ("tracefs", "/sys/kernel/tracing", "tracefs", false),
    ("debugfs", "/sys/kernel/debug", "debugfs", false),
];

pub fn run() -> Result<()> {
    for &(source, target, fstype, required) in MOUNTS {
        if let Err(err) = mount(source, target, fstype) {
            if required {
                return Err(err);
            }
            eprintln!("canopy-guest setup: optional mount skipped: {err:#}");
        }
    }
    let controllers = std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers"))
        .context("reading the root cgroup.controllers")?;
    let controllers: Vec<&str> = controllers.split_whitespace().collect();
    if !controllers.contains(&"cpu") {
        bail!("the cpu controller is not available in cgroup2 (controllers: {controllers:?})");
    }
    let subtree_control = Path::new(CGROUP_ROOT).join("cgroup.subtree_control");
    std::fs::write(&subtree_control, "+cpu")
        .context("enabling +cpu in the root cgroup.subtree_control")?;
    if controllers.contains(&"cpuset") {
        if let Err(err) = std::fs::write(&subtree_control, "+cpuset") {
            eprintln!("canopy-guest setup: +cpuset not enabled: {err}");
        }
    }
    let enabled = std::fs::read_to_string(&subtree_control).unwrap_or_default();
    let sched_ext_state = std::fs::read_to_string("/sys/kernel/sched_ext/state")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "absent".into());
    emit(
        "boot",
        json!({
            "kernel_release": kernel_release(),
            "cpus_online": online_cpus(),
            "sched_ext_state": sched_ext_state,
            "cgroup_subtree_control": enabled.trim(),
            "mem_total_kb": mem_total_kb(),
        }),
    )
}

fn mount(source: &str, target: &str, fstype: &str) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating mount point {target}"))?;
    let c_source = CString::new(source)?;
    let c_target = CString::new(target)?;
    let c_fstype = CString::new(fstype)?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            return Ok(());
        }
        bail!("mount -t {fstype} {source} {target}: {err}");
    }
    Ok(())
}

pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct we own.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

fn mem_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}
