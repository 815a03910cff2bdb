//! The daemon's wiring: compiles the policy once at start (or takes the plan the binary
//! compiled with the same loader) and hands that plan to the controller and, in scx mode, to the
//! scheduler loader; picks the mode from canopy-sys's kernel probe; starts the event sources
//! (`sources`: the proc connector; the BPF cgroup move watcher when the binary has it and the
//! kernel allows it, else inotify on cgroup.procs; inotify on the cgroup subtree and the policy
//! files; plus signals and timers here), subscribes before the first /proc scan, runs the
//! control socket and the optional metrics listener, reloads (the same loader) on SIGHUP or
//! policy file changes, writes the fallback backend's crash record, and on shutdown restores
//! everything it changed. All decisions stay in `controller`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use canopy_policy::DaemonMode;
use canopy_sys::cgroup::CgroupHierarchy;
use canopy_sys::instance_lock::InstanceLock;
use canopy_sys::sched_ext::KernelSupport;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::{authorize, Peer};
use crate::backend::{Backend, Mode, RestoreReport};
use crate::controller::resolve_request_cgroup;
use crate::controller::{Controller, ControllerConfig};
use crate::event::Event;
use crate::fallback::FallbackBackend;
use crate::policy_port::{PlanLoader, PolicyPlan};
use crate::procfs::ProcSource;
use crate::protocol::{Request, Response};
use crate::scx::{ScxBackend, ScxMaps};
use crate::sdnotify;
use crate::server::{self, ControlMsg, Limits};

mod metrics;
mod sources;
pub use metrics::MetricsPeers;
use sources::{
    read_focus_xattrs, start_watcher, subscribe_proc_events, translate, BorrowedRawFd, Input,
};
pub use sources::{MoveRecord, MoveSource, MoveWatcherFactory};

/// How often tracked processes' cgroups are re-read (moves no event reported).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Proc connector events one turn of the main loop handles at most (after coalescing each
/// thread's renames to its last): four batches of 64 datagrams, about 2 ms of work.
const PROC_EVENTS_PER_TURN: usize = 4 * canopy_sys::proc_events::MAX_BATCH;
/// Watcher inputs (cgroup and policy changes) one turn handles at most.
const INPUTS_PER_TURN: usize = 256;
/// The cgroup watch's overflows bring the reconcile forward, but no closer than this to the
/// last one (each re-reads every tracked process's cgroup).
const OVERFLOW_RECONCILE_GAP: Duration = Duration::from_secs(1);

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
    pub move_watcher: Option<MoveWatcherFactory>,
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
fn lock_instance(socket: &Path) -> Result<InstanceLock, DaemonError> {
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

/// Decides the mode from the user's choice and canopy-sys's kernel probe. Returns the mode and
/// the reason `status` shows (naming the probe's failed check when scx is not possible).
pub fn choose_mode(choice: DaemonMode, scx_built_in: bool) -> Result<(Mode, String), DaemonError> {
    let probe = KernelSupport::probe()
        .require_schedulers()
        .map_err(|missing| missing.to_string());
    match (choice, probe) {
        (DaemonMode::Fallback, _) => Ok((
            Mode::Fallback,
            "fallback requested (--mode fallback)".into(),
        )),
        (DaemonMode::Scx, Err(why)) => Err(DaemonError::ScxUnavailable(why)),
        (DaemonMode::Scx, Ok(())) if !scx_built_in => Err(DaemonError::ScxUnavailable(
            "this binary has no scheduler loader".into(),
        )),
        (DaemonMode::Scx, Ok(())) => Ok((Mode::Scx, "scx requested (--mode scx)".into())),
        (DaemonMode::Auto, Err(why)) => Ok((Mode::Fallback, format!("auto: {why}"))),
        (DaemonMode::Auto, Ok(())) if !scx_built_in => Ok((
            Mode::Fallback,
            "auto: kernel has sched_ext sub-schedulers but this binary has no scheduler loader"
                .into(),
        )),
        (DaemonMode::Auto, Ok(())) => Ok((
            Mode::Scx,
            "auto: kernel has sched_ext with cid-form ops and cgroup sub-schedulers".into(),
        )),
    }
}

/// The fallback backend, recording originals in `state_file` when given (and adopting RT/DL
/// originals from it only when the policy manages realtime tasks, `realtime_managed`).
fn fallback_backend(
    cgroup_root: &std::path::Path,
    state_file: Option<&PathBuf>,
    realtime_managed: bool,
) -> Box<dyn Backend> {
    let mut backend = FallbackBackend::new(cgroup_root.to_path_buf());
    if let Some(path) = state_file {
        backend = backend.with_state_file(path.clone(), realtime_managed);
    }
    Box::new(backend)
}

/// The schedulers stopped on their own (`why`, from the root's exit record): every task and
/// group goes to the fallback backend, and `status` says so.
fn fall_back_after_ejection(
    ctl: &mut Controller<Box<dyn Backend>, ProcSource>,
    cgroup_root: &std::path::Path,
    state_file: Option<&PathBuf>,
    why: &str,
) {
    tracing::error!(reason = %why, "the sched_ext schedulers were ejected; switching to fallback mode");
    let started = Instant::now();
    let realtime_managed = ctl.plan().manage_realtime();
    let mut scx = ctl.switch_backend(
        fallback_backend(cgroup_root, state_file, realtime_managed),
        format!("scx ejected, fallback since: {why}"),
    );
    // The schedulers are gone; their orphaned maps keep nothing anyone reads.
    let _ = scx.restore_all();
    ctl.persist_state(true);
    let _ = sdnotify::notify("STATUS=fallback (the schedulers were ejected)");
    tracing::info!(
        tasks = ctl.task_count(),
        took_ms = started.elapsed().as_millis() as u64,
        "fallback mode"
    );
}

/// A started daemon: the controller with its plan and backend, subscribed to every event
/// source, its first scan done and the control socket listening. [`Daemon::start`] gets it
/// there; [`Daemon::run`] serves until shutdown and restores what it changed.
pub struct Daemon {
    /// Held until the daemon is dropped: one daemon per control socket.
    instance: InstanceLock,
    opts: DaemonOptions,
    ctl: Controller<Box<dyn Backend>, ProcSource>,
    cgroup_root: PathBuf,
    inputs: (mpsc::Sender<Input>, mpsc::Receiver<Input>),
    proc_events: canopy_sys::proc_events::ProcEvents,
    move_source: Option<Box<dyn MoveSource>>,
    move_fd: Option<tokio::io::unix::AsyncFd<BorrowedRawFd>>,
    watch_task: Option<tokio::task::JoinHandle<()>>,
    control: (mpsc::Sender<ControlMsg>, mpsc::Receiver<ControlMsg>),
    server_task: tokio::task::JoinHandle<()>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    signals: (mpsc::Sender<bool>, mpsc::Receiver<bool>),
    signal_task: Option<tokio::task::JoinHandle<()>>,
    /// In scx mode: resolves with why the schedulers stopped on their own.
    scx_ejected: Option<oneshot::Receiver<String>>,
}

impl Daemon {
    /// Compiles the policy (unless the caller passed the plan it compiled with the same
    /// loader), picks the mode, builds the backend (in scx mode the scheduler loader starts
    /// from this same plan), subscribes to the event sources before the first /proc scan,
    /// binds the control socket and tells `on_ready` and systemd.
    pub async fn start(mut opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let instance = lock_instance(&opts.socket_path)?;
        let plan = match opts.initial_plan.take() {
            Some(plan) => plan,
            None => (opts.loader)().map_err(DaemonError::Policy)?,
        };
        let cgroup_root = opts
            .cgroup_root
            .clone()
            .unwrap_or_else(|| CgroupHierarchy::system().mount_point().to_path_buf());
        let (mut mode, mut mode_reason) = choose_mode(opts.mode, opts.scx.is_some())?;
        let (ejected_tx, ejected) = oneshot::channel::<String>();
        let mut scx_ejected = None;
        let mut scx_maps = None;
        if mode == Mode::Scx {
            match (opts.scx.take().expect("checked by choose_mode"))(&plan, ejected_tx) {
                Ok(maps) => {
                    scx_maps = Some(maps);
                    scx_ejected = Some(ejected);
                }
                // `auto` falls back when the schedulers do not load; `scx` insists.
                Err(why) if opts.mode == DaemonMode::Auto => {
                    tracing::error!(error = %why, "the schedulers did not load; falling back");
                    mode = Mode::Fallback;
                    mode_reason = format!("auto: the schedulers did not load: {why}");
                }
                Err(why) => return Err(DaemonError::ScxUnavailable(why)),
            }
        }
        let backend = match scx_maps {
            Some(maps) => Box::new(ScxBackend::new(maps, cgroup_root.clone())) as Box<dyn Backend>,
            None => fallback_backend(
                &cgroup_root,
                opts.state_file.as_ref(),
                plan.manage_realtime(),
            ),
        };
        tracing::info!(mode = mode.label(), reason = %mode_reason, policy = %plan.hash(), "starting");

        let listener = server::bind(&opts.socket_path).map_err(|source| DaemonError::Socket {
            path: opts.socket_path.clone(),
            source,
        })?;

        // Subscribe to events before the first scan so nothing falls between the two.
        let (in_tx, in_rx) = mpsc::channel::<Input>(65536);
        let proc_events = subscribe_proc_events(opts.proc_rcvbuf)?;
        // The move watcher's ring buffer is polled right here (no thread hop between the kernel's
        // wakeup and the controller).
        let (move_source, move_fd) = match opts.move_watcher.take().map(|start| {
            start().and_then(|source| {
                // SAFETY: the fd belongs to `source`, which outlives the AsyncFd: the two are
                // bound together below (dropped in reverse order, and explicitly at the end).
                unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        BorrowedRawFd(source.fd()),
                        tokio::io::Interest::READABLE,
                    )
                }
                .map(|fd| (source, fd))
                .map_err(|e| format!("polling the move_events ring buffer: {e}"))
            })
        }) {
            Some(Ok((source, fd))) => (Some(source), Some(fd)),
            Some(Err(error)) => {
                tracing::warn!(%error, "BPF cgroup move watcher unavailable; moves are seen through inotify on cgroup.procs and a {}-s reconcile", RECONCILE_EVERY.as_secs());
                (None, None)
            }
            None => (None, None),
        };
        let move_watcher = if move_source.is_some() {
            "BPF ring buffer (cgroup_attach_task tracepoint) + reconcile".to_string()
        } else {
            format!(
                "inotify on cgroup.procs + reconcile every {} s",
                RECONCILE_EVERY.as_secs()
            )
        };
        tracing::info!(source = %move_watcher, "cgroup moves");
        let watch_root = match &opts.cgroup_scope {
            Some(s) => cgroup_root.join(s),
            None => cgroup_root.clone(),
        };
        let watch_task = start_watcher(
            in_tx.clone(),
            cgroup_root.clone(),
            &watch_root,
            &opts.watch_paths,
            move_source.is_none(),
        );

        let config = ControllerConfig {
            cgroup_scope: opts.cgroup_scope.clone(),
            mode_reason,
            move_watcher,
            daemon_pid: Some(std::process::id()),
        };
        let mut ctl = Controller::new(plan, backend, ProcSource::new(cgroup_root.clone()), config);
        ctl.rescan();
        // Focus xattrs already set before we started.
        for (cgroup, focus) in read_focus_xattrs(&cgroup_root, opts.cgroup_scope.as_deref()) {
            ctl.handle(Event::FocusChanged { cgroup, focus }, Instant::now());
        }

        let (ctl_tx, ctl_rx) = mpsc::channel::<ControlMsg>(256);
        let server_task = tokio::spawn(server::serve(listener, ctl_tx.clone(), opts.limits));
        let metrics_task = match opts.metrics_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Metrics { addr, source })?;
                Some(tokio::spawn(metrics::serve(
                    l,
                    opts.metrics_peers,
                    ctl_tx.clone(),
                )))
            }
            None => None,
        };

        // Signals arrive as messages: true = stop (SIGTERM/SIGINT), false = reload (SIGHUP).
        let (sig_tx, sig_rx) = mpsc::channel::<bool>(8);
        let signal_task = if opts.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
            let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
            let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
            let sig_tx = sig_tx.clone();
            Some(tokio::spawn(async move {
                loop {
                    let stop = tokio::select! {
                        _ = hup.recv() => false,
                        _ = term.recv() => true,
                        _ = int.recv() => true,
                    };
                    if sig_tx.send(stop).await.is_err() {
                        return;
                    }
                }
            }))
        } else {
            None
        };

        // Originals a crashed predecessor recorded and this daemon did not take over go back now;
        // what it did take over is on record again at once.
        ctl.settle_adopted();
        ctl.persist_state(true);
        let _ = sdnotify::notify("READY=1\nSTATUS=tagging");
        if let Some(r) = opts.on_ready.take() {
            let _ = r.send(());
        }
        tracing::info!(tasks = ctl.task_count(), "ready");
        Ok(Daemon {
            instance,
            opts,
            ctl,
            cgroup_root,
            inputs: (in_tx, in_rx),
            proc_events,
            move_source,
            move_fd,
            watch_task,
            control: (ctl_tx, ctl_rx),
            server_task,
            metrics_task,
            signals: (sig_tx, sig_rx),
            signal_task,
            scx_ejected,
        })
    }

    /// Serves until `shutdown` resolves (or SIGTERM/SIGINT when signals are handled), then
    /// restores what it changed and returns the restore report.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RestoreReport, DaemonError> {
        let Daemon {
            instance,
            opts,
            mut ctl,
            cgroup_root,
            inputs: (_in_tx, mut in_rx),
            mut proc_events,
            mut move_source,
            move_fd,
            watch_task,
            control: (_ctl_tx, mut ctl_rx),
            server_task,
            metrics_task,
            signals: (_sig_tx, mut sig_rx),
            signal_task,
            mut scx_ejected,
        } = self;
        let mut proc_batch: Vec<canopy_sys::proc_events::ProcEvent> = Vec::with_capacity(64);
        let mut move_batch: Vec<MoveRecord> = Vec::with_capacity(64);
        let mut moves_lost_seen = 0u64;

        let cgroup_root_str = cgroup_root.to_string_lossy().into_owned();
        let mut policy_debounce: Option<Instant> = None;
        // Moves that no event reports are caught by a periodic re-read of tracked cgroups.
        let mut reconcile =
            tokio::time::interval_at(Instant::now() + RECONCILE_EVERY, RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile_due = Instant::now() + RECONCILE_EVERY;
        let mut last_reconcile: Option<Instant> = None;
        // The fallback backend's crash record is written at most this often (when it changed).
        let mut persist = tokio::time::interval_at(
            Instant::now() + crate::state_file::FLUSH_EVERY,
            crate::state_file::FLUSH_EVERY,
        );
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let timer = match (ctl.next_deadline(), policy_debounce) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Unbiased: among the ready sources one is picked at random, and each does a bounded
            // amount of work per turn (`*_PER_TURN`), so none can starve the others: a rename
            // storm costs control requests and state flushes at most one proc-event turn each.
            tokio::select! {
                _ = &mut shutdown => break,
                ejected = async {
                    match scx_ejected.as_mut() {
                        Some(ejected) => ejected.await,
                        None => std::future::pending().await,
                    }
                } => {
                    scx_ejected = None;
                    // A dropped sender without a reason: the loader's thread ended some other way.
                    let why = ejected.unwrap_or_else(|_| "the scheduler thread ended".into());
                    fall_back_after_ejection(&mut ctl, &cgroup_root, opts.state_file.as_ref(), &why);
                }
                Some(stop) = sig_rx.recv() => {
                    if stop {
                        break;
                    }
                    tracing::info!("SIGHUP: reloading policy");
                    let _ = reload(&mut ctl, &opts.loader);
                }
                received = proc_events.recv_batch(&mut proc_batch) => {
                    match received {
                        Ok(_) => {
                            // Whatever else is queued now, up to the turn's budget, so that a
                            // storm's renames of one thread coalesce into its last name.
                            while proc_batch.len() < PROC_EVENTS_PER_TURN
                                && matches!(proc_events.try_recv_batch(&mut proc_batch), Ok(n) if n > 0)
                            {}
                            let coalesced = canopy_sys::proc_events::coalesce_renames(&mut proc_batch);
                            ctl.stats.counters.renames_coalesced += coalesced as u64;
                            let now = Instant::now();
                            for ev in proc_batch.drain(..) {
                                if let Some(e) = translate(&ev) {
                                    ctl.handle(e, now);
                                }
                            }
                            // A busy machine keeps this branch ready; due timers (deferred overrun
                            // rescans, delayed states) must not wait for a quiet moment.
                            if ctl.next_deadline().is_some_and(|d| d <= Instant::now()) {
                                ctl.fire_timers(Instant::now());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "proc connector receive failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                ready = async {
                    match &move_fd {
                        Some(fd) => fd.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Ok(mut guard) = ready else { continue };
                    // Clear first: a record that lands after the drain raises a fresh edge.
                    guard.clear_ready();
                    if let Some(source) = move_source.as_mut() {
                        let lost = source.drain(&mut move_batch);
                        let now = Instant::now();
                        for m in move_batch.drain(..) {
                            ctl.handle(
                                Event::TaskMoved {
                                    tid: m.tid,
                                    threadgroup: m.threadgroup,
                                    timestamp_ns: Some(m.timestamp_ns),
                                },
                                now,
                            );
                        }
                        if lost > moves_lost_seen {
                            tracing::warn!(count = lost - moves_lost_seen, "cgroup move events lost (ring buffer full): rescanning");
                            ctl.stats.counters.moves_lost += lost - moves_lost_seen;
                            moves_lost_seen = lost;
                            ctl.handle(Event::Overrun, now);
                        }
                    }
                }
                input = in_rx.recv() => {
                    let Some(input) = input else { break };
                    let now = Instant::now();
                    let mut next = Some(input);
                    // Drain a batch without yielding to keep per-event overhead low.
                    let mut budget = INPUTS_PER_TURN;
                    while let Some(i) = next {
                        match i {
                            Input::Event(e) => ctl.handle(e, now),
                            Input::PolicyChanged => policy_debounce = Some(now + Duration::from_millis(200)),
                            Input::CgroupsOverflowed => {
                                // Memberships are re-read by the reconcile, brought forward but
                                // run at most once a second however often the watch overflows.
                                ctl.stats.counters.cgroup_watch_overflows += 1;
                                let at = last_reconcile.map_or(now, |last| now.max(last + OVERFLOW_RECONCILE_GAP));
                                if at < reconcile_due {
                                    reconcile.reset_at(at);
                                    reconcile_due = at;
                                }
                            }
                        }
                        budget -= 1;
                        next = if budget > 0 { in_rx.try_recv().ok() } else { None };
                    }
                }
                _ = persist.tick() => ctl.persist_state(false),
                _ = reconcile.tick() => {
                    let now = Instant::now();
                    last_reconcile = Some(now);
                    reconcile_due = now + RECONCILE_EVERY;
                    let moved = ctl.reconcile_cgroups();
                    if moved > 0 {
                        tracing::info!(moved, "reconcile found cgroup moves no event reported");
                    }
                }
                msg = ctl_rx.recv() => {
                    if let Some(msg) = msg {
                        let response = handle_control(&mut ctl, &opts.loader, &cgroup_root_str, msg.peer, msg.request);
                        let _ = msg.reply.send(response);
                    }
                }
                // Disabled while there is no timer (the future is made, never polled).
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                    let now = Instant::now();
                    if policy_debounce.is_some_and(|d| d <= now) {
                        policy_debounce = None;
                        tracing::info!("policy files changed; reloading");
                        let _ = reload(&mut ctl, &opts.loader);
                    }
                    ctl.fire_timers(now);
                }
            }
        }

        let _ = sdnotify::notify("STOPPING=1");
        tracing::info!("stopping: restoring original attributes");
        if let Some(t) = &watch_task {
            t.abort();
        }
        server_task.abort();
        if let Some(m) = metrics_task {
            m.abort();
        }
        if let Some(t) = signal_task {
            t.abort();
        }
        let report = ctl.restore_all();
        let _ = std::fs::remove_file(&opts.socket_path);
        // Only now may another daemon take over the socket.
        drop(instance);
        drop(in_rx);
        drop(proc_events);
        drop(move_fd);
        drop(move_source);
        if let Some(t) = watch_task {
            let _ = t.await;
        }
        tracing::info!(
            restored = report.tasks_restored,
            gone = report.tasks_gone,
            groups = report.groups_restored,
            failures = report.failures.len(),
            "stopped"
        );
        Ok(report)
    }
}

fn reload<B: Backend, S: crate::backend::TaskSource>(
    ctl: &mut Controller<B, S>,
    loader: &PlanLoader,
) -> Result<String, String> {
    let _ = sdnotify::notify(&sdnotify::reloading_message());
    let result = match loader() {
        Ok(plan) => {
            let hash = plan.hash();
            ctl.install_plan(plan);
            tracing::info!(policy = %hash, "policy reloaded");
            Ok(hash)
        }
        Err(e) => {
            ctl.record_reload_error(e.clone());
            Err(e)
        }
    };
    let _ = sdnotify::notify("READY=1");
    result
}

/// Carries out one control request for `peer` (authorization included).
pub fn handle_control<B: Backend, S: crate::backend::TaskSource>(
    ctl: &mut Controller<B, S>,
    loader: &PlanLoader,
    cgroup_root: &str,
    peer: Peer,
    request: Request,
) -> Response {
    ctl.stats.counters.api_requests += 1;
    let request = match request {
        Request::State { cgroup, state } => {
            match resolve_request_cgroup(&cgroup, cgroup_root, peer.uid) {
                Ok(c) => Request::State { cgroup: c, state },
                Err(e) => {
                    if e.is_refusal() {
                        ctl.stats.counters.api_refused += 1;
                    } else {
                        ctl.stats.counters.api_errors += 1;
                    }
                    return Response::error(e.to_string());
                }
            }
        }
        other => other,
    };
    let plan = ctl.plan().clone();
    if let Err(refusal) = authorize(&peer, &request, plan.as_ref(), |pid| ctl.process_uid(pid)) {
        ctl.stats.counters.api_refused += 1;
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, %refusal, "control request refused");
        return Response::error(refusal.to_string());
    }
    let now = Instant::now();
    let result: Result<serde_json::Value, String> = match request {
        Request::State { cgroup, state } => ctl
            .request_state(&cgroup, &state, now)
            .map(|()| serde_json::json!({"cgroup": cgroup, "state": state}))
            .map_err(|e| e.to_string()),
        Request::Tag { pid, tid, class } => {
            let (id, whole) = match (pid, tid) {
                (Some(p), _) => (p, true),
                (None, Some(t)) => (t, false),
                (None, None) => unreachable!("protocol checks tag targets"),
            };
            ctl.request_tag(id, whole, &class)
                .map(|tids| serde_json::json!({"tagged": tids, "class": class}))
                .map_err(|e| e.to_string())
        }
        Request::Explain { pid } => ctl
            .explain(pid)
            .map(|v| serde_json::to_value(v).unwrap_or_default())
            .map_err(|e| e.to_string()),
        Request::Status {} => Ok(serde_json::to_value(ctl.snapshot(now)).unwrap_or_default()),
        Request::Metrics {} => {
            Ok(serde_json::json!({"text": ctl.snapshot(now).render_prometheus()}))
        }
        Request::Reload {} => reload(ctl, loader).map(|hash| serde_json::json!({"policy": hash})),
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => {
            ctl.stats.counters.api_errors += 1;
            Response::error(e)
        }
    }
}
