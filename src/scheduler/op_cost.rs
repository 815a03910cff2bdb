//! What each of canopy's loaded sched_ext callbacks costs per call, measured by the kernel: the
//! run-time statistics of BPF programs (`bpf_prog_info.run_time_ns` / `run_cnt`, counted while
//! a `BPF_ENABLE_STATS` file descriptor is held), sampled twice over a window. Issue 10's
//! benchmark rows (enqueue and dispatch cost at 10, 1,000 and 10,000 cgroups) read it through
//! `canopy scheduler op-cost`.
//!
//! A struct_ops program's name in `bpf_prog_info` is cut at 15 bytes (`canopy_root_dis` is
//! both `dispatch` and `disable`), so the full name comes from the program's BTF: the type its
//! first `func_info` record names. The kernel adds the time stamps around each call to what it
//! counts, so a call's cost reads some tens of nanoseconds high on real hardware (more under
//! an emulator); comparisons between runs on one machine are what it is for.
use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use libbpf_rs::btf::Btf;
use libbpf_rs::btf::BtfType;
use libbpf_rs::query::ProgInfoIter;
use libbpf_rs::query::ProgInfoQueryOptions;
use libbpf_rs::ProgramType;
use serde::Serialize;

/// One callback's calls and time in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpCost {
    /// The program's full name (`canopy_root_enqueue`).
    pub name: String,
    /// Calls in the window.
    pub calls: u64,
    /// Calls per second of the window.
    pub calls_per_s: f64,
    /// Mean run time per call, in ns (0 without calls).
    pub ns_per_call: f64,
    /// Run time over the window's wall time, in percent of one CPU.
    pub cpu_percent: f64,
}

/// Programs whose full name starts with `prefix`, with their counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counters {
    run_time_ns: u64,
    run_cnt: u64,
}

/// The callbacks' costs over `window`, for every loaded struct_ops program whose full name
/// starts with `prefix` (`canopy_root_`, `canopy_child_`), highest total time first.
pub fn measure(prefix: &str, window: Duration) -> anyhow::Result<Vec<OpCost>> {
    let _stats = enable_run_time_stats()?;
    let before = sample(prefix)?;
    let started = Instant::now();
    std::thread::sleep(window);
    let after = sample(prefix)?;
    Ok(costs(&before, &after, started.elapsed()))
}

/// The differences between two samples, per program present in both, highest total time first.
fn costs(
    before: &[(String, Counters)],
    after: &[(String, Counters)],
    elapsed: Duration,
) -> Vec<OpCost> {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mut rows: Vec<OpCost> = after
        .iter()
        .filter_map(|(name, now)| {
            let then = before.iter().find(|(n, _)| n == name)?.1;
            let calls = now.run_cnt.saturating_sub(then.run_cnt);
            let time_ns = now.run_time_ns.saturating_sub(then.run_time_ns);
            Some(OpCost {
                name: name.clone(),
                calls,
                calls_per_s: calls as f64 / seconds,
                ns_per_call: if calls == 0 {
                    0.0
                } else {
                    time_ns as f64 / calls as f64
                },
                cpu_percent: time_ns as f64 / 1e9 / seconds * 100.0,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.ns_per_call * b.calls as f64).total_cmp(&(a.ns_per_call * a.calls as f64))
    });
    rows
}

/// Turns the kernel's BPF run-time statistics on while the returned descriptor lives.
fn enable_run_time_stats() -> anyhow::Result<OwnedFd> {
    // SAFETY: bpf_enable_stats takes an enum value and returns a new descriptor or -errno.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd))
            .context("turning on BPF run-time statistics (BPF_ENABLE_STATS needs CAP_SYS_ADMIN)");
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Every loaded struct_ops program whose full name starts with `prefix`, with its counters.
fn sample(prefix: &str) -> anyhow::Result<Vec<(String, Counters)>> {
    let options = ProgInfoQueryOptions::default().include_func_info(true);
    let mut found = Vec::new();
    // One BTF per loaded object, shared by all its programs: loaded once per sample.
    let mut btfs: HashMap<u32, Option<Btf<'static>>> = HashMap::new();
    for info in ProgInfoIter::with_query_opts(options) {
        if info.ty != ProgramType::StructOps {
            continue;
        }
        let short = info.name.to_string_lossy();
        if !prefix.starts_with(short.as_ref()) && !short.starts_with(prefix) {
            continue;
        }
        let btf = btfs
            .entry(info.btf_id)
            .or_insert_with(|| Btf::from_prog_id(info.id).ok());
        let Some(name) = full_name(btf.as_ref(), info.func_info.first().map(|f| f.type_id)) else {
            continue;
        };
        if name.starts_with(prefix) {
            found.push((
                name,
                Counters {
                    run_time_ns: info.run_time_ns,
                    run_cnt: info.run_cnt,
                },
            ));
        }
    }
    anyhow::ensure!(
        !found.is_empty(),
        "no loaded sched_ext program is named {prefix}*: is the scheduler loaded?"
    );
    Ok(found)
}

/// A program's full name: the function in its object's BTF that its first func_info record names.
fn full_name(btf: Option<&Btf<'static>>, type_id: Option<u32>) -> Option<String> {
    let ty: BtfType<'_> = btf?.type_by_id(type_id?.into())?;
    Some(ty.name()?.to_string_lossy().into_owned())
}

/// The rows as a table.
pub fn table(rows: &[OpCost]) -> String {
    let mut out = format!(
        "{:<34} {:>10} {:>10} {:>12} {:>8}\n",
        "callback", "calls", "calls/s", "ns/call", "% CPU"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<34} {:>10} {:>10.0} {:>12.0} {:>8.3}\n",
            row.name, row.calls, row.calls_per_s, row.ns_per_call, row.cpu_percent
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(run_time_ns: u64, run_cnt: u64) -> Counters {
        Counters {
            run_time_ns,
            run_cnt,
        }
    }

    #[test]
    fn costs_are_the_differences_per_call_highest_total_first() {
        let before = vec![
            ("canopy_root_enqueue".to_string(), counters(1_000, 10)),
            ("canopy_root_dispatch".to_string(), counters(5_000, 10)),
            ("canopy_root_gone".to_string(), counters(0, 0)),
        ];
        let after = vec![
            ("canopy_root_enqueue".to_string(), counters(3_000, 30)),
            ("canopy_root_dispatch".to_string(), counters(45_000, 30)),
            ("canopy_root_new".to_string(), counters(9, 9)),
        ];
        let rows = costs(&before, &after, Duration::from_secs(2));
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].name, "canopy_root_dispatch");
        assert_eq!(rows[0].calls, 20);
        assert_eq!(rows[0].ns_per_call, 2_000.0);
        assert_eq!(rows[0].calls_per_s, 10.0);
        assert!((rows[0].cpu_percent - 0.002).abs() < 1e-12);
        assert_eq!(rows[1].ns_per_call, 100.0);
    }

    #[test]
    fn a_program_without_calls_costs_nothing_per_call() {
        let before = vec![("canopy_root_exit".to_string(), counters(7, 1))];
        let rows = costs(&before, &before, Duration::from_secs(1));
        assert_eq!(rows[0].calls, 0);
        assert_eq!(rows[0].ns_per_call, 0.0);
    }
}
