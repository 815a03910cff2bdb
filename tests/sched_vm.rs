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
for i in $(seq 1 100); do
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
canopy scheduler run --seconds 14 > /tmp/root.log 2>&1 &
ROOT=$!
{WAIT_ROOT}
canopy-guest report root-enabled state="$(cat /sys/kernel/sched_ext/state)" ops="$(cat /sys/kernel/sched_ext/root/ops)"
start=$(cut -d' ' -f1 /proc/uptime)
canopy-guest hog --threads 2 --seconds 10
end=$(cut -d' ' -f1 /proc/uptime)
canopy-guest report hog-done state="$(cat /sys/kernel/sched_ext/state)" start=$start end=$end
canopy scheduler status --json --interval-ms 500 > /tmp/status.json || true
wait $ROOT || true
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
    assert!(dmesg.contains("unregistered from user space"), "no unregistration logged: {dmesg}");
    Ok(())
}

/// A scheduler config with canopy_child admitted and attached on each named cgroup (weights
/// follow cpu.weight).
fn children_config(groups: &[&str]) -> String {
    let groups: Vec<String> = groups
        .iter()
        .map(|g| format!(r#"{{"cgroup":"{g}","admit":["canopy_child"],"attach_canopy_child":true}}"#))
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
for i in $(seq 1 100); do
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
canopy-guest cpu-split --group ta:200:2 --group tb:100:2 --seconds 10 --warmup 1 --keep --kind split-200-100
canopy-guest cpu-split --group ta:400:4 --group tb:100:4 --seconds 10 --warmup 1 --keep --kind split-400-100
{STOP_ROOT}
"#,
        start = start_root_with_children(2)
    );
    let outcome = scenario("sched-weight-split")
        .with_file_contents("/etc/canopy-sched.json", children_config(&["ta", "tb"]), 0o644)
        .timeout(Duration::from_secs(240))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let (r2, u2) = split_ratio(&outcome, "split-200-100")?;
    let (r4, u4) = split_ratio(&outcome, "split-400-100")?;
    println!("canopy children, 200:100 with 2+2 hogs: {r2:.3}:1 (utilization {u2:.3})");
    println!("canopy children, 400:100 with 4+4 hogs: {r4:.3}:1 (utilization {u4:.3})");
    let stopped = outcome.result("root-stopped")?;
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    assert!((r2 / 2.0 - 1.0).abs() <= 0.03, "200:100 split {r2:.3}:1 is not within 3% of 2:1");
    assert!((r4 / 4.0 - 1.0).abs() <= 0.03, "400:100 split {r4:.3}:1 is not within 3% of 4:1");
    Ok(())
}
