// SPDX-License-Identifier: GPL-2.0-only
//! VM scenarios for the whole daemon in scx mode (issue 5's kernel-facing acceptance): `canopy
//! run --mode scx` loads the root scheduler, tags tasks by the policy into the schedulers' maps,
//! and when the daemon is killed with SIGKILL the kernel is back on the fair scheduler within a
//! second, nothing stuck; a restarted daemon adopts everything again; SIGTERM unloads cleanly.
//! The guest's serial log is in target/vm-logs/<scenario>-*.log.
use std::time::Duration;

use canopy_vmtest::Scenario;

const POLICY: &str = r#"
[defaults]
class = "DEFAULT"

[daemon]
mode = "scx"
socket_path = "/run/canopy/control.sock"

[[rules]]
name = "sleepers are background"
comm = "sleep"
class = "BACKGROUND"

[groups.tenant]
path = "tenant"
weight = 200
scheduler = "canopy"
"#;

/// Starts the daemon in the background as $DAEMON and waits until its control socket answers
/// and sched_ext is enabled.
const START_DAEMON: &str = r#"
canopy run --policy /etc/canopy/policy.toml --mode scx >> /tmp/daemon.log 2>&1 &
DAEMON=$!
for i in $(seq 1 300); do
  if [ "$(cat /sys/kernel/sched_ext/state)" = enabled ] && canopy status --json > /tmp/status.json 2>/dev/null; then break; fi
  if ! kill -0 $DAEMON 2>/dev/null; then cat /tmp/daemon.log; break; fi
  usleep 100000
done
"#;

#[test]
fn daemon_in_scx_mode_tags_survives_sigkill_and_restarts() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/tenant
sleep 600 &
SLEEPER=$!
{START_DAEMON}
usleep 500000
canopy-guest report started state="$(cat /sys/kernel/sched_ext/state)" ops="$(cat /sys/kernel/sched_ext/root/ops 2>/dev/null)" subs="$(ls /sys/kernel/sched_ext/root/sub 2>/dev/null | tr '\n' ' ')" tenant_id=$(stat -c %i /sys/fs/cgroup/tenant) mode="$(tr -d '\n' < /tmp/status.json | grep -o '"mode": *"[a-z]*"')" explain="$(canopy ctl explain --pid $SLEEPER --json | tr -d '\n')"
# SIGKILL: the kernel must unregister the schedulers on its own.
killed_at=$(cut -d' ' -f1 /proc/uptime)
kill -9 $DAEMON
while [ "$(cat /sys/kernel/sched_ext/state)" != disabled ]; do usleep 10000; done
disabled_at=$(cut -d' ' -f1 /proc/uptime)
canopy-guest hog --threads 2 --seconds 2
canopy-guest report after-kill state="$(cat /sys/kernel/sched_ext/state)" killed_at=$killed_at disabled_at=$disabled_at sleeper_alive=$(kill -0 $SLEEPER && echo yes || echo no)
# A restarted daemon adopts everything again.
{START_DAEMON}
usleep 500000
canopy-guest report restarted state="$(cat /sys/kernel/sched_ext/state)" explain="$(canopy ctl explain --pid $SLEEPER --json | tr -d '\n')"
kill -TERM $DAEMON; wait $DAEMON; code=$?
canopy-guest report stopped state="$(cat /sys/kernel/sched_ext/state)" exit_code=$code
tail -n 30 /tmp/daemon.log
"#
    );
    let outcome = Scenario::new("daemon-scx")
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .with_file_contents("/etc/canopy/policy.toml", POLICY, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());

    let started = outcome.result("started")?;
    assert_eq!(started["state"], "enabled", "{started}");
    assert_eq!(started["ops"], "canopy_root", "{started}");
    assert!(
        started["mode"].as_str().unwrap_or_default().contains("scx"),
        "{started}"
    );
    assert!(
        started["subs"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("sub-{}", started["tenant_id"])),
        "no canopy_child on the policy's tenant cgroup: {started}"
    );
    let explain = started["explain"].to_string();
    assert!(
        explain.contains("BACKGROUND"),
        "sleep not tagged BACKGROUND: {explain}"
    );

    let after_kill = outcome.result("after-kill")?;
    assert_eq!(after_kill["state"], "disabled", "{after_kill}");
    assert_eq!(after_kill["sleeper_alive"], "yes", "{after_kill}");
    let seconds = |key: &str| {
        // The guest reporter turns numeric values into JSON numbers.
        after_kill[key].as_f64().unwrap_or(f64::NAN)
    };
    let fallback_s = seconds("disabled_at") - seconds("killed_at");
    println!("SIGKILL to fair scheduler: {:.0} ms", fallback_s * 1000.0);
    assert!(
        fallback_s <= 1.0,
        "back on the fair scheduler after {fallback_s:.2} s, not within 1 s"
    );

    let restarted = outcome.result("restarted")?;
    assert_eq!(restarted["state"], "enabled", "{restarted}");
    let explain = restarted["explain"].to_string();
    assert!(
        explain.contains("BACKGROUND"),
        "not re-adopted after restart: {explain}"
    );

    let stopped = outcome.result("stopped")?;
    assert_eq!(stopped["state"], "disabled", "{stopped}");
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    Ok(())
}
