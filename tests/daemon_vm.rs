// SPDX-License-Identifier: GPL-2.0-only
//! VM scenarios for the whole daemon in scx mode (issue 5's kernel-facing acceptance): `canopy
//! run --mode scx` loads the root scheduler, tags tasks by the policy into the schedulers' maps,
//! counts the root's refusal of a foreign sub-scheduler the policy does not admit, and when the
//! daemon is killed with SIGKILL the kernel is back on the fair scheduler within a second,
//! nothing stuck; a daemon restarted with `--mode auto` picks scx (and says why) and adopts
//! everything again; SIGTERM unloads cleanly.
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

/// Shell lines that start the daemon in the background as $DAEMON with `--mode MODE` and wait
/// until its control socket answers (its status in /tmp/status.json) and sched_ext is enabled.
fn start_daemon(mode: &str) -> String {
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

#[test]
fn daemon_in_scx_mode_tags_survives_sigkill_and_restarts() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/tenant
sleep 600 &
SLEEPER=$!
{start_scx}
usleep 500000
canopy-guest report started state="$(cat /sys/kernel/sched_ext/state)" ops="$(cat /sys/kernel/sched_ext/root/ops 2>/dev/null)" subs="$(ls /sys/kernel/sched_ext/root/sub 2>/dev/null | tr '\n' ' ')" tenant_id=$(stat -c %i /sys/fs/cgroup/tenant) mode="$(tr -d '\n' < /tmp/status.json | grep -o '"mode": *"[a-z]*"')" explain="$(canopy ctl explain --pid $SLEEPER --json | tr -d '\n')"
# A foreign sub-scheduler on a cgroup the policy admits none on: the root refuses it, and the
# daemon counts the refusal in status and metrics.
mkdir -p /sys/fs/cgroup/stranger
if canopy scheduler child --cgroup stranger --foreign-fixture --seconds 1 > /tmp/refused.log 2>&1; then attach_status=0; else attach_status=$?; fi
canopy status --json > /tmp/status.json
canopy ctl metrics > /tmp/metrics.txt
canopy-guest report refused-attach attach_status=$attach_status output="$(tr '\n' '|' < /tmp/refused.log)" status=@/tmp/status.json metric="$(grep '^canopy_refused_subsched_attaches_total' /tmp/metrics.txt)"
# SIGKILL: the kernel must unregister the schedulers on its own.
killed_at=$(cut -d' ' -f1 /proc/uptime)
kill -9 $DAEMON
while [ "$(cat /sys/kernel/sched_ext/state)" != disabled ]; do usleep 10000; done
disabled_at=$(cut -d' ' -f1 /proc/uptime)
canopy-guest hog --threads 2 --seconds 2
canopy-guest report after-kill state="$(cat /sys/kernel/sched_ext/state)" killed_at=$killed_at disabled_at=$disabled_at sleeper_alive=$(kill -0 $SLEEPER && echo yes || echo no)
# A restarted daemon adopts everything again; this time `--mode auto` must pick scx itself.
{start_auto}
usleep 500000
canopy-guest report restarted state="$(cat /sys/kernel/sched_ext/state)" explain="$(canopy ctl explain --pid $SLEEPER --json | tr -d '\n')" status=@/tmp/status.json
kill -TERM $DAEMON; wait $DAEMON; code=$?
canopy-guest report stopped state="$(cat /sys/kernel/sched_ext/state)" exit_code=$code
tail -n 30 /tmp/daemon.log
"#,
        start_scx = start_daemon("scx"),
        start_auto = start_daemon("auto"),
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

    // The root refused the foreign sub-scheduler the policy does not admit, and the daemon's
    // counter (status and Prometheus) shows it.
    let refused = outcome.result("refused-attach")?;
    println!(
        "foreign attach: exit {}, {}; daemon refused_subsched_attaches {}, metric {:?}",
        refused["attach_status"],
        refused["output"],
        refused["status"]["refused_subsched_attaches"],
        refused["metric"]
    );
    assert_ne!(
        refused["attach_status"], 0,
        "foreign_fifo attached where the policy admits no sub-scheduler: {refused}"
    );
    assert!(
        refused["status"]["refused_subsched_attaches"].as_u64() >= Some(1),
        "the daemon did not count the refusal: {refused}"
    );
    let metric = refused["metric"].as_str().unwrap_or_default();
    let counted = metric
        .strip_prefix("canopy_refused_subsched_attaches_total ")
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(counted >= Some(1), "ctl metrics: {metric:?}");

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
    // `--mode auto` on a kernel with sched_ext sub-schedulers picked scx and says why.
    let (mode, reason) = (
        &restarted["status"]["mode"],
        &restarted["status"]["mode_reason"],
    );
    println!("--mode auto: {mode} ({reason})");
    assert_eq!(mode, "scx", "{restarted}");
    assert!(
        reason
            .as_str()
            .is_some_and(|r| r.starts_with("auto:") && r.contains("sched_ext")),
        "status does not say why auto picked scx: {reason}"
    );
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

/// Acceptance (a) and (b) of issue 5 in scx mode, checked in the schedulers' `task_classes` map
/// rather than in the daemon's own view.
const CLAMP_POLICY: &str = r#"
[defaults]
class = "DEFAULT"

[daemon]
mode = "scx"
socket_path = "/run/canopy/control.sock"

[[rules]]
name = "storm"
comm = "canopy-guest"
class = "DEFAULT"
threads = [{ name = "w-*", class = "BACKGROUND" }, { name = "ui-*", class = "USER_INTERACTIVE" }]

[groups.app]
path = "app"

[groups.min]
path = "min"
[groups.min.states.minimized]
ceiling = "BACKGROUND"
"#;

/// Class ids in the map (`enum canopy_class` in bpf/intf.h).
const USER_INTERACTIVE: u64 = 0;
const BACKGROUND: u64 = 4;

#[test]
fn daemon_in_scx_mode_tags_a_rename_storm_and_clamps_moves_in_the_class_map() -> anyhow::Result<()>
{
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/app /sys/fs/cgroup/min
{start_daemon}
canopy ctl state min minimized
# (b): two USER_INTERACTIVE threads in app: one always busy (running or queued at each move),
# one waking every 2 ms like a UI thread; 20 round trips app -> min (minimized: ceiling
# BACKGROUND) -> app, each thread's first class decision after each move read from the move log.
canopy-guest hog --threads 1 --comm ui-busy & BUSY=$!
canopy-guest hog --threads 1 --comm ui-tick --busy-us 300 --sleep-us 2000 & TICK=$!
echo $BUSY > /sys/fs/cgroup/app/cgroup.procs
echo $TICK > /sys/fs/cgroup/app/cgroup.procs
i=0; until canopy-guest class-map --pid $TICK --comm-prefix ui- --kind tick-class | grep -q '"0":1' || [ $i -ge 100 ]; do usleep 50000; i=$((i+1)); done
canopy-guest move-probe --pid $BUSY --pid $TICK --comm-prefix ui- --to min --to-class {BACKGROUND} --back app --back-class {USER_INTERACTIVE} --rounds 20
canopy-guest class-map --pid $BUSY --comm-prefix ui- --kind busy-class-in-map
kill $BUSY $TICK
# (a): 1,000 threads created and renamed w-N; the storm reports its own creation time at the end.
canopy-guest storm --threads 1000 --renames 1 --name-prefix w- --hold-ms 15000 & STORM=$!
i=0; while [ $(ls /proc/$STORM/task | wc -l) -lt 1001 ] && [ $i -lt 600 ]; do usleep 100000; i=$((i+1)); done
sleep 2
canopy-guest class-map --pid $STORM --comm-prefix w- --kind storm-classes
canopy-guest class-map --pid $DAEMON --kind daemon-classes
canopy status --json > /tmp/status.json
canopy-guest report daemon status=@/tmp/status.json
wait $STORM
kill -TERM $DAEMON; wait $DAEMON
tail -n 30 /tmp/daemon.log
"#,
        start_daemon = start_daemon("scx"),
    );
    let outcome = Scenario::new("daemon-scx-clamp")
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .with_file_contents("/etc/canopy/policy.toml", CLAMP_POLICY, 0o644)
        .timeout(Duration::from_secs(300))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());

    let probe = outcome.result("move-probe")?;
    let storm = outcome.result("storm")?;
    let classes = outcome.result("storm-classes")?;
    let status = &outcome.result("daemon")?["status"];
    let own = outcome.result("daemon-classes")?;
    println!(
        "the daemon's own threads in the map: {} (class {USER_INTERACTIVE} = USER_INTERACTIVE)",
        own["classes"]
    );
    let worst_runnable = |name: &str| {
        probe[name]["max_runnable_move_to_decided_us"]
            .as_u64()
            .unwrap_or(u64::MAX)
    };
    let (to_max, back_max) = (worst_runnable("to"), worst_runnable("back"));
    println!(
        "scx (b): kernel move -> first class decision (enqueue or keep), threads runnable at the move (worst): into minimized {to_max} µs, back {back_max} µs; of those running (slice cut): {} / {}",
        probe["to"]["were_running"], probe["back"]["were_running"]
    );
    for name in ["to", "back"] {
        println!(
            "scx (b) {name}: runnable move -> decided µs {} (of which running at the move: {}); asleep at the move, move -> next wakeup µs {}; the writes took {} µs",
            probe[name]["runnable_move_to_decided_us"],
            probe[name]["running_move_to_decided_us"],
            probe[name]["sleeping_move_to_decided_us"],
            probe[name]["write_us"]
        );
    }
    println!(
        "scx: daemon's move (kernel attach timestamp) -> its own view re-clamped: p50 {} µs, p99 {} µs",
        status["move_latency_p50_us"], status["move_latency_p99_us"]
    );
    println!(
        "scx (a): 1000 threads created+renamed in {:.0} ms; map classes {}; daemon rename→applied p50 {} µs, p99 {} µs; events {}",
        storm["creation_s"].as_f64().unwrap_or(f64::NAN) * 1000.0,
        classes["classes"],
        status["apply_latency_p50_us"],
        status["apply_latency_p99_us"],
        status["events"]
    );

    // (b): every move of both threads was followed by a class decision (enqueue, or keeping it
    // running) giving the new class (BACKGROUND inside minimized, USER_INTERACTIVE back in app),
    // and for a thread runnable at the move it came within 10 ms of the kernel's move. A thread asleep at the move runs
    // no sooner than it wakes, and then as the new class. The schedulers clamp at enqueue by
    // the task's cgroup and cut a running task's slice at the move, so this holds without the
    // daemon; the map keeps the request.
    for name in ["to", "back"] {
        let d = &probe[name];
        assert_eq!(d["missed"], 0, "{name}: {d}");
        assert_eq!(
            d["wrong_class"].as_array().map(Vec::len),
            Some(0),
            "{name}: {d}"
        );
        assert_eq!(d["followed"], 40, "{name}: {d}");
        assert!(
            d["runnable_move_to_decided_us"].as_array().map(Vec::len) >= Some(20),
            "the busy thread is runnable at every move: {d}"
        );
    }
    assert!(
        to_max <= 10_000 && back_max <= 10_000,
        "a thread runnable at its move got its new class more than 10 ms after it: {probe}"
    );
    assert_eq!(
        outcome.result("busy-class-in-map")?["classes"][USER_INTERACTIVE.to_string()],
        1,
        "the map keeps the request"
    );
    assert!(
        status["counters"]["demotions_by_ceiling"].as_u64() >= Some(20),
        "{}",
        status["counters"]
    );
    // The moves reached the daemon through the BPF move watcher's ring buffer.
    println!(
        "move watcher: {}; counters {}",
        status["move_watcher"], status["counters"]
    );
    assert!(
        status["move_watcher"]
            .as_str()
            .unwrap_or_default()
            .contains("BPF ring buffer"),
        "{}",
        status["move_watcher"]
    );
    assert!(
        status["counters"]["moves_ring_buffer"].as_u64() >= Some(40),
        "{}",
        status["counters"]
    );

    // (a): all 1,000 renamed threads carry BACKGROUND in the map.
    assert_eq!(classes["threads"], 1000, "{classes}");
    assert_eq!(
        classes["classes"][BACKGROUND.to_string()],
        1000,
        "not every storm thread is BACKGROUND in task_classes: {classes}"
    );
    // The rename→applied p99 is printed above, not gated, for the same reason as the moves.

    // The daemon runs its own threads in the highest class (it must keep up with the storm).
    assert_eq!(
        own["classes"][USER_INTERACTIVE.to_string()],
        own["threads"],
        "{own}"
    );
    Ok(())
}

/// The policy before and after the reload in `sighup_reload_moves_the_schedulers_to_the_new_plan`:
/// tenant's weight goes from 200 to 400 (its canopy child re-attaches with the new weight) and
/// batch no longer asks for a canopy child (it is detached).
const RELOAD_BEFORE: &str = r#"
[daemon]
mode = "scx"
socket_path = "/run/canopy/control.sock"

[groups.tenant]
path = "tenant"
weight = 200
scheduler = "canopy"

[groups.batch]
path = "batch"
weight = 100
scheduler = "canopy"
"#;

const RELOAD_AFTER: &str = r#"
[daemon]
mode = "scx"
socket_path = "/run/canopy/control.sock"

[groups.tenant]
path = "tenant"
weight = 400
scheduler = "canopy"

[groups.batch]
path = "batch"
weight = 100
scheduler = "none"
"#;

/// The weight of the root's member on `cgroup_id`, if it has one.
fn member_weight(status: &serde_json::Value, cgroup_id: &serde_json::Value) -> Option<u64> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["cgroup_id"] == *cgroup_id)
        .and_then(|m| m["weight"].as_u64())
}

#[test]
fn sighup_reload_moves_the_schedulers_to_the_new_plan() -> anyhow::Result<()> {
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/tenant /sys/fs/cgroup/batch
{start_daemon}
canopy scheduler status --json --interval-ms 100 > /tmp/sched.json
canopy-guest report before tenant_id=$(stat -c %i /sys/fs/cgroup/tenant) batch_id=$(stat -c %i /sys/fs/cgroup/batch) subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" sched=@/tmp/sched.json status=@/tmp/status.json
cp /etc/canopy/after.toml /etc/canopy/policy.toml
kill -HUP $DAEMON
# A reload counts as done once the schedulers have followed it (the daemon waits for them).
i=0; until canopy status --json | tr -d ' \n' | grep -q '"reloads_ok":[1-9]' || [ $i -ge 200 ]; do usleep 50000; i=$((i+1)); done
# The policy file watcher reloads once more (the same plan: nothing changes); let it pass.
sleep 1
canopy scheduler status --json --interval-ms 100 > /tmp/sched.json
canopy status --json > /tmp/status.json
canopy-guest report after subs="$(ls /sys/kernel/sched_ext/root/sub | tr '\n' ' ')" sched=@/tmp/sched.json status=@/tmp/status.json
kill -TERM $DAEMON; wait $DAEMON
grep canopy: /tmp/daemon.log | tail -n 20
"#,
        start_daemon = start_daemon("scx"),
    );
    let outcome = Scenario::new("daemon-scx-reload")
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .with_file_contents("/etc/canopy/policy.toml", RELOAD_BEFORE, 0o644)
        .with_file_contents("/etc/canopy/after.toml", RELOAD_AFTER, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let before = outcome.result("before")?;
    let after = outcome.result("after")?;
    let (tenant, batch) = (&before["tenant_id"], &before["batch_id"]);
    let subs = |v: &serde_json::Value| v["subs"].as_str().unwrap_or_default().to_string();
    println!(
        "before: subs {}; tenant weight {:?}, batch weight {:?}",
        subs(before),
        member_weight(&before["sched"], tenant),
        member_weight(&before["sched"], batch)
    );
    println!(
        "after:  subs {}; tenant weight {:?}, batch weight {:?}; reloads_ok {}",
        subs(after),
        member_weight(&after["sched"], tenant),
        member_weight(&after["sched"], batch),
        after["status"]["counters"]["reloads_ok"]
    );

    assert!(subs(before).contains(&format!("sub-{tenant}")), "{before}");
    assert!(subs(before).contains(&format!("sub-{batch}")), "{before}");
    assert_eq!(
        member_weight(&before["sched"], tenant),
        Some(200),
        "{before}"
    );
    assert_eq!(
        member_weight(&before["sched"], batch),
        Some(100),
        "{before}"
    );

    assert!(
        after["status"]["counters"]["reloads_ok"].as_u64() >= Some(1),
        "{after}"
    );
    assert!(after["status"]["policy_error"].is_null(), "{after}");
    // One plan: the daemon's process compiled the policy once to start (the controller and
    // the scheduler supervisor share that plan) and once per reload, whatever the reload's
    // trigger (SIGHUP, then the policy file watcher).
    let compiles = |v: &serde_json::Value| v["status"]["counters"]["policy_compiles"].as_u64();
    let counter = |name: &str| after["status"]["counters"][name].as_u64().unwrap_or(0);
    println!(
        "policy compiles: {:?} at start, {:?} after {} reloads",
        compiles(before),
        compiles(after),
        counter("reloads_ok") + counter("reloads_failed")
    );
    assert_eq!(compiles(before), Some(1), "{before}");
    // A failed reload compiled once, or not at all when the file could not even be read.
    let compiled_after = compiles(after).unwrap_or(0);
    assert!(
        compiled_after >= 1 + counter("reloads_ok")
            && compiled_after <= 1 + counter("reloads_ok") + counter("reloads_failed"),
        "{compiled_after} compiles for one start and these reloads: {after}"
    );
    assert!(
        subs(after).contains(&format!("sub-{tenant}")),
        "tenant lost its child: {after}"
    );
    assert!(
        !subs(after).contains(&format!("sub-{batch}")),
        "batch's canopy child still attached after the reload removed it: {after}"
    );
    assert_eq!(member_weight(&after["sched"], tenant), Some(400), "{after}");
    assert_eq!(member_weight(&after["sched"], batch), None, "{after}");
    Ok(())
}

/// The policy before and after the reload in `a_reload_changes_the_class_of_untagged_tasks`:
/// the default class goes from DEFAULT (id 2, weight 655) to a custom class BULK inserted after
/// DEFAULT (id 3, weight 60), which also shifts UTILITY and BACKGROUND down by one.
const DEFAULT_CLASS_BEFORE: &str = r#"
[defaults]
class = "DEFAULT"

[daemon]
mode = "scx"
socket_path = "/run/canopy/control.sock"
"#;

const DEFAULT_CLASS_AFTER: &str = r#"
[defaults]
class = "BULK"

[daemon]
mode = "scx"
socket_path = "/run/canopy/control.sock"

[classes.BULK]
after = "DEFAULT"
weight = 60
"#;

/// Measures, in the guest, the CPU time of the reference hog ($REFERENCE) and the untagged hog
/// ($UNTAGGED) over the same 4 s, as results `<phase>-reference` and `<phase>-untagged`.
fn measure_hogs(phase: &str) -> String {
    format!(
        r#"
canopy-guest proc-stat --pid $REFERENCE --seconds 4 --kind {phase}-reference & P=$!
canopy-guest proc-stat --pid $UNTAGGED --seconds 4 --kind {phase}-untagged
wait $P
"#
    )
}

/// A reload moves the schedulers' default class: the daemon runs with `--scope tenant`, so two
/// hogs in the root cgroup are outside its scope and it never tags them. One is tagged DEFAULT
/// by hand (the reference); the other has no entry in `task_classes`, so the schedulers give it
/// the policy's default class from `policy_defaults`. Before the reload both are DEFAULT and
/// split the CPUs evenly; after a SIGHUP to a policy whose default is the custom BULK (weight
/// 60, id 3: the id shifted by the custom class) the untagged hog gets far less than the
/// reference, without any scheduler being loaded again.
#[test]
fn a_reload_changes_the_class_of_untagged_tasks() -> anyhow::Result<()> {
    let before = measure_hogs("before");
    let after = measure_hogs("after");
    let script = format!(
        r#"
mkdir -p /sys/fs/cgroup/tenant
canopy run --policy /etc/canopy/policy.toml --mode scx --scope tenant >> /tmp/daemon.log 2>&1 &
DAEMON=$!
for i in $(seq 1 300); do
  if [ "$(cat /sys/kernel/sched_ext/state)" = enabled ] && canopy status --json > /tmp/status.json 2>/dev/null; then break; fi
  if ! kill -0 $DAEMON 2>/dev/null; then cat /tmp/daemon.log; break; fi
  usleep 100000
done
canopy-guest hog --threads 2 --comm reference & REFERENCE=$!
canopy-guest hog --threads 2 --comm untagged & UNTAGGED=$!
canopy scheduler tag --tid $REFERENCE --class DEFAULT
sleep 1
{before}
canopy-guest report before-defaults dump="$(bpftool -j map dump pinned /sys/fs/bpf/canopy/policy_defaults)" root_ops="$(cat /sys/kernel/sched_ext/root/ops)" enable_seq=$(cat /sys/kernel/sched_ext/enable_seq)
cp /etc/canopy/after.toml /etc/canopy/policy.toml
kill -HUP $DAEMON
i=0; until canopy status --json | tr -d ' \n' | grep -q '"reloads_ok":[1-9]' || [ $i -ge 200 ]; do usleep 50000; i=$((i+1)); done
sleep 1
{after}
canopy status --json > /tmp/status.json
canopy-guest report after-defaults dump="$(bpftool -j map dump pinned /sys/fs/bpf/canopy/policy_defaults)" root_ops="$(cat /sys/kernel/sched_ext/root/ops)" enable_seq=$(cat /sys/kernel/sched_ext/enable_seq) status=@/tmp/status.json
kill $REFERENCE $UNTAGGED
kill -TERM $DAEMON; wait $DAEMON
grep canopy: /tmp/daemon.log | tail -n 20
"#
    );
    let outcome = Scenario::new("daemon-scx-reload-default-class")
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .with_debian_tools(&["bpftool"])
        .with_file_contents("/etc/canopy/policy.toml", DEFAULT_CLASS_BEFORE, 0o644)
        .with_file_contents("/etc/canopy/after.toml", DEFAULT_CLASS_AFTER, 0o644)
        .timeout(Duration::from_secs(200))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let default_plus_one = |phase: &str| -> anyhow::Result<Option<u64>> {
        let dump = &outcome.result(&format!("{phase}-defaults"))?["dump"];
        Ok(dump[0]["formatted"]["value"]["default_class_plus_one"].as_u64())
    };
    let ratio = |phase: &str| -> anyhow::Result<f64> {
        let cpu = |who: &str| -> anyhow::Result<f64> {
            Ok(outcome.result(&format!("{phase}-{who}"))?["cpu_seconds"]
                .as_f64()
                .unwrap_or(f64::NAN))
        };
        Ok(cpu("reference")? / cpu("untagged")?.max(0.01))
    };
    let (ratio_before, ratio_after) = (ratio("before")?, ratio("after")?);
    println!(
        "policy_defaults default_class_plus_one: before {:?}, after {:?}",
        default_plus_one("before")?,
        default_plus_one("after")?
    );
    println!(
        "reference (DEFAULT) : untagged CPU time: before {ratio_before:.2}:1, after {ratio_after:.2}:1"
    );
    let before_defaults = outcome.result("before-defaults")?;
    let after_defaults = outcome.result("after-defaults")?;
    assert_eq!(default_plus_one("before")?, Some(3), "{before_defaults}");
    assert_eq!(default_plus_one("after")?, Some(4), "{after_defaults}");
    assert!(
        after_defaults["status"]["counters"]["reloads_ok"].as_u64() >= Some(1),
        "{after_defaults}"
    );
    // the same root scheduler throughout: the reload rewrote a map, it did not load again
    assert_eq!(after_defaults["root_ops"], before_defaults["root_ops"]);
    assert_eq!(after_defaults["enable_seq"], before_defaults["enable_seq"]);
    assert!(
        (0.6..=1.6).contains(&ratio_before),
        "both hogs DEFAULT before the reload, yet split {ratio_before:.2}:1"
    );
    // 655:60 would be about 11:1 if the reference could use all the CPU the weights give it;
    // measured 2.37-2.73:1 in four runs under TCG (1.00-1.01:1 before the reload)
    assert!(
        ratio_after >= 2.0,
        "the untagged hog should run as BULK (60 against 655) after the reload, yet split {ratio_after:.2}:1"
    );
    Ok(())
}
