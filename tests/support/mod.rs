//! What the root crate's host tests of the `canopy` binary share (`daemon_cli.rs`,
//! `hostile_loop.rs`): [`CliDaemon`], `canopy run` in fallback mode as the unit runs it, scoped to
//! a test cgroup of its own; one control request over its socket; a task's scheduling policy and
//! nice. Polling, the root check and made cgroups come from `canopy_controller::testing::host`,
//! which the controller's host tests use too.
#![allow(dead_code, unused_imports)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use canopy_controller::testing::host::{
    can_run_as_root, cgroup2_root, copy_for_other_users, remove_cgroup_tree, wait_for, MadeCgroups,
    RENAME_STORM_RULES,
};

/// `canopy ARGS` (the binary under test), waited for.
pub fn canopy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(args)
        .output()
        .expect("run canopy")
}

/// [`wait_for`], as a yes or no.
pub fn wait_until(limit: Duration, check: impl FnMut() -> bool) -> bool {
    wait_for(limit, check).is_some()
}

/// (policy, nice) of a process from /proc/PID/stat (fields 41 and 19).
pub fn policy_nice(pid: u32) -> (i64, i64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (f[38].parse().unwrap(), f[16].parse().unwrap())
}

/// One control request (a JSON line) on `socket`; the parsed reply.
pub fn call(socket: &Path, request: &str) -> std::io::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// `canopy run` as a subprocess, scoped to its own cgroup `canopy-cli-<name>-<pid>` (so the
/// tests of a file can run side by side), with its policy, socket, state file and log in a run
/// directory of its own (on tmpfs where there is one, as /run/canopy is). Stopped with SIGTERM
/// (its workloads killed, its cgroups and directory removed) when dropped.
pub struct CliDaemon {
    pub scope: String,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    daemon: Option<Child>,
    workloads: Vec<Child>,
}

impl CliDaemon {
    /// Writes `policy` (`{scope}` stands for the scope's cgroup path) and makes the scope
    /// cgroup with the `subgroups`; does not start the daemon yet.
    pub fn prepare(name: &str, policy: &str, subgroups: &[&str]) -> CliDaemon {
        CliDaemon::prepare_under("", name, policy, subgroups)
    }

    /// [`CliDaemon::prepare`] with the scope under the cgroup `parent` (which must exist).
    pub fn prepare_under(parent: &str, name: &str, policy: &str, subgroups: &[&str]) -> CliDaemon {
        let leaf = format!("canopy-cli-{name}-{}", std::process::id());
        let scope = if parent.is_empty() {
            leaf.clone()
        } else {
            format!("{parent}/{leaf}")
        };
        let cgroup = cgroup2_root().join(&scope);
        std::fs::create_dir_all(&cgroup).unwrap();
        for sub in subgroups {
            std::fs::create_dir_all(cgroup.join(sub)).unwrap();
        }
        let tmpfs = Path::new("/dev/shm");
        let base = if tmpfs.is_dir() {
            tmpfs.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(&leaf);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.toml"), policy.replace("{scope}", &scope)).unwrap();
        CliDaemon {
            scope,
            cgroup,
            dir,
            daemon: None,
            workloads: Vec::new(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The socket as a command-line argument.
    pub fn socket_arg(&self) -> String {
        self.socket().to_string_lossy().into_owned()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("fallback-state.json")
    }

    /// `canopy run POLICY --scope ... --socket ... --state-file ... EXTRA`, not started: at nice
    /// -5, as deploy/systemd/canopy.service runs the daemon.
    pub fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_canopy"));
        command
            .arg("run")
            .arg(self.dir.join("policy.toml"))
            .args(["--scope", &self.scope, "--socket", &self.socket_arg()])
            .arg("--state-file")
            .arg(self.state_file())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: setpriority in the child before exec.
        unsafe {
            command.pre_exec(|| {
                libc::setpriority(libc::PRIO_PROCESS, 0, -5);
                Ok(())
            })
        };
        command
    }

    /// Starts [`CliDaemon::command`] (its stderr to the log) and waits until it answers
    /// `status`; its pid.
    pub fn start(&mut self, extra: &[&str]) -> u32 {
        self.start_with(extra, |_| {})
    }

    /// [`CliDaemon::start`] with `adjust` applied to the command first (a `pre_exec` that takes
    /// a capability away, say).
    pub fn start_with(&mut self, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> u32 {
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let mut command = self.command(extra);
        adjust(&mut command);
        let daemon = command.stderr(log).spawn().unwrap();
        let pid = daemon.id();
        self.daemon = Some(daemon);
        let answered = wait_until(Duration::from_secs(30), || {
            call(&self.socket(), r#"{"cmd":"status"}"#).is_ok()
        });
        assert!(answered, "the daemon did not answer:\n{}", self.log());
        pid
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `canopy ARGS --socket SOCKET`.
    pub fn canopy(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let socket = self.socket_arg();
        all.extend(["--socket", &socket]);
        canopy(&all)
    }

    /// `canopy status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.canopy(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// `status` over the socket.
    pub fn status(&self) -> serde_json::Value {
        let reply = call(&self.socket(), r#"{"cmd":"status"}"#).expect("status answers");
        assert_eq!(reply["ok"], true, "{reply}");
        reply["result"].clone()
    }

    /// A counter from `status`.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Keeps `child` to be killed with the daemon; its pid.
    pub fn adopt(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.workloads.push(child);
        pid
    }

    /// Moves `pid` into the scope's cgroup `sub` ("" = the scope itself).
    pub fn move_into(&self, sub: &str, pid: u32) {
        std::fs::write(self.cgroup.join(sub).join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Spawns `sleep 300` (comm `sleep`) in the scope's cgroup `sub`.
    pub fn spawn_sleep_in(&mut self, sub: &str) -> u32 {
        let pid = self.adopt(Command::new("sleep").arg("300").spawn().unwrap());
        self.move_into(sub, pid);
        pid
    }

    /// Spawns a busy loop (`sh`, spinning) in the scope's cgroup `sub`.
    pub fn spawn_busy_in(&mut self, sub: &str) -> u32 {
        let busy = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = self.adopt(busy);
        self.move_into(sub, pid);
        pid
    }
}

impl Drop for CliDaemon {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: our own child.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let stopped = wait_until(Duration::from_secs(10), || {
                daemon.try_wait().ok().flatten().is_some()
            });
            if !stopped {
                let _ = daemon.kill();
            }
            let _ = daemon.wait();
        }
        for workload in &mut self.workloads {
            let _ = workload.kill();
            let _ = workload.wait();
        }
        remove_cgroup_tree(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
