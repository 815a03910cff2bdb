// SPDX-License-Identifier: GPL-2.0-only
//! `proc-stat`: a process's CPU use over a window and its memory, for daemon overhead
//! benchmarks (idle CPU over 60 s, RSS with many tracked threads, the daemon's CPU while the
//! frame benchmark runs): utime+stime from /proc/PID/stat before and after (and each thread's
//! from /proc/PID/task/TID/stat with `--threads`), VmRSS, VmHWM and thread count from
//! /proc/PID/status.

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
    /// Measure until this process exits instead of for `--seconds` (polled every 100 ms).
    #[arg(long)]
    while_pid: Option<i32>,
    /// Also report each thread's CPU over the window, summed by thread name.
    #[arg(long)]
    threads: bool,
    /// Result kind.
    #[arg(long, default_value = "proc-stat")]
    kind: String,
}

/// Clock ticks (USER_HZ) per second, the unit of a stat line's CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

pub fn run(args: &ProcStatArgs) -> Result<()> {
    let ticks_per_s = ticks_per_second();
    let before = stat_ticks(&process_stat(args.pid)?);
    // tid -> ticks at the window's start
    let threads_before: std::collections::HashMap<String, u64> = if args.threads {
        thread_ticks(args.pid)
            .into_iter()
            .map(|(tid, _, ticks)| (tid, ticks))
            .collect()
    } else {
        Default::default()
    };
    let started = Instant::now();
    match args.while_pid {
        Some(other) => {
            while std::path::Path::new(&format!("/proc/{other}")).exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        None => std::thread::sleep(Duration::from_secs_f64(args.seconds)),
    }
    let after = stat_ticks(&process_stat(args.pid)?);
    let elapsed = started.elapsed().as_secs_f64();
    // each thread's ticks over the window, by name (a thread started meanwhile counts from 0)
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    if args.threads {
        for (tid, name, ticks) in thread_ticks(args.pid) {
            let start = threads_before.get(&tid).copied().unwrap_or(0);
            *by_name.entry(name).or_default() += ticks.saturating_sub(start) as f64 / ticks_per_s;
        }
    }
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
            "cpu_seconds_by_thread": by_name,
        }),
    )
}

/// Each thread of @pid: (tid, its name, utime + stime in clock ticks); threads that exit while
/// being read are left out.
fn thread_ticks(pid: i32) -> Vec<(String, String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let name = stat_comm(&stat).to_string();
            Some((tid, name, stat_ticks(&stat)))
        })
        .collect()
}

/// `/proc/PID/stat` of a process.
fn process_stat(pid: impl std::fmt::Display) -> Result<String> {
    let path = format!("/proc/{pid}/stat");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// The comm of a stat line: between the first `(` and the last `)` (a comm may hold both).
fn stat_comm(stat: &str) -> &str {
    let start = stat.find('(').map_or(0, |i| i + 1);
    let end = stat.rfind(')').unwrap_or(stat.len());
    stat.get(start..end).unwrap_or("")
}

/// The fields of a /proc stat line after its comm's last `)` (a comm may hold spaces and
/// parentheses): index 0 is field 3 (state), index N field N + 3. Empty without a `)`.
pub(crate) fn fields_after_comm(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or_else(Vec::new, |(_, rest)| rest.split_whitespace().collect())
}

/// utime + stime in clock ticks of a stat line (fields 14 and 15).
fn stat_ticks(stat: &str) -> u64 {
    stat_fields_sum(stat, &[14, 15])
}

/// The sum of the numeric fields @numbers (as proc(5) numbers them) of a stat line.
fn stat_fields_sum(stat: &str, numbers: &[usize]) -> u64 {
    let fields = fields_after_comm(stat);
    numbers
        .iter()
        .map(|number| {
            fields
                .get(number - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// CPU seconds @pid and the children it has waited for used so far: utime + stime + cutime +
/// cstime (fields 14-17), so a process that runs short jobs one after another counts them
/// once each is reaped.
pub(crate) fn cpu_seconds_with_reaped_children(pid: u32) -> Result<f64> {
    Ok(stat_fields_sum(&process_stat(pid)?, &[14, 15, 16, 17]) as f64 / ticks_per_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comm_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "4242 (tokio (x) 1) S 1 4242 4242 0 -1 4194560 10 0 0 0 37 12 0 0 20 0 3 0";
        assert_eq!(stat_comm(stat), "tokio (x) 1");
        assert_eq!(stat_ticks(stat), 49);
        assert_eq!(fields_after_comm(stat).first(), Some(&"S"));
        assert!(fields_after_comm("no comm here").is_empty());
    }

    #[test]
    fn reaped_children_add_their_cutime_and_cstime() {
        let stat = "77 (build) S 1 77 77 0 -1 4194560 10 0 0 0 37 12 500 300 20 0 3 0";
        assert_eq!(stat_ticks(stat), 49);
        assert_eq!(stat_fields_sum(stat, &[14, 15, 16, 17]), 849);
    }
}
