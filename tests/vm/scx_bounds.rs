// SPDX-License-Identifier: GPL-2.0-only
//! Scenario (issue 11, part C): what a task or a child scheduler can take from the others in
//! scx mode is bounded. A USER_INTERACTIVE busy loop that sleeps 10 us every 2 ms (so it
//! demands all the CPU and every run starts with a preempting wakeup) cannot push a BACKGROUND
//! hog below its weight share (the preemption budget, `bpf/preempt_budget.bpf.h`); and a foreign child that
//! picks 1 s slices gives its cids back when the root's USER_INTERACTIVE task wakes, within
//! 10 ms, without tripping the watchdog (`reclaim_child_cid` in `bpf/grant_quantum.bpf.h`).
//! One boot for both (39-55 s of wall time in four runs on a loaded host; 36-45 s held in s7).
//!
//! Margins, with the preemption budget at 40 ms per 100 ms (raised from 20 ms on 2026-12-03 for
//! a 60 Hz compositor, see `bpf/preempt_budget.bpf.h`); runs of 2026-12-03 on the shared 2-core
//! host (load 4-31), BACKGROUND hog in CPUs against its 0.222 weight share (wakeups refused the
//! preempting path) | root USER_INTERACTIVE wakeups beside `foreign_fifo`'s 1 s slices: p99
//! (this boot's floor p99), of ~200 served:
//! - 16:05 UTC: 0.683 (827 refused) | 5.47 ms (floor 12.26 ms), 201 served
//! - 16:35 UTC: 0.548 (1915) | 2.13 ms (floor 2.29 ms), 201
//! - 16:36 UTC: 0.576 (1790) | 9.29 ms (floor 24.40 ms), 201
//! - 16:37 UTC: 0.588 (1594) | 3.04 ms (floor 4.31 ms), 201
//! - 16:37 UTC: 0.553 (1799) | 8.30 ms (floor 1.37 ms), 201
//! - s9, this code: 22:58 UTC 0.571 (1460) | 4.56 ms (3.32 ms), 201; 23:06 UTC 0.569 (1661) |
//!   5.56 ms (3.06 ms), 201; 23:13 UTC 0.504 (2219) | 7.67 ms (31.88 ms), 201; 23:18 UTC
//!   0.527 (2035) | 2.72 ms (2.58 ms), 201
//!
//! - 2026-12-05, qemu 10, the probe every 5 ms (`PROBE_INTERVAL_US`; about 800 wakeups, so the
//!   gated p99 is the 8th-slowest; the 20 ms probe's 2nd-slowest of ~200 failed one clean run
//!   on a slow host at 6cfea05 with 17.99 ms, max 92.5 ms, floor 5.64 ms, and passed its five
//!   reruns): quiet host 10:02-10:03 UTC 0.512 (2025) | 0.60 ms (0.30 ms), 801; 0.548 (1989) |
//!   2.59 ms (1.03 ms), 801; 0.528 (2001) | 0.60 ms (0.28 ms), 801; `stress-ng --cpu 1` at
//!   nice 10 beside the emulator 10:04 UTC 0.536 (1853) | 4.10 ms (3.29 ms), 799; 0.510 (1954)
//!   | 4.92 ms (5.01 ms), 797; `stress-ng --cpu 2` at nice 0, 10:05 UTC 0.669 (634) | 8.09 ms
//!   (7.99 ms; gate 11.99 ms), 729; 0.646 (771) | 8.03 ms (8.06 ms; gate 12.08 ms), 741.
//!
//! So the hog kept 2.5-3.1x its weight share and every run met the literal 10 ms p99 (the
//! 1.5 x floor allowance was not needed). With the budget compiled out (one run, the same day;
//! `CANOPY_BPF_EXTRA_CFLAGS=-DCANOPY_PREEMPT_BUDGET_NS=1000000000000 scripts/vm-run scx_bounds`)
//! the hog still got 0.618 CPUs and only the `preempt_budget_spent > 0` assertion failed: on
//! this platform the share assertion does not catch a missing budget; the counter assertion does.
//!
//! A workload that starves the hog without the budget was searched for in s9 (2026-12-03,
//! 22:21-22:56 UTC, two exploration boots and two runs of this scenario; budget compiled out
//! unless said; hog CPUs against its weight share in brackets): none was found. Under TCG on
//! the shared host a loop's 10 us sleep lasts as long as a wakeup takes to run, and the hog runs
//! in that gap: this scenario's own floor (a root USER_INTERACTIVE timer wakeup preempting
//! BACKGROUND hogs) had p50 0.4-0.9 ms and p99 2.6-32 ms in the s9 boots, so with 2 ms runs the
//! hog gets about 2 x 0.8 / 2.8 = 0.57 CPUs with or without the budget (measured 0.50-0.62).
//! Longer runs left the hog more than that arithmetic says (the p99 tail; not explained further).
//! Loops with more threads than cids get queued and are then ordered by vtime, which gives the
//! hog its weight share or more with or without the budget.
//! - 3 ms UI slice, 400:100, threads x busy: 2 x 2 ms 0.553 (0.222); 4 x 2 ms 0.217 (0.118);
//!   4 x 0.5 ms 0.342 (0.118); 4 x 1 ms 0.260 (0.118); 8 x 0.5 ms 0.163 (0.061); 8 x 1 ms
//!   0.110 (0.061); 16 x 0.5 ms 0.057 (0.031); 6 x 0.2 ms sleeping 0.2 ms 0.242 (0.080);
//! - 8 ms UI slice: 2 x 6 ms 0.300 (0.222); 2 x 7 ms 0.364 (0.222); 3 x 6 ms 0.188 (0.154);
//! - 20 ms UI slice: 2 x 10 ms 0.350 (0.222); 2 x 15 ms 0.293 (0.222); 3 x 15 ms 0.162 (0.154);
//! - 50 ms UI slice, 2 x 40 ms (each run one slice, about the budget): 400:100 0.229 (0.222);
//!   200:100 0.395 (0.400), and the same with the budget 0.400 (0.400; 121 wakeups refused):
//!   the hog got the same with and without the budget, so that 0.395 < 0.400 proves nothing.
//!
//! Every loop above with as many threads as cids (each run starting with a preempting wakeup)
//! left the hog 0.229 CPUs or more. On real CPUs (sleeps of tens of us) the 2 ms loop would
//! leave it about 2% of a CPU without the budget (the arithmetic of the worked example in
//! `bpf/preempt_budget.bpf.h`, not measured); showing that needs a guest whose sleeps are
//! short (KVM), which CI does not have.
use std::time::Duration;

use crate::support::{start_root_with_children, SHELL_HELPERS, STOP_ROOT};

/// The class table of the scenario: the shipped one with USER_INTERACTIVE at 400 and BACKGROUND
/// at 100, so BACKGROUND's weight share is large enough to measure in a few seconds
/// (with the shipped 800:25 it would be 1.6% of the CPUs).
const CONFIG: &str = r#"{"default_class":"BACKGROUND","classes":[
    {"name":"USER_INTERACTIVE","weight":400,"slice_us":3000,"preempts":true},
    {"name":"USER_INITIATED","weight":400,"slice_us":5000},
    {"name":"DEFAULT","weight":100,"slice_us":10000},
    {"name":"UTILITY","weight":100,"slice_us":20000,"preemptible":true},
    {"name":"BACKGROUND","weight":100,"slice_us":20000,"preemptible":true}],
  "groups":[{"cgroup":"tf","admit":["foreign_fifo"]}]}"#;

/// The period of the root USER_INTERACTIVE probe of part (3), in microseconds: 5 ms gives about
/// 800 wakeups in its 4 s, so the gated p99 is the 8th-slowest wakeup (at the 20 ms of the runs
/// before 2026-12-05 it was the 2nd-slowest of about 200, and one host stall decided it).
const PROBE_INTERVAL_US: u64 = 5000;

/// USER_INTERACTIVE busy-loop threads, and the weights above.
const UI_THREADS: f64 = 2.0;
const UI_WEIGHT: f64 = 400.0;
const BG_WEIGHT: f64 = 100.0;

#[test]
fn preempting_classes_and_foreign_children_cannot_starve_the_others() -> anyhow::Result<()> {
    let script = format!(
        r#"
{SHELL_HELPERS}
mkdir -p /sys/fs/cgroup/tf
{start}
# (2) a BACKGROUND hog (the default class) against a USER_INTERACTIVE busy loop on both CPUs
canopy-guest hog --threads 1 & HOG=$!
canopy-guest hog --threads 2 --busy-us 2000 --sleep-us 10 & UI=$!
canopy scheduler tag --tid $UI --class USER_INTERACTIVE
sleep 1
canopy-guest proc-stat --pid $HOG --seconds 5 --kind bg-hog
canopy-guest proc-stat --pid $UI --seconds 1 --kind ui-loop
kill $HOG $UI; wait $HOG $UI || true
canopy scheduler status --json --interval-ms 100 > /tmp/status-budget.json
canopy-guest report budget-status status=@/tmp/status-budget.json
# (3) two hogs in tf keep both CPUs busy; a USER_INTERACTIVE task of the root wakes every 5 ms:
# first with the hogs as the root's own BACKGROUND tasks (the preempting path: this boot's floor),
# then with foreign_fifo attached on tf giving them 1 s slices
hog_in tf; hog_in tf
PROBE_INTERVAL_US={PROBE_INTERVAL_US}
sleep 1
canopy-guest wakeprobe --mode timer --threads 1 --interval-us $PROBE_INTERVAL_US --seconds 4 --warmup 1 --kind root-ui-wakeups-floor & WP=$!
canopy scheduler tag --tid $WP --class USER_INTERACTIVE
wait $WP
canopy scheduler child --cgroup tf --foreign-fixture --fixture-slice-ms 1000 > /tmp/fixture.log 2>&1 &
FIXTURE=$!
for i in $(seq 1 300); do grep -q 'enabled on' /tmp/fixture.log && break; sleep 0.1; done
sleep 1
canopy-guest wakeprobe --mode timer --threads 1 --interval-us $PROBE_INTERVAL_US --seconds 4 --warmup 1 --kind root-ui-wakeups & WP=$!
canopy scheduler tag --tid $WP --class USER_INTERACTIVE
wait $WP
canopy scheduler status --json --interval-ms 100 > /tmp/status-reclaim.json
canopy-guest report reclaim-status status=@/tmp/status-reclaim.json
if kill -0 $FIXTURE; then fixture_alive=true; else fixture_alive=false; fi
kill -TERM $FIXTURE; wait $FIXTURE || true
canopy-guest report fixture fixture_alive=$fixture_alive sched_ext="$(cat /sys/kernel/sched_ext/state)" log="$(tr '\n' '|' < /tmp/fixture.log)"
{STOP_ROOT}
"#,
        start = start_root_with_children(0)
    );
    let outcome = crate::scenario("scx-bounds")
        .with_file_contents("/etc/canopy-sched.json", CONFIG, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());

    // (2) the preemption budget
    let hog = outcome.result("bg-hog")?;
    let ui_loop = outcome.result("ui-loop")?;
    let budget_stats = &outcome.result("budget-status")?["status"]["stats"];
    let hog_cpus = hog["cpu_fraction"].as_f64().unwrap_or(f64::NAN);
    // BACKGROUND's weight share of the 2 CPUs beside the two busy USER_INTERACTIVE threads
    let weight_share = 2.0 * BG_WEIGHT / (BG_WEIGHT + UI_THREADS * UI_WEIGHT);
    println!(
        "BACKGROUND hog beside a USER_INTERACTIVE busy loop: {hog_cpus:.3} CPUs (weight share {weight_share:.3}); \
         the loop {} CPUs; wakeups queued on a spent budget {}",
        ui_loop["cpu_fraction"], budget_stats["preempt_budget_spent"]
    );
    assert!(
        hog_cpus >= weight_share,
        "the BACKGROUND hog got {hog_cpus:.3} CPUs, below its weight share {weight_share:.3}: {hog}"
    );
    assert!(
        budget_stats["preempt_budget_spent"].as_u64().unwrap_or(0) > 0,
        "no wakeup was refused the preempting path: {budget_stats}"
    );

    // (3) the foreign child's long slices
    let floor = outcome.result("root-ui-wakeups-floor")?;
    let wakeups = outcome.result("root-ui-wakeups")?;
    let reclaim_stats = &outcome.result("reclaim-status")?["status"]["stats"];
    let fixture = outcome.result("fixture")?;
    let p99_ms = wakeups["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let max_ms = wakeups["max_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    println!(
        "root USER_INTERACTIVE wakeups beside foreign_fifo with 1 s slices: p50 {} us, p99 {p99_ms:.2} ms, \
         max {max_ms:.2} ms over {} samples; cids reclaimed {}, quantum kicks {}; \
         the same beside the hogs as BACKGROUND root tasks (this boot's floor): p50 {} us, p99 {} us, max {} us",
        wakeups["p50_us"], wakeups["samples"], reclaim_stats["child_cids_reclaimed"],
        reclaim_stats["quantum_kicks"], floor["p50_us"], floor["p99_us"], floor["max_us"]
    );
    // Every 5 ms wakeup was served: with the child keeping its 1 s slices, 4 s give about 4
    // (each overrun restarts the probe's period, so waits cost samples).
    let samples = wakeups["samples"].as_u64().unwrap_or(0);
    let expected = 4_000_000 / PROBE_INTERVAL_US;
    assert!(
        samples >= expected * 3 / 4,
        "only {samples} of about {expected} wakeups in 4 s: the child kept the CPUs: {wakeups}"
    );
    // 10 ms at p99; where this boot's own floor (the same probe preempting BACKGROUND hogs of
    // the root) is already above that (the emulated CPUs starved by a busy host), no scheduler
    // can do better than the floor, so the gate is 1.5 x the floor there and the miss is printed.
    let floor_p99_ms = floor["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    let limit_ms = 10f64.max(1.5 * floor_p99_ms);
    println!(
        "10 ms p99 target beside a child with 1 s slices: {} (floor p99 {floor_p99_ms:.2} ms, gate {limit_ms:.2} ms)",
        if p99_ms <= 10.0 { "met" } else { "NOT MET on this host" }
    );
    assert!(
        p99_ms <= limit_ms,
        "root USER_INTERACTIVE wakeups waited {p99_ms:.2} ms at p99 beside a child with 1 s slices (gate {limit_ms:.2} ms): {wakeups}"
    );
    assert_eq!(
        fixture["fixture_alive"], true,
        "foreign_fifo did not survive (watchdog?): {fixture}"
    );
    crate::support::assert_root_survived(&outcome)?;
    Ok(())
}
