// SPDX-License-Identifier: GPL-2.0-only
//! Scheduler scenarios: child schedulers' admission and failures: a foreign child is admitted
//! only where the policy names it, a nested child under canopy_child is refused, a killed
//! child's tasks return to the root, and a child asking for a restart is attached again with a
//! bound on how often.
use std::time::Duration;

use crate::support::{
    children_config, split_ratio, start_root_with_children, SHELL_HELPERS, STOP_ROOT, WAIT_ROOT,
};

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
    let outcome = crate::scenario("sched-admission")
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
    let outcome = crate::scenario("sched-child-killed")
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
    let outcome = crate::scenario("sched-nesting")
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
    let outcome = crate::scenario("sched-child-restart")
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
