// SPDX-License-Identifier: GPL-2.0-only
//! What the VM scenarios share: the scenario constructor and the guest shell snippets that start,
//! wait for and stop the schedulers and the daemon.
use std::time::Duration;

use canopy_vmtest::Scenario;

/// A scenario with the `canopy` binary at `/bin/canopy` in the guest.
pub fn scenario(name: &str) -> Scenario {
    Scenario::new(name)
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .timeout(Duration::from_secs(180))
}

/// Waits (in the guest) until `canopy scheduler run` reports the root enabled.
pub const WAIT_ROOT: &str = r#"
for i in $(seq 1 300); do
  grep -q 'root scheduler enabled' /tmp/root.log 2>/dev/null && break
  if ! kill -0 $ROOT 2>/dev/null; then cat /tmp/root.log; exit 1; fi
  sleep 0.1
done
"#;

/// A scheduler config with canopy_child admitted and attached on each named cgroup (weights
/// follow cpu.weight).
pub fn children_config(groups: &[&str]) -> String {
    let groups: Vec<String> = groups
        .iter()
        .map(|g| {
            format!(r#"{{"cgroup":"{g}","admit":["canopy_child"],"attach_canopy_child":true}}"#)
        })
        .collect();
    format!(r#"{{"groups":[{}]}}"#, groups.join(","))
}

/// Starts the root with /etc/canopy-sched.json and waits for `children` child schedulers.
pub fn start_root_with_children(children: usize) -> String {
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

pub const STOP_ROOT: &str = r#"
canopy scheduler status --interval-ms 500 || true
kill -TERM $ROOT; wait $ROOT || true
cat /tmp/root.log
canopy-guest report root-stopped state="$(cat /sys/kernel/sched_ext/state)" log="$(tr '\n' '|' < /tmp/root.log)"
"#;

pub fn split_ratio(outcome: &canopy_vmtest::Outcome, kind: &str) -> anyhow::Result<(f64, f64)> {
    let split = outcome.result(kind)?;
    let ratio = split["ratio"].as_f64().unwrap_or(f64::NAN);
    let utilization = split["utilization"].as_f64().unwrap_or(f64::NAN);
    Ok((ratio, utilization))
}

/// Guest shell helpers: a cgroup's usage_usec, uptime in seconds, and a hog started in a cgroup.
pub const SHELL_HELPERS: &str = r#"
usage() { grep usage_usec /sys/fs/cgroup/$1/cpu.stat | cut -d' ' -f2; }
# both groups' usage_usec read by one process, so the two samples are taken together
usage_ab() { grep -h usage_usec /sys/fs/cgroup/ta/cpu.stat /sys/fs/cgroup/tb/cpu.stat | cut -d' ' -f2 | tr '\n' ' '; }
now() { cut -d' ' -f1 /proc/uptime; }
hog_in() { sh -c "echo \$\$ > /sys/fs/cgroup/$1/cgroup.procs; exec canopy-guest hog --threads 1" & }
"#;

/// Shell lines that start the daemon in the background as $DAEMON with `--mode MODE` (the mode,
/// then any further options: `scx --scope tenant`) and wait until its control socket answers
/// (its status in /tmp/status.json) and sched_ext is enabled.
pub fn start_daemon(mode: &str) -> String {
    format!(
        r#"
canopy run --policy /etc/canopy/policy.toml --mode {mode} >> /tmp/daemon.log 2>&1 &
DAEMON=$!
for i in $(seq 1 300); do
  if [ "$(cat /sys/kernel/sched_ext/state)" = enabled ] && canopy status --json > /tmp/status.json 2>/dev/null; then break; fi
  if ! kill -0 $DAEMON 2>/dev/null; then cat /tmp/daemon.log; break; fi
  usleep 100000
done
"#
    )
}
