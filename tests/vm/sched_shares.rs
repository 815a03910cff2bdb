// SPDX-License-Identifier: GPL-2.0-only
//! Scheduler scenarios: how the root divides CPU between child schedulers: by weight (200:100,
//! 400:100), work-conserving when a child idles, bounded by a guarantee or a cap, and following
//! a `group_policy` weight rewritten while the child stays attached.
use std::time::Duration;

use crate::support::{
    children_config, split_ratio, start_root_with_children, SHELL_HELPERS, STOP_ROOT,
};

/// Issue 4 acceptance (a): canopy_child on two cgroups weighted 200:100 (two hogs each) and
/// 400:100 (four hogs each); the root divides CPU by weight within 3% (cpu.stat, 10 s).
#[test]
fn children_split_cpu_by_weight() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb
echo 200 > /sys/fs/cgroup/ta/cpu.weight
echo 100 > /sys/fs/cgroup/tb/cpu.weight
{start}
(sleep 5; canopy scheduler status --json --interval-ms 2000 > /tmp/status.json) &
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 10 --warmup 1 --keep --kind split-200-100
canopy-guest report root-status status=@/tmp/status.json
canopy-guest cpu-split --group ta:400:4 --group tb:100:4 --seconds 10 --warmup 1 --keep --kind split-400-100
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = crate::scenario("sched-weight-split")
        .with_file_contents(
            "/etc/canopy-sched.json",
            children_config(&["ta", "tb"]),
            0o644,
        )
        .timeout(Duration::from_secs(240))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let (r2, u2) = split_ratio(&outcome, "split-200-100")?;
    let (r4, u4) = split_ratio(&outcome, "split-400-100")?;
    println!("canopy children, 200:100 with 2+2 hogs: {r2:.3}:1 (utilization {u2:.3})");
    println!("canopy children, 400:100 with 4+4 hogs: {r4:.3}:1 (utilization {u4:.3})");
    // the root's own accounting (members map, read by `canopy scheduler status --json`)
    let status = &outcome.result("root-status")?["status"];
    let member_share = |cgroup: &str| -> f64 {
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["cgroup"].as_str().is_some_and(|c| c.ends_with(cgroup)))
            .and_then(|m| m["share"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let (ta_share, tb_share) = (member_share("/ta"), member_share("/tb"));
    println!(
        "root accounting over 2 s: ta {:.1}%, tb {:.1}%",
        ta_share * 100.0,
        tb_share * 100.0
    );
    assert!(
        (ta_share - 2.0 / 3.0).abs() <= 0.05,
        "root accounting: {status}"
    );
    assert_eq!(
        status["schedulers"].as_array().map(|a| a.len()),
        Some(3),
        "{status}"
    );
    let stopped = outcome.result("root-stopped")?;
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    assert!(
        (r2 / 2.0 - 1.0).abs() <= 0.03,
        "200:100 split {r2:.3}:1 is not within 3% of 2:1"
    );
    assert!(
        (r4 / 4.0 - 1.0).abs() <= 0.03,
        "400:100 split {r4:.3}:1 is not within 3% of 4:1"
    );
    Ok(())
}

/// Issue 4 acceptance (b), work conservation: with child B idle, child A's two hogs get at
/// least 90% of both CPUs; when B's hogs start, the 2:1 split is back within 1 s.
#[test]
fn idle_child_capacity_goes_to_busy_child() -> anyhow::Result<()> {
    let script = format!(
        r#"
{SHELL_HELPERS}
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb
echo 200 > /sys/fs/cgroup/ta/cpu.weight
echo 100 > /sys/fs/cgroup/tb/cpu.weight
{start}
hog_in ta; hog_in ta
# B's hogs exist but are stopped: B is idle until SIGCONT wakes both at once
hog_in tb; B1=$!; hog_in tb; B2=$!
sleep 1
kill -STOP $B1 $B2
sleep 1
a0=$(usage ta); t0=$(now)
sleep 3
set -- $(usage_ab); a1=$1; b1=$2; t1=$(now)
canopy-guest report b-idle a_usec=$((a1 - a0)) t0=$t0 t1=$t1
kill -CONT $B1 $B2
sleep 1
set -- $(usage_ab); a2=$1; b2=$2; t2=$(now)
sleep 1
set -- $(usage_ab); a3=$1; b3=$2; t3=$(now)
sleep 2
set -- $(usage_ab); a4=$1; b4=$2; t4=$(now)
canopy-guest report b-woke first_a=$((a2 - a1)) first_b=$((b2 - b1)) second_a=$((a3 - a2)) second_b=$((b3 - b2)) then_a=$((a4 - a2)) then_b=$((b4 - b2)) t1=$t1 t2=$t2 t3=$t3 t4=$t4
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = crate::scenario("sched-work-conserving")
        .with_file_contents(
            "/etc/canopy-sched.json",
            children_config(&["ta", "tb"]),
            0o644,
        )
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let idle = outcome.result("b-idle")?;
    let idle_util = num(idle, "a_usec") / 1e6 / (num(idle, "t1") - num(idle, "t0")) / 2.0;
    let woke = outcome.result("b-woke")?;
    let first_ratio = num(woke, "first_a") / num(woke, "first_b");
    let second_ratio = num(woke, "second_a") / num(woke, "second_b");
    let then_ratio = num(woke, "then_a") / num(woke, "then_b");
    println!("B idle: A used {:.1}% of 2 CPUs", idle_util * 100.0);
    println!(
        "B woke (SIGCONT): second 0-1 {first_ratio:.3}:1, second 1-2 {second_ratio:.3}:1, \
         seconds 1-4 {then_ratio:.3}:1 (target 2:1)"
    );
    assert!(
        idle_util >= 0.90,
        "A got only {:.1}% of both CPUs while B was idle",
        idle_util * 100.0
    );
    assert!(
        (second_ratio / 2.0 - 1.0).abs() <= 0.05,
        "1-2 s after B woke: {second_ratio:.3}:1"
    );
    assert!(
        (then_ratio / 2.0 - 1.0).abs() <= 0.03,
        "1-4 s after B woke: {then_ratio:.3}:1"
    );
    Ok(())
}

/// Issue 4 deliverable: optional guarantee and cap per child. A child capped at 25% stays near
/// 25% against an equal-weight busy sibling; a child with weight 100 and a 50% guarantee gets
/// about half the machine against a weight-400 sibling (its weight alone would give it 20%).
/// Issue 10 Deliver 6: each second's share of the machine is printed (cpu.stat sampled each
/// second; the share is the cgroup's CPU over the interval's capacity), and `canopy scheduler
/// status` shows the capped child's target as its cap.
#[test]
fn cap_and_guarantee_bound_a_childs_share() -> anyhow::Result<()> {
    let config = r#"{"groups":[
        {"cgroup":"ta","weight":100,"admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"tb","weight":100,"cap_pct":25,"admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"tc","weight":100,"guarantee_pct":50,"admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"td","weight":400,"admit":["canopy_child"],"attach_canopy_child":true}]}"#;
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb /sys/fs/cgroup/tc /sys/fs/cgroup/td
{start}
(sleep 4; canopy scheduler status --json --interval-ms 2000 > /tmp/status.json) &
canopy-guest cpu-split --group tb:-:2 --group ta:-:2 --seconds 8 --warmup 1 --sample-ms 1000 --keep --kind capped
canopy-guest report capped-status status=@/tmp/status.json
canopy-guest cpu-split --group tc:-:2 --group td:-:2 --seconds 8 --warmup 1 --sample-ms 1000 --keep --kind guaranteed
{STOP_ROOT}
"#,
        start = start_root_with_children(4)
    );
    let outcome = crate::scenario("sched-cap-guarantee")
        .with_file_contents("/etc/canopy-sched.json", config, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let first_share = |kind: &str| -> anyhow::Result<f64> {
        let split = outcome.result(kind)?;
        Ok(split["groups"][0]["share"].as_f64().unwrap_or(f64::NAN))
    };
    let (capped, guaranteed) = (first_share("capped")?, first_share("guaranteed")?);
    println!(
        "cap 25%: share {:.1}%; guarantee 50% at weight 100 vs 400: share {:.1}%",
        capped * 100.0,
        guaranteed * 100.0
    );
    assert!(
        (capped - 0.25).abs() <= 0.03,
        "capped child got {:.1}%",
        capped * 100.0
    );
    assert!(
        guaranteed >= 0.47,
        "guaranteed child got {:.1}%",
        guaranteed * 100.0
    );
    let (capped_seconds, guaranteed_seconds) = (
        machine_share_per_interval(outcome.result("capped")?, 0),
        machine_share_per_interval(outcome.result("guaranteed")?, 0),
    );
    let percents = |shares: &[f64]| -> Vec<String> {
        shares.iter().map(|s| format!("{:.1}", s * 100.0)).collect()
    };
    println!(
        "per second: cap 25%: {:?}; guarantee 50%: {:?}",
        percents(&capped_seconds),
        percents(&guaranteed_seconds)
    );
    // `canopy status` shows the capped child's target as its cap, not its weight share (50%).
    let status = &outcome.result("capped-status")?["status"];
    let tb_target = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["cgroup"].as_str().is_some_and(|c| c.ends_with("/tb")))
        .and_then(|m| m["target_share"].as_f64())
        .unwrap_or(f64::NAN);
    println!(
        "canopy status: the capped child's target {:.1}%",
        tb_target * 100.0
    );
    assert!((tb_target - 0.25).abs() < 1e-9, "{status}");
    // Printed, not yet asserted: issue 10 asks for 1 percentage point per second, and a gate
    // needs its margin from at least five runs on a busy host (not yet taken).
    Ok(())
}

/// Group @index's share of the machine (CPU time over interval x CPUs) in each interval of a
/// split sampled with `--sample-ms`.
fn machine_share_per_interval(split: &serde_json::Value, index: usize) -> Vec<f64> {
    let cpus = split["cpus"].as_f64().unwrap_or(f64::NAN);
    let mut previous_s = 0.0;
    split["series"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|sample| {
            let t_s = sample["t_s"].as_f64().unwrap_or(f64::NAN);
            let usec = sample["usage_usec"][index].as_f64().unwrap_or(f64::NAN);
            let share = usec / 1e6 / ((t_s - previous_s) * cpus);
            previous_s = t_s;
            share
        })
        .collect()
}

/// A group's share terms follow its current state while its child stays attached: the daemon
/// rewrites `group_policy` when a state changes, and the root picks the new weight up within
/// one accounting window (100 ms), without re-attaching the child.
#[test]
fn a_rewritten_group_weight_reaches_the_attached_child() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb
{start}
hog_in() {{ sh -c "echo \$\$ > /sys/fs/cgroup/$1/cgroup.procs; exec canopy-guest hog --threads 2 --seconds 8" & }}
hog_in ta; hog_in tb
sleep 1
key=$(printf '%016x' $(stat -c %i /sys/fs/cgroup/ta) | sed 's/../& /g' | awk '{{for(i=8;i>=1;i--) printf "%s ", $i}}')
set -- $(bpftool -j map lookup pinned /sys/fs/bpf/canopy/group_policy key hex $key | sed 's/.*"value":\[//; s/\].*//; s/"//g; s/,/ /g; s/0x//g')
shift 4
bpftool map update pinned /sys/fs/bpf/canopy/group_policy key hex $key value hex 90 01 00 00 "$@"
sleep 1
canopy scheduler status --json --interval-ms 2000 > /tmp/status.json
canopy-guest report after status=@/tmp/status.json
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = crate::scenario("sched-terms-follow")
        .with_debian_tools(&["bpftool"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            children_config(&["ta", "tb"]),
            0o644,
        )
        .timeout(Duration::from_secs(150))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let status = &outcome.result("after")?["status"];
    let member = |cgroup: &str| {
        status["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["cgroup"].as_str().is_some_and(|c| c.ends_with(cgroup)))
            .cloned()
            .unwrap_or_default()
    };
    let (ta, tb) = (member("/ta"), member("/tb"));
    println!(
        "after the rewrite: ta weight {} share {:.3}, tb weight {} share {:.3}",
        ta["weight"],
        ta["share"].as_f64().unwrap_or(f64::NAN),
        tb["weight"],
        tb["share"].as_f64().unwrap_or(f64::NAN)
    );
    assert_eq!(ta["weight"], 400, "{status}");
    let ratio = ta["share"].as_f64().unwrap_or(0.0) / tb["share"].as_f64().unwrap_or(1.0);
    assert!(
        (ratio / 4.0 - 1.0).abs() <= 0.15,
        "400:100 over 2 s measured {ratio:.2}:1: {status}"
    );
    Ok(())
}
