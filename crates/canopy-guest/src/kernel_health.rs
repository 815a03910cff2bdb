// SPDX-License-Identifier: GPL-2.0-only
//! `kernel-health`: what went wrong in the kernel during the scenario, from the kernel log (the
//! console is `quiet`, so WARN splats never reach it). `/init` runs this after every scenario;
//! the host exposes it as `Outcome::kernel_warnings()` and `Outcome::sched_ext_events()`.

use anyhow::Result;
use serde_json::json;

use crate::result::emit;

/// Lines that mean the kernel is unhappy (splats, stalls, lockups, hung tasks).
const TROUBLE: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "general protection fault",
    "soft lockup",
    "hard LOCKUP",
    "blocked for more than",
    "rcu: INFO",
    "self-detected stall",
    "detected stalls",
    "Kernel panic",
    "Out of memory",
];

pub fn run() -> Result<()> {
    let log = crate::dmesg::read_kernel_log()?;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| TROUBLE.iter().any(|pattern| line.contains(pattern)))
        .collect();
    // Every sched_ext line: enabling, disabling (and why), sub-scheduler attach/detach.
    let sched_ext: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("sched_ext"))
        .collect();
    emit(
        "kernel-health",
        json!({ "warnings": warnings, "sched_ext": sched_ext }),
    )
}
