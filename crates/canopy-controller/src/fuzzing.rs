//! The fuzz entry points, shared by the libFuzzer targets (`fuzz/fuzz_targets/control.rs`,
//! `crash_record.rs`, coverage-guided by `fuzz/run.sh`, bounded in CI) and the replay every `cargo test`
//! runs (`tests/fuzz.rs`: the checked-in seeds, then a few seconds of mutations). Each entry point
//! feeds arbitrary bytes to the code an attacker reaches and asserts the promises of the threat
//! model (`docs/security.md`); a panic is a finding.
//!
//! - [`ControlTarget`]: the control protocol, parse + authorize + handle, against an in-memory
//!   controller (the desktop test plan, a fake task source, a recording backend) whose cgroup
//!   root is a real temporary directory. The first input byte picks the caller (root, uid 1000
//!   or uid 1001), the rest is the request line.
//! - [`CrashRecordTarget`]: crash-record adoption, parse + validate, under both RT/DL rules.
//!   A record's task is "alive" when its `start` equals its `tid` (so seeds can be adopted).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::{inside_user_manager, Peer};
use crate::controller::{Controller, ControllerConfig};
use crate::daemon::handle_control;
use crate::policy_port::{PlanLoader, PolicyPlan};
use crate::protocol::{normalize_cgroup, parse_request, Request, Response};
use crate::state_file::{validate_record, AdoptRules, KNOB_FILES};
use crate::testing::{FakeSource, RecordingBackend, TestPlan};

/// The boot id fuzz records must carry to get past the boot check.
pub const FUZZ_BOOT_ID: &str = "fuzz-boot";

/// A temporary directory standing for the cgroup2 root, removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    /// A fresh directory with `dirs` made beneath it.
    fn new(what: &str, dirs: &[&str]) -> TempRoot {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "canopy-fuzz-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for dir in dirs {
            std::fs::create_dir_all(path.join(dir)).expect("fuzz cgroup root");
        }
        TempRoot(path)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// uid 1000's app scope in the fuzz cgroup root (owned by uid 1000 when run as root).
pub const USER_SCOPE: &str = "user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope";

/// The control protocol against an in-memory controller.
pub struct ControlTarget {
    ctl: Controller<RecordingBackend, FakeSource>,
    loader: PlanLoader,
    root: TempRoot,
}

impl Default for ControlTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlTarget {
    /// The desktop plan, a player process of uid 1000 (pid 100, threads 101 and 102) in
    /// [`USER_SCOPE`], and a root process (pid 200).
    pub fn new() -> Self {
        let root = TempRoot::new("control", &[USER_SCOPE, "system.slice"]);
        // SAFETY: trivial syscall.
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::os::unix::fs::chown(root.0.join(USER_SCOPE), Some(1000), Some(1000));
        }
        let mut source = FakeSource::default();
        source.spawn(100, "player", USER_SCOPE);
        source.thread(100, 101, "audio-0");
        source.thread(100, 102, "indexer");
        source.spawn(200, "sshd", "system.slice");
        if let Some(p) = source.processes.get_mut(&200) {
            p.uid = 0;
        }
        let plan: Arc<dyn PolicyPlan> = Arc::new(TestPlan::desktop());
        let reloaded = plan.clone();
        let loader: PlanLoader = Arc::new(move || Ok(reloaded.clone()));
        let mut ctl = Controller::new(
            plan,
            RecordingBackend::default(),
            source,
            ControllerConfig::default(),
        );
        ctl.rescan();
        ControlTarget { ctl, loader, root }
    }

    /// The cgroup root the target resolves request paths beneath.
    pub fn cgroup_root(&self) -> &Path {
        &self.root.0
    }

    /// One input: byte 0 picks the caller, the rest is a request line.
    pub fn run(&mut self, data: &[u8]) {
        let Some((&who, line)) = data.split_first() else {
            return;
        };
        let uid = match who % 3 {
            0 => 0,
            1 => 1000,
            _ => 1001,
        };
        let peer = Peer {
            uid,
            gid: uid,
            pid: Some(1),
        };
        let response = match parse_request(line) {
            Err(e) => Response::error(e.to_string()),
            Ok(request) => {
                let root = self.root.0.to_string_lossy().into_owned();
                let answer =
                    handle_control(&mut self.ctl, &self.loader, &root, peer, request.clone());
                check_answer(uid, &request, &answer, &root);
                answer
            }
        };
        let reply = response.to_line();
        assert_eq!(
            reply.matches('\n').count(),
            1,
            "reply is not one line: {reply:?}"
        );
        assert!(
            serde_json::from_str::<Response>(&reply).is_ok(),
            "reply does not parse: {reply:?}"
        );
    }
}

/// What a non-root caller must never be given: `tag`, `reload`, a state change outside its
/// own user manager, or an explanation of another user's task (uid 1000 owns pid 100, root
/// owns pid 200).
fn check_answer(uid: u32, request: &Request, answer: &Response, cgroup_root: &str) {
    if uid == 0 || !answer.ok {
        return;
    }
    match request {
        Request::Tag { .. } | Request::Reload {} => {
            panic!("uid {uid} was allowed {request:?}: {answer:?}")
        }
        Request::State { cgroup, .. } => {
            let rel = normalize_cgroup(cgroup, cgroup_root).expect("accepted, so normal");
            assert!(
                inside_user_manager(&rel, uid),
                "uid {uid} changed {cgroup:?}"
            );
        }
        Request::Explain { .. } => {
            let explained = answer.result.as_ref().and_then(|r| r.as_array());
            for task in explained.into_iter().flatten() {
                let owner = match task["tgid"].as_u64() {
                    Some(200) => 0,
                    _ => 1000,
                };
                assert_eq!(
                    owner, uid,
                    "uid {uid} was shown another user's task: {task}"
                );
            }
        }
        Request::Status {} | Request::Metrics {} => {}
    }
}

/// Crash-record adoption (parse + validate) under both RT/DL rules.
pub struct CrashRecordTarget {
    root: TempRoot,
}

impl Default for CrashRecordTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl CrashRecordTarget {
    /// A cgroup root with `app` and `user.slice/app` beneath it.
    pub fn new() -> Self {
        CrashRecordTarget {
            root: TempRoot::new("record", &["app", "user.slice/app"]),
        }
    }

    /// One input: a record's bytes.
    pub fn run(&mut self, data: &[u8]) {
        for realtime_managed in [false, true] {
            let rules = AdoptRules {
                cgroup_root: &self.root.0,
                realtime_managed,
            };
            let Ok(adopted) = validate_record(
                data,
                FUZZ_BOOT_ID,
                &rules,
                |tid| Some(u64::from(tid)),
                Path::new("fuzz.json"),
            ) else {
                continue;
            };
            for (tid, attr) in &adopted.tasks {
                assert!(
                    realtime_managed || !attr.policy().is_realtime(),
                    "tid {tid}: RT/DL adopted while not managed: {attr:?}"
                );
                assert!((-20..=19).contains(&attr.sched_nice), "{attr:?}");
            }
            for (cgroup, knobs) in &adopted.groups {
                assert!(
                    !cgroup.is_empty()
                        && !cgroup.starts_with('/')
                        && cgroup
                            .split('/')
                            .all(|c| !c.is_empty() && c != "." && c != ".."),
                    "cgroup key {cgroup:?} adopted"
                );
                assert!(
                    self.root.0.join(cgroup).is_dir(),
                    "{cgroup:?} does not exist"
                );
                assert!(
                    knobs.iter().all(|(f, _)| KNOB_FILES.contains(f)),
                    "{knobs:?}"
                );
            }
            assert!(
                adopted.refused.len() <= 9,
                "{} refusals named",
                adopted.refused.len()
            );
        }
    }
}
