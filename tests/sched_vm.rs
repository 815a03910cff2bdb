// SPDX-License-Identifier: GPL-2.0-only
//! VM scenarios for canopy's BPF schedulers (issue 4's acceptance list, and scenario (b) of
//! issue 3). Each boots Debian's sched_ext kernel with the `canopy` binary, drives the loader
//! through the hidden `canopy scheduler ...` commands and asserts on CANOPY-RESULT objects.
//! The guest's serial log is in target/vm-logs/<scenario>-*.log.
use std::time::Duration;

use canopy_vmtest::Scenario;

fn scenario(name: &str) -> Scenario {
    Scenario::new(name)
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .timeout(Duration::from_secs(150))
}

/// Waits (in the guest) until `canopy scheduler run` reports the root enabled.
const WAIT_ROOT: &str = r#"
for i in $(seq 1 300); do
  grep -q 'root scheduler enabled' /tmp/root.log 2>/dev/null && break
  if ! kill -0 $ROOT 2>/dev/null; then cat /tmp/root.log; exit 1; fi
  sleep 0.1
done
"#;

/// The root scheduler loads through the loader, runs a 10 s CPU load, unloads cleanly, and the
/// kernel logs the unregistration (issue 3 scenario (b), issue 4 deliverable 2).
#[test]
fn root_scheduler_loads_runs_a_hog_and_unloads() -> anyhow::Result<()> {
    let script = format!(
        r#"
canopy scheduler run > /tmp/root.log 2>&1 &
ROOT=$!
{WAIT_ROOT}
canopy-guest report root-enabled state="$(cat /sys/kernel/sched_ext/state)" ops="$(cat /sys/kernel/sched_ext/root/ops)"
start=$(cut -d' ' -f1 /proc/uptime)
canopy-guest hog --threads 2 --seconds 10
end=$(cut -d' ' -f1 /proc/uptime)
canopy-guest report hog-done state="$(cat /sys/kernel/sched_ext/state)" start=$start end=$end
canopy scheduler status --json --interval-ms 500 > /tmp/status.json || true
kill -TERM $ROOT; wait $ROOT || true
cat /tmp/root.log
canopy-guest report root-unloaded state="$(cat /sys/kernel/sched_ext/state)" dmesg="$(dmesg | grep 'sched_ext' | tail -n 4 | tr '\n' '|')"
"#
    );
    let outcome = scenario("sched-root-load").script(script).run()?;
    println!("{}", outcome.summary());
    let enabled = outcome.result("root-enabled")?;
    assert_eq!(enabled["state"], "enabled", "{enabled}");
    assert_eq!(enabled["ops"], "canopy_root", "{enabled}");
    let hog = outcome.result("hog-done")?;
    assert_eq!(hog["state"], "enabled", "the root died under load: {hog}");
    let unloaded = outcome.result("root-unloaded")?;
    assert_eq!(unloaded["state"], "disabled", "{unloaded}");
    let dmesg = unloaded["dmesg"].as_str().unwrap_or_default();
    assert!(
        dmesg.contains("unregistered from user space"),
        "no unregistration logged: {dmesg}"
    );
    Ok(())
}

/// A scheduler config with canopy_child admitted and attached on each named cgroup (weights
/// follow cpu.weight).
fn children_config(groups: &[&str]) -> String {
    let groups: Vec<String> = groups
        .iter()
        .map(|g| {
            format!(r#"{{"cgroup":"{g}","admit":["canopy_child"],"attach_canopy_child":true}}"#)
        })
        .collect();
    format!(r#"{{"groups":[{}]}}"#, groups.join(","))
}

/// Starts the root with /etc/canopy-sched.json and waits for `children` child schedulers.
fn start_root_with_children(children: usize) -> String {
    format!(
        r#"
canopy scheduler run --config /etc/canopy-sched.json > /tmp/root.log 2>&1 &
ROOT=$!
{WAIT_ROOT}
for i in $(seq 1 300); do
  [ "$(grep -c 'child scheduler canopy_child enabled' /tmp/root.log)" -ge {children} ] && break
  sleep 0.1
done
cat /tmp/root.log
"#
    )
}

const STOP_ROOT: &str = r#"
canopy scheduler status --interval-ms 500 || true
kill -TERM $ROOT; wait $ROOT || true
cat /tmp/root.log
canopy-guest report root-stopped state="$(cat /sys/kernel/sched_ext/state)" log="$(tr '\n' '|' < /tmp/root.log)"
"#;

fn split_ratio(outcome: &canopy_vmtest::Outcome, kind: &str) -> anyhow::Result<(f64, f64)> {
    let split = outcome.result(kind)?;
    let ratio = split["ratio"].as_f64().unwrap_or(f64::NAN);
    let utilization = split["utilization"].as_f64().unwrap_or(f64::NAN);
    Ok((ratio, utilization))
}

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
    let outcome = scenario("sched-weight-split")
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

/// Guest shell helpers: a cgroup's usage_usec, uptime in seconds, and a hog started in a cgroup.
const SHELL_HELPERS: &str = r#"
usage() { grep usage_usec /sys/fs/cgroup/$1/cpu.stat | cut -d' ' -f2; }
# both groups' usage_usec read by one process, so the two samples are taken together
usage_ab() { grep -h usage_usec /sys/fs/cgroup/ta/cpu.stat /sys/fs/cgroup/tb/cpu.stat | cut -d' ' -f2 | tr '\n' ' '; }
now() { cut -d' ' -f1 /proc/uptime; }
hog_in() { sh -c "echo \$\$ > /sys/fs/cgroup/$1/cgroup.procs; exec canopy-guest hog --threads 1" & }
"#;

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
    let outcome = scenario("sched-work-conserving")
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

/// Issue 4 acceptance (e), admission: the foreign fixture `foreign_fifo` is refused on a cgroup
/// whose policy admits only canopy_child (errno + log line), and admitted where the policy
/// names it, where it then gets CPU by its weight (200 against canopy_child's 100).
#[test]
fn foreign_child_is_admitted_only_where_the_policy_names_it() -> anyhow::Result<()> {
    let config = r#"{"groups":[
        {"cgroup":"ta","admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"tf","admit":["foreign_fifo"]},
        {"cgroup":"tg","admit":["canopy_child"]}]}"#;
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tf /sys/fs/cgroup/tg
echo 100 > /sys/fs/cgroup/ta/cpu.weight
echo 200 > /sys/fs/cgroup/tf/cpu.weight
{start}
if canopy scheduler child --cgroup tg --foreign-fixture --seconds 1 > /tmp/refused.log 2>&1; then status=0; else status=$?; fi
canopy-guest report refused-attach status=$status output="$(tr '\n' '|' < /tmp/refused.log)"
canopy scheduler child --cgroup tf --foreign-fixture > /tmp/fixture.log 2>&1 &
FIXTURE=$!
for i in $(seq 1 300); do grep -q 'enabled on' /tmp/fixture.log && break; sleep 0.1; done
cat /tmp/fixture.log
canopy-guest report admitted-attach output="$(tr '\n' '|' < /tmp/fixture.log)" sysfs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')"
canopy-guest cpu-split --group tf:200:2 --group ta:100:2 --seconds 8 --warmup 1 --keep --kind foreign-split
kill -TERM $FIXTURE; wait $FIXTURE || true
cat /tmp/fixture.log
{STOP_ROOT}
"#,
        start = start_root_with_children(1)
    );
    let outcome = scenario("sched-admission")
        .with_file_contents("/etc/canopy-sched.json", config, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let refused = outcome.result("refused-attach")?;
    println!("refused attach: {refused}");
    assert_ne!(
        refused["status"], 0,
        "foreign_fifo attached where the policy does not admit it: {refused}"
    );
    let stopped = outcome.result("root-stopped")?;
    let root_log = stopped["log"].as_str().unwrap_or_default();
    assert!(
        root_log.contains("refused sub-scheduler foreign_fifo on /tg"),
        "the root did not log the refusal: {root_log}"
    );
    assert!(
        root_log.contains("admitted sub-scheduler foreign_fifo on /tf"),
        "{root_log}"
    );
    let admitted = outcome.result("admitted-attach")?;
    assert!(
        admitted["output"]
            .as_str()
            .unwrap_or_default()
            .contains("foreign_fifo enabled"),
        "{admitted}"
    );
    let (ratio, utilization) = split_ratio(&outcome, "foreign-split")?;
    println!(
        "foreign_fifo (200) : canopy_child (100) = {ratio:.3}:1, utilization {utilization:.3}"
    );
    assert!(
        (ratio / 2.0 - 1.0).abs() <= 0.05,
        "foreign child split {ratio:.3}:1 is not within 5% of 2:1"
    );
    Ok(())
}

/// Issue 4 acceptance (d): a child scheduler's process killed with SIGKILL: its tasks return to
/// the root and keep running, the root and the other child keep running, no watchdog stall;
/// attaching again works.
#[test]
fn killed_child_process_returns_its_tasks_to_the_root() -> anyhow::Result<()> {
    let config = r#"{"groups":[
        {"cgroup":"ta","admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"tc","admit":["canopy_child"]}]}"#;
    let script = format!(
        r#"
{SHELL_HELPERS}
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tc
{start}
canopy scheduler child --cgroup tc > /tmp/child.log 2>&1 &
CHILD=$!
for i in $(seq 1 300); do grep -q 'enabled on' /tmp/child.log && break; sleep 0.1; done
hog_in ta; hog_in ta; hog_in tc; hog_in tc
sleep 2
canopy-guest report before-kill subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" tc_id=$(stat -c %i /sys/fs/cgroup/tc) ta_id=$(stat -c %i /sys/fs/cgroup/ta)
kill -KILL $CHILD
wait $CHILD || true
sleep 1
a0=$(usage ta); c0=$(usage tc)
sleep 3
a1=$(usage ta); c1=$(usage tc)
canopy-guest report after-kill state="$(cat /sys/kernel/sched_ext/state)" subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" ta_usec=$((a1 - a0)) tc_usec=$((c1 - c0)) root_alive=$(kill -0 $ROOT && echo yes || echo no)
canopy scheduler child --cgroup tc > /tmp/child2.log 2>&1 &
CHILD=$!
for i in $(seq 1 300); do grep -q 'enabled on' /tmp/child2.log && break; sleep 0.1; done
sleep 1
canopy-guest report reattached output="$(tr '\n' '|' < /tmp/child2.log)" subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')"
kill -TERM $CHILD; wait $CHILD || true
canopy-guest report kernel-log dmesg="$(dmesg | grep 'sched_ext' | tr '\n' '|')"
{STOP_ROOT}
"#,
        start = start_root_with_children(1)
    );
    let outcome = scenario("sched-child-killed")
        .with_file_contents("/etc/canopy-sched.json", config, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let before = outcome.result("before-kill")?;
    let (ta_sub, tc_sub) = (
        format!("sub-{}", before["ta_id"]),
        format!("sub-{}", before["tc_id"]),
    );
    let subs = before["subs"].as_str().unwrap_or_default();
    assert!(
        subs.contains(&ta_sub) && subs.contains(&tc_sub),
        "both children attached before: {before}"
    );
    let after = outcome.result("after-kill")?;
    println!("after SIGKILL: {after}");
    assert_eq!(after["state"], "enabled", "{after}");
    assert_eq!(after["root_alive"], "yes", "{after}");
    let subs = after["subs"].as_str().unwrap_or_default();
    assert!(subs.contains(&ta_sub), "the other child went away: {after}");
    assert!(
        !subs.contains(&tc_sub),
        "the killed child is still attached: {after}"
    );
    let tc_cpu = after["tc_usec"].as_f64().unwrap_or_default() / 3e6;
    let ta_cpu = after["ta_usec"].as_f64().unwrap_or_default() / 3e6;
    println!(
        "after SIGKILL: tc (now under the root) {tc_cpu:.2} CPUs, ta (child) {ta_cpu:.2} CPUs"
    );
    assert!(
        tc_cpu > 0.3,
        "tc's tasks did not run under the root: {after}"
    );
    assert!(ta_cpu > 0.3, "the other child's tasks stopped: {after}");
    let again = outcome.result("reattached")?;
    assert!(
        again["subs"].as_str().unwrap_or_default().contains(&tc_sub),
        "re-attach failed: {again}"
    );
    let log = outcome.result("kernel-log")?;
    let dmesg = log["dmesg"].as_str().unwrap_or_default();
    println!("kernel log: {dmesg}");
    for bad in ["stall", "watchdog", "error", "runtime error"] {
        assert!(!dmesg.contains(bad), "sched_ext logged `{bad}`: {dmesg}");
    }
    let stopped = outcome.result("root-stopped")?;
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    Ok(())
}

/// Issue 4 acceptance (g), nesting: canopy_child does not host children, so a child on `ta/tb`
/// under the canopy_child on `ta` is refused with a clear message, and the hierarchy is intact.
#[test]
fn nested_child_under_canopy_child_is_refused_clearly() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta/tb
{start}
if canopy scheduler child --cgroup ta/tb --seconds 1 > /tmp/nested.log 2>&1; then status=0; else status=$?; fi
canopy-guest report nested status=$status output="$(tr '\n' '|' < /tmp/nested.log)" state="$(cat /sys/kernel/sched_ext/state)" subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" nested_subs="$(ls /sys/kernel/sched_ext/root/sub/*/sub 2>/dev/null | tr '\n' ' ')"
{STOP_ROOT}
"#,
        start = start_root_with_children(1)
    );
    let outcome = scenario("sched-nesting")
        .with_file_contents("/etc/canopy-sched.json", children_config(&["ta"]), 0o644)
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let nested = outcome.result("nested")?;
    println!("nested attach: {nested}");
    assert_ne!(nested["status"], 0, "{nested}");
    let output = nested["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("nesting is not allowed here"),
        "unclear refusal: {output}"
    );
    assert_eq!(nested["state"], "enabled", "{nested}");
    assert!(
        !nested["subs"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "the child on ta went away: {nested}"
    );
    Ok(())
}

/// Wakeups of a preempting class (USER_INTERACTIVE) the root saw, over every path, and how many
/// of them took over 1 ms to run, from the root's `stats` (`canopy scheduler status --json`).
fn preempting_wakeups(stats: &serde_json::Value) -> (u64, u64) {
    let paths = [
        "wake_idle",
        "wake_preempt_local",
        "wake_preempt_remote",
        "wake_queued",
    ];
    let count = |name: &str| stats[name].as_u64().unwrap_or(0);
    (
        paths.iter().map(|path| count(path)).sum(),
        paths
            .iter()
            .map(|path| count(&format!("{path}_slow")))
            .sum(),
    )
}

/// Issue 4 acceptance (c), the root's own tasks by class: cyclictest (tagged USER_INTERACTIVE)
/// under hackbench (BACKGROUND, the policy default here), against the fair scheduler and
/// schedqos's mapping (nice -4 against SCHED_BATCH nice 4, autogroup off; the guest has no tool
/// for its custom slice and uclamp) in the same VM run, plus the platform's floor under the same
/// load: cyclictest as SCHED_FIFO 50 under the fair scheduler, which preempts everything the
/// moment its timer fires, so no scheduling policy can do better.
///
/// What this gates:
/// - the scheduler's own part of the latency, measured in BPF from the wakeup to the task
///   running: at most 1% of USER_INTERACTIVE wakeups take over 1 ms;
/// - canopy's p99 is at the platform floor (at most 1.5x the SCHED_FIFO p99) and its p90 beats
///   both baselines' p90;
/// - the probe is tagged and the root survives the load.
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
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 20 > /tmp/tagger.log 2>&1 &
canopy-guest latency --seconds 10 --histogram-us 200000 --load "$LOAD" --kind latency-canopy
canopy-guest report tagged log="$(tr '\n' '|' < /tmp/tagger.log)"
canopy scheduler status --json --interval-ms 100 > /tmp/status.json
canopy-guest report root-status status=@/tmp/status.json
{STOP_ROOT}
"#,
        start = start_root_with_children(0)
    );
    let outcome = scenario("sched-latency")
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
    let (_, fifo_floor) = percentiles("latency-fifo-floor")?;
    let (schedqos_p90, schedqos) = percentiles("latency-schedqos")?;
    let (canopy_p90, canopy) = percentiles("latency-canopy")?;
    println!(
        "cyclictest p99 under hackbench: fair {fair} us, schedqos mapping {schedqos} us, \
         canopy {canopy} us, SCHED_FIFO floor {fifo_floor} us; p90: fair {fair_p90} us, \
         schedqos {schedqos_p90} us, canopy {canopy_p90} us"
    );
    for (kind, value) in [
        ("fair", fair),
        ("schedqos", schedqos),
        ("canopy", canopy),
        ("fifo floor", fifo_floor),
    ] {
        assert!(value.is_finite() && value > 0.0, "no {kind} p99 measured");
    }
    let tagged = outcome.result("tagged")?;
    assert!(
        tagged["log"]
            .as_str()
            .unwrap_or_default()
            .contains("tagged cyclictest"),
        "cyclictest was never tagged USER_INTERACTIVE: {tagged}"
    );
    let stats = &outcome.result("root-status")?["status"]["stats"];
    let (wakeups, slow) = preempting_wakeups(stats);
    println!(
        "USER_INTERACTIVE wakeups seen by the root: {wakeups}, over 1 ms to run: {slow}; {stats}"
    );
    let stopped = outcome.result("root-stopped")?;
    assert!(
        stopped["log"]
            .as_str()
            .unwrap_or_default()
            .contains("unloaded"),
        "the root did not survive the load until its orderly stop: {stopped}"
    );
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
    assert!(
        slow * 100 <= wakeups,
        "{slow} of {wakeups} USER_INTERACTIVE wakeups waited over 1 ms in the scheduler"
    );
    assert!(
        canopy <= 1.5 * fifo_floor,
        "canopy p99 {canopy} us is above the platform floor (SCHED_FIFO p99 {fifo_floor} us) x 1.5"
    );
    assert!(
        canopy_p90 < fair_p90 && canopy_p90 < schedqos_p90,
        "canopy p90 {canopy_p90} us does not beat fair ({fair_p90} us) and schedqos ({schedqos_p90} us)"
    );
    Ok(())
}

/// Issue 4 acceptance (f): 60 s of stress-ng (cpu, fork, affinity changes) in two children and
/// in the root's own tasks at once: no stall, no scheduler exit.
#[test]
fn stress_under_the_full_hierarchy_keeps_every_scheduler_running() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb
{start}
stress_in() {{ sh -c "echo \$\$ > /sys/fs/cgroup/$1/cgroup.procs; exec stress-ng --cpu 2 --fork 2 --affinity 2 --timeout 60s --quiet" & }}
stress_in ta; SA=$!
stress_in tb; SB=$!
stress-ng --cpu 1 --fork 1 --affinity 1 --timeout 60s --quiet &
SR=$!
wait $SA || true; wait $SB || true; wait $SR || true
canopy-guest report after-stress state="$(cat /sys/kernel/sched_ext/state)" subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" root_alive=$(kill -0 $ROOT && echo yes || echo no) dmesg="$(dmesg | grep sched_ext | tr '\n' '|')"
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = scenario("sched-stress")
        .with_debian_tools(&["stress-ng"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            children_config(&["ta", "tb"]),
            0o644,
        )
        .timeout(Duration::from_secs(300))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let after = outcome.result("after-stress")?;
    println!("after 60 s of stress-ng: {after}");
    assert_eq!(after["state"], "enabled", "{after}");
    assert_eq!(after["root_alive"], "yes", "{after}");
    assert_eq!(
        after["subs"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .count(),
        2,
        "a child exited: {after}"
    );
    let dmesg = after["dmesg"].as_str().unwrap_or_default();
    for bad in ["stall", "error", "disabled"] {
        assert!(!dmesg.contains(bad), "sched_ext logged `{bad}`: {dmesg}");
    }
    let stopped = outcome.result("root-stopped")?;
    let log = stopped["log"].as_str().unwrap_or_default();
    assert!(
        !log.contains("exited"),
        "a scheduler exited during the run: {log}"
    );
    Ok(())
}

/// The policy of the `canopy run-schedulers` scenarios: canopy_child on ta (200) and tb (100),
/// and on every `late-*` cgroup created later; a custom class BATCH (below DEFAULT) is the
/// default class.
const RUN_POLICY: &str = r#"
[defaults]
class = "BATCH"

[classes.BATCH]
after = "DEFAULT"
weight = 70
slice_us = 15000

[groups.heavy]
path = "ta"
weight = 200
scheduler = "canopy"

[groups.light]
path = "tb"
weight = 100
scheduler = "canopy"

[groups.late]
path = "late-*"
weight = 100
scheduler = "canopy"
"#;

/// Starts `canopy run-schedulers` with RUN_POLICY as $ROOT and waits for the children on ta, tb.
const START_RUN_SCHEDULERS: &str = r#"
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb
canopy run-schedulers /etc/canopy/policy.toml > /tmp/root.log 2>&1 &
ROOT=$!
canopy-guest wait-for --file /tmp/root.log --contains 'child scheduler canopy_child enabled' --count 2 --pid $ROOT --timeout 60
cat /tmp/root.log
"#;

/// Stops $ROOT and reports `run-stopped` (sched_ext state and the supervisor's log).
const STOP_RUN_SCHEDULERS: &str = r#"
kill -TERM $ROOT; wait $ROOT || true
cat /tmp/root.log
canopy-guest report run-stopped state="$(cat /sys/kernel/sched_ext/state)" log="$(tr '\n' '|' < /tmp/root.log)"
"#;

/// `canopy run POLICY` drives the loader from a compiled Plan: canopy_child on every existing
/// cgroup of a `scheduler = "canopy"` group with the policy's weights, the policy's custom class
/// in the schedulers' class table at its policy id, a cgroup created later gets its child
/// within the rescan interval, and SIGTERM unloads everything.
#[test]
fn canopy_run_applies_a_policy_and_picks_up_new_cgroups() -> anyhow::Result<()> {
    let script = format!(
        r#"
{START_RUN_SCHEDULERS}
canopy-guest report class-table dump="$(bpftool -j map dump pinned /sys/fs/bpf/canopy/class_params)"
canopy-guest cpu-split --group ta:-:2 --group tb:-:2 --seconds 10 --warmup 1 --keep --kind policy-split
mkdir /sys/fs/cgroup/late-1
for i in $(seq 1 300); do grep -q 'enabled on /sys/fs/cgroup/late-1' /tmp/root.log && break; sleep 0.1; done
canopy-guest report late-cgroup subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" late_id=$(stat -c %i /sys/fs/cgroup/late-1)
{STOP_RUN_SCHEDULERS}
"#
    );
    let outcome = scenario("sched-canopy-run")
        .with_debian_tools(&["bpftool"])
        .with_file_contents("/etc/canopy/policy.toml", RUN_POLICY, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let split = outcome.result("policy-split")?;
    let ratio = split["ratio"].as_f64().unwrap_or(f64::NAN);
    println!("canopy run, policy weights 200:100: {ratio:.3}:1");
    // class ids are policy positions: USER_INTERACTIVE 0 .. DEFAULT 2, BATCH 3, .. BACKGROUND 5
    let dump = &outcome.result("class-table")?["dump"];
    let weights: Vec<u64> = dump
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["formatted"]["value"]["weight"].as_u64())
        .collect();
    println!("class_params weights by id: {weights:?}");
    assert_eq!(
        &weights[..6],
        &[2501, 1586, 655, 70, 655, 423],
        "class table: {dump}"
    );
    let late = outcome.result("late-cgroup")?;
    assert!(
        late["subs"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("sub-{}", late["late_id"])),
        "no child on the cgroup created later: {late}"
    );
    let stopped = outcome.result("run-stopped")?;
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    assert!(
        (ratio / 2.0 - 1.0).abs() <= 0.05,
        "policy split {ratio:.3}:1 is not within 5% of 2:1"
    );
    Ok(())
}

/// Issue 4 deliverables 4 and 5 without the daemon: under `canopy run-schedulers`, `canopy
/// status` (table and `--json`) shows the hierarchy from sysfs and the root's maps (root and
/// each child with cgroup, weight, granted cids, CPU time and share) and says the daemon is not
/// running (exit 3); a cgroup matching the policy created later gets its child at once
/// (inotify, not a rescan: measured from mkdir to the child in sysfs), and removing it detaches.
#[test]
fn status_shows_the_hierarchy_and_new_cgroups_get_children_at_once() -> anyhow::Result<()> {
    let script = format!(
        r#"
{SHELL_HELPERS}
none_code=0; canopy status > /tmp/none.txt || none_code=$?
canopy-guest report nothing-running exit_code=$none_code table="$(tr '\n' '|' < /tmp/none.txt)"
{START_RUN_SCHEDULERS}
hog_in ta; HA=$!; hog_in tb; HB=$!
sleep 1
code=0; canopy status --json > /tmp/status.json || code=$?
canopy status --interval-ms 500 > /tmp/status.txt || true
kill $HA $HB
canopy-guest report status exit_code=$code status=@/tmp/status.json table="$(tr '\n' '|' < /tmp/status.txt)"
sub() {{ echo /sys/kernel/sched_ext/root/sub/sub-$(stat -c %i /sys/fs/cgroup/$1); }}
for n in 1 2 3; do
  t0=$(now)
  mkdir /sys/fs/cgroup/late-$n
  dir=$(sub late-$n)
  i=0; while [ ! -d $dir ] && [ $i -lt 2500 ]; do usleep 2000; i=$((i + 1)); done
  t1=$(now)
  canopy-guest report late-attach-$n attached=$([ -d $dir ] && echo yes || echo no) t0=$t0 t1=$t1
  sleep 0.5
done
dir=$(sub late-1)
t0=$(now)
rmdir /sys/fs/cgroup/late-1
i=0; while [ -d $dir ] && [ $i -lt 2500 ]; do usleep 2000; i=$((i + 1)); done
t1=$(now)
canopy-guest wait-for --file /tmp/root.log --contains 'child scheduler on /sys/fs/cgroup/late-1 exited' --timeout 5 || true
canopy-guest report late-detach gone=$([ -d $dir ] && echo no || echo yes) t0=$t0 t1=$t1 subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')"
{STOP_RUN_SCHEDULERS}
"#
    );
    let outcome = scenario("sched-status-inotify")
        .with_file_contents("/etc/canopy/policy.toml", RUN_POLICY, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());

    let nothing = outcome.result("nothing-running")?;
    assert_eq!(nothing["exit_code"], 3, "{nothing}");
    assert!(
        nothing["table"]
            .as_str()
            .unwrap_or_default()
            .contains("canopy is not running"),
        "{nothing}"
    );

    let reported = outcome.result("status")?;
    assert_eq!(reported["exit_code"], 3, "no daemon runs: {reported}");
    let status = &reported["status"];
    assert_eq!(status["daemon_running"], false, "{status}");
    let hierarchy = &status["hierarchy"];
    assert_eq!(hierarchy["root_ops"], "canopy_root", "{status}");
    let schedulers = hierarchy["schedulers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for cgroup in ["/sys/fs/cgroup/ta", "/sys/fs/cgroup/tb"] {
        let node = schedulers
            .iter()
            .find(|n| n["cgroup"] == cgroup)
            .unwrap_or_else(|| panic!("no scheduler on {cgroup}: {status}"));
        assert_eq!(node["ops"], "canopy_child", "{node}");
        assert!(
            !node["caps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .is_empty(),
            "no granted cids shown for {cgroup}: {node}"
        );
    }
    let member = |cgroup: &str| {
        hierarchy["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["cgroup"] == cgroup)
            .cloned()
            .unwrap_or_else(|| panic!("no member for {cgroup}: {status}"))
    };
    let (ta, tb) = (member("/sys/fs/cgroup/ta"), member("/sys/fs/cgroup/tb"));
    assert_eq!(
        (ta["weight"].as_u64(), tb["weight"].as_u64()),
        (Some(200), Some(100))
    );
    for m in [&ta, &tb] {
        assert!(
            m["cpu_ns_interval"].as_u64().unwrap_or(0) > 0,
            "no CPU time: {m}"
        );
        assert!(
            m["target_share"].as_f64().unwrap_or(0.0) > 0.0,
            "no target: {m}"
        );
    }
    println!(
        "canopy status: ta share {:.3} (target {:.3}), tb share {:.3} (target {:.3})",
        ta["share"], ta["target_share"], tb["share"], tb["target_share"]
    );
    let table = reported["table"].as_str().unwrap_or_default();
    for needle in [
        "daemon:          not running",
        "canopy_child on /sys/fs/cgroup/ta",
        "cpu_ms",
    ] {
        assert!(
            table.contains(needle),
            "{needle:?} not in the table: {table}"
        );
    }

    // The supervisor logs when it started loading each child (uptime, the clock of t0) and how
    // long the load took: mkdir to load start is what inotify decides; the load itself (the
    // verifier, seconds under TCG) is the same however the cgroup was noticed.
    let stopped = outcome.result("run-stopped")?;
    let log = stopped["log"].as_str().unwrap_or_default();
    let seconds = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for n in 1..=3 {
        let late = outcome.result(&format!("late-attach-{n}"))?;
        assert_eq!(late["attached"], "yes", "no child on late-{n}: {late}");
        let total_ms = (seconds(late, "t1") - seconds(late, "t0")) * 1000.0;
        let line = log
            .split('|')
            .find(|l| l.contains(&format!("enabled on /sys/fs/cgroup/late-{n} (")))
            .unwrap_or_else(|| panic!("no enable line for late-{n}: {log}"));
        let field = |after: &str, before: &str| -> f64 {
            line.split(after)
                .nth(1)
                .and_then(|rest| rest.split(before).next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        let noticed_ms = (field("load started at uptime ", " s") - seconds(late, "t0")) * 1000.0;
        let load_ms = field("took ", " ms");
        println!(
            "late-{n}: mkdir to load start {noticed_ms:.0} ms (uptime has 10 ms steps), \
             load and attach {load_ms:.0} ms, mkdir to child in sysfs {total_ms:.0} ms"
        );
        assert!(
            noticed_ms <= 200.0,
            "late-{n} was noticed {noticed_ms:.0} ms after mkdir, not within 200 ms: {line}"
        );
    }
    let detach = outcome.result("late-detach")?;
    let ms = (seconds(detach, "t1") - seconds(detach, "t0")) * 1000.0;
    println!("late-1: rmdir to child scheduler gone: {ms:.0} ms");
    assert_eq!(detach["gone"], "yes", "{detach}");
    assert!(
        log.contains("child scheduler on /sys/fs/cgroup/late-1 exited"),
        "{stopped}"
    );
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    Ok(())
}

/// Issue 4 deliverable 3, the restart action: the `restart_once` fixture, loaded as the root,
/// unregisters itself with SCX_ECODE_ACT_RESTART in its exit code (as the kernel does when it
/// wants a scheduler loaded again); the loader decodes the action from the exit record and
/// loads it again, twice, through the same decision as canopy_root's supervisor; the third load
/// keeps running and unloads cleanly on SIGTERM.
#[test]
fn root_asking_for_a_restart_is_loaded_again() -> anyhow::Result<()> {
    let script = r#"
canopy scheduler restart-fixture --restarts 2 > /tmp/restart.log 2>&1 &
R=$!
canopy-guest wait-for --file /tmp/restart.log --contains 'enabled as the root scheduler (load 2)' --pid $R --timeout 90
canopy-guest hog --threads 2 --seconds 2
canopy-guest report restarted state="$(cat /sys/kernel/sched_ext/state)" ops="$(cat /sys/kernel/sched_ext/root/ops)" alive=$(kill -0 $R && echo yes || echo no)
kill -TERM $R; code=0; wait $R || code=$?
cat /tmp/restart.log
canopy-guest report restart-stopped state="$(cat /sys/kernel/sched_ext/state)" exit_code=$code log="$(tr '\n' '|' < /tmp/restart.log)"
"#;
    let outcome = scenario("sched-restart-action").script(script).run()?;
    println!("{}", outcome.summary());
    let restarted = outcome.result("restarted")?;
    assert_eq!(restarted["state"], "enabled", "{restarted}");
    assert_eq!(restarted["ops"], "restart_once", "{restarted}");
    assert_eq!(restarted["alive"], "yes", "{restarted}");
    let stopped = outcome.result("restart-stopped")?;
    let log = stopped["log"].as_str().unwrap_or_default();
    println!("restart log: {}", log.replace('|', "\n"));
    assert_eq!(
        log.matches("SCX_EXIT_UNREG_BPF").count(),
        2,
        "two exits by the fixture expected: {log}"
    );
    assert_eq!(log.matches("[action: restart]").count(), 2, "{log}");
    assert_eq!(log.matches("loading again").count(), 2, "{log}");
    assert!(
        log.contains("restart_once unloaded: SCX_EXIT_UNREG "),
        "{log}"
    );
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    Ok(())
}

/// Issue 4 deliverable: the root implements cid_online/cid_offline, so taking a CPU offline and
/// back does not take the hierarchy down (without them the kernel exits every scheduler). Then
/// SysRq-D shows the root's and the children's dump output.
#[test]
fn cpu_hotplug_keeps_the_hierarchy_running() -> anyhow::Result<()> {
    let script = format!(
        r#"
{SHELL_HELPERS}
mkdir -p /sys/fs/cgroup/ta /sys/fs/cgroup/tb
{start}
hog_in ta; hog_in tb
sleep 1
echo 0 > /sys/devices/system/cpu/cpu1/online
sleep 2
canopy-guest report cpu-offline online="$(cat /sys/devices/system/cpu/online)" state="$(cat /sys/kernel/sched_ext/state)" subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')"
echo 1 > /sys/devices/system/cpu/cpu1/online
sleep 2
set -- $(usage ta) $(usage tb)
sleep 2
canopy-guest report cpu-online online="$(cat /sys/devices/system/cpu/online)" state="$(cat /sys/kernel/sched_ext/state)" subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" ta_usec=$(( $(usage ta) - $1 )) tb_usec=$(( $(usage tb) - $2 ))
canopy-guest report hotplug-log dmesg="$(dmesg | grep sched_ext | tr '\n' '|')"
echo 1 > /proc/sys/kernel/sysrq
T=/sys/kernel/tracing; [ -d $T/events ] || T=/sys/kernel/debug/tracing
echo 1 > $T/events/sched_ext/sched_ext_dump/enable
echo D > /proc/sysrq-trigger
sleep 1
cat $T/trace > /tmp/dump.txt
canopy-guest report sysrq-dump own="$(grep -c 'canopy_root: own DSQ' /tmp/dump.txt)" members="$(grep -c 'member [0-9]* cgroup' /tmp/dump.txt)" cids="$(grep -c 'cid [0-9]* owner' /tmp/dump.txt)" child="$(grep -c 'canopy_child on cgroup' /tmp/dump.txt)"
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = scenario("sched-hotplug")
        .with_file_contents(
            "/etc/canopy-sched.json",
            children_config(&["ta", "tb"]),
            0o644,
        )
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    for kind in ["cpu-offline", "cpu-online"] {
        let report = outcome.result(kind)?;
        println!("{kind}: {report}");
        assert_eq!(report["state"], "enabled", "{report}");
        assert_eq!(
            report["subs"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .count(),
            2,
            "{report}"
        );
    }
    let online = outcome.result("cpu-online")?;
    assert_eq!(online["online"], "0-1", "{online}");
    assert!(
        online["ta_usec"].as_f64().unwrap_or_default() > 0.5e6,
        "{online}"
    );
    assert!(
        online["tb_usec"].as_f64().unwrap_or_default() > 0.5e6,
        "{online}"
    );
    // SysRq-D dumps every scheduler (to the sched_ext_dump tracepoint): ops.dump / dump_cid of
    // the root and the children's ops.dump
    let dump = outcome.result("sysrq-dump")?;
    println!("sysrq-d dump lines: {dump}");
    for (key, at_least) in [
        ("own", 1.0),
        ("members", 3.0),
        ("cids", 2.0),
        ("child", 2.0),
    ] {
        assert!(
            dump[key].as_f64().unwrap_or_default() >= at_least,
            "too few `{key}` lines in the dump: {dump}"
        );
    }
    let log = outcome.result("hotplug-log")?;
    assert!(
        !log["dmesg"]
            .as_str()
            .unwrap_or_default()
            .contains("disabled"),
        "{log}"
    );
    Ok(())
}

/// Issue 4 deliverable: optional guarantee and cap per child. A child capped at 25% stays near
/// 25% against an equal-weight busy sibling; a child with weight 100 and a 50% guarantee gets
/// about half the machine against a weight-400 sibling (its weight alone would give it 20%).
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
canopy-guest cpu-split --group tb:-:2 --group ta:-:2 --seconds 8 --warmup 1 --keep --kind capped
canopy-guest cpu-split --group tc:-:2 --group td:-:2 --seconds 8 --warmup 1 --keep --kind guaranteed
{STOP_ROOT}
"#,
        start = start_root_with_children(4)
    );
    let outcome = scenario("sched-cap-guarantee")
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
    Ok(())
}

/// The scheduler benchmark (issue 4): in one VM run, canopy against the fair scheduler with the
/// same cpu.weight settings and against schedqos's mapping: share accuracy (largest relative
/// error across two groups at 200:100), interactive p99 wakeup latency under hackbench (with the
/// idle floor and the platform floor under load: SCHED_FIFO cyclictest under the fair scheduler),
/// and hackbench -T -p -l 300 -g 4 run time. Prints a markdown table and writes it to
/// target/sched-bench.md. A benchmark, not a gate: it asserts only that every figure exists.
#[test]
fn benchmark_canopy_against_fair_and_schedqos() -> anyhow::Result<()> {
    let script = format!(
        r#"
LOAD='hackbench -T -p -g 2 -l 100000000'
canopy-guest latency --seconds 8 --histogram-us 200000 --kind idle-floor
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 8 --warmup 1 --keep --kind split-fair
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 8 --warmup 1 --keep --fair-cgroup-mode smp --kind split-fair-smp
canopy-guest latency --seconds 8 --histogram-us 200000 --load "$LOAD" --kind latency-fair
canopy-guest latency --seconds 8 --histogram-us 200000 --load "$LOAD" --kind latency-fifo -- -p 50
canopy-guest exec --kind hackbench-fair -- hackbench -T -p -l 300 -g 4
autogroup=$(cat /proc/sys/kernel/sched_autogroup_enabled)
echo 0 > /proc/sys/kernel/sched_autogroup_enabled
canopy scheduler exec --nice -4 -- canopy-guest latency --seconds 8 --histogram-us 200000 --load "canopy scheduler exec --nice 4 --batch -- $LOAD" --kind latency-schedqos
echo $autogroup > /proc/sys/kernel/sched_autogroup_enabled
{start}
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 8 --warmup 1 --keep --kind split-canopy
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 20 > /tmp/tagger.log 2>&1 &
canopy-guest latency --seconds 8 --histogram-us 200000 --load "$LOAD" --kind latency-canopy
canopy-guest exec --kind hackbench-canopy -- hackbench -T -p -l 300 -g 4
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let config = r#"{"default_class":"BACKGROUND","groups":[
        {"cgroup":"ta","admit":["canopy_child"],"attach_canopy_child":true},
        {"cgroup":"tb","admit":["canopy_child"],"attach_canopy_child":true}]}"#;
    let outcome = scenario("sched-bench")
        .with_debian_tools(&["cyclictest", "hackbench"])
        .with_file_contents("/etc/canopy-sched.json", config, 0o644)
        .timeout(Duration::from_secs(400))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let field = |kind: &str, key: &str| -> anyhow::Result<f64> {
        Ok(outcome.result(kind)?[key].as_f64().unwrap_or(f64::NAN))
    };
    let ms = |us: f64| us / 1000.0;
    let idle = field("idle-floor", "p99_us")?;
    let latency = |kind: &str| -> anyhow::Result<String> {
        Ok(format!(
            "{:.2} ms | {:.2} ms",
            ms(field(kind, "p99_us")?),
            ms(field(kind, "p90_us")?)
        ))
    };
    let mut table = String::from(
        "| scheduler | share error (200:100, 2+2 hogs) | cyclictest p99 under hackbench | p90 | hackbench -T -p -l 300 -g 4 |\n|---|---|---|---|---|\n",
    );
    let fair_mode = |kind: &str| -> anyhow::Result<String> {
        Ok(outcome.result(kind)?["fair_cgroup_mode"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned())
    };
    table += &format!(
        "| fair (cpu.weight; kernel default group shares: `{}`) | {:.2}% | {} | {:.2} s |\n",
        fair_mode("split-fair")?,
        field("split-fair", "max_share_error")? * 100.0,
        latency("latency-fair")?,
        field("hackbench-fair", "duration_s")?
    );
    table += &format!(
        "| fair, classic group shares (`{}`) | {:.2}% | n/a | n/a | n/a |\n",
        fair_mode("split-fair-smp")?,
        field("split-fair-smp", "max_share_error")? * 100.0
    );
    table += &format!(
        "| schedqos mapping (nice -4 / SCHED_BATCH nice 4) | n/a | {} | n/a |\n",
        latency("latency-schedqos")?
    );
    table += &format!(
        "| canopy (root + canopy_child) | {:.2}% | {} | {:.2} s |\n",
        field("split-canopy", "max_share_error")? * 100.0,
        latency("latency-canopy")?,
        field("hackbench-canopy", "duration_s")?
    );
    table += &format!(
        "| platform floor: SCHED_FIFO probe under fair | n/a | {} | n/a |\n",
        latency("latency-fifo")?
    );
    table += &format!(
        "\nIdle floor (cyclictest p99, no load): {:.2} ms. {}\n",
        ms(idle),
        outcome.summary()
    );
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sched-bench.md");
    std::fs::write(&out, &table)?;
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
    // (4 x 32 bytes), ceiling_plus_one, floor_plus_one; BACKGROUND is id 4, so ceiling 5.
    let script = r#"
mkdir -p /sys/fs/cgroup/minimized
canopy scheduler run --config /etc/canopy-sched.json > /tmp/root.log 2>&1 &
ROOT=$!
for i in $(seq 1 300); do grep -q 'root scheduler enabled' /tmp/root.log && break; sleep 0.1; done
id=$(stat -c %i /sys/fs/cgroup/minimized)
key=$(printf '%016x' $id | sed 's/../& /g' | awk '{for(i=8;i>=1;i--) printf "%s ", $i}')
value="$(for i in $(seq 1 144); do printf '00 '; done)05 00 00 00 00 00 00 00"
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
    let outcome = scenario("sched-state-clamp")
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
    let outcome = scenario("sched-terms-follow")
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

/// Starts `canopy scheduler run` on /etc/canopy-sched.json with the test hook that makes the
/// first `loads` canopy_child loads ask for a restart after 50 dispatches, with two hogs in
/// /sys/fs/cgroup/ta (so the child dispatches), waits until the log shows `until`, and reports
/// `<kind>` (the supervisor's log, the sub-schedulers in sysfs, `canopy scheduler status --json`).
fn restarting_child_phase(kind: &str, loads: u32, until: &str) -> String {
    format!(
        r#"
canopy scheduler run --config /etc/canopy-sched.json --child-restart-loads {loads} > /tmp/root.log 2>&1 &
ROOT=$!
{WAIT_ROOT}
canopy-guest wait-for --file /tmp/root.log --contains '{until}' --pid $ROOT --timeout 90
sleep 2
canopy scheduler status --json --interval-ms 200 > /tmp/sched.json
canopy-guest report {kind} ta_id=$(stat -c %i /sys/fs/cgroup/ta) subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" state="$(cat /sys/kernel/sched_ext/state)" sched=@/tmp/sched.json log="$(tr '\n' '|' < /tmp/root.log)"
kill -TERM $ROOT; wait $ROOT || true
"#
    )
}

/// The restart record of `ta` in a `canopy scheduler status --json` result.
fn ta_restarts(phase: &serde_json::Value) -> serde_json::Value {
    phase["sched"]["child_restarts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|record| record["cgroup_id"] == phase["ta_id"])
        .cloned()
        .unwrap_or_default()
}

/// A canopy child that exits with the kernel's restart action (SCX_ECODE_ACT_RESTART, here
/// through the child's test hook: it unregisters itself after 50 dispatches) is loaded and
/// attached again by the supervisor after a backoff, and the restarts are recorded in the
/// root's `child_restarts` map (`canopy scheduler status`). First a child that asks three times:
/// re-attached three times and then stays. Then one that always asks: re-attached five times
/// in a row (200 ms .. 3.2 s apart), then the supervisor gives up and its cgroup's tasks stay
/// with the root, which keeps running.
#[test]
fn a_child_asking_for_a_restart_is_attached_again_with_a_bound() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/ta
sh -c 'echo $$ > /sys/fs/cgroup/ta/cgroup.procs; exec canopy-guest hog --threads 2' &
HOG=$!
{asks_three_times}
{always_asks}
kill $HOG
canopy-guest report restart-stopped state="$(cat /sys/kernel/sched_ext/state)"
"#,
        asks_three_times = restarting_child_phase(
            "asks-three-times",
            3,
            "re-attached after a restart request (3 so far)"
        ),
        always_asks = restarting_child_phase("always-asks", 1000, "giving up"),
    );
    let outcome = scenario("sched-child-restart")
        .with_file_contents("/etc/canopy-sched.json", children_config(&["ta"]), 0o644)
        .timeout(Duration::from_secs(240))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());

    let three = outcome.result("asks-three-times")?;
    let log = three["log"].as_str().unwrap_or_default();
    println!("asks three times: {}", log.replace('|', "\n"));
    let ta = format!("sub-{}", three["ta_id"]);
    assert_eq!(
        log.matches("asking for a restart after 50 dispatches")
            .count(),
        3,
        "{log}"
    );
    assert_eq!(log.matches("[action: restart]").count(), 3, "{log}");
    assert_eq!(
        log.matches("re-attached after a restart request").count(),
        3,
        "{log}"
    );
    assert!(
        three["subs"].as_str().unwrap_or_default().contains(&ta),
        "{three}"
    );
    let record = ta_restarts(three);
    println!("child_restarts of ta: {record}");
    assert_eq!(record["restarts"], 3, "{three}");
    assert_eq!(record["gave_up"], false, "{three}");
    assert_eq!(
        record["last_exit_code"].as_i64().map(|code| code >> 48),
        Some(1),
        "{three}"
    );

    let always = outcome.result("always-asks")?;
    let log = always["log"].as_str().unwrap_or_default();
    println!("always asks: {}", log.replace('|', "\n"));
    assert_eq!(log.matches("[action: restart]").count(), 6, "{log}");
    assert_eq!(
        log.matches("re-attached after a restart request").count(),
        5,
        "{log}"
    );
    for (n, wait_ms) in [(1, 200), (2, 400), (3, 800), (4, 1600), (5, 3200)] {
        assert!(
            log.contains(&format!("again in {wait_ms} ms (restart {n} in a row")),
            "restart {n} should wait {wait_ms} ms: {log}"
        );
    }
    assert!(
        log.contains("after 5 restarts in a row; giving up"),
        "{log}"
    );
    assert!(
        !always["subs"].as_str().unwrap_or_default().contains(&ta),
        "{always}"
    );
    assert_eq!(
        always["state"], "enabled",
        "the root keeps running: {always}"
    );
    let record = ta_restarts(always);
    println!("child_restarts of ta: {record}");
    assert_eq!(record["restarts"], 5, "{always}");
    assert_eq!(record["in_a_row"], 5, "{always}");
    assert_eq!(record["gave_up"], true, "{always}");

    let stopped = outcome.result("restart-stopped")?;
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    Ok(())
}
