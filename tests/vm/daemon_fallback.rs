// SPDX-License-Identifier: GPL-2.0-only
//! Scenario: the controller daemon in fallback mode on a kernel with the cgroup2 cpu controller
//! and UCLAMP_TASK (what the host lacks): a thread tagged USER_INTERACTIVE by a thread rule gets
//! nice -4 and uclamp.max 1024; switching its group to `minimized` (ceiling BACKGROUND, weight 20,
//! cap 50 %) demotes it to SCHED_BATCH nice 4 uclamp.max 256 and writes cpu.weight, cpu.max and
//! cpu.uclamp.max; SIGTERM puts every task attribute and every knob back as it was found. The
//! move into the group reaches the daemon through the BPF move watcher's ring buffer.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use canopy_vmtest::Outcome;

use crate::support::{part, parts_script, shared_run};

const POLICY: &str = r#"
[[rules]]
name = "hogs"
comm = "canopy-guest"
class = "DEFAULT"
threads = [{ name = "player*", class = "USER_INTERACTIVE" }]

[groups.app]
path = "tenant/app"
weight = 300
[groups.app.states.minimized]
ceiling = "BACKGROUND"
weight = 20
cap_percent = 50
user_settable = true
"#;

const SNAPSHOT: &str = "weight=@/sys/fs/cgroup/tenant/app/cpu.weight max=@/sys/fs/cgroup/tenant/app/cpu.max \
                        uclamp_max=@/sys/fs/cgroup/tenant/app/cpu.uclamp.max sched=@/proc/$hog/task/$tid/sched";

/// `key : value` lines of /proc/PID/sched.
fn sched_fields(v: &serde_json::Value) -> HashMap<String, String> {
    v["sched"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn knob(v: &serde_json::Value, k: &str) -> String {
    match &v[k] {
        serde_json::Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

/// The boot the fallback-mode tests share (`daemon-fallback`): part `fallback` (this file), then
/// part `storm` (`daemon_storm.rs`, its own daemon and policy file); each starts and stops its
/// own daemon, and a boot cost more than either needs besides.
pub fn fallback_part(name: &str) -> anyhow::Result<Outcome> {
    static SHARED: OnceLock<Result<Outcome, String>> = OnceLock::new();
    let outcome = shared_run(&SHARED, || {
        let parts = [
            ("fallback", fallback_script()),
            ("storm", crate::daemon_storm::storm_script()),
        ];
        crate::scenario("daemon-fallback")
            .with_file_contents("/etc/canopy/policy.toml", POLICY, 0o644)
            .with_file_contents(
                crate::daemon_storm::POLICY_PATH,
                crate::daemon_storm::POLICY,
                0o644,
            )
            .script(parts_script(&parts))
            .timeout(Duration::from_secs(240))
            .run()
            .map_err(anyhow::Error::from)
    })?;
    println!("{}", outcome.summary());
    part(outcome, name)
}

fn fallback_script() -> String {
    format!(
        r#"
mkdir -p /sys/fs/cgroup/tenant/app
echo +cpu > /sys/fs/cgroup/tenant/cgroup.subtree_control
canopy run --policy /etc/canopy/policy.toml --mode fallback --socket /run/canopy.sock > /tmp/canopy.log 2>&1 & pid=$!
canopy-guest wait-for --file /tmp/canopy.log --contains ready --pid $pid --timeout 60
canopy-guest hog --threads 1 --seconds 0 --comm player & hog=$!
sleep 1
tid=$hog
for t in /proc/$hog/task/*; do t=${{t##*/}}; [ "$t" != "$hog" ] && tid=$t; done
canopy-guest report before {SNAPSHOT}
echo $hog > /sys/fs/cgroup/tenant/app/cgroup.procs
sleep 1
canopy-guest report base {SNAPSHOT}
canopy ctl --socket /run/canopy.sock state tenant/app minimized
sleep 1
canopy-guest report minimized {SNAPSHOT}
canopy ctl --socket /run/canopy.sock explain --pid $tid --json > /tmp/explain.json
canopy status --socket /run/canopy.sock --json > /tmp/status.json
canopy-guest report daemon explain=@/tmp/explain.json status=@/tmp/status.json
kill -TERM $pid
wait $pid || echo "canopy exited $?"
canopy-guest report restored {SNAPSHOT}
canopy-guest report canopy-log log=@/tmp/canopy.log
kill $hog
"#
    )
}

#[test]
fn fallback_mode_applies_and_restores_task_attributes_and_cgroup_knobs() -> anyhow::Result<()> {
    let outcome = fallback_part("fallback")?;
    let before = outcome.result("before")?;
    let base = outcome.result("base")?;
    let minimized = outcome.result("minimized")?;
    let restored = outcome.result("restored")?;
    let daemon = outcome.result("daemon")?;
    let log = outcome.result("canopy-log")?["log"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (b, s, m, r) = (
        sched_fields(before),
        sched_fields(base),
        sched_fields(minimized),
        sched_fields(restored),
    );
    for (name, snap, f) in [
        ("before", before, &b),
        ("base", base, &s),
        ("minimized", minimized, &m),
        ("restored", restored, &r),
    ] {
        println!(
            "{name:9}: policy {} prio {} uclamp.max {} | cpu.weight {} cpu.max {} cpu.uclamp.max {}",
            f.get("policy").map(String::as_str).unwrap_or("?"),
            f.get("prio").map(String::as_str).unwrap_or("?"),
            f.get("uclamp.max").map(String::as_str).unwrap_or("?"),
            knob(snap, "weight"),
            knob(snap, "max"),
            knob(snap, "uclamp_max"),
        );
    }
    println!("explain: {}", daemon["explain"]);
    let notes = &daemon["status"]["notes"];
    assert!(
        !log.contains("uclamp unsupported"),
        "this kernel has UCLAMP_TASK: {log}"
    );
    // Base: USER_INTERACTIVE = SCHED_NORMAL nice -4 (prio 116), uclamp.max 1024; group weight 300.
    assert_eq!(s["policy"], "0", "{base}");
    assert_eq!(s["prio"], "116", "{base}");
    assert_eq!(s["uclamp.max"], "1024", "{base}");
    assert_eq!(knob(base, "weight"), "300");
    // Minimized: ceiling BACKGROUND = SCHED_BATCH nice 4 (prio 124), uclamp.max 256; knobs.
    assert_eq!(m["policy"], "3", "{minimized}");
    assert_eq!(m["prio"], "124", "{minimized}");
    assert_eq!(m["uclamp.max"], "256", "{minimized}");
    assert_eq!(knob(minimized, "weight"), "20");
    assert_eq!(knob(minimized, "max"), "100000 100000", "50 % of 2 CPUs");
    assert_eq!(minimized["uclamp_max"].as_f64(), Some(25.0), "{minimized}");
    assert_eq!(
        daemon["explain"][0]["effective"], "BACKGROUND",
        "{}",
        daemon["explain"]
    );
    assert_eq!(daemon["status"]["mode"], "fallback");
    // The move into tenant/app reached the daemon through the BPF move watcher's ring buffer
    // (fallback mode too), which is what tagged the hog USER_INTERACTIVE above.
    let counters = &daemon["status"]["counters"];
    println!("moves: {} ({counters})", daemon["status"]["move_watcher"]);
    assert!(
        daemon["status"]["move_watcher"]
            .as_str()
            .unwrap_or_default()
            .contains("BPF ring buffer"),
        "{}",
        daemon["status"]["move_watcher"]
    );
    assert!(
        counters["moves_ring_buffer"].as_u64() >= Some(1),
        "{counters}"
    );
    // SIGTERM restores what was there before the daemon touched anything: the hog was forked
    // (from a shell the daemon had tagged DEFAULT) after the daemon started, so its original is
    // its ancestors' original, SCHED_NORMAL nice 0 (prio 120) without a clamp; the knobs are as
    // `before` (the group was not managed yet).
    let _ = &b;
    assert_eq!(r["policy"], "0", "{restored}");
    assert_eq!(r["prio"], "120", "{restored}");
    assert_eq!(r["uclamp.max"], "1024", "{restored}");
    assert_eq!(knob(restored, "weight"), knob(before, "weight"));
    assert_eq!(knob(restored, "max"), knob(before, "max"));
    assert_eq!(knob(restored, "uclamp_max"), knob(before, "uclamp_max"));
    assert!(log.contains("stopped"), "{log}");
    let _ = notes;
    Ok(())
}
