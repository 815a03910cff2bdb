//! CPU-split measurement: create cgroups with given cpu.weight, start hog processes inside
//! each, let the split settle, then sample each group's cpu.stat `usage_usec` over a window and
//! report per-group CPU time, shares against the weight targets, and the first:second ratio.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::cgroup;
use crate::result::emit;

#[derive(Args, Debug)]
pub struct CpuSplitArgs {
    /// A group as NAME:WEIGHT:HOGS (WEIGHT `-` leaves cpu.weight alone). NAME is relative to
    /// /sys/fs/cgroup unless absolute. Repeatable; the ratio compares the first two.
    #[arg(long = "group", required = true, value_name = "NAME:WEIGHT:HOGS")]
    groups: Vec<String>,
    /// Measurement window in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Settling time before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Result kind (to tell several splits in one run apart).
    #[arg(long, default_value = "cpu-split")]
    kind: String,
    /// Leave the groups in place afterwards (hogs are always stopped).
    #[arg(long)]
    keep: bool,
}

struct Group {
    name: String,
    path: PathBuf,
    weight: Option<u32>,
    hogs: usize,
}

fn parse_group(spec: &str) -> Result<Group> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, weight, hogs] = parts[..] else {
        bail!("group `{spec}` is not NAME:WEIGHT:HOGS");
    };
    let weight = match weight {
        "-" | "" => None,
        value => Some(value.parse().with_context(|| format!("weight in `{spec}`"))?),
    };
    Ok(Group {
        name: name.into(),
        path: cgroup::group_path(name),
        weight,
        hogs: hogs.parse().with_context(|| format!("hog count in `{spec}`"))?,
    })
}

pub fn run(args: &CpuSplitArgs) -> Result<()> {
    let groups = args.groups.iter().map(|spec| parse_group(spec)).collect::<Result<Vec<_>>>()?;
    let own_exe = std::env::current_exe().context("locating canopy-guest")?;
    let mut hogs = Vec::new();
    let outcome = (|| -> Result<serde_json::Value> {
        for group in &groups {
            cgroup::create(&group.path)?;
            if let Some(weight) = group.weight {
                cgroup::set_weight(&group.path, weight)?;
            }
        }
        for group in &groups {
            for _ in 0..group.hogs {
                let mut command = Command::new(&own_exe);
                command.args(["hog", "--threads", "1", "--seconds", "0"]);
                hogs.push(cgroup::spawn_in(&group.path, &mut command)?);
            }
        }
        std::thread::sleep(Duration::from_secs_f64(args.warmup));
        let before = groups.iter().map(|g| cgroup::usage_usec(&g.path)).collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        let after = groups.iter().map(|g| cgroup::usage_usec(&g.path)).collect::<Result<Vec<_>>>()?;
        let window = started.elapsed().as_secs_f64();
        let used: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
        Ok(summarize(&groups, &used, window))
    })();
    for hog in &mut hogs {
        let _ = hog.kill();
    }
    for hog in &mut hogs {
        let _ = hog.wait();
    }
    if !args.keep {
        for group in &groups {
            let _ = std::fs::remove_dir(&group.path);
        }
    }
    emit(&args.kind, outcome?)
}

fn summarize(groups: &[Group], used_usec: &[u64], window_s: f64) -> serde_json::Value {
    let total: u64 = used_usec.iter().sum();
    let weight_total: u32 = groups.iter().map(|g| g.weight.unwrap_or(100)).sum();
    let cpus = crate::setup::online_cpus();
    let mut max_share_error: f64 = 0.0;
    let entries: Vec<_> = groups
        .iter()
        .zip(used_usec)
        .map(|(group, &usec)| {
            let share = if total > 0 { usec as f64 / total as f64 } else { 0.0 };
            let target = group.weight.unwrap_or(100) as f64 / weight_total as f64;
            let error = if target > 0.0 { share / target - 1.0 } else { 0.0 };
            max_share_error = max_share_error.max(error.abs());
            json!({
                "name": group.name,
                "weight": group.weight,
                "hogs": group.hogs,
                "usage_usec": usec,
                "cpu_seconds": usec as f64 / 1e6,
                "share": share,
                "target_share": target,
                "share_error": error,
            })
        })
        .collect();
    let (ratio, expected_ratio) = match (used_usec, groups) {
        ([first, second, ..], [g1, g2, ..]) if *second > 0 => (
            Some(*first as f64 / *second as f64),
            Some(g1.weight.unwrap_or(100) as f64 / g2.weight.unwrap_or(100) as f64),
        ),
        _ => (None, None),
    };
    json!({
        "window_s": window_s,
        "cpus": cpus,
        "groups": entries,
        "total_cpu_seconds": total as f64 / 1e6,
        "utilization": total as f64 / 1e6 / (window_s * cpus as f64),
        "ratio": ratio,
        "expected_ratio": expected_ratio,
        "ratio_error": ratio.zip(expected_ratio).map(|(r, e)| r / e - 1.0),
        "max_share_error": max_share_error,
    })
}
