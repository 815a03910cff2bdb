// SPDX-License-Identifier: GPL-2.0-only
//! `proc-stat`: a process's CPU use over a window and its memory, for daemon overhead
//! benchmarks (idle CPU over 60 s, RSS with many tracked threads): utime+stime from
//! /proc/PID/stat before and after, VmRSS, VmHWM and thread count from /proc/PID/status.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::result::emit;

#[derive(Args, Debug)]
pub struct ProcStatArgs {
    #[arg(long)]
    pid: i32,
    /// Window over which CPU use is measured; 0 reports memory only.
    #[arg(long, default_value_t = 0.0)]
    seconds: f64,
    /// Result kind.
    #[arg(long, default_value = "proc-stat")]
    kind: String,
}

pub fn run(args: &ProcStatArgs) -> Result<()> {
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(args.pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let after = cpu_ticks(args.pid)?;
    let elapsed = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{}/status", args.pid))
        .with_context(|| format!("reading /proc/{}/status", args.pid))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    };
    let cpu_seconds = after.saturating_sub(before) as f64 / ticks_per_s;
    emit(
        &args.kind,
        json!({
            "pid": args.pid,
            "window_s": elapsed,
            "cpu_seconds": cpu_seconds,
            "cpu_fraction": if elapsed > 0.0 { cpu_seconds / elapsed } else { 0.0 },
            "rss_kb": field("VmRSS:"),
            "hwm_kb": field("VmHWM:"),
            "threads": field("Threads:"),
        }),
    )
}

/// utime + stime in clock ticks (fields 14 and 15, counted after the `)` of comm).
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state); utime is field 14, stime 15.
    let value = |index: usize| {
        fields
            .get(index - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(value(14) + value(15))
}
