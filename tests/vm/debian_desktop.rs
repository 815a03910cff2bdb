// SPDX-License-Identifier: GPL-2.0-only
//! Step of the systemd-guest scenario (`systemd_guest.rs`, one boot for every Debian step):
//! a desktop session on Debian 13 with systemd, canopy installed from its package and running.
//! A lingering user 1000 (`user@1000.service`, in group `canopy`) starts apps as
//! `systemd-run --user --scope` in `app.slice`, as a desktop does:
//! - GNOME's focus xattr (`user.xdg.inactive-since`, a `CLOCK_MONOTONIC` time in µs, set by the
//!   user on the app's scope) puts the app in `unfocused` after the state's `after_s` (2 s
//!   here), not before, and removing it puts the app back in `focused`;
//! - the KWin hook's helper (`/usr/libexec/canopy-wm-state`, run as the user over the control
//!   socket) switches the app to `minimized` and back;
//! - a build (`make -j`-like: 4 spinning `cc1` threads, BACKGROUND) in one scope does not slow
//!   a USER_INTERACTIVE wakeup probe (2 ms timer) in another beyond the latency scenario's
//!   bound: p99 at most PROBE_P99_TIMES_FLOOR times the platform floor, the same probe as
//!   SCHED_FIFO 50 under the same load on the fair scheduler (measured first, same boot).

use canopy_vmtest::RunningGuest;

/// The probe's p99 under canopy, beside the build, at most this many times the floor (the same
/// probe as SCHED_FIFO 50 beside the same build under the fair scheduler, same boot). Set from
/// seven boots of this step, canopy p99 / floor p99 (ms): 4.7/3.9 = 1.21 (2026-12-03, the full
/// systemd guest); 6.40/3.96 = 1.61 (2026-12-03 23:35, the suite at host load near 10: failed
/// the 1.5 it had from that one run); on 2026-12-04 at host load 1.8-3.6 beside the suite,
/// the step alone on a fresh boot: 5.18/3.97 = 1.31, 6.31/4.01 = 1.58, 5.06/4.04 = 1.25,
/// 4.33/3.94 = 1.10, 5.57/4.04 = 1.38; on 2026-12-06 at host load 1.4-2.0, the step alone:
/// 1.45, 1.54, 1.56, 1.56, 1.45 (p50 0.67-0.88 ms against 0.20-0.23). Worst 1.61; the bound
/// leaves 0.39 above it. The turn timer (docs/scheduler-benchmark.md, 2026-12-06) failed it in
/// two boots of six (2.05 and 2.06, p50 1.1 ms) and is not in the tree. The canopy
/// probe also shares its 8 s with the script's `pgrep` and `canopy ctl explain`, which the
/// floor's does not.
const PROBE_P99_TIMES_FLOOR: f64 = 2.0;

/// Where the step's policy is put in the guest (at boot, with the other payload files).
pub const POLICY_PATH: &str = "/root/desktop-policy.toml";

pub const POLICY: &str = r#"
# The desktop scenario's policy: policies/desktop.toml's app group with a 2 s unfocus delay.
[defaults]
class = "DEFAULT"

[daemon]
mode = "auto"

[[rules]]
name = "build"
comm = "{make,cc1}"
class = "BACKGROUND"
inherit = true

# The probe's threads are named `probe`; its process keeps the binary's name, so `comm` never
# matched it (explain showed DEFAULT). A thread rule of the binary, named by its full path in a
# root-owned directory, as policies/desktop.toml matches a browser's Renderer threads (a
# thread name alone never raises an unprivileged task, docs/security.md).
[[rules]]
name = "probe"
exe = "/usr/local/bin/canopy-guest"
class = "DEFAULT"
threads = [{ name = "probe", class = "USER_INTERACTIVE" }]

[groups.apps]
path = "user.slice/user-*.slice/user@*.service/app.slice/app-*.scope"
weight = 100
default_state = "focused"

[groups.apps.states.focused]
user_settable = true

[groups.apps.states.unfocused]
after_s = 2
ceiling = "BACKGROUND"
user_settable = true

[groups.apps.states.minimized]
ceiling = "BACKGROUND"
user_settable = true
"#;

const SCRIPT: &str = r#"
export LC_ALL=C DEBIAN_FRONTEND=noninteractive
# After the Ansible step canopy is installed; on a fresh boot (this step again after an
# emulator fault) the package is installed here.
if ! dpkg-query -W -f='${Status}' canopy 2>/dev/null | grep -q 'install ok installed'; then
  apt-get install -y -q /root/canopy_*-2_amd64.deb > /root/apt-install.log 2>&1 \
    || { cat /root/apt-install.log; exit 1; }
fi
cp /root/desktop-policy.toml /etc/canopy/policy.toml
rm -rf /etc/canopy/policy.d
systemctl restart canopy
useradd -m -u 1000 -G canopy -s /bin/bash desk
loginctl enable-linger desk
for _ in $(seq 300); do [ "$(systemctl is-active user@1000.service)" = active ] && break; sleep 0.2; done
as_user() { runuser -u desk -- env XDG_RUNTIME_DIR=/run/user/1000 "$@"; }
apps=/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice
as_user systemd-run --user --scope --quiet --unit=app-editor \
  /usr/local/bin/canopy-guest hog --threads 1 --sleep-us 9000 --busy-us 1000 > /dev/null 2>&1 &
for _ in $(seq 100); do [ -d $apps/app-editor.scope ] && break; sleep 0.1; done
state_of() {
  canopy status --json --interval-ms 100 | python3 -c "
import json, sys
for group in json.load(sys.stdin).get('groups', []):
    if group['cgroup'].endswith('/app.slice/$1.scope'):
        print(group['state'])"
}
wait_state() { for _ in $(seq 100); do [ "$(state_of "$1")" = "$2" ] && return 0; sleep 0.1; done; return 0; }
wait_state app-editor focused
initial=$(state_of app-editor)

# GNOME: Mutter writes g_get_monotonic_time() (µs) when the app loses focus, and removes it
# (or writes -1) when it regains focus.
as_user canopy-guest xattr set $apps/app-editor.scope user.xdg.inactive-since \
  "$(awk '{printf "%d", $1 * 1000000}' /proc/uptime)"
sleep 0.5
early=$(state_of app-editor)
wait_state app-editor unfocused
late=$(state_of app-editor)
as_user canopy-guest xattr remove $apps/app-editor.scope user.xdg.inactive-since
wait_state app-editor focused
canopy-guest report gnome-focus initial="$initial" after_half_s="$early" after_delay="$late" \
  after_remove="$(state_of app-editor)"

# KWin: the hook's helper, as the user, over the control socket.
editor=$(head -n1 $apps/app-editor.scope/cgroup.procs)
as_user /usr/libexec/canopy-wm-state minimized-$editor
wait_state app-editor minimized
minimized=$(state_of app-editor)
as_user /usr/libexec/canopy-wm-state focused-$editor
wait_state app-editor focused
canopy-guest report kwin-hook minimized="$minimized" restored="$(state_of app-editor)"

# A build in one scope, an interactive probe in another: the floor first (fair scheduler, the
# probe as SCHED_FIFO 50, which the user may not set: run by root), then under canopy.
systemctl stop canopy
as_user systemd-run --user --scope --quiet --unit=app-build \
  /usr/local/bin/canopy-guest hog --threads 4 --comm cc1 > /dev/null 2>&1 &
sleep 2
chrt -f 50 /usr/local/bin/canopy-guest wakeprobe --mode timer --interval-us 2000 --seconds 8 \
  --comm probe --kind probe-floor
systemctl start canopy
for _ in $(seq 300); do canopy status --interval-ms 100 >/dev/null 2>&1 && break; sleep 0.2; done
sleep 2
as_user systemd-run --user --scope --quiet --unit=app-probe \
  /usr/local/bin/canopy-guest wakeprobe --mode timer --interval-us 2000 --seconds 8 --comm probe \
  --kind probe-canopy &
probe_runner=$!
sleep 1
# the probe's threads are named `probe`; its process keeps the binary's name
probe_pid=$(pgrep -n -f 'wakeprobe .*--kind probe-canopy' || true)
canopy ctl explain --pid "${probe_pid:-0}" --json > /root/probe-explain.json 2>&1 || true
wait $probe_runner
canopy status --json > /root/probe-status.json 2>&1 || true
canopy-guest report probe-class explain=@/root/probe-explain.json status=@/root/probe-status.json
canopy-guest report desktop-mode \
  mode="$(canopy status --json --interval-ms 100 | python3 -c 'import json,sys; print(json.load(sys.stdin)["mode"])')" \
  sched_ext="$(cat /sys/kernel/sched_ext/state)"
as_user systemctl --user stop app-build.scope app-editor.scope || true
"#;

/// Runs the desktop session in a guest with revision 2 of the package in /root (installed
/// first unless it is) and [`POLICY`] at [`POLICY_PATH`]; leaves canopy running that policy.
pub fn focus_kwin_hook_and_build_load(guest: &RunningGuest) -> anyhow::Result<()> {
    let outcome = guest.run_script("desktop-session", SCRIPT)?;
    println!("{}", outcome.summary());
    for kind in [
        "gnome-focus",
        "kwin-hook",
        "desktop-mode",
        "probe-floor",
        "probe-canopy",
    ] {
        println!("{kind}: {}", outcome.result(kind)?);
    }
    // What canopy made of the probe (printed: the p99 gate below is the claim).
    if let Ok(class) = outcome.result("probe-class") {
        println!("probe-class: {class}");
    }
    let gnome = outcome.result("gnome-focus")?;
    assert_eq!(gnome["initial"], "focused", "{gnome}");
    assert_eq!(
        gnome["after_half_s"], "focused",
        "not before after_s: {gnome}"
    );
    assert_eq!(gnome["after_delay"], "unfocused", "{gnome}");
    assert_eq!(gnome["after_remove"], "focused", "{gnome}");
    let kwin = outcome.result("kwin-hook")?;
    assert_eq!(kwin["minimized"], "minimized", "{kwin}");
    assert_eq!(kwin["restored"], "focused", "{kwin}");
    let mode = outcome.result("desktop-mode")?;
    assert_eq!(mode["mode"], "scx", "{mode}");
    let floor = outcome.result("probe-floor")?["p99_us"]
        .as_f64()
        .unwrap_or(f64::MAX);
    let canopy = outcome.result("probe-canopy")?["p99_us"]
        .as_f64()
        .unwrap_or(f64::MAX);
    assert!(
        canopy <= PROBE_P99_TIMES_FLOOR * floor,
        "USER_INTERACTIVE probe p99 {canopy} µs under the build, floor (SCHED_FIFO) {floor} µs, \
         bound {PROBE_P99_TIMES_FLOOR}x"
    );
    Ok(())
}
