// SPDX-License-Identifier: GPL-2.0-only
//! Scheduler scenarios: the classes of the root's own tasks: a USER_INTERACTIVE task's wakeup
//! latency under BACKGROUND load against the fair scheduler and schedqos's mapping, the same
//! for a task in one canopy child under another child's build, and a group state's class
//! ceiling enforced at enqueue.
use std::time::Duration;

// `canopy-guest latency --measured-class-id` writes this id for each measured cyclictest between
// fork and exec: a probe started in rounds is a new process each round, which a tagger watching
// for the name would find late.
use crate::support::class_ids::USER_INTERACTIVE;
use crate::support::{children_config, preempting_wakeups, start_root_with_children, STOP_ROOT};

/// The share of a SCHED_FIFO floor probe's wakeups over 1 ms on a quiet host under this load,
/// rounded up (2.7-4.1% measured beside canopy's root, 2026-12-04): the 1% gate holds as
/// written up to it and widens in proportion above it.
const QUIET_FLOOR_OVER_1MS: f64 = 0.05;

/// The USER_INTERACTIVE wakeups allowed over 1 ms: 1% of @wakeups, scaled by how much more
/// often than on a quiet host (QUIET_FLOOR_OVER_1MS) the SCHED_FIFO floor measured for the same
/// run waited over 1 ms (@floor_over_1ms, a share), never below 1%.
fn slow_wakeups_allowed(wakeups: u64, floor_over_1ms: f64) -> u64 {
    let platform_slowdown = (floor_over_1ms / QUIET_FLOOR_OVER_1MS).max(1.0);
    (wakeups as f64 * 0.01 * platform_slowdown).floor() as u64
}

/// How much more often than the SCHED_FIFO floor under canopy's root canopy's USER_INTERACTIVE
/// probe may wait 1 ms or more, and the points allowed besides for the few-sample noise of a
/// quiet run (0.2% is about 11 of 5,500 wakeups). See
/// `interactive_task_latency_under_background_load` for the runs that set them.
const TAIL_RATIO_ALLOWED: f64 = 1.5;
const TAIL_SLACK: f64 = 0.002;

/// That the measured probe of result @kind was put in USER_INTERACTIVE before it ran.
fn assert_probe_tagged(outcome: &canopy_vmtest::Outcome, kind: &str) -> anyhow::Result<()> {
    let class_id = &outcome.result(kind)?["class_id"];
    assert_eq!(
        class_id.as_u64(),
        Some(USER_INTERACTIVE),
        "{kind}'s probe was not put in USER_INTERACTIVE"
    );
    Ok(())
}

/// How far above the SCHED_FIFO floor's p99 a USER_INTERACTIVE probe's p99 may be in one canopy
/// child under another child's build. See
/// `an_interactive_task_in_one_child_is_not_held_up_by_another_childs_build` for the runs that
/// set it.
const CHILD_LATENCY_RATIO_ALLOWED: f64 = 2.5;

/// A cyclictest result's share of samples of 1 ms and more (its tail and overflows).
fn over_one_ms(latency: &serde_json::Value) -> f64 {
    let tail: u64 = latency["tail_per_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    let overflows = latency["overflows"].as_u64().unwrap_or(0);
    let samples = latency["samples"].as_f64().unwrap_or(f64::NAN);
    (tail + overflows) as f64 / samples
}

/// Issue 4 acceptance (c), the root's own tasks by class: cyclictest (tagged USER_INTERACTIVE)
/// under hackbench (BACKGROUND, the policy default here), against the fair scheduler and
/// schedqos's mapping (nice -4 against SCHED_BATCH nice 4, autogroup off; the guest has no tool
/// for its custom slice and uclamp) in the same VM run. The platform's floor is measured twice
/// under the same load, each time just before the runs it is compared with: cyclictest as
/// SCHED_FIFO 50, which preempts everything the moment its timer fires, so no scheduling policy
/// can do better; once under the fair scheduler (between fair's and schedqos's runs) and once
/// with canopy's root loaded, in turns with canopy's probe (five rounds of 2 s each, in the
/// order floor, probe, probe, floor, ...; `canopy-guest latency --interleaved-floor-kind`, the
/// probe put in USER_INTERACTIVE before it starts each round, by its id in `task_classes`; the
/// rounds' histograms stop at 20 ms, where slower wakeups count as overflows, which the share
/// over 1 ms includes: ten histograms of 200,000 lines made the test 270-300 s long instead of
/// 133 s, the guest printing and parsing them).
///
/// What this gates:
/// - the scheduler's own part of the latency, measured in BPF from the wakeup to the task
///   running: at most 1% of USER_INTERACTIVE wakeups take over 1 ms, scaled by how much more
///   often than on a quiet host the floor under canopy's root waited over 1 ms
///   (QUIET_FLOOR_OVER_1MS);
/// - canopy's tail is the platform floor's: its probe waits 1 ms or more at most 1.5 times as
///   often as the SCHED_FIFO floor under its root did, plus 0.2 points (until 2026-12-05 this
///   compared the two p99s; see below why that moved), and its p90 beats both baselines' p90, scaled by how much higher the floor's p90 was under
///   canopy's root than under the fair scheduler (never below the plain p90);
/// - the probe is tagged and the root survives the load.
///
/// Why two floors: the runs follow one another, and under TCG a host whose other work comes and
/// goes moves every figure. Five runs of the earlier version on one head (2026-12-04, one floor
/// between fair and schedqos): on a quiet host (floor p99 4.0-4.2 ms) canopy's p99 2.4-4.6 ms,
/// p90 0.20-0.35 ms against fair's 1.9-2.1 ms, 1-16 of 6,463-6,806 wakeups slow; with the
/// host's other work rising mid-run, one failed the p90 gate (canopy 5.3 ms against fair's 2.2
/// ms, measured before the load came; floor 18.7 ms) and one the 1% gate (88 of 4,112, floor
/// 15.6 ms, every p90 2.5 times a quiet run's). Why not a floor probe running beside each run
/// (`canopy-guest latency --floor-kind`): a SCHED_FIFO thread beside the probe changes what is
/// measured (it found the RT interaction `beside_a_fifo_task` now gates), so the floor is
/// measured apart.
///
/// Five runs of this version (2026-12-04 14:21-14:42 UTC, host load 2.0-2.9 with other VM runs
/// queued): canopy p99 2.6, 4.5, 3.6, 3.7, 3.8 ms against floors under its root of 2.9, 3.5,
/// 3.7, 4.0, 3.1 ms (ratios 0.89-1.29 of the 1.5 allowed); p90 0.46, 0.41, 0.38, 0.41, 0.31 ms
/// against fair's 3.3-4.1 ms and schedqos's 0.92-1.30 ms (floors' p90 ratio at most 1: no
/// allowance used); slow wakeups 0, 7, 1, 0, 0 of 6,373-6,684 (allowed 63-65; the floor under
/// canopy's root waited over 1 ms for 1.7-3.4% of its wakeups, under the 5% reference).
///
/// Why the tail share and not the p99 since 2026-12-05: on qemu 10 (fewer emulator stalls) the
/// floor under canopy's root waits 1 ms or more for only 1.1-2.0% of its wakeups, so its p99
/// (the 55th-slowest of about 5,500) sits on the knee of the distribution and jumps between 1.1
/// and 2.8 ms on a share change of a few wakeups. A clean-clone run of fb78a74 on qemu 10 failed
/// the old gate that way: canopy p99 2,141 us against a floor of 1,173 us (1.83x), while the
/// shares over 1 ms were 1.61% against 1.17% (1.38x). Six runs of this test on qemu 10.0.2
/// (2026-12-05 06:38-06:50 UTC, quiet host; canopy / floor): p99 1.48 / 1.12, 1.65 / 1.80,
/// 3.19 / 2.78, 2.63 / 2.31, 2.99 / 2.50, 2.22 / 2.14 ms (old ratios 0.92-1.32); over 1 ms
/// 1.46 / 1.06, 1.46 / 1.62, 2.12 / 1.96, 1.51 / 1.56, 1.72 / 1.45, 1.97 / 1.70% (ratios
/// 0.90-1.38, the failed run's 1.38 included, against 1.5 allowed); p90 0.31-0.35 ms against
/// fair's 2.9-3.4 and schedqos's 0.97-1.35 ms; slow wakeups 0-2 of 6,637-6,696. Three more
/// with a busy loop on the host beside the emulator (`stress-ng --cpu 1` at nice 10, one of the
/// host's two cores, 06:51-06:58 UTC): over 1 ms 5.13 / 7.77, 6.37 / 6.75, 7.11 / 6.12% (ratios
/// 0.66-1.16), p99 4.29 / 4.39, 4.29 / 4.34, 4.16 / 4.14 ms, slow wakeups 12, 20, 11 of
/// 6,119-6,270.
///
/// Why in turns since 2026-12-07: until then the floor under canopy's root ran in the 10 s before
/// canopy's probe, and a host whose other work rose between the two failed the tail gate with
/// nothing wrong in the scheduler. Stop 38's CI (a slow hour: the run took 2,141 s against
/// 1,767-1,864 s for the two before) measured canopy's probe over 1 ms for 6.69% of its
/// wakeups against the floor's 2.42% (2.77x), while the root counted only 18 of its 5,812
/// USER_INTERACTIVE wakeups over 1 ms from waking to running: the extra tail lay outside the
/// scheduler's part. In the first run in turns (18:02 UTC) the floor's five rounds waited over
/// 1 ms for 9.1, 1.8, 3.1, 1.9 and 2.3% of their wakeups: 20 s of one boot hold that much
/// weather, so a floor measured apart from the probe compares with another hour. Five runs in
/// turns on a busy host (2026-12-07 18:02-18:28 UTC, `stress-ng --cpu 1` at nice 10 on one of
/// the host's two cores from 18:08, load 2-3 besides; canopy / floor over 1 ms): 2.50 / 3.52,
/// 7.58 / 6.47, 6.81 / 7.14, 9.21 / 10.13, 7.98 / 6.43% (ratios 0.71-1.24 of the 1.5
/// allowed); the root's slow wakeups 8-19 of 5,554-6,262; canopy's p90 0.50-0.56 ms against
/// fair's 3.2-4.8 ms. A sixth boot was lost to an emulator abort (canopy-vmtest now retries
/// it). Canopy's probe also had 3-6 wakeups of 24-181 ms in each of these runs (its worst
/// 98-181 ms; the floor's worst 7.5-29 ms), and beside the FIFO thread the same (worst 115-173
/// ms while the FIFO thread's was 6-11 ms): no gate sees so few samples, and the root's own
/// count of wakeups over 1 ms (8-19) says most of the tail lies outside its wakeup-to-run
/// path; not yet explained (the closing note of 2026-12-07 has it).
///
/// Every probe sleeps with 1 ns of timer slack since 2026-12-05 17:25 UTC (`canopy-guest
/// latency`, PROBE_TIMER_SLACK_NS), as the SCHED_FIFO floor always did: the kernel ignores slack
/// for realtime tasks, and a normal task's default 50 us let its timer fire up to 50 us late, a
/// delay cyclictest counted against canopy (and fair and schedqos) but not against the floor. A
/// trace of this load in the guest (sched_waking to sched_switch, 400 wakeups each) found
/// canopy's path from wakeup to running no slower than the floor's (p50 116 / 118 us, p99 260 /
/// 357 us), so the gap lay before the wakeup. On a busy host (load 1.8-2.1 on 2 cores), five
/// runs with the slack (16:58-17:19 UTC) had tail ratios 1.77, 1.24, 1.40, 1.75, 1.17 and failed
/// twice; six runs with 1 ns (17:26-17:48 UTC; canopy / floor over 1 ms): 2.27 / 1.81, 1.59 /
/// 2.01, 1.64 / 1.22, 1.92 / 1.70, 1.51 / 1.66, 1.60 / 1.54% (ratios 0.79-1.34 of the 1.5
/// allowed), p90 449-567 us against floors of 321-502 us, beside the FIFO thread p99 1.07-1.15x
/// of its own (1.5 allowed).
///
/// The issue's literal target (p99 at most a quarter of fair's and half of schedqos's) is
/// printed as met or NOT MET. Under TCG with both vCPUs busy, even SCHED_FIFO's p99 is 3-4 ms
/// (timer interrupts reach a busy emulated CPU late), above half of schedqos's p99, so that
/// target cannot be met by any scheduler in this VM; see issue 4's closing note.
#[test]
fn interactive_task_latency_under_background_load() -> anyhow::Result<()> {
    let script = format!(
        r#"
LOAD='hackbench -T -p -g 2 -l 100000000'
canopy-guest latency --seconds 10 --histogram-us 200000 --load "$LOAD" --kind latency-fair
canopy-guest latency --seconds 10 --histogram-us 200000 --load "$LOAD" --kind latency-fifo-floor -- -p 50
autogroup=$(cat /proc/sys/kernel/sched_autogroup_enabled)
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
canopy scheduler exec --nice -4 -- canopy-guest latency --seconds 10 --histogram-us 200000 --load "canopy scheduler exec --nice 4 --batch -- $LOAD" --kind latency-schedqos
echo $autogroup > /proc/sys/kernel/sched_autogroup_enabled
{start}
canopy-guest latency --seconds 10 --rounds 5 --histogram-us 20000 --load "$LOAD" --kind latency-canopy --interleaved-floor-kind latency-fifo-floor-canopy --measured-class-id {USER_INTERACTIVE}
canopy scheduler status --json --interval-ms 100 > /tmp/status.json
canopy-guest report root-status status=@/tmp/status.json
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 20 > /tmp/tagger-beside-fifo.log 2>&1 &
canopy-guest latency --seconds 10 --histogram-us 200000 --load "$LOAD" --kind latency-canopy-beside-fifo --floor-kind latency-fifo-beside-canopy
canopy-guest report tagged-beside-fifo log="$(tr '\n' '|' < /tmp/tagger-beside-fifo.log)"
canopy scheduler status --json --interval-ms 100 > /tmp/status.json
canopy-guest report root-status-beside-fifo status=@/tmp/status.json
{STOP_ROOT}
"#,
        start = start_root_with_children(0)
    );
    let outcome = crate::scenario("sched-latency")
        .with_debian_tools(&["cyclictest", "hackbench"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            r#"{"default_class":"BACKGROUND"}"#,
            0o644,
        )
        .timeout(Duration::from_secs(300))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let percentiles = |kind: &str| -> anyhow::Result<(f64, f64)> {
        let latency = outcome.result(kind)?;
        println!("{kind}: {latency}");
        let value = |key: &str| latency[key].as_f64().unwrap_or(f64::NAN);
        Ok((value("p90_us"), value("p99_us")))
    };
    let (fair_p90, fair) = percentiles("latency-fair")?;
    let (fair_floor_p90, fair_floor) = percentiles("latency-fifo-floor")?;
    let (schedqos_p90, schedqos) = percentiles("latency-schedqos")?;
    let (canopy_floor_p90, canopy_floor) = percentiles("latency-fifo-floor-canopy")?;
    let (canopy_p90, canopy) = percentiles("latency-canopy")?;
    let floor_over_1ms = over_one_ms(outcome.result("latency-fifo-floor-canopy")?);
    println!(
        "cyclictest p99 under hackbench: fair {fair} us, schedqos mapping {schedqos} us, \
         canopy {canopy} us; SCHED_FIFO floor {fair_floor} us under fair, {canopy_floor} us \
         under canopy's root ({:.1}% of its wakeups over 1 ms); p90: fair {fair_p90} us, \
         schedqos {schedqos_p90} us, canopy {canopy_p90} us, floors {fair_floor_p90} and \
         {canopy_floor_p90} us",
        floor_over_1ms * 100.0
    );
    for (kind, value) in [
        ("fair", fair),
        ("schedqos", schedqos),
        ("canopy", canopy),
        ("fair's floor", fair_floor),
        ("canopy's floor", canopy_floor),
    ] {
        assert!(value.is_finite() && value > 0.0, "no {kind} p99 measured");
    }
    assert_probe_tagged(&outcome, "latency-canopy")?;
    let stats = &outcome.result("root-status")?["status"]["stats"];
    let (wakeups, slow) = preempting_wakeups(stats);
    println!(
        "USER_INTERACTIVE wakeups seen by the root: {wakeups}, over 1 ms to run: {slow}; {stats}"
    );
    crate::support::assert_root_survived(&outcome)?;
    // The issue's literal target, reported (see the doc comment for why it is not gated).
    let quarter_of_fair = canopy <= fair / 4.0;
    let half_of_schedqos = canopy <= schedqos / 2.0;
    println!(
        "issue 4 (c) literal target: canopy p99 <= fair/4: {}; canopy p99 <= schedqos/2: {}",
        if quarter_of_fair { "met" } else { "NOT MET" },
        if half_of_schedqos { "met" } else { "NOT MET" }
    );
    assert!(
        wakeups >= 1000,
        "the root saw only {wakeups} USER_INTERACTIVE wakeups: was the probe tagged?"
    );
    let slow_allowed = slow_wakeups_allowed(wakeups, floor_over_1ms);
    assert!(
        slow <= slow_allowed,
        "{slow} of {wakeups} USER_INTERACTIVE wakeups waited over 1 ms in the scheduler (allowed: \
         1%, scaled by the floor's share of wakeups over 1 ms under canopy's root, {:.1}%, over \
         a quiet host's {:.0}%: {slow_allowed})",
        floor_over_1ms * 100.0,
        QUIET_FLOOR_OVER_1MS * 100.0
    );
    let canopy_over_1ms = over_one_ms(outcome.result("latency-canopy")?);
    let tail_allowed = TAIL_RATIO_ALLOWED * floor_over_1ms + TAIL_SLACK;
    assert!(
        canopy_over_1ms <= tail_allowed,
        "canopy's probe waited over 1 ms for {:.2}% of its wakeups, above the platform floor \
         under its root (SCHED_FIFO: {:.2}%) x {TAIL_RATIO_ALLOWED} + {:.1} points = {:.2}% \
         (p99s: canopy {canopy} us, floor {canopy_floor} us)",
        canopy_over_1ms * 100.0,
        floor_over_1ms * 100.0,
        TAIL_SLACK * 100.0,
        tail_allowed * 100.0
    );
    let busier = (canopy_floor_p90 / fair_floor_p90).max(1.0);
    let (fair_bound, schedqos_bound) = (fair_p90 * busier, schedqos_p90 * busier);
    assert!(
        canopy_p90 < fair_bound && canopy_p90 < schedqos_bound,
        "canopy p90 {canopy_p90} us does not beat fair ({fair_p90} us, {fair_bound:.0} us \
         allowing for the host) and schedqos ({schedqos_p90} us, {schedqos_bound:.0} us)"
    );
    beside_a_fifo_task(&outcome, (wakeups, slow))
}

/// The same probe and load under canopy's root, with a SCHED_FIFO thread waking every 2 ms
/// beside it (the floor probe, `--floor-kind`), as pipewire's threads run beside a desktop's
/// apps. Gates, as for the run without it: p99 at most 1.5x the SCHED_FIFO thread's p99 in the
/// same seconds; at most 1% of the USER_INTERACTIVE wakeups in these seconds over 1 ms, scaled
/// by the FIFO thread's share over 1 ms against a quiet host's.
///
/// Before the fix (bpf/class_vtime.bpf.h, class_vtime_end_slice_taken_by_higher_class, and
/// canopy_root's find_preemptible_cid) a task the RT thread took a CPU from waited at the head
/// of that CPU's local queue and ran out its 20 ms BACKGROUND slice first, and a probe wakeup
/// that found the other CPU not preemptible queued behind it: p99 21-23 ms and 68-71 slow
/// wakeups in stop 19's two runs, 4.2 ms against the FIFO thread's 2.6 ms (1.6x, failing) on
/// 2026-12-04 16:14 UTC. With the slice ended alone: 14.6 ms, 78 slow of 5,606 (failing; 75 of
/// them had found nothing to preempt). With both, six runs (2026-12-04 16:21-16:33 UTC, host
/// load 0.7-2.1): p99 2.87, 3.65, 4.32, 3.98, 4.16, 3.36 ms against the FIFO thread's 2.73,
/// 3.35, 4.07, 3.97, 3.96, 3.42 ms (0.98-1.09x of the 1.5 allowed); 4, 6, 2, 5, 7, 5 slow of
/// 6,396-6,587 (allowed 64 or more); 117 wakeups in the first took the new path, none slow.
fn beside_a_fifo_task(
    outcome: &canopy_vmtest::Outcome,
    (wakeups_before, slow_before): (u64, u64),
) -> anyhow::Result<()> {
    crate::support::assert_cyclictest_tagged(outcome, "tagged-beside-fifo")?;
    let latency = outcome.result("latency-canopy-beside-fifo")?;
    let fifo = outcome.result("latency-fifo-beside-canopy")?;
    println!("latency-canopy-beside-fifo: {latency}\nlatency-fifo-beside-canopy: {fifo}");
    let p99 = |result: &serde_json::Value| result["p99_us"].as_f64().unwrap_or(f64::NAN);
    let (canopy, floor) = (p99(latency), p99(fifo));
    let floor_over_1ms = over_one_ms(fifo);
    let stats = &outcome.result("root-status-beside-fifo")?["status"]["stats"];
    let (wakeups, slow) = preempting_wakeups(stats);
    let (wakeups, slow) = (wakeups - wakeups_before, slow - slow_before);
    println!(
        "beside a SCHED_FIFO thread: canopy p99 {canopy} us, the FIFO thread's {floor} us \
         ({:.1}% of its wakeups over 1 ms); USER_INTERACTIVE wakeups {wakeups}, over 1 ms {slow}",
        floor_over_1ms * 100.0
    );
    assert!(
        canopy.is_finite() && floor.is_finite() && floor > 0.0,
        "no p99 measured beside the FIFO thread"
    );
    assert!(
        wakeups >= 1000,
        "the root saw only {wakeups} USER_INTERACTIVE wakeups beside the FIFO thread"
    );
    let slow_allowed = slow_wakeups_allowed(wakeups, floor_over_1ms);
    assert!(
        slow <= slow_allowed,
        "beside a SCHED_FIFO thread, {slow} of {wakeups} USER_INTERACTIVE wakeups waited over 1 \
         ms in the scheduler (allowed {slow_allowed})"
    );
    assert!(
        canopy <= 1.5 * floor,
        "beside a SCHED_FIFO thread, canopy p99 {canopy} us is above that thread's p99 {floor} us \
         x 1.5"
    );
    Ok(())
}

/// Issue 12's desktop shape in the busybox guest: a USER_INTERACTIVE cyclictest in one canopy
/// child (`app-probe`, as an app scope of `policies/desktop.toml`'s `apps` group gets) beside a
/// build of 4 busy BACKGROUND threads in another (`app-build`). The kernel tells the root
/// nothing when a child's task wakes, and a child may not preempt the other child's task, so
/// before bpf/child_wake.bpf.h the probe waited for the build's 20 ms slice: p99 18.8 and
/// 20.0 ms in two systemd-guest runs (session 7) against a 3.9 ms floor. The child now asks
/// the root for a cid through the map they share.
///
/// Then the same cyclictest inside the build's own child: the child preempts its own
/// BACKGROUND task for it (a UI thread beside its app's worker pool in one scope).
///
/// Gates: canopy's p99 at most CHILD_LATENCY_RATIO_ALLOWED (2.5) times the platform floor (the
/// same cyclictest as SCHED_FIFO 50 in the probe's child under the same build, with canopy's
/// root and children loaded, in turns with canopy's probe: five rounds of 2 s each, as
/// `interactive_task_latency_under_background_load` measures its floor since 2026-12-07 and
/// says why; until then the floor ran under the fair scheduler in the 10 s before the root
/// loaded) in the other child; at most 4x in the build's own child (see there); the root took cids back for
/// the child (its `child_wake_kicks` counter). What the first gate catches: without the child's
/// request the probe waited for the build's 20 ms slices (18.8-24 ms, 5-6x the floor).
///
/// Why 2.5x and not the root's 1.5x: until 2026-12-05 this borrowed the 1.5x that
/// `interactive_task_latency_under_background_load` set from its own runs (8 on 2026-12-03:
/// 1.05-1.33x) and never had five busy-host runs of its own. On a busy host it failed CI's run of
/// e4b203f (6.1 ms against a 3.1 ms floor, 1.97x) and 3 of 5 runs here at 16:57-17:15 UTC. The
/// child's path is longer than the root's, and each hop is an interrupt the emulator delivers
/// late: a trace in the guest (sched_waking to sched_switch, 400 wakeups) timed the probe in the
/// other child at p50 497 us, p99 986 us from wakeup to running, against the floor's 66 and 319
/// us: the child's bpf_timer_start goes through an irq_work, the timer at 0 ns then needs a
/// local timer interrupt, its callback's kick another irq_work, and the cid's dispatch (the
/// root's offer, then the child's) about 300 us more under TCG. The fix for the hops is for the
/// root's rule to run at the child's enqueue (a child holding SCX_CAP_PREEMPT, with what the
/// root knows of each cid shared with it), not a wider gate; until then the gate is set from
/// these busy-host runs (host load 1.8-2.1 on 2 cores; canopy p99 / floor p99): 1.16, 1.36, 1.06,
/// 1.78, 1.52, 1.59 (2026-12-05 16:51-17:15 UTC), then with the probes' 1 ns timer slack 1.30,
/// 1.16, 1.63, 1.11, 1.32, 1.34 (17:29-17:48 UTC), besides 1.47 in stop 25's clean run and CI's
/// 1.97. canopy's p99 was 3.5-5.2 ms and its p50 0.61-0.85 ms in all of them; the floor moved
/// more (p99 2.4-4.5 ms), which is most of the ratio's spread.
///
/// 2026-12-07: the gate failed a399f86's clean run (2.51x) and six of eight runs after it. With
/// the floor in turns (above) the ratio was still 1.79-2.42 in nine runs, eight on a busy host
/// (canopy's p99 7.4-10.8 ms, floors 3.8-5.4 ms): the floor had not moved, canopy had. Builds of
/// de13d86 (where the gate was set), a35d76c, 74feec1 and 2d1eb14 gave 5.0-6.7 ms in the same
/// test, 909fb75 12.3-13.3 ms: its rule leaving children found empty out of the offers
/// (bpf/child_work.bpf.h) delayed the probe's wakeups in its child. The rule now spares a child
/// that had work in the last 50 ms; with it (busy host, alternating with 2d1eb14's build,
/// 19:09-19:14 UTC) canopy 5.1, 5.8, 5.7 ms against floors of 4.2, 4.3, 4.7 ms (1.23, 1.35,
/// 1.22x), 2d1eb14's 6.2, 5.2 and 5.6 ms in the boots between.
#[test]
fn an_interactive_task_in_one_child_is_not_held_up_by_another_childs_build() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/app-build /sys/fs/cgroup/app-probe
BUILD='echo $$ > /sys/fs/cgroup/app-build/cgroup.procs; exec canopy-guest hog --threads 4 --comm cc1'
in_probe() {{ sh -c 'echo $$ > /sys/fs/cgroup/app-probe/cgroup.procs; exec "$@"' sh "$@"; }}
{start}
in_probe canopy-guest latency --seconds 10 --rounds 5 --histogram-us 20000 --load "$BUILD" --kind child-latency-canopy --interleaved-floor-kind child-latency-fifo-floor --measured-class-id {USER_INTERACTIVE}
in_build() {{ sh -c 'echo $$ > /sys/fs/cgroup/app-build/cgroup.procs; exec "$@"' sh "$@"; }}
# a new cyclictest process: tag it too (the tagger stops after its first match)
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 20 > /tmp/tagger-same-child.log 2>&1 &
in_build canopy-guest latency --seconds 10 --histogram-us 200000 --load "$BUILD" --kind child-latency-canopy-same-child
canopy-guest report tagged-same-child log="$(tr '\n' '|' < /tmp/tagger-same-child.log)"
canopy scheduler status --json --interval-ms 100 > /tmp/status.json
canopy-guest report root-status status=@/tmp/status.json
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = crate::scenario("sched-child-latency")
        .with_debian_tools(&["cyclictest"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            children_config(&["app-build", "app-probe"]).replacen(
                '{',
                r#"{"default_class":"BACKGROUND","#,
                1,
            ),
            0o644,
        )
        .timeout(Duration::from_secs(240))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let p99 = |kind: &str| -> anyhow::Result<f64> {
        let latency = outcome.result(kind)?;
        println!("{kind}: {latency}");
        Ok(latency["p99_us"].as_f64().unwrap_or(f64::NAN))
    };
    let floor = p99("child-latency-fifo-floor")?;
    let canopy = p99("child-latency-canopy")?;
    let same_child = p99("child-latency-canopy-same-child")?;
    let stats = &outcome.result("root-status")?["status"]["stats"];
    let kicks = stats["child_wake_kicks"].as_u64().unwrap_or(0);
    let unserved = stats["child_wake_unserved"].as_u64().unwrap_or(0);
    println!(
        "cyclictest p99 in one child under another child's build: canopy {canopy} us, \
         in the build's own child {same_child} us, SCHED_FIFO floor {floor} us; the root took \
         {kicks} cids back for the child ({unserved} requests found nothing to take); {stats}"
    );
    assert_probe_tagged(&outcome, "child-latency-canopy")?;
    crate::support::assert_cyclictest_tagged(&outcome, "tagged-same-child")?;
    assert!(floor.is_finite() && floor > 0.0, "no floor measured");
    assert!(
        kicks >= 1000,
        "the root took back only {kicks} cids for the child's USER_INTERACTIVE wakeups"
    );
    assert!(
        canopy <= CHILD_LATENCY_RATIO_ALLOWED * floor,
        "canopy p99 {canopy} us in a child is above the platform floor (SCHED_FIFO p99 {floor} us) \
         x {CHILD_LATENCY_RATIO_ALLOWED}"
    );
    // In the build's own child the waker goes through one more hop (the child's kick, then the
    // root's dispatch offering the cid by member vtime, then the child's), and on a host loaded
    // by builds it came out further from the floor: p99 / floor was 1.04 (3.6 ms / 3.5 ms,
    // quiet) and 1.56 (18.1 ms / 11.6 ms, two cargo builds beside the VM) on 2026-12-03, while
    // the missing preemption it gates gave 24.0 and 27.4 ms against 3.8 and 8.5 ms (ratio 3.2
    // and 6.3). Nine runs with the fix set the margin (p99 / floor, 2026-12-03): 1.04, 1.56,
    // 0.85, 0.53, then 3.67 (14.1 ms / 3.8 ms, 23:10 UTC, host load 4-5 from two helpers'
    // builds; cyclictest got 3,892 of 5,345 samples: it waited whole slices), 0.55 and 0.96
    // (the suite's run), then 0.50 and 0.84 (23:25-23:35 UTC). 4x holds all nine. It still catches the worse of the two runs without
    // the fix (6.3) but not the other (3.2): the tail in the build's own child is not yet
    // separated from the missing preemption under a loaded host. The cross-child gate above
    // is the tight one. What would tighten this: the root handing a cid that a child kicked for
    // its own urgent waker straight back to that child instead of choosing by member vtime.
    assert!(
        same_child <= 4.0 * floor,
        "canopy p99 {same_child} us in the build's own child is above the platform floor \
         (SCHED_FIFO p99 {floor} us) x 4"
    );
    crate::support::assert_root_survived(&outcome)?;
    Ok(())
}

/// The schedulers enforce a group state's allowed classes themselves, at the task's next
/// enqueue (canopy.bpf.h task_class), without waiting for the controller to re-tag the task. A
/// cgroup's `group_policy` entry gets a BACKGROUND ceiling (as the controller writes it for a
/// `minimized` state); a cyclictest tagged USER_INTERACTIVE inside it is clamped (no preempting
/// wakeups, clamp counter grows), and moved out it preempts again.
#[test]
fn a_state_ceiling_clamps_a_tagged_task_at_enqueue() -> anyhow::Result<()> {
    // group_policy value: weight, guarantee_pct, cap_pct, nr_admitted (4 x u32), admitted
    // (4 x 32 bytes), ceiling_plus_one, floor_plus_one, unowned (0: owned), pad; BACKGROUND is
    // id 4, so ceiling 5.
    let script = r#"
mkdir -p /sys/fs/cgroup/minimized
canopy scheduler run --config /etc/canopy-sched.json > /tmp/root.log 2>&1 &
ROOT=$!
for i in $(seq 1 300); do grep -q 'root scheduler enabled' /tmp/root.log && break; sleep 0.1; done
id=$(stat -c %i /sys/fs/cgroup/minimized)
key=$(printf '%016x' $id | sed 's/../& /g' | awk '{for(i=8;i>=1;i--) printf "%s ", $i}')
value="$(for i in $(seq 1 144); do printf '00 '; done)05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
bpftool map update pinned /sys/fs/bpf/canopy/group_policy key hex $key value hex $value
stats() { canopy scheduler status --json --interval-ms 10 | tr -d '\n '; }
hog() { sh -c "echo \$\$ > /sys/fs/cgroup/$1/cgroup.procs; exec canopy-guest hog --threads 2 --seconds 12" & }
hog minimized
sh -c 'echo $$ > /sys/fs/cgroup/minimized/cgroup.procs; exec cyclictest -q -t1 -i 2000 -D 4 > /dev/null' &
PROBE=$!
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 5 > /tmp/tag.log 2>&1
sleep 3
canopy-guest report inside status="$(stats)" procs="$(cat /sys/fs/cgroup/minimized/cgroup.procs | tr '\n' ' ')"
wait $PROBE
cyclictest -q -t1 -i 2000 -D 4 > /dev/null &
PROBE=$!
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 5 > /tmp/tag.log 2>&1
sleep 3
canopy-guest report outside status="$(stats)"
wait $PROBE
kill -TERM $ROOT; wait $ROOT || true
"#;
    let outcome = crate::scenario("sched-state-clamp")
        .with_debian_tools(&["cyclictest", "bpftool"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            r#"{"default_class":"BACKGROUND"}"#,
            0o644,
        )
        .timeout(Duration::from_secs(150))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let stats = |kind: &str| -> anyhow::Result<serde_json::Value> {
        Ok(outcome.result(kind)?["status"]["stats"].clone())
    };
    let (inside, outside) = (stats("inside")?, stats("outside")?);
    let inside_clamped = inside["class_clamped"].as_u64().unwrap_or(0);
    let inside_wakes = preempting_wakeups(&inside).0;
    let outside_wakes = preempting_wakeups(&outside).0 - inside_wakes;
    println!(
        "inside the minimized cgroup: {inside_clamped} clamped lookups, {inside_wakes} preempting \
         wakeups; outside: {outside_wakes} preempting wakeups"
    );
    assert!(inside_clamped > 100, "{}", outcome.result("inside")?);
    assert!(
        inside_wakes < 10,
        "a USER_INTERACTIVE task under a BACKGROUND ceiling still woke as a preempting class \
         {inside_wakes} times"
    );
    assert!(
        outside_wakes > 500,
        "moved out of the minimized cgroup, the task did not preempt again ({outside_wakes})"
    );
    Ok(())
}
