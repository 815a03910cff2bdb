// SPDX-License-Identifier: GPL-2.0-only
//! Scheduler scenarios driven by a policy without the daemon (`canopy run-schedulers`): children
//! on the policy's groups with its weights and custom classes, new cgroups picked up (rescan and
//! inotify), and `canopy status` showing the hierarchy.
use std::time::Duration;

use crate::support::SHELL_HELPERS;

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
    let outcome = crate::scenario("sched-canopy-run")
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
    let outcome = crate::scenario("sched-status-inotify")
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
