//! Host tests of the threat model (`docs/security.md`, issue 11): what an ordinary local user
//! tries against a root daemon in fallback mode on the live kernel, each attack a test that fails
//! on the code before its fix. Same world as `host.rs` (see `support/mod.rs`): the daemon runs
//! in-process, scoped to its own cgroup subtree; unprivileged callers are real uids (the client
//! is `canopy-testload client` run through `setuid`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use canopy_controller::fallback::sched_getattr;
use canopy_controller::state_file::thread_start_time;

mod support;
use support::*;

const FIFO: u32 = libc::SCHED_FIFO as u32;

/// A crash record as the daemon writes it (this boot), with an original of SCHED_FIFO 99 for
/// `tid` and an original `cpu.weight` of 5 for the cgroup `key`.
fn forged_record(tid: u32, key: &str) -> String {
    serde_json::json!({
        "version": 1,
        "boot_id": canopy_sys::procfs::boot_id().expect("boot id"),
        "tasks": [{"tid": tid, "start": thread_start_time(tid).expect("live"), "policy": FIFO,
            "flags": 0, "nice": 0, "priority": 99, "runtime": 0, "deadline": 0, "period": 0,
            "util_min": 0, "util_max": 1024}],
        "groups": {key: [["cpu.weight", "5"]]},
    })
    .to_string()
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Attack 1: a forged crash record (a symlink to one; one the `canopy` group may write; a
/// root-owned 0600 one whose entries escape: a `..` cgroup key and SCHED_FIFO 99 for a tid the
/// policy does not give RT) adopts nothing: the tid never becomes SCHED_FIFO, neither at start
/// nor when the daemon restores on stop, the file behind the `..` key keeps its value, and
/// `status` says what was refused.
#[test]
fn forged_crash_record_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let mut env = Env::new("forged");
    env.write_policy(&base_policy(&env, "")); // leave_realtime = true: RT/DL is not managed
    let (stdin, _out, victim) = env.spawn(&["idle"]);
    env.move_pid("", victim);
    // What a `..` key would write to: a directory outside the cgroup root.
    let outside = env.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("cpu.weight"), "100").unwrap();
    let depth = env.cgroot.components().count() - 1 + env.scope.split('/').count();
    let escape = format!("{}/{}{}", env.scope, "../".repeat(depth), outside.display());
    assert!(env.cgroot.join(&escape).join("cpu.weight").exists());

    let state = env.dir.join("run/fallback-state.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let elsewhere = env.dir.join("forged.json");
    write_mode(&elsewhere, &forged_record(victim, &escape), 0o600);
    let cases: [(&str, Box<dyn Fn()>, &str); 3] = [
        (
            "a symlink",
            Box::new(|| std::os::unix::fs::symlink(&elsewhere, &state).unwrap()),
            "symlink",
        ),
        (
            "a group-writable file",
            Box::new(|| write_mode(&state, &forged_record(victim, &escape), 0o660)),
            "mode 0660",
        ),
        (
            "escaping entries",
            Box::new(|| write_mode(&state, &forged_record(victim, &escape), 0o600)),
            "an RT/DL original",
        ),
    ];
    for (what, plant, reason) in cases {
        let _ = std::fs::remove_file(&state);
        plant();
        let path = state.clone();
        env.start(move |o| o.state_file = Some(path));
        assert!(
            wait_for(Duration::from_secs(5), || nice_policy(victim)
                == Some((-4, NORMAL)))
            .is_some(),
            "{what}: victim not tagged: {:?}",
            nice_policy(victim)
        );
        let notes = env.status()["notes"].to_string();
        assert!(
            notes.contains("refused") && notes.contains(reason),
            "{what}: {notes}"
        );
        if what == "escaping entries" {
            assert!(
                notes.contains("not a cgroup path below the root"),
                "{what}: {notes}"
            );
        }
        let report = env.stop();
        let attr = sched_getattr(victim).unwrap();
        assert_ne!(
            attr.sched_policy, FIFO,
            "{what}: the forged SCHED_FIFO 99 was adopted ({report:?})"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("cpu.weight")).unwrap(),
            "100",
            "{what}: a knob was written through the `..` key"
        );
        eprintln!(
            "attack 1, {what}: refused ({notes}); victim after stop: policy {} nice {}",
            attr.sched_policy, attr.sched_nice
        );
    }
    drop(stdin);
}
