//! What the controller's host test binaries share (`host.rs`, `hostile.rs`): one test's world
//! ([`Env`]: a cgroup subtree, a policy file, a socket and the daemon running in-process in
//! fallback mode), the one-test-at-a-time lock with the root check, clients run as other uids,
//! and the base policy. What the root crate's host tests share too (polling, made cgroups) is in
//! `canopy_controller::testing::host`.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset

use std::io::BufRead;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use canopy_controller::daemon::{self, Daemon, DaemonOptions};
use canopy_controller::fallback::sched_getattr;
use canopy_controller::policy_adapter::loader;
use canopy_controller::protocol::{Request, Response};
use canopy_controller::server;
pub use canopy_controller::testing::host::{
    can_run_as_root, cgroup2_root, copy_for_other_users, remove_cgroup_tree, wait_for, MadeCgroups,
    TESTLOAD_POLICY,
};
use canopy_policy::DaemonMode;

static SERIAL: Mutex<()> = Mutex::new(());

pub const TESTLOAD: &str = env!("CARGO_BIN_EXE_canopy-testload");

/// Takes the one-test-at-a-time lock (the tests share the proc connector and the CPUs) once the
/// root check passes ([`can_run_as_root`]: cgroupfs writes, sched_setattr on other tasks);
/// `None` when the test is to be skipped.
pub fn exclusive() -> Option<MutexGuard<'static, ()>> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    can_run_as_root().then_some(serial)
}

/// One test's world: a cgroup subtree, a policy file, a socket, and the daemon.
pub struct Env {
    pub dir: PathBuf,
    pub cgroot: PathBuf,
    pub scope: String,
    pub rt: tokio::runtime::Runtime,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub daemon: Option<
        tokio::task::JoinHandle<
            Result<canopy_controller::backend::RestoreReport, daemon::DaemonError>,
        >,
    >,
    pub children: Vec<Child>,
}

impl Env {
    pub fn new(name: &str) -> Env {
        Env::new_under("", name)
    }

    /// An env whose cgroup subtree lies under `parent` (relative to the cgroup2 root; `""` for
    /// the root itself). The caller removes `parent` if it made it.
    pub fn new_under(parent: &str, name: &str) -> Env {
        let cgroot = cgroup2_root();
        let leaf = format!("canopy-host-{}-{name}", std::process::id());
        let scope = if parent.is_empty() {
            leaf.clone()
        } else {
            format!("{parent}/{leaf}")
        };
        let dir = std::env::temp_dir().join(&leaf);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(cgroot.join(&scope)).unwrap();
        // The daemon's threads inherit this thread's nice: -5, as deploy/systemd/canopy.service
        // gives the daemon (its workloads run as high as USER_INTERACTIVE, nice -4).
        // SAFETY: setpriority on the calling thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -5) };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            dir,
            cgroot,
            scope,
            rt,
            stop: None,
            daemon: None,
            children: Vec::new(),
        }
    }

    /// [`Env::new`] with [`base_policy`] written (no extra).
    pub fn with_base_policy(name: &str) -> Env {
        let env = Env::new(name);
        env.write_policy(&base_policy(&env, ""));
        env
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    pub fn cg(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.scope.clone()
        } else {
            format!("{}/{rel}", self.scope)
        }
    }

    pub fn mkcg(&self, rel: &str) -> PathBuf {
        let p = self.cgroot.join(self.cg(rel));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn move_pid(&self, rel: &str, pid: u32) {
        std::fs::write(
            self.cgroot.join(self.cg(rel)).join("cgroup.procs"),
            pid.to_string(),
        )
        .unwrap();
    }

    pub fn write_policy(&self, text: &str) {
        // Write then rename, as an editor would.
        let tmp = self.dir.join(".policy.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policy_path()).unwrap();
    }

    pub fn start(&mut self, tweak: impl FnOnce(&mut DaemonOptions)) {
        let mut opts = DaemonOptions::new(loader(vec![self.policy_path()]), self.socket());
        opts.mode = DaemonMode::Fallback;
        opts.cgroup_scope = Some(self.scope.clone());
        opts.watch_paths = vec![self.policy_path()];
        opts.handle_signals = false;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        opts.on_ready = Some(ready_tx);
        tweak(&mut opts);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = self.rt.spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            Daemon::start(opts).await?.run(stop).await
        });
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), ready_rx).await })
            .expect("daemon ready in time")
            .expect("daemon started");
        self.stop = Some(stop_tx);
        self.daemon = Some(handle);
    }

    /// Simulates SIGKILL: the daemon's task is dropped where it stands, restoring nothing.
    pub fn crash(&mut self) {
        let h = self.daemon.take().expect("running");
        h.abort();
        let _ = self.rt.block_on(h);
        // Only now: dropping the stop sender earlier would end the daemon cleanly.
        self.stop.take();
    }

    pub fn stop(&mut self) -> canopy_controller::backend::RestoreReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let h = self.daemon.take().expect("running");
        self.rt.block_on(h).expect("join").expect("daemon ran")
    }

    pub fn call(&self, req: Request) -> Response {
        self.rt
            .block_on(server::call(&self.socket(), &req, Duration::from_secs(10)))
            .expect("call")
    }

    pub fn status(&self) -> serde_json::Value {
        let r = self.call(Request::Status {});
        assert!(r.ok, "{r:?}");
        r.result.unwrap()
    }

    pub fn spawn(&mut self, args: &[&str]) -> (ChildStdin, BufReader<ChildStdout>, u32) {
        let mut c = Command::new(TESTLOAD)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = c.stdin.take().unwrap();
        let stdout = BufReader::new(c.stdout.take().unwrap());
        let pid = c.id();
        self.children.push(c);
        (stdin, stdout, pid)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The cgroup subtree (empty by now), deepest first.
        remove_cgroup_tree(&self.cgroot.join(&self.scope));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn read_until_ready(out: &mut BufReader<ChildStdout>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            panic!("workload ended early after {lines:?}");
        }
        let l = l.trim().to_string();
        if l == "ready" {
            return lines;
        }
        lines.push(l);
    }
}

pub fn nice_policy(tid: u32) -> Option<(i32, u32)> {
    sched_getattr(tid)
        .ok()
        .map(|a| (a.sched_nice, a.sched_policy))
}

pub const BATCH: u32 = 3;
pub const NORMAL: u32 = 0;
/// (nice, policy) the fallback backend gives USER_INTERACTIVE and BACKGROUND.
pub const INTERACTIVE: (i32, u32) = (-4, NORMAL);
pub const BACKGROUND: (i32, u32) = (4, BATCH);

/// Waits up to 5 s (a bound that catches a hang, not a speed target) for `tid` to get `attrs`
/// (nice, policy); how long it took. Panics with `what` and the task's attributes otherwise.
pub fn expect_attrs(tid: u32, attrs: (i32, u32), what: &str) -> Duration {
    wait_for(Duration::from_secs(5), || nice_policy(tid) == Some(attrs)).unwrap_or_else(|| {
        panic!(
            "{what}: task {tid} has (nice, policy) {:?}, not {attrs:?}",
            nice_policy(tid)
        )
    })
}

/// [`TESTLOAD_POLICY`] for this env's scope, with `extra` after it.
pub fn base_policy(env: &Env, extra: &str) -> String {
    format!(
        "{}{extra}\n",
        TESTLOAD_POLICY.replace("{scope}", &env.scope)
    )
}

pub fn group_state(env: &Env, rel: &str) -> String {
    let st = env.status();
    st["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["cgroup"] == env.cg(rel))
        .map(|g| g["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

pub fn explain(env: &Env, pid: u32) -> serde_json::Value {
    let r = env.call(Request::Explain { pid });
    assert!(r.ok, "{r:?}");
    r.result.unwrap()[0].clone()
}

/// Lets every uid reach the env's control socket (the unit's `canopy` group stands for this).
pub fn open_socket(env: &Env) {
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// `canopy-testload`, copied where other users can run it (`copy_for_other_users`: the env's
/// `bin`).
pub fn testload_for_other_users(env: &Env) -> PathBuf {
    copy_for_other_users(Path::new(TESTLOAD), &env.dir.join("bin"))
}

/// Runs `canopy-testload client` as `uid` against the env's socket; the reply line.
pub fn client_as(env: &Env, uid: u32, request: &serde_json::Value) -> String {
    use std::os::unix::process::CommandExt;
    let out = Command::new(testload_for_other_users(env))
        .args([
            "client",
            env.socket().to_str().unwrap(),
            &request.to_string(),
        ])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
