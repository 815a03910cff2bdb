// SPDX-License-Identifier: GPL-2.0-only
//! Step of the systemd-guest scenario (`systemd_guest.rs`, one boot for every Debian step):
//! canopy's Debian package (lintian without errors on the host) on a real Debian 13 with
//! systemd as PID 1, its whole life, as an administrator would live it:
//! 1. two services in `system.slice` with `CPUWeight=` 200 and 100 and two busy threads each
//!    split the CPU 2:1 within 10% under the fair scheduler (classic `smp` group shares);
//! 2. `apt install ./canopy_*.deb`: the unit is active (`Type=notify`, so systemd saw
//!    READY=1), `--mode auto` chose scx and `canopy status` says so; the same split under
//!    canopy, 2:1 within 10% as well, and the daemon's memory peak under 3/4 of MemoryMax;
//! 3. `systemctl reload` with a changed drop-in moves the policy hash; a broken drop-in keeps
//!    the old hash (and reports the error) and the unit stays active;
//! 4. `systemctl stop`: sched_ext disabled and every task's policy and nice as before canopy;
//! 5. SIGKILL to the daemon (what `systemctl kill -s KILL` sends): the fair scheduler back
//!    within 1 s, systemd restarts canopy and it takes the services' tasks again;
//! 6. upgrading to a rebuilt package (Debian revision 2) while it runs keeps the user's edit
//!    of the conffile and drop-in (same policy hash) and restarts the daemon;
//! 7. `apt purge`: no file of the package, no /etc/canopy, /run/canopy or pinned BPF object,
//!    no canopy process, no cgroup named canopy, sched_ext disabled.

use std::path::Path;

use canopy_vmtest::RunningGuest;

/// Where the systemd guest has the drop-in below from boot on (an administrator's file: the
/// package neither ships nor purges it).
pub const EMULATED_GUEST_DROP_IN_PATH: &str =
    "/etc/systemd/system/canopy.service.d/emulated-guest.conf";

/// TCG on a host loaded by builds loads the root scheduler 50-100x slower than hardware: more
/// than the daemon's default 60 s wait, after which `auto` would fall back. The administrator's
/// knob for slow machines raises it (the unit then asks systemd for the time).
pub const EMULATED_GUEST_DROP_IN: &str = "[Service]\nExecStart=\nExecStart=/usr/bin/canopy run --policy /etc/canopy --scheduler-start-timeout-s 600\n";

const SCRIPT: &str = r#"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
# every result carries the guest's uptime, so a slow run shows which stage took the time
report() { canopy-guest report "$@" uptime="$(cut -d" " -f1 /proc/uptime)"; }
usage() { awk '/^usage_usec/ {print $2}' /sys/fs/cgroup/system.slice/$1.service/cpu.stat; }
# split KIND: the two services' CPU time over 10 s.
split() {
  local a0 b0
  a0=$(usage hog-a); b0=$(usage hog-b)
  sleep 10
  report "$1" a_usec=$(( $(usage hog-a) - a0 )) b_usec=$(( $(usage hog-b) - b0 )) \
    fair_mode="$(cat /sys/kernel/debug/sched/cgroup_mode 2>/dev/null || echo unknown)" \
    sched_ext="$(cat /sys/kernel/sched_ext/state)"
}
status_field() { canopy status --json --interval-ms 100 | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1'))"; }
attrs() { ps -eo pid=,cls=,ni= | awk '{print $1, $2, $3}' | sort -k1,1; }
# Up to 10 min: an emulated guest on a loaded 2-core host needs minutes to load the root
# (the drop-in below); a real machine, under a second.
wait_active() {
  for _ in $(seq 3000); do
    [ "$(systemctl is-active canopy)" = active ] && canopy status --interval-ms 100 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  systemctl status canopy --no-pager || true
  journalctl -u canopy -b --no-pager | tail -n 60; return 1
}

# 1. The fair scheduler, classic group shares (7.3's default `concur` mode rounds runnable
#    counts and drifts between 1:1 and 4:1; tests/vm/fair_baseline.rs).
echo smp > /sys/kernel/debug/sched/cgroup_mode || true
systemd-run --quiet --unit=hog-a -p CPUWeight=200 /usr/local/bin/canopy-guest hog --threads 2
systemd-run --quiet --unit=hog-b -p CPUWeight=100 /usr/local/bin/canopy-guest hog --threads 2
sleep 2
split split-fair
attrs > /root/attrs-before

# 2. Install (the unit's drop-in for the emulated guest is in place from boot:
#    EMULATED_GUEST_DROP_IN).
apt-get install -y -q ./canopy_*-1_amd64.deb > /root/apt-install.log 2>&1 \
  || { cat /root/apt-install.log; exit 1; }
wait_active
report installed active="$(systemctl is-active canopy)" type="$(systemctl show -P Type canopy)" \
  enabled="$(systemctl is-enabled canopy)" mode="$(status_field mode)" \
  mode_reason="$(status_field mode_reason)" sched_ext="$(cat /sys/kernel/sched_ext/state)" \
  hog_class="$(ps -o cls= -p "$(systemctl show -P MainPID hog-a)" | tr -d ' ')" \
  memory_peak="$(cat /sys/fs/cgroup/system.slice/canopy.service/memory.peak)" \
  memory_max="$(systemctl show -P MemoryMax canopy)" \
  apt_log=@/root/apt-install.log
sleep 2
split split-canopy

# 3. Reload: a changed drop-in, then a broken one.
hash0=$(status_field policy_hash)
cat > /etc/canopy/policy.d/50-scenario.toml <<'EOF'
[[rules]]
name = "scenario-hogs"
comm = "canopy-guest"
class = "UTILITY"
EOF
systemctl reload canopy
for _ in $(seq 100); do [ "$(status_field policy_hash)" != "$hash0" ] && break; sleep 0.1; done
hash1=$(status_field policy_hash)
printf '[[rules]]\nname = "broken"\nclass = "NO_SUCH_CLASS"\n' > /etc/canopy/policy.d/60-broken.toml
systemctl reload canopy
for _ in $(seq 100); do [ "$(status_field policy_error)" != None ] && break; sleep 0.1; done
report reload hash_before="$hash0" hash_changed="$hash1" hash_after_broken="$(status_field policy_hash)" \
  policy_error="$(status_field policy_error)" active="$(systemctl is-active canopy)"
rm /etc/canopy/policy.d/60-broken.toml
systemctl reload canopy

# 4. Stop: everything back.
systemctl stop canopy
attrs > /root/attrs-after
# Only tasks that lived through the whole run are compared.
join /root/attrs-before /root/attrs-after | awk '$2 != $4 || $3 != $5' > /root/attrs-changed || true
report stopped sched_ext="$(cat /sys/kernel/sched_ext/state)" active="$(systemctl is-active canopy || true)" \
  compared="$(join /root/attrs-before /root/attrs-after | wc -l)" changed=@/root/attrs-changed

# 5. SIGKILL: the kernel falls back at once, systemd restarts canopy, which re-adopts.
# What counts here is that it ends up active, in scx mode (wait_active, then the `killed`
# result), whatever the emulated guest's load time.
systemctl start canopy || journalctl -u canopy --no-pager -n 20
wait_active
restarts0=$(systemctl show -P NRestarts canopy)
# The SIGKILL that `systemctl kill -s KILL canopy` sends, sent by the shell itself, so the time
# measured is canopy's death to the fair scheduler, not also the systemctl client's start-up
# (0.3-0.7 s of TCG time on a loaded host; it made one run read 1,074 ms). Bash builtins only
# between the two timestamps (/proc/uptime, 10 ms resolution).
main_pid=$(systemctl show -P MainPID canopy)
read -r killed_at _ < /proc/uptime
kill -KILL "$main_pid"
state=enabled
while [ "$state" != disabled ]; do read -r state < /sys/kernel/sched_ext/state; done
read -r disabled_at _ < /proc/uptime
fallback_ms=$(awk -v a="$killed_at" -v b="$disabled_at" 'BEGIN { printf "%d", (b - a) * 1000 }')
sleep 2
wait_active
for _ in $(seq 100); do [ "$(status_field mode)" = scx ] && break; sleep 0.1; done
report killed fallback_ms=$fallback_ms restarts=$(( $(systemctl show -P NRestarts canopy) - restarts0 )) \
  mode="$(status_field mode)" sched_ext="$(cat /sys/kernel/sched_ext/state)" \
  hog_class="$(ps -o cls= -p "$(systemctl show -P MainPID hog-a)" | tr -d ' ')"
# Nothing after this reads the services: the upgrade and the purge run without four busy
# threads beside them (under the fair scheduler, after the purge stops canopy, apt and dpkg got
# a quarter of the guest). Upgrade 29 -> 23 s, purge 28 -> 15 s of guest time (2026-12-05).
systemctl stop hog-a hog-b

# 6. Upgrade to a rebuilt package while running; the user's settings stay.
echo '# edited by the administrator' >> /etc/canopy/policy.toml
hash_user=$(status_field policy_hash)
pid_before=$(systemctl show -P MainPID canopy)
apt-get install -y -q ./canopy_*-2_amd64.deb > /root/apt-upgrade.log 2>&1 \
  || { cat /root/apt-upgrade.log; exit 1; }
wait_active
report upgraded version="$(dpkg-query -W -f='${Version}' canopy)" \
  conffile_kept="$(grep -c 'edited by the administrator' /etc/canopy/policy.toml)" \
  dropin_kept="$(test -f /etc/canopy/policy.d/50-scenario.toml && echo yes || echo no)" \
  hash_before="$hash_user" hash_after="$(status_field policy_hash)" \
  restarted="$([ "$(systemctl show -P MainPID canopy)" != "$pid_before" ] && echo yes || echo no)" \
  enabled="$(systemctl is-enabled canopy)" mode="$(status_field mode)"

# 7. Purge: nothing left.
dpkg-query -L canopy | while read -r path; do [ -d "$path" ] || echo "$path"; done > /root/package-files
apt-get purge -y -q canopy > /root/apt-purge.log 2>&1 || { cat /root/apt-purge.log; exit 1; }
{
  while read -r path; do [ -e "$path" ] && echo "$path"; done < /root/package-files
  for path in /etc/canopy /run/canopy /sys/fs/bpf/canopy /etc/systemd/system/multi-user.target.wants/canopy.service; do
    [ -e "$path" ] && echo "$path"
  done
  # the harness's own unit (canopy-scenario.service, which runs this script) is not the package's
  find /sys/fs/cgroup -name '*canopy*' ! -name canopy-scenario.service
  pgrep -a -x canopy
} > /root/left-behind || true
report purged files_checked="$(wc -l < /root/package-files)" left_behind=@/root/left-behind \
  sched_ext="$(cat /sys/kernel/sched_ext/state)" \
  unit="$(systemctl show -P LoadState canopy)"
"#;

fn ratio(split: &serde_json::Value) -> f64 {
    split["a_usec"].as_f64().unwrap_or(0.0) / split["b_usec"].as_f64().unwrap_or(1.0).max(1.0)
}

/// Debian's own package checker, on the host (scripts/install-deps.sh installs it).
pub fn lintian_reports_no_errors(package: &Path) -> anyhow::Result<()> {
    let lintian = std::process::Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(package)
        .output()?;
    println!(
        "lintian: {}",
        String::from_utf8_lossy(&lintian.stdout).trim()
    );
    assert!(
        lintian.status.success(),
        "lintian reports errors on {}:\n{}{}",
        package.display(),
        String::from_utf8_lossy(&lintian.stdout),
        String::from_utf8_lossy(&lintian.stderr)
    );
    Ok(())
}

/// Runs the package's life in the guest, which has revision 1 and 2 of the package in /root.
/// Ends with the package purged.
pub fn install_reload_stop_kill_upgrade_purge(guest: &RunningGuest) -> anyhow::Result<()> {
    let outcome = guest.run_script("debian-package", SCRIPT)?;
    println!("{}", outcome.summary());
    for kind in [
        "split-fair",
        "installed",
        "split-canopy",
        "reload",
        "stopped",
        "killed",
        "upgraded",
        "purged",
    ] {
        println!("{kind}: {}", outcome.result(kind)?);
    }

    let fair = outcome.result("split-fair")?;
    assert!(
        (ratio(fair) / 2.0 - 1.0).abs() <= 0.10,
        "fair split: {fair}"
    );

    let installed = outcome.result("installed")?;
    assert_eq!(installed["active"], "active", "{installed}");
    assert_eq!(installed["type"], "notify", "{installed}");
    assert_eq!(installed["enabled"], "enabled", "{installed}");
    assert_eq!(installed["mode"], "scx", "{installed}");
    assert_eq!(installed["sched_ext"], "enabled", "{installed}");
    // The unit's MemoryMax must leave room above what starting the schedulers takes: their
    // load's kernel memory (most likely the verifier's) is charged to the daemon's cgroup
    // (147 MB of peak, 27 MB steady, on 2026-12-04); at 128M the daemon was OOM-killed at
    // every start.
    let number = |key: &str| installed[key].as_u64();
    let (peak, max) = (number("memory_peak"), number("memory_max"));
    println!("canopy.service memory.peak {peak:?} bytes, MemoryMax {max:?}");
    assert!(
        matches!((peak, max), (Some(peak), Some(max)) if peak * 4 <= max * 3),
        "canopy.service peaked at {peak:?} bytes, MemoryMax {max:?}: under 3/4 of the limit expected"
    );

    let split = outcome.result("split-canopy")?;
    assert_eq!(split["sched_ext"], "enabled", "{split}");
    // Issue 12: 2:1 within 10% under canopy too, as for the fair scheduler above. History: on
    // 2026-12-03 the root's cpu.weight tree (bpf/cpu_tree.bpf.h) gave 1.62 and 1.77:1 (fair
    // 2.01:1 in the same boot; 1.05:1 before that tree). After the vtime-floor fix and the one
    // weight scale, five boots of this step on 2026-12-04 (host load 1.8-2.2 beside other
    // work) gave 1.98, 2.01, 1.97, 2.00, 2.01:1 (fair 1.99:1 in the first and fifth): the
    // worst is 0.015 from 2:1, the bound 0.10.
    println!(
        "canopy split of CPUWeight 200:100 under systemd: {:.2}:1 (2:1 within 10%)",
        ratio(split)
    );
    assert!(
        (ratio(split) / 2.0 - 1.0).abs() <= 0.10,
        "canopy split of CPUWeight 200:100 under systemd {:.2}:1, 2:1 within 10% expected: {split}",
        ratio(split)
    );

    let reload = outcome.result("reload")?;
    assert_ne!(reload["hash_changed"], reload["hash_before"], "{reload}");
    assert_eq!(
        reload["hash_after_broken"], reload["hash_changed"],
        "{reload}"
    );
    assert!(
        reload["policy_error"]
            .as_str()
            .is_some_and(|e| e.contains("60-broken.toml")),
        "{reload}"
    );
    assert_eq!(reload["active"], "active", "{reload}");

    let stopped = outcome.result("stopped")?;
    assert_eq!(stopped["sched_ext"], "disabled", "{stopped}");
    assert!(stopped["compared"].as_u64().unwrap_or(0) > 20, "{stopped}");
    assert_eq!(
        stopped["changed"], "",
        "tasks whose policy or nice changed: {stopped}"
    );

    let killed = outcome.result("killed")?;
    assert!(
        killed["fallback_ms"].as_u64().is_some_and(|ms| ms <= 1000),
        "{killed}"
    );
    assert_eq!(killed["restarts"], 1, "{killed}");
    assert_eq!(killed["mode"], "scx", "{killed}");
    assert_eq!(killed["sched_ext"], "enabled", "{killed}");
    assert_eq!(killed["hog_class"], installed["hog_class"], "{killed}");

    let upgraded = outcome.result("upgraded")?;
    assert!(
        upgraded["version"]
            .as_str()
            .is_some_and(|v| v.ends_with("-2")),
        "{upgraded}"
    );
    assert_eq!(upgraded["conffile_kept"], 1, "{upgraded}");
    assert_eq!(upgraded["dropin_kept"], "yes", "{upgraded}");
    assert_eq!(
        upgraded["hash_after"], upgraded["hash_before"],
        "{upgraded}"
    );
    assert_eq!(upgraded["restarted"], "yes", "{upgraded}");
    assert_eq!(upgraded["enabled"], "enabled", "{upgraded}");

    let purged = outcome.result("purged")?;
    assert!(
        purged["files_checked"].as_u64().unwrap_or(0) >= 10,
        "{purged}"
    );
    assert_eq!(purged["left_behind"], "", "{purged}");
    assert_eq!(purged["sched_ext"], "disabled", "{purged}");
    assert_eq!(purged["unit"], "not-found", "{purged}");
    Ok(())
}
