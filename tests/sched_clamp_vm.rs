// SPDX-License-Identifier: GPL-2.0-only
//! VM scenario: the schedulers enforce a group state's allowed classes themselves, at the
//! task's next enqueue (canopy.bpf.h task_class), without waiting for the controller to re-tag
//! the task. A cgroup's `group_policy` entry gets a BACKGROUND ceiling (as the controller writes
//! it for a `minimized` state); a cyclictest tagged USER_INTERACTIVE inside it is clamped (no
//! preempting wakeups, clamp counter grows), and moved out it preempts again.
use std::time::Duration;

use canopy_vmtest::Scenario;

#[test]
fn a_state_ceiling_clamps_a_tagged_task_at_enqueue() -> anyhow::Result<()> {
    // group_policy value: weight, guarantee_pct, cap_pct, nr_admitted (4 x u32), admitted
    // (4 x 32 bytes), ceiling_plus_one, floor_plus_one; BACKGROUND is id 4, so ceiling 5.
    let script = r#"
mkdir -p /sys/fs/cgroup/minimized
canopy scheduler run --config /etc/canopy-sched.json > /tmp/root.log 2>&1 &
ROOT=$!
for i in $(seq 1 300); do grep -q 'root scheduler enabled' /tmp/root.log && break; sleep 0.1; done
id=$(stat -c %i /sys/fs/cgroup/minimized)
key=$(printf '%016x' $id | sed 's/../& /g' | awk '{for(i=8;i>=1;i--) printf "%s ", $i}')
value="$(for i in $(seq 1 144); do printf '00 '; done)05 00 00 00 00 00 00 00"
bpftool map update pinned /sys/fs/bpf/canopy/group_policy key hex $key value hex $value
stats() { canopy scheduler status --json --interval-ms 10 | tr -d '\n '; }
hog() { sh -c "echo \$\$ > /sys/fs/cgroup/$1/cgroup.procs; exec canopy-guest hog --threads 2 --seconds 12" & }
hog minimized
sh -c 'echo $$ > /sys/fs/cgroup/minimized/cgroup.procs; exec cyclictest -q -t1 -i 2000 -D 4 > /dev/null' &
PROBE=$!
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 5 > /tmp/tag.log 2>&1
sleep 3
canopy-guest report inside status="$(stats)" procs="$(cat /sys/fs/cgroup/minimized/cgroup.procs | tr '\n' ' ')"
wait $PROBE
cyclictest -q -t1 -i 2000 -D 4 > /dev/null &
PROBE=$!
canopy scheduler tag --comm cyclictest --class USER_INTERACTIVE --watch-seconds 5 > /tmp/tag.log 2>&1
sleep 3
canopy-guest report outside status="$(stats)"
wait $PROBE
kill -TERM $ROOT; wait $ROOT || true
"#;
    let outcome = Scenario::new("sched-state-clamp")
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .with_debian_tools(&["cyclictest", "bpftool"])
        .with_file_contents(
            "/etc/canopy-sched.json",
            r#"{"default_class":"BACKGROUND"}"#,
            0o644,
        )
        .timeout(Duration::from_secs(150))
        .script(script)
        .run()?;
    println!("{}", outcome.summary());
    let stat = |kind: &str, name: &str| -> anyhow::Result<u64> {
        Ok(outcome.result(kind)?["status"]["stats"][name]
            .as_u64()
            .unwrap_or(0))
    };
    let preempting = |kind: &str| -> anyhow::Result<u64> {
        Ok(stat(kind, "wake_idle")?
            + stat(kind, "wake_preempt_local")?
            + stat(kind, "wake_preempt_remote")?
            + stat(kind, "wake_queued")?)
    };
    let (inside_clamped, inside_wakes) = (stat("inside", "class_clamped")?, preempting("inside")?);
    let outside_wakes = preempting("outside")? - inside_wakes;
    println!(
        "inside the minimized cgroup: {inside_clamped} clamped lookups, {inside_wakes} preempting \
         wakeups; outside: {outside_wakes} preempting wakeups"
    );
    assert!(inside_clamped > 100, "{}", outcome.result("inside")?);
    assert!(
        inside_wakes < 10,
        "a USER_INTERACTIVE task under a BACKGROUND ceiling still woke as a preempting class \
         {inside_wakes} times"
    );
    assert!(
        outside_wakes > 500,
        "moved out of the minimized cgroup, the task did not preempt again ({outside_wakes})"
    );
    Ok(())
}
