// SPDX-License-Identifier: GPL-2.0-only
//! Scenario: the cgroup v2 CPU contract holds in scx mode (issue 10). Cgroups without a child
//! scheduler keep their place in the cpu.weight tree once canopy's root scheduler is loaded:
//! (a) flat cgroups at 300:200:100 and (b) a nested tree, `p` (100) holding `p/a` (300) and
//! `p/b` (100), beside `q` (100), two hogs in every leaf. The fair scheduler in classic `smp`
//! group-share mode is measured first in the same boot as the reference. Shares are measured
//! in the guest from each cgroup's cpu.stat, so host load slows the guest but does not skew
//! the split.

use std::sync::OnceLock;
use std::time::Duration;

use canopy_vmtest::Outcome;

use crate::support::{
    fair_reference, fair_reference_result, minimize_when_seen, part, parts_script, shared_run,
    start_root_in_part, start_ui_probes, GROUP_POLICY_HELPER, STOP_ROOT_IN_PART,
    UI_PROBE_POLICY_HEAD,
};

/// Shares as fractions of the CPU time all groups of one split used, in the split's order.
pub(crate) fn shares(split: &serde_json::Value) -> Vec<f64> {
    split["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|group| group["share"].as_f64().unwrap_or(f64::NAN))
                .collect()
        })
        .unwrap_or_default()
}

/// The largest distance, in percentage points, between @measured and @target.
pub(crate) fn largest_error_points(measured: &[f64], target: &[f64]) -> f64 {
    measured
        .iter()
        .zip(target)
        .map(|(m, t)| (m - t).abs() * 100.0)
        .fold(
            if measured.len() == target.len() {
                0.0
            } else {
                f64::NAN
            },
            f64::max,
        )
}

pub(crate) const FLAT: &str = "--group fa:300:2 --group fb:200:2 --group fc:100:2";
pub(crate) const NESTED: &str = "--group p/a:300:2 --group p/b:100:2 --group q:100:2";
/// A cgroup whose two workers each fork a 2 ms job after another, beside a cgroup of two hogs,
/// at equal cpu.weight: every job is a new task and every parent wakes once per job.
pub(crate) const FORKING: &str = "--group fk:100:2f --group hg:100:2";
pub(crate) const FLAT_TARGET: [f64; 3] = [1.0 / 2.0, 1.0 / 3.0, 1.0 / 6.0];
pub(crate) const NESTED_TARGET: [f64; 3] = [0.375, 0.125, 0.5];

/// The boot acceptance (a)+(b), (c), (d) and the forking cgroup share (`cpu-contract-shares`):
/// they need the same guest, the fair scheduler's reference splits first and then canopy's root
/// scheduler with no config, so one boot and one root load serve them all (a boot and a root
/// load were about 17 s of each test's own boot on a quiet host). Parts, in order:
/// `contract-fair` (the fair scheduler's splits: `max-fair`, which (c) gates on, always;
/// `flat-fair`, `nested-fair`, `idle-fair` and `fork-fair`, which are only printed, with
/// `CANOPY_VM_FAIR_REFERENCES=1`: `support::fair_references`, 35 s of this boot),
/// `contract-root` (the root loads), `contract-tree`, `contract-max`, `contract-idle`,
/// `contract-fork` (each test's splits under the root, each ending with the root's state),
/// `contract-root-stop`. Each test reads its own parts' results
/// and asserts on them alone. `busy` is made with the other cgroups before the root loads, as
/// `idle-fair` (`--keep`) left it when it always ran, so the parts under the root meet the same
/// cgroups either way.
pub(crate) fn contract_shares_boot() -> anyhow::Result<&'static Outcome> {
    static SHARED: OnceLock<Result<Outcome, String>> = OnceLock::new();
    shared_run(&SHARED, || {
        let parts = [
            (
                "contract-fair",
                format!(
                    r#"
mkdir -p /sys/fs/cgroup/p /sys/fs/cgroup/lim /sys/fs/cgroup/par /sys/fs/cgroup/idl /sys/fs/cgroup/busy
echo +cpu > /sys/fs/cgroup/p/cgroup.subtree_control
echo 100 > /sys/fs/cgroup/p/cpu.weight
echo "50000 100000" > /sys/fs/cgroup/lim/cpu.max
echo +cpu > /sys/fs/cgroup/par/cgroup.subtree_control
echo "50000 100000" > /sys/fs/cgroup/par/cpu.max
echo 1 > /sys/fs/cgroup/idl/cpu.idle
{tree_fair}canopy-guest cpu-split --group lim:100:3 --group sib:100:2 --seconds 10 --warmup 1 --keep --kind max-fair
{idle_fair}"#,
                    tree_fair = fair_reference(&format!(
                        "canopy-guest cpu-split {FLAT} --seconds 8 --warmup 1 --fair-cgroup-mode smp --kind flat-fair\n\
                         canopy-guest cpu-split {NESTED} --seconds 8 --warmup 1 --fair-cgroup-mode smp --kind nested-fair\n"
                    )),
                    idle_fair = fair_reference(&format!(
                        "canopy-guest cpu-split --group busy:100:2 --group idl:-:2 --seconds 6 --warmup 1 --keep --kind idle-fair\n\
                         canopy-guest cpu-split {FORKING} --seconds 8 --warmup 1 --kind fork-fair\n"
                    )),
                ),
            ),
            ("contract-root", start_root_in_part("")),
            (
                "contract-tree",
                format!(
                    r#"
canopy-guest cpu-split {FLAT} --seconds 8 --warmup 1 --kind flat-canopy
canopy-guest cpu-split {NESTED} --seconds 8 --warmup 1 --kind nested-canopy
canopy-guest report root-after state="$(cat /sys/kernel/sched_ext/state)"
canopy scheduler status --json --interval-ms 500 > /tmp/status.json || true
canopy-guest report status status=@/tmp/status.json
"#
                ),
            ),
            (
                "contract-max",
                r#"
canopy-guest cpu-split --group lim:100:3 --group sib:100:2 --seconds 10 --warmup 1 --keep --kind max-canopy
canopy-guest cpu-split --group par/leaf:100:3 --group sib:100:2 --seconds 10 --warmup 1 --keep --kind max-parent-canopy
canopy-guest report max-after state="$(cat /sys/kernel/sched_ext/state)" lim="$(cat /sys/fs/cgroup/lim/cpu.max)" par="$(cat /sys/fs/cgroup/par/cpu.max)"
canopy scheduler status --json --interval-ms 500 > /tmp/status.json || true
canopy-guest report max-status status=@/tmp/status.json
"#
                .to_string(),
            ),
            (
                "contract-idle",
                r#"
canopy-guest cpu-split --group base:100:2 --seconds 5 --warmup 1 --kind idle-baseline
canopy-guest cpu-split --group busy:100:2 --group idl:-:2 --seconds 8 --warmup 1 --keep --kind idle-beside
canopy scheduler status --json --interval-ms 500 > /tmp/status.json || true
canopy-guest report idle-status status=@/tmp/status.json
canopy-guest cpu-split --group idl:-:2 --seconds 5 --warmup 1 --keep --kind idle-alone
canopy-guest report idle-knob value="$(cat /sys/fs/cgroup/idl/cpu.idle)" state="$(cat /sys/kernel/sched_ext/state)"
"#
                .to_string(),
            ),
            (
                "contract-fork",
                format!(
                    r#"
canopy-guest cpu-split {FORKING} --seconds 8 --warmup 1 --kind fork-canopy
canopy-guest report fork-after state="$(cat /sys/kernel/sched_ext/state)"
canopy scheduler status --json --interval-ms 500 > /tmp/status.json || true
canopy-guest report fork-status status=@/tmp/status.json
"#
                ),
            ),
            ("contract-root-stop", STOP_ROOT_IN_PART.to_string()),
        ];
        crate::scenario("cpu-contract-shares")
            .script(parts_script(&parts))
            .timeout(Duration::from_secs(600))
            .run()
            .map_err(anyhow::Error::from)
    })
}

/// One part of the shared boot, with the fair references and the root's start checked too.
fn contract_part(name: &str) -> anyhow::Result<(Outcome, Outcome)> {
    let outcome = contract_shares_boot()?;
    println!("{}", outcome.summary());
    part(outcome, "contract-root")?;
    Ok((part(outcome, "contract-fair")?, part(outcome, name)?))
}

/// Issue 10 acceptance (a) and (b): under canopy's root scheduler (no policy group), each
/// share within 3 percentage points of the classic `smp` target. The fair scheduler's figures
/// in the same boot are printed as the reference when `CANOPY_VM_FAIR_REFERENCES=1`, not gated:
/// in `smp` mode it missed the nested target by 3.1 points in one run here (q 46.9% for 50%).
#[test]
fn root_tasks_in_cgroups_split_cpu_by_the_weight_tree() -> anyhow::Result<()> {
    let (fair, outcome) = contract_part("contract-tree")?;
    let root = outcome.result("root-after")?;
    assert_eq!(root["state"], "enabled", "the root scheduler died: {root}");
    let mut failures = Vec::new();
    for (kind, target, gated) in [
        ("flat-fair", FLAT_TARGET, false),
        ("nested-fair", NESTED_TARGET, false),
        ("flat-canopy", FLAT_TARGET, true),
        ("nested-canopy", NESTED_TARGET, true),
    ] {
        let split = if gated {
            outcome.result(kind)?
        } else {
            match fair_reference_result(&fair, kind)? {
                Some(split) => split,
                None => continue,
            }
        };
        let measured = shares(split);
        let error = largest_error_points(&measured, &target);
        let relative = measured
            .iter()
            .zip(&target)
            .map(|(m, t)| (m / t - 1.0).abs() * 100.0)
            .fold(0.0, f64::max);
        println!(
            "{kind}: shares {:?} (target {:?}), largest error {error:.2} points ({relative:.1}% of its target), utilization {:.3}, mode {}",
            measured
                .iter()
                .map(|s| format!("{:.3}", s))
                .collect::<Vec<_>>(),
            target
                .iter()
                .map(|s| format!("{:.3}", s))
                .collect::<Vec<_>>(),
            split["utilization"].as_f64().unwrap_or(f64::NAN),
            split["fair_cgroup_mode"]
        );
        if gated && !(error <= 3.0) {
            failures.push(format!("{kind}: largest error {error:.2} points: {split}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Issue 10 acceptance (f), the schedulers' part: a state's ceiling reaches every cgroup below
/// the one a group owns, including cgroups made after the policy loaded. `minimized` gets a
/// BACKGROUND ceiling in `group_policy` (as the controller writes it for a `minimized` state);
/// then `minimized/app/sub` is made and a cyclictest tagged USER_INTERACTIVE runs there: it is
/// clamped (no preempting wakeups, the clamp counter grows). In the root cgroup it preempts.
#[test]
fn a_ceiling_reaches_cgroups_made_below_its_group_after_load() -> anyhow::Result<()> {
    // The group_policy value's last two u32 are ceiling_plus_one and floor_plus_one;
    // BACKGROUND is id 4, so ceiling_plus_one 5.
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/minimized
{start_root}
{GROUP_POLICY_HELPER}
group_policy_set minimized "$(group_policy_value "" "05 00 00 00 00 00 00 00")"
mkdir -p /sys/fs/cgroup/minimized/app/sub
stats() {{ canopy scheduler status --json --interval-ms 10 | tr -d '\n '; }}
sh -c 'echo $$ > /sys/fs/cgroup/minimized/app/sub/cgroup.procs; exec canopy-guest hog --threads 2 --seconds 12' &
sh -c 'echo $$ > /sys/fs/cgroup/minimized/app/sub/cgroup.procs; exec cyclictest -q -t1 -i 2000 -D 4 > /dev/null' &
PROBE=$!
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 5 > /tmp/tag.log 2>&1
sleep 3
canopy-guest report inside status="$(stats)"
wait $PROBE
cyclictest -q -t1 -i 2000 -D 4 > /dev/null &
PROBE=$!
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 5 > /tmp/tag.log 2>&1
sleep 3
canopy-guest report outside status="$(stats)"
wait $PROBE
kill -TERM $ROOT; wait $ROOT || true
"#,
        start_root = start_root_in_part("--config /etc/canopy-sched.json"),
    );
    let outcome = crate::scenario("cpu-contract-ceiling-below")
        .with_debian_tools(&["cyclictest", "bpftool"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            r#"{"default_class":"BACKGROUND"}"#,
            0o644,
        )
        .timeout(Duration::from_secs(240))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let stats = |kind: &str| -> anyhow::Result<serde_json::Value> {
        Ok(outcome.result(kind)?["status"]["stats"].clone())
    };
    let (inside, outside) = (stats("inside")?, stats("outside")?);
    // Every path a preempting-class wakeup takes is counted once.
    let wakeups = |stats: &serde_json::Value| crate::support::preempting_wakeups(stats).0;
    let inside_clamped = inside["class_clamped"].as_u64().unwrap_or(0);
    let inside_wakes = wakeups(&inside);
    let outside_wakes = wakeups(&outside) - inside_wakes;
    println!(
        "two levels below the minimized cgroup: {inside_clamped} clamped lookups, {inside_wakes} \
         preempting wakeups; in the root cgroup: {outside_wakes} preempting wakeups"
    );
    assert!(inside_clamped > 100, "{}", outcome.result("inside")?);
    assert!(
        inside_wakes < 10,
        "a USER_INTERACTIVE task below a BACKGROUND ceiling still woke as a preempting class \
         {inside_wakes} times"
    );
    assert!(
        outside_wakes > 500,
        "outside the minimized tree the task did not preempt ({outside_wakes})"
    );
    Ok(())
}

/// CPU (in CPUs) a group of a split used over its window.
fn cpus_used(split: &serde_json::Value, index: usize) -> f64 {
    split["groups"][index]["cpu_seconds"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / split["window_s"].as_f64().unwrap_or(f64::NAN)
}

/// Issue 10 acceptance (c): `cpu.max 50000 100000` on a cgroup with three hogs beside a busy
/// sibling (two hogs): at most 0.52 CPU over 10 s under canopy's root, and the sibling gets the
/// rest (at least 95% of what it gets beside the same limit under the fair scheduler, in the
/// same boot); the same for a cgroup whose parent holds the limit.
#[test]
fn a_cpu_max_quota_holds_for_the_cgroup_and_below_it() -> anyhow::Result<()> {
    let (fair, outcome) = contract_part("contract-max")?;
    let after = outcome.result("max-after")?;
    assert_eq!(
        after["state"], "enabled",
        "the root scheduler died: {after}"
    );
    println!(
        "canopy stats: {}",
        outcome.result("max-status")?["status"]["stats"]
    );
    let fair = fair.result("max-fair")?;
    let sibling_fair = cpus_used(fair, 1);
    println!(
        "fair: limited {:.3} CPU, sibling {sibling_fair:.3} CPU",
        cpus_used(fair, 0)
    );
    for kind in ["max-canopy", "max-parent-canopy"] {
        let split = outcome.result(kind)?;
        let (limited, sibling) = (cpus_used(split, 0), cpus_used(split, 1));
        println!("{kind}: limited {limited:.3} CPU, sibling {sibling:.3} CPU");
        assert!(
            limited <= 0.52,
            "{kind}: the limited cgroup used {limited:.3} CPU: {split}"
        );
        assert!(
            sibling >= 0.95 * sibling_fair,
            "{kind}: the sibling got {sibling:.3} CPU, under the fair scheduler {sibling_fair:.3}"
        );
    }
    Ok(())
}

/// The cgroup contract for a cgroup that forks: its new tasks and its waking parents start from
/// its own place in vtime (bpf/cpu_tree.bpf.h tree_group_start()), and runs are priced as they
/// start (tree_price_run()), so a cgroup forking one 2 ms job after another in two chains keeps
/// to its cpu.weight beside a cgroup of two hogs: within 3 percentage points of half, as (a).
/// Before both (2026-12-06), every new task started at the front and runs were priced at
/// their stop, when the parent each job's exit woke was runnable: it got 62.4% in one boot
/// (62.1% with four workers). The fair scheduler gives it less than half (31.2-41.3% in four
/// boots here: its jobs wait for a CPU at each fork and exit), printed as the reference with
/// `CANOPY_VM_FAIR_REFERENCES=1`, not gated: the contract is the weight, an upper bound for a
/// cgroup that cannot keep both CPUs busy.
#[test]
fn a_forking_cgroup_keeps_to_its_weight_beside_a_hog_cgroup() -> anyhow::Result<()> {
    let (fair, outcome) = contract_part("contract-fork")?;
    let after = outcome.result("fork-after")?;
    assert_eq!(
        after["state"], "enabled",
        "the root scheduler died: {after}"
    );
    println!(
        "canopy stats: {}",
        outcome.result("fork-status")?["status"]["stats"]
    );
    if let Some(split) = fair_reference_result(&fair, "fork-fair")? {
        println!("fork-fair: shares {:?}", shares(split));
    }
    let split = outcome.result("fork-canopy")?;
    let measured = shares(split);
    let error = largest_error_points(&measured, &[0.5, 0.5]);
    println!(
        "fork-canopy: shares {measured:?}, largest error {error:.2} points, utilization {:.3}",
        split["utilization"].as_f64().unwrap_or(f64::NAN)
    );
    assert!(
        error <= 3.0,
        "the forking cgroup's split is {error:.2} points off half: {split}"
    );
    Ok(())
}

/// Issue 10 acceptance (d): a cgroup with `cpu.idle 1` and two hogs, beside a cgroup with two
/// hogs, gets under 2% of the CPU under canopy's root; alone it gets at least 95% of what a
/// non-idle cgroup with two hogs gets alone in the same boot (the emulator keeps even that below
/// 100%), and the root survives: an idle-cgroup task that never ran would trip the kernel's
/// watchdog (the starvation guard in `bpf/own_dispatch.bpf.h` prevents it). The fair
/// scheduler's figure beside the busy cgroup is printed as the reference when
/// `CANOPY_VM_FAIR_REFERENCES=1`.
#[test]
fn an_idle_cgroup_runs_only_when_nothing_else_wants_the_cpu() -> anyhow::Result<()> {
    let (fair, outcome) = contract_part("contract-idle")?;
    let knob = outcome.result("idle-knob")?;
    assert_eq!(knob["value"], 1, "cpu.idle was not in force: {knob}");
    assert_eq!(knob["state"], "enabled", "the root scheduler died: {knob}");
    let idle_share = |outcome: &Outcome, kind: &str| -> anyhow::Result<f64> {
        Ok(shares(outcome.result(kind)?)
            .get(1)
            .copied()
            .unwrap_or(f64::NAN))
    };
    let utilization = |kind: &str| -> anyhow::Result<f64> {
        Ok(outcome.result(kind)?["utilization"]
            .as_f64()
            .unwrap_or(f64::NAN))
    };
    let fair = match fair_reference_result(&fair, "idle-fair")? {
        Some(_) => Some(idle_share(&fair, "idle-fair")?),
        None => None,
    };
    let beside = idle_share(&outcome, "idle-beside")?;
    let (baseline, alone) = (utilization("idle-baseline")?, utilization("idle-alone")?);
    // The busy cgroup's hogs keep their cids, so the starvation guard's short slices are most
    // of what the idle cgroup gets beside them (without the guard one of its hogs waited 45 s
    // for its first run here and the watchdog ejected the root, 2026-12-03).
    let guard_slices = &outcome.result("idle-status")?["status"]["stats"]["idle_guard_slices"];
    println!("starvation guard slices given to the idle cgroup's tasks: {guard_slices}");
    let under_fair = fair.map_or(String::new(), |fair| {
        format!(", {:.2}% under the fair scheduler", fair * 100.0)
    });
    println!(
        "idle cgroup beside a busy one: {:.2}% of the CPU time under canopy{under_fair}; alone: \
         utilization {alone:.3} against {baseline:.3} for a non-idle cgroup alone",
        beside * 100.0,
    );
    assert!(
        beside < 0.02,
        "the idle cgroup got {:.2}% beside a busy one: {}",
        beside * 100.0,
        outcome.result("idle-beside")?
    );
    assert!(
        alone >= 0.95 * baseline,
        "alone, the idle cgroup used {alone:.3} of the CPUs, a non-idle one {baseline:.3}"
    );
    Ok(())
}

/// Issue 10 Deliver 3: a policy group's terms hold for cgroups without a child scheduler
/// (`scheduler = "none"`), over the cgroups' own knobs, in acceptance (a)'s shape (three
/// cgroups, two hogs each). `pw/a` at cpu.weight 100 has a group with weight 300, `pw/b` at
/// cpu.weight 200 a group that sets no weight, `pw/c` at cpu.weight 100 no group: the policy's
/// 300 against b's and c's own weights, 1/2, 1/3, 1/6. Then a's entry is rewritten to weight
/// 100 the way the daemon rewrites it on a state change (`group_policy`, then
/// `group_policy_version`): 1/4, 1/2, 1/4. Last, `capped` (a group with `cap_pct` 25 = 0.5 of
/// the 2 CPUs, no cpu.max) with three hogs beside a busy sibling: at most 0.52 CPU. VM cost:
/// about 30 s of measurement.
#[test]
fn policy_group_terms_hold_over_the_knobs_without_a_child_scheduler() -> anyhow::Result<()> {
    // The group_policy value's first u32 is the weight: 100 = 0x64.
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/pw /sys/fs/cgroup/capped /sys/fs/cgroup/sib
echo +cpu > /sys/fs/cgroup/pw/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/pw/a /sys/fs/cgroup/pw/b /sys/fs/cgroup/pw/c
{start_root}
{GROUP_POLICY_HELPER}
canopy-guest cpu-split --group pw/a:100:2 --group pw/b:200:2 --group pw/c:100:2 --seconds 8 --warmup 1 --keep --kind policy-weight
group_policy_set pw/a "$(group_policy_value "64 00 00 00" "")"
bpftool map update pinned /sys/fs/bpf/canopy/group_policy_version key hex 00 00 00 00 value hex 00 10 00 00 00 00 00 00
canopy-guest cpu-split --group pw/a:100:2 --group pw/b:200:2 --group pw/c:100:2 --seconds 8 --warmup 1 --keep --kind rewritten-weight
canopy-guest cpu-split --group capped:100:3 --group sib:100:2 --seconds 8 --warmup 1 --keep --kind policy-cap
canopy-guest report policy-after state="$(cat /sys/kernel/sched_ext/state)" capped_max="$(cat /sys/fs/cgroup/capped/cpu.max)"
kill -TERM $ROOT; wait $ROOT || true
cat /tmp/root.log
"#,
        start_root = start_root_in_part("--config /etc/canopy-sched.json"),
    );
    let outcome = crate::scenario("cpu-contract-policy-terms")
        .with_debian_tools(&["bpftool"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            r#"{"groups":[{"cgroup":"pw/a","weight":300},{"cgroup":"pw/b"},{"cgroup":"capped","cap_pct":25}]}"#,
            0o644,
        )
        .timeout(Duration::from_secs(300))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let after = outcome.result("policy-after")?;
    assert_eq!(
        after["state"], "enabled",
        "the root scheduler died: {after}"
    );
    assert_eq!(
        after["capped_max"], "max 100000",
        "the cap must come from the policy, not from cpu.max: {after}"
    );
    let mut failures = Vec::new();
    for (kind, target) in [
        ("policy-weight", [1.0 / 2.0, 1.0 / 3.0, 1.0 / 6.0]),
        ("rewritten-weight", [0.25, 0.5, 0.25]),
    ] {
        let split = outcome.result(kind)?;
        let measured = shares(split);
        let error = largest_error_points(&measured, &target);
        println!(
            "{kind}: shares {measured:.3?} (target {target:.3?}), largest error {error:.2} points"
        );
        if !(error <= 3.0) {
            failures.push(format!("{kind}: largest error {error:.2} points: {split}"));
        }
    }
    let cap = outcome.result("policy-cap")?;
    let (capped, sibling) = (cpus_used(cap, 0), cpus_used(cap, 1));
    println!("policy-cap: capped {capped:.3} CPU (cap 0.5), sibling {sibling:.3} CPU");
    if !(capped <= 0.52) {
        failures.push(format!(
            "policy-cap: the capped cgroup used {capped:.3} CPU: {cap}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The guest script of issue 10 (f) with the daemon (part `ceiling-moves` of the daemon run
/// `daemon_scx.rs` shares, whose policy has the `app` group and the `scopes` group owning
/// `apps/*.scope` with a `minimized` state of ceiling BACKGROUND).
pub fn ceiling_moves_part() -> String {
    use crate::support::class_ids::{BACKGROUND, USER_INTERACTIVE};
    let probe = |to: &str, kind: &str| {
        format!(
            "canopy-guest move-probe --pid $BUSY --pid $TICK --comm-prefix ui- --to {to} \
             --to-class {BACKGROUND} --back app --back-class {USER_INTERACTIVE} --rounds 10 \
             --kind {kind}"
        )
    };
    format!(
        r#"
mkdir -p /sys/fs/cgroup/app /sys/fs/cgroup/apps/early.scope
{minimize_early}
# made after the policy loaded: a cgroup below a minimized scope, and a new scope
mkdir /sys/fs/cgroup/apps/early.scope/sub /sys/fs/cgroup/apps/late.scope
{minimize_late}
{start_probes}
{below}
{late}
kill $BUSY $TICK
"#,
        minimize_early = minimize_when_seen("apps/early.scope"),
        minimize_late = minimize_when_seen("apps/late.scope"),
        start_probes = start_ui_probes("app", true),
        below = probe("apps/early.scope/sub", "below-minimized"),
        late = probe("apps/late.scope", "late-scope"),
    )
}

/// Issue 10 acceptance (f) with the daemon: a group owning `apps/*.scope` in state `minimized`
/// (ceiling BACKGROUND). Two USER_INTERACTIVE threads (one busy, one waking every 2 ms) in an
/// unowned cgroup are moved, 10 round trips each, (1) into `apps/early.scope/sub`, a cgroup
/// made below a minimized scope after the policy loaded, and (2) into `apps/late.scope`, a
/// scope made after load and minimized through the control socket. After every move each
/// thread's first class decision (read from the schedulers' move log) must be BACKGROUND, and
/// USER_INTERACTIVE again after the move back.
#[test]
fn a_thread_moved_below_a_minimized_scope_is_clamped_at_its_next_decision() -> anyhow::Result<()> {
    let outcome = crate::daemon_scx::moves_part("ceiling-moves")?;
    for kind in ["below-minimized", "late-scope"] {
        let probe = outcome.result(kind)?;
        for direction in ["to", "back"] {
            let d = &probe[direction];
            println!(
                "{kind} {direction}: followed {}, missed {}, wrong class {}, runnable move -> decided µs (worst) {}",
                d["followed"], d["missed"], d["wrong_class"], d["max_runnable_move_to_decided_us"]
            );
            assert_eq!(d["missed"], 0, "{kind} {direction}: {d}");
            assert_eq!(
                d["wrong_class"].as_array().map(Vec::len),
                Some(0),
                "{kind} {direction}: {d}"
            );
            assert_eq!(d["followed"], 20, "{kind} {direction}: {d}");
        }
    }
    Ok(())
}

/// Issue 10 acceptance (g): 5,000 mkdir / move / rmdir cycles of scopes a group owns under the
/// daemon in scx mode, at `canopy-guest cgroup-churn`'s pace (direct syscalls). Every scope
/// gets its `group_policy` entry from the root at mkdir (the daemon then writes the group's
/// terms over it) and loses it at rmdir, so the map ends the size it started; after the churn
/// a new minimized scope still clamps a USER_INTERACTIVE thread moved into it, and a canopy
/// child still attaches on a new cgroup of a group with a child scheduler.
#[test]
fn group_policy_entries_go_with_their_cgroups_through_mkdir_rmdir_churn() -> anyhow::Result<()> {
    const GROUPS: &str = r#"
[groups.app]
path = "app"
scheduler = "none"

[groups.kids]
path = "kids"

[groups.churn]
path = "churn/*.scope"
scheduler = "none"
[groups.churn.states.minimized]
ceiling = "BACKGROUND"
"#;
    const CYCLES: u32 = 5000;
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/app /sys/fs/cgroup/churn
{start_daemon}
entries() {{ bpftool -j map dump pinned /sys/fs/bpf/canopy/group_policy; }}
count() {{ entries | grep -o '"key"' | wc -l; }}
n_before=$(count)
canopy-guest report before entries="$(entries)"
sleep 600 & MOVER=$!
t0=$(cut -d' ' -f1 /proc/uptime)
# Direct syscalls, no forks (the shell's loop took about 32 ms a cycle under TCG, 162 s in
# all). At this pace the daemon's writes come late, many after the scope's rmdir; the root
# makes and deletes the entries at mkdir and rmdir, so a late write fails (ENOENT, counted as
# `groups_gone`) instead of leaving an entry behind.
canopy-guest cgroup-churn --cycles {CYCLES} --parent churn --suffix .scope --pid $MOVER --back app
t1=$(cut -d' ' -f1 /proc/uptime)
# the daemon works through the queued cgroup events; wait until the map is back or 120 s of
# guest time pass (a dump of thousands of entries takes seconds, so the bound is a time)
deadline=$(( $(cut -d. -f1 /proc/uptime) + 120 ))
while n_after=$(count); [ $n_after -ne $n_before ] && [ $(cut -d. -f1 /proc/uptime) -lt $deadline ]; do usleep 500000; done
t2=$(cut -d' ' -f1 /proc/uptime)
# the entries themselves only when few (thousands would flood the console)
if [ $n_after -le 20 ]; then entries > /tmp/entries.json; else echo '"too many to print"' > /tmp/entries.json; fi
canopy-guest report churned cycles={CYCLES} churn_s="$t0 $t1 $t2" keys_before=$n_before keys_after=$n_after entries=@/tmp/entries.json status="$(canopy status --json | tr -d '\n')"
# clamping still works: a scope made now, minimized, clamps a thread moved into it
mkdir /sys/fs/cgroup/churn/final.scope
{minimize_final}
{start_probe}
canopy-guest move-probe --pid $BUSY --comm-prefix ui- --to churn/final.scope --to-class 4 --back app --back-class 0 --rounds 3
kill $BUSY $MOVER
# child attaches still work: a canopy child on a cgroup made now
mkdir /sys/fs/cgroup/kids
i=0; until ls /sys/kernel/sched_ext/root/sub 2>/dev/null | grep -q "sub-$(stat -c %i /sys/fs/cgroup/kids)" || [ $i -ge 100 ]; do usleep 100000; i=$((i+1)); done
canopy-guest report kids kids_id=$(stat -c %i /sys/fs/cgroup/kids) subs="$(ls /sys/kernel/sched_ext/root/sub 2>/dev/null | tr '\n' ' ')"
kill -TERM $DAEMON; wait $DAEMON
tail -n 20 /tmp/daemon.log
"#,
        start_daemon = crate::support::start_daemon("scx"),
        minimize_final = minimize_when_seen("churn/final.scope"),
        start_probe = start_ui_probes("app", false),
    );
    let outcome = crate::scenario("cpu-contract-churn")
        .with_debian_tools(&["bpftool"])
        .with_file_contents(
            "/etc/canopy/policy.toml",
            format!("{UI_PROBE_POLICY_HEAD}{GROUPS}"),
            0o644,
        )
        .timeout(Duration::from_secs(400))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let entries = |kind: &str| -> anyhow::Result<usize> {
        Ok(outcome.result(kind)?["entries"]
            .as_array()
            .map_or(usize::MAX, Vec::len))
    };
    let churn = outcome.result("cgroup-churn")?;
    println!(
        "cgroup-churn: {} cycles in {} s, {} rmdir retries",
        churn["cycles"], churn["seconds"], churn["rmdir_retries"]
    );
    let churned = outcome.result("churned")?;
    // `count` counts "key" in the dump: twice per entry with BTF (the raw key and the
    // formatted one), the same way before and after.
    let keys = |name: &str| churned[name].as_u64();
    let (before, after) = (entries("before")?, keys("keys_after"));
    assert!(after.is_some(), "no key count after the churn: {churned}");
    println!(
        "group_policy: {before} entries before; \"key\" {} times in the dump before, {after:?} after {CYCLES} mkdir/move/rmdir cycles \
         (guest uptime at the churn's start, its end, and when the map was back: {}); daemon counters {}",
        churned["keys_before"], churned["churn_s"], churned["status"]["counters"]
    );
    assert_eq!(
        keys("keys_before"),
        after,
        "group_policy keys (\"key\" in the dump) before and after the churn: {churned}"
    );
    let probe = outcome.result("move-probe")?;
    for direction in ["to", "back"] {
        let d = &probe[direction];
        assert_eq!(d["missed"], 0, "{direction}: {d}");
        assert_eq!(
            d["wrong_class"].as_array().map(Vec::len),
            Some(0),
            "{direction}: {d}"
        );
        assert_eq!(d["followed"], 3, "{direction}: {d}");
    }
    let kids = outcome.result("kids")?;
    assert!(
        kids["subs"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("sub-{}", kids["kids_id"])),
        "no canopy child on a cgroup made after the churn: {kids}"
    );
    Ok(())
}
