// SPDX-License-Identifier: GPL-2.0-only
//! Scenario (issue 11, part C): scheduler faults leave the daemon working, in fallback mode,
//! and saying why. One boot (about 70 s of guest time on a loaded host: two daemon starts):
//! - `--mode auto` when the BPF load fails: another sched_ext root scheduler (the
//!   `restart_once` fixture) already holds the kernel, so attaching canopy_root fails in the
//!   kernel exactly as on a machine where some other scheduler runs; the daemon starts in
//!   fallback mode and `status` carries the loader's error;
//! - the root ejected (SysRq-S, `echo S > /proc/sysrq-trigger`, which disables every sched_ext
//!   scheduler): within 1 s the daemon has handed every task to the fallback backend (its log
//!   line, polled every 10 ms), `status` says fallback with the exit reason, the log has the
//!   exit record, and a tagged task got its fallback attributes (nice) from then on.
use std::time::Duration;

use crate::support::start_daemon;

const POLICY: &str = r#"
[defaults]
class = "DEFAULT"

[daemon]
mode = "auto"
socket_path = "/run/canopy/control.sock"

[[rules]]
name = "sleepers are background"
comm = "sleep"
class = "BACKGROUND"
"#;

#[test]
fn scheduler_faults_leave_the_daemon_in_fallback_mode_saying_why() -> anyhow::Result<()> {
    let script = format!(
        r#"
sleep 600 &
SLEEPER=$!
# (5) another root scheduler holds sched_ext: canopy_root cannot attach
canopy scheduler restart-fixture --restarts 0 > /tmp/fixture.log 2>&1 &
FIXTURE=$!
canopy-guest wait-for --sched-ext-state enabled --pid $FIXTURE --timeout 30
{start_busy}
canopy-guest report load-failed status=@/tmp/status.json root_ops="$(cat /sys/kernel/sched_ext/root/ops)" sleeper_nice=$(cut -d' ' -f19 /proc/$SLEEPER/stat)
kill -TERM $DAEMON; wait $DAEMON || true
kill -TERM $FIXTURE; wait $FIXTURE || true
canopy-guest wait-for --sched-ext-state disabled --timeout 30
# (4) canopy's root ejected by SysRq-S
{start_ejected}
canopy status --json > /tmp/status-before.json
ejected_at=$(cut -d' ' -f1 /proc/uptime)
echo S > /proc/sysrq-trigger
# the daemon logs "fallback mode" once every task and group went to the fallback backend
fallback_after=none
for i in $(seq 1 500); do
  if grep -q 'fallback mode tasks=' /tmp/daemon.log; then
    fallback_after=$(awk -v a=$ejected_at '{{printf "%.3f", $1 - a}}' /proc/uptime); break
  fi
  usleep 10000
done
canopy status --json > /tmp/status-after.json
canopy-guest report ejected before=@/tmp/status-before.json after=@/tmp/status-after.json fallback_after_s=$fallback_after state="$(cat /sys/kernel/sched_ext/state)" sleeper_nice=$(cut -d' ' -f19 /proc/$SLEEPER/stat) daemon_alive=$(kill -0 $DAEMON && echo yes || echo no)
kill -TERM $DAEMON; wait $DAEMON; code=$?
canopy-guest report stopped exit_code=$code sleeper_nice=$(cut -d' ' -f19 /proc/$SLEEPER/stat) log="$(tr '\n' '|' < /tmp/daemon.log)"
"#,
        start_busy = start_daemon("auto"),
        start_ejected = start_daemon("auto"),
    );
    let outcome = crate::scenario("scx-faults")
        .with_file_contents("/etc/canopy/policy.toml", POLICY, 0o644)
        .timeout(Duration::from_secs(180))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());

    let failed = outcome.result("load-failed")?;
    let status = &failed["status"];
    println!(
        "load failure: mode {} ({}), root ops {}, sleeper nice {}",
        status["mode"], status["mode_reason"], failed["root_ops"], failed["sleeper_nice"]
    );
    assert_eq!(status["mode"], "fallback", "{failed}");
    let reason = status["mode_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("auto: the schedulers did not load") && reason.contains("attach"),
        "status does not say why the load failed: {reason}"
    );
    assert_eq!(failed["root_ops"], "restart_once", "{failed}");
    // BACKGROUND in fallback mode is a positive nice value
    assert!(
        failed["sleeper_nice"].as_i64().unwrap_or(0) > 0,
        "the fallback backend did not apply the policy: {failed}"
    );

    let ejected = outcome.result("ejected")?;
    let before = &ejected["before"];
    let after = &ejected["after"];
    println!(
        "ejected: before {} ({}); after {} ({}) {} s after SysRq-S; sched_ext {}, sleeper nice {}",
        before["mode"],
        before["mode_reason"],
        after["mode"],
        after["mode_reason"],
        ejected["fallback_after_s"],
        ejected["state"],
        ejected["sleeper_nice"]
    );
    assert_eq!(before["mode"], "scx", "{ejected}");
    assert_eq!(after["mode"], "fallback", "{ejected}");
    let why = after["mode_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("scx ejected") && why.to_lowercase().contains("sysrq"),
        "status does not say the root was ejected by SysRq: {why}"
    );
    let took = ejected["fallback_after_s"].as_f64().unwrap_or(f64::NAN);
    assert!(
        took <= 1.0,
        "fallback mode came {took} s after SysRq-S (at most 1 s)"
    );
    assert_eq!(ejected["daemon_alive"], "yes", "{ejected}");
    assert!(
        ejected["sleeper_nice"].as_i64().unwrap_or(0) > 0,
        "the fallback backend did not take the tasks over: {ejected}"
    );

    let stopped = outcome.result("stopped")?;
    let log = stopped["log"].as_str().unwrap_or_default();
    assert!(
        log.contains("root scheduler exited") && log.contains("switching to fallback mode"),
        "the log lacks the exit record or the switch: {log}"
    );
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    // SIGTERM restored what the fallback backend changed
    assert_eq!(stopped["sleeper_nice"], 0, "{stopped}");
    Ok(())
}
