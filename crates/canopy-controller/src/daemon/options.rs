// SPDX-License-Identifier: GPL-2.0-only
//! What `canopy run` passes to the daemon ([`DaemonOptions`], the scheduler loader's
//! [`ScxFactory`]), why the daemon may fail to start ([`DaemonError`]), and the instance lock
//! beside the control socket that keeps a second daemon from taking it over.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use canopy_policy::DaemonMode;
use canopy_sys::instance_lock::InstanceLock;
use tokio::sync::oneshot;

use super::{MetricsPeers, TaskWatcherFactory};
use crate::policy_port::{PlanLoader, PolicyPlan};
use crate::scx::ScxMaps;
use crate::server::Limits;

/// Starts the schedulers for the daemon's plan (the same `Plan` the controller gets; a
/// scheduler loader never compiles the policy itself) and opens their maps. Provided by the
/// scheduler loader in the root package. If the schedulers later stop on their own (the root
/// was ejected: SysRq-S, a watchdog stall, an error exit), the loader sends why on the
/// [`ScxEjected`] it was given, and the daemon switches to fallback mode.
pub type ScxFactory =
    Box<dyn FnOnce(&Arc<dyn PolicyPlan>, ScxEjected) -> Result<Box<dyn ScxMaps>, String> + Send>;

/// Where the scheduler loader reports, once, that the schedulers stopped on their own.
pub type ScxEjected = oneshot::Sender<String>;

/// Everything `canopy run` passes in.
pub struct DaemonOptions {
    /// Compiles the policy (start and every reload).
    pub loader: PlanLoader,
    /// The plan to start with, when the caller already compiled it with `loader` (the binary
    /// reads the `[daemon]` settings from it); `None`: the daemon calls `loader` at start.
    pub initial_plan: Option<Arc<dyn PolicyPlan>>,
    /// Policy files and directories to watch for changes.
    pub watch_paths: Vec<PathBuf>,
    /// Backend choice.
    pub mode: DaemonMode,
    /// The scx map provider, when this binary has the schedulers.
    pub scx: Option<ScxFactory>,
    /// The BPF cgroup move watcher, when this binary has it (both modes).
    pub move_watcher: Option<TaskWatcherFactory>,
    /// Control socket path.
    pub socket_path: PathBuf,
    /// Optional Prometheus listener (plain HTTP, `GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Who the metrics listener answers (loopback peers unless told otherwise).
    pub metrics_peers: MetricsPeers,
    /// cgroup2 mount (detected when `None`).
    pub cgroup_root: Option<PathBuf>,
    /// Manage only this cgroup subtree (relative to the cgroup2 root).
    pub cgroup_scope: Option<String>,
    /// Fallback mode: where changed tasks' and groups' originals are recorded so a restart
    /// after SIGKILL restores or re-adopts them (`canopy run`: /run/canopy/fallback-state.json);
    /// `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// SO_RCVBUF for the proc connector (tests shrink it to provoke overruns).
    pub proc_rcvbuf: Option<usize>,
    /// Control socket limits.
    pub limits: Limits,
    /// Install SIGHUP/SIGTERM/SIGINT handlers (the binary does; in-process tests don't).
    pub handle_signals: bool,
    /// Told once the daemon is ready (after the first scan).
    pub on_ready: Option<oneshot::Sender<()>>,
}

impl DaemonOptions {
    /// Options with defaults around a loader and a socket path.
    pub fn new(loader: PlanLoader, socket_path: PathBuf) -> Self {
        DaemonOptions {
            loader,
            initial_plan: None,
            watch_paths: Vec::new(),
            mode: DaemonMode::Auto,
            scx: None,
            move_watcher: None,
            socket_path,
            metrics_listen: None,
            metrics_peers: MetricsPeers::Loopback,
            cgroup_root: None,
            cgroup_scope: None,
            state_file: None,
            proc_rcvbuf: None,
            limits: Limits::default(),
            handle_signals: true,
            on_ready: None,
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The policy did not compile at start.
    #[error("policy does not compile:\n{0}")]
    Policy(String),
    /// `--mode scx` but scx is unavailable.
    #[error("scx mode unavailable: {0}")]
    ScxUnavailable(String),
    /// The proc connector could not be opened.
    #[error("proc connector: {0}")]
    ProcConnector(String),
    /// The control socket could not be bound.
    #[error("control socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Installing a signal handler failed.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    /// Another daemon holds the instance lock beside the control socket (or it could not be
    /// taken); the live daemon's socket is left alone.
    #[error("not starting (the control socket {socket} is left alone)")]
    AlreadyRunning {
        /// The control socket the other daemon serves.
        socket: PathBuf,
        /// Why the lock was refused.
        source: canopy_sys::instance_lock::InstanceLockError,
    },
}

/// The instance lock that guards a control socket: `<socket>.lock`, in the same run directory.
pub fn instance_lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    socket.with_file_name(name)
}

/// Takes the instance lock for `socket` (creating the run directory if needed), before anything
/// else of the daemon touches the socket, the crash record or the schedulers.
pub(super) fn lock_instance(socket: &Path) -> Result<InstanceLock, DaemonError> {
    let refused = |source| DaemonError::AlreadyRunning {
        socket: socket.to_path_buf(),
        source,
    };
    let path = instance_lock_path(socket);
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| {
            refused(canopy_sys::instance_lock::InstanceLockError::Io {
                path: path.clone(),
                source,
            })
        })?;
    }
    InstanceLock::acquire(&path).map_err(refused)
}
