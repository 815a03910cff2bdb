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
