//! What the controller's host test binaries share (`host.rs`, `hostile.rs`): one test's world
//! ([`Env`]: a cgroup subtree, a policy file, a socket and the daemon running in-process in
//! fallback mode), the root check, polling, and the base policy.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::BufRead;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use canopy_controller::daemon::{self, Daemon, DaemonOptions};
use canopy_controller::fallback::sched_getattr;
use canopy_controller::policy_adapter::loader;
use canopy_controller::protocol::{Request, Response};
use canopy_controller::server;
use canopy_policy::DaemonMode;
use canopy_sys::cgroup::CgroupHierarchy;

pub static SERIAL: Mutex<()> = Mutex::new(());

pub const TESTLOAD: &str = env!("CARGO_BIN_EXE_canopy-testload");

/// These tests need root (cgroupfs writes, sched_setattr on other tasks). Without it they fail,
/// so a non-root run cannot pass silently; `CANOPY_TESTS_WITHOUT_ROOT=1` skips them instead.
pub fn can_run() -> bool {
    // SAFETY: trivial syscall.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CANOPY_TESTS_WITHOUT_ROOT").is_some_and(|v| v == "1") {
        eprintln!("skipped: needs root (CANOPY_TESTS_WITHOUT_ROOT=1)");
        return false;
    }
    panic!("the host tests need root; run as root or set CANOPY_TESTS_WITHOUT_ROOT=1 to skip them");
}

/// One test's world: a cgroup subtree, a policy file, a socket, and the daemon.
pub struct Env {
    pub name: String,
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
        let cgroot = CgroupHierarchy::system().mount_point().to_path_buf();
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
            name: name.into(),
            dir,
            cgroot,
            scope,
            rt,
            stop: None,
            daemon: None,
            children: Vec::new(),
        }
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
        // Remove the cgroup subtree, deepest first (it must be empty by now).
        let root = self.cgroot.join(&self.scope);
        let mut dirs = Vec::new();
        fn collect(d: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        collect(&e.path(), out);
                    }
                }
            }
            out.push(d.to_path_buf());
        }
        collect(&root, &mut dirs);
        for d in dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.name;
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

/// Polls until `check` holds or `limit` passes; returns the time it took.
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    if check() {
        Some(start.elapsed())
    } else {
        None
    }
}

pub fn base_policy(env: &Env, extra: &str) -> String {
    format!(
        r#"
[[rules]]
name = "storm-children"
comm = "f-*"
class = "BACKGROUND"

[[rules]]
name = "testload"
comm = "canopy-testload"
class = "USER_INTERACTIVE"
threads = [{{ name = "w-*", class = "BACKGROUND" }}, {{ name = "f-*", class = "BACKGROUND" }}]

[groups.min]
path = "{scope}/min"
[groups.min.states.minimized]
ceiling = "BACKGROUND"
user_settable = true

[groups.app]
path = "{scope}/app"
[groups.app.states.focused]
user_settable = true
[groups.app.states.unfocused]
after_s = 1
ceiling = "BACKGROUND"
user_settable = true
{extra}
"#,
        scope = env.scope
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

/// Removes, deepest first, the cgroup directories a test made (and only those) when dropped.
pub struct MadeCgroups(pub Vec<PathBuf>);

impl MadeCgroups {
    /// Makes every missing directory of `rel` (relative to `root`), remembering which it made.
    pub fn make(root: &Path, rel: &str) -> MadeCgroups {
        let mut made = Vec::new();
        let mut path = root.to_path_buf();
        for part in rel.split('/') {
            path.push(part);
            match std::fs::create_dir(&path) {
                Ok(()) => made.push(path.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir {}: {e}", path.display()),
            }
        }
        MadeCgroups(made)
    }
}

impl Drop for MadeCgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
