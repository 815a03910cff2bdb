// SPDX-License-Identifier: GPL-2.0-only
//! Scheduler scenarios: the root scheduler alone and its life cycle. It loads through the
//! loader (`canopy scheduler run`), survives a CPU load, stress-ng in every part of the
//! hierarchy and CPU hotplug, is loaded again when it asks for a restart, and unloads cleanly.
use std::time::Duration;

use crate::support::{
    children_config, start_root_with_children, SHELL_HELPERS, STOP_ROOT, WAIT_ROOT,
};

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
    let outcome = crate::scenario("sched-root-load").script(script).run()?;
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
    let outcome = crate::scenario("sched-stress")
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
    let outcome = crate::scenario("sched-restart-action")
        .script(script)
        .run()?;
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
    let outcome = crate::scenario("sched-hotplug")
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
