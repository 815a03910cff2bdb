// SPDX-License-Identifier: GPL-2.0-only
//! The fair scheduler's group-share mode (`/sys/kernel/debug/sched/cgroup_mode`, new in 7.x).
//!
//! It decides how a cgroup's cpu.weight becomes the weight of its per-CPU group entities.
//! `smp` is the classic rule: the group's shares split across CPUs by where its load is.
//! `concur`, the 7.3 default, first multiplies the shares by the group's concurrency,
//! min(runnable tasks, CPUs), where the task count is the group's PELT runnable average
//! shifted down by 10 bits, i.e. truncated. Two always-runnable hogs average just under or at
//! 2048, so a 2-hog group counts as 1 or 2 tasks depending on rounding: at cpu.weight 200:100
//! the split comes out 2:1, 4:1 (only the first group rounds to 2) or 1:1 (only the second).

use std::path::Path;

use anyhow::{Context, Result};

const MODE_FILE: &str = "/sys/kernel/debug/sched/cgroup_mode";

/// The mode in force, e.g. "concur" (the file reads `up smp (concur) max tasks`); None when
/// the kernel has no such file (before 7.x, or debugfs not mounted).
pub fn current() -> Option<String> {
    let listing = std::fs::read_to_string(MODE_FILE).ok()?;
    listing
        .split_whitespace()
        .find_map(|mode| mode.strip_prefix('(')?.strip_suffix(')'))
        .map(str::to_owned)
}

/// Switches to `mode` and returns the mode it replaced.
pub fn set(mode: &str) -> Result<Option<String>> {
    let previous = current();
    if !Path::new(MODE_FILE).exists() {
        anyhow::bail!("{MODE_FILE} does not exist: this kernel has no fair cgroup-share modes");
    }
    std::fs::write(MODE_FILE, mode).with_context(|| format!("writing `{mode}` to {MODE_FILE}"))?;
    Ok(previous)
}
