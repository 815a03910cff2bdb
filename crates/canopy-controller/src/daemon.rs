//! The daemon's wiring: picks the mode, starts the event sources (proc connector; the BPF cgroup
//! move watcher when the binary has it and the kernel allows it, else inotify on cgroup.procs;
//! inotify on the cgroup subtree for mkdir/rmdir and focus xattrs and on the policy files with
//! their `policy.d` drop-ins, both through canopy-sys's `Watcher`; signals; timers), subscribes
//! before the first /proc scan, runs the control socket and the optional metrics listener,
//! reloads on SIGHUP or policy file changes, writes the fallback backend's crash record, and on
//! shutdown restores everything it changed. All decisions stay in `controller`.

use std::collections::HashMap;
use std::ffi::CString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use canopy_sys::watch::{WatchEvent, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::{authorize, Peer};
use crate::backend::{Backend, Mode, RestoreReport};
use crate::controller::{Controller, ControllerConfig};
use crate::event::Event;
use crate::fallback::FallbackBackend;
use crate::plan::{ClassId, ClassParams, GroupKnobs, PlanLoader, PolicyPlan, ScxGroupPolicy};
use crate::procfs::{detect_cgroup2_root, ProcSource};
use crate::protocol::{normalize_cgroup, Request, Response};
use crate::scx::{ScxBackend, ScxMaps};
use crate::sdnotify;
use crate::server::{self, ControlMsg, Limits};

/// How often tracked processes' cgroups are re-read (moves no event reported).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// How the user asked to pick the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    /// scx when the kernel has sched_ext with sub-schedulers and the scx backend is built in.
    Auto,
    /// scx or fail.
    Scx,
    /// sched_setattr + cgroup knobs.
    Fallback,
}

impl std::str::FromStr for ModeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ModeChoice::Auto),
            "scx" => Ok(ModeChoice::Scx),
            "fallback" => Ok(ModeChoice::Fallback),
            other => Err(format!("unknown mode {other:?} (auto, scx, fallback)")),
        }
    }
}

/// Opens the schedulers' maps (provided by the scheduler loader in the root package).
pub type ScxFactory = Box<dyn FnOnce() -> Result<Box<dyn ScxMaps>, String> + Send>;

/// One cgroup move the BPF watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveRecord {
    /// The moved thread (the leader when the whole process moved).
    pub tid: u32,
    /// Whether the whole process moved.
    pub threadgroup: bool,
    /// CLOCK_MONOTONIC at the attach.
    pub timestamp_ns: u64,
}

/// The BPF cgroup move watcher as the daemon polls it, on its own task: an fd that turns
/// readable when records wait, and a non-blocking drain. Dropping it detaches the program.
pub trait MoveSource: Send {
    /// A pollable fd (the ring buffer's epoll fd).
    fn fd(&self) -> std::os::fd::RawFd;
    /// Appends every waiting record to `out`; returns the events lost (ring buffer full) so far.
    fn drain(&mut self, out: &mut Vec<MoveRecord>) -> u64;
}

/// Loads the BPF cgroup move watcher (provided by the root package, which has the BPF
/// skeletons). An error means the kernel refused it; the daemon then keeps inotify on
/// cgroup.procs plus the periodic reconcile.
pub type MoveWatcherFactory = Box<dyn FnOnce() -> Result<Box<dyn MoveSource>, String> + Send>;

/// An fd the runtime polls for readiness (owned by the `MoveSource`, not closed here).
struct BorrowedRawFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for BorrowedRawFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Everything `canopy run` passes in.
pub struct DaemonOptions {
    /// Compiles the policy (start and every reload).
    pub loader: PlanLoader,
    /// Policy files and directories to watch for changes.
    pub watch_paths: Vec<PathBuf>,
    /// Backend choice.
    pub mode: ModeChoice,
    /// The scx map provider, when this binary has the schedulers.
    pub scx: Option<ScxFactory>,
    /// The BPF cgroup move watcher, when this binary has it (both modes).
    pub move_watcher: Option<MoveWatcherFactory>,
    /// Control socket path.
    pub socket_path: PathBuf,
    /// Optional Prometheus listener (plain HTTP, `GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
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
            watch_paths: Vec::new(),
            mode: ModeChoice::Auto,
            scx: None,
            move_watcher: None,
            socket_path,
            metrics_listen: None,
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
}

/// Decides the mode. Returns the mode and the reason `status` shows.
pub fn choose_mode(choice: ModeChoice, scx_built_in: bool) -> Result<(Mode, String), DaemonError> {
    let probe = probe_scx();
    match (choice, probe) {
        (ModeChoice::Fallback, _) => Ok((
            Mode::Fallback,
            "fallback requested (--mode fallback)".into(),
        )),
        (ModeChoice::Scx, Err(why)) => Err(DaemonError::ScxUnavailable(why)),
        (ModeChoice::Scx, Ok(())) if !scx_built_in => Err(DaemonError::ScxUnavailable(
            "this binary has no scheduler loader".into(),
        )),
        (ModeChoice::Scx, Ok(())) => Ok((Mode::Scx, "scx requested (--mode scx)".into())),
        (ModeChoice::Auto, Err(why)) => Ok((Mode::Fallback, format!("auto: {why}"))),
        (ModeChoice::Auto, Ok(())) if !scx_built_in => Ok((
            Mode::Fallback,
            "auto: kernel has sched_ext sub-schedulers but this binary has no scheduler loader"
                .into(),
        )),
        (ModeChoice::Auto, Ok(())) => Ok((
            Mode::Scx,
            "auto: kernel has sched_ext with cgroup sub-schedulers".into(),
        )),
    }
}

/// Whether this kernel has sched_ext with cgroup sub-scheduler support.
pub fn probe_scx() -> Result<(), String> {
    if !Path::new("/sys/kernel/sched_ext").exists() {
        return Err("kernel has no sched_ext (/sys/kernel/sched_ext absent)".into());
    }
    match std::fs::read("/sys/kernel/btf/vmlinux") {
        Ok(btf) if contains(&btf, b"scx_bpf_sub_dispatch") => Ok(()),
        Ok(_) => Err(
            "kernel has sched_ext but no cgroup sub-schedulers (no scx_bpf_sub_dispatch in BTF)"
                .into(),
        ),
        Err(e) => Err(format!(
            "cannot read kernel BTF to probe sub-scheduler support: {e}"
        )),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A runtime-chosen backend.
pub struct AnyBackend(Box<dyn Backend>);

impl Backend for AnyBackend {
    fn mode(&self) -> Mode {
        self.0.mode()
    }
    fn apply_task(
        &mut self,
        tid: u32,
        class: ClassId,
        params: &ClassParams,
    ) -> Result<(), crate::backend::ApplyError> {
        self.0.apply_task(tid, class, params)
    }
    fn release_task(&mut self, tid: u32) {
        self.0.release_task(tid)
    }
    fn inherit_original(&mut self, child: u32, parent: u32) {
        self.0.inherit_original(child, parent)
    }
    fn forget_task(&mut self, tid: u32) {
        self.0.forget_task(tid)
    }
    fn apply_group(
        &mut self,
        cgroup: &str,
        knobs: &GroupKnobs,
        scx: &ScxGroupPolicy,
    ) -> Result<(), crate::backend::ApplyError> {
        self.0.apply_group(cgroup, knobs, scx)
    }
    fn release_group(&mut self, cgroup: &str) {
        self.0.release_group(cgroup)
    }
    fn restore_all(&mut self) -> RestoreReport {
        self.0.restore_all()
    }
    fn notes(&self) -> Vec<String> {
        self.0.notes()
    }
    fn refused_subsched_attaches(&self) -> u64 {
        self.0.refused_subsched_attaches()
    }
    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        self.0.preempting_wakeups()
    }
    fn plan_changed(&mut self, plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        self.0.plan_changed(plan)
    }
    fn persist(&mut self, force: bool) {
        self.0.persist(force)
    }
    fn settle_adopted(&mut self) {
        self.0.settle_adopted()
    }
    fn set_manage_realtime(&mut self, manage: bool) {
        self.0.set_manage_realtime(manage)
    }
}

struct BoxedMaps(Box<dyn ScxMaps>);

impl ScxMaps for BoxedMaps {
    fn set_task_class(&mut self, tid: u32, c: u32) -> std::io::Result<()> {
        self.0.set_task_class(tid, c)
    }
    fn clear_task(&mut self, tid: u32) {
        self.0.clear_task(tid)
    }
    fn set_group(&mut self, id: u64, p: &ScxGroupPolicy) -> std::io::Result<()> {
        self.0.set_group(id, p)
    }
    fn clear_group(&mut self, id: u64) {
        self.0.clear_group(id)
    }
    fn refused_attaches(&self) -> u64 {
        self.0.refused_attaches()
    }
    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        self.0.preempting_wakeups()
    }
    fn plan_changed(&mut self, plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        self.0.plan_changed(plan)
    }
}

/// What the event threads send to the controller loop.
#[derive(Debug)]
enum Input {
    Event(Event),
    PolicyChanged,
}

/// Runs the daemon until `shutdown` resolves (or SIGTERM/SIGINT when signals are handled), then
/// restores what it changed and returns the restore report.
pub async fn run(
    mut opts: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RestoreReport, DaemonError> {
    let plan = (opts.loader)().map_err(DaemonError::Policy)?;
    let cgroup_root = opts.cgroup_root.clone().unwrap_or_else(detect_cgroup2_root);
    let (mode, mode_reason) = choose_mode(opts.mode, opts.scx.is_some())?;
    let backend = match mode {
        Mode::Fallback => {
            let mut backend = FallbackBackend::new(cgroup_root.clone());
            if let Some(path) = &opts.state_file {
                backend = backend.with_state_file(path.clone());
            }
            AnyBackend(Box::new(backend))
        }
        Mode::Scx => {
            let maps = (opts.scx.take().expect("checked by choose_mode"))()
                .map_err(DaemonError::ScxUnavailable)?;
            AnyBackend(Box::new(ScxBackend::new(
                BoxedMaps(maps),
                cgroup_root.clone(),
            )))
        }
    };
    tracing::info!(mode = mode.label(), reason = %mode_reason, policy = %plan.hash(), "starting");

    let listener = server::bind(&opts.socket_path).map_err(|source| DaemonError::Socket {
        path: opts.socket_path.clone(),
        source,
    })?;

    // Subscribe to events before the first scan so nothing falls between the two.
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(65536);
    let mut proc_events = subscribe_proc_events(opts.proc_rcvbuf)?;
    let mut proc_batch: Vec<canopy_sys::proc_events::ProcEvent> = Vec::with_capacity(64);
    // The move watcher's ring buffer is polled right here (no thread hop between the kernel's
    // wakeup and the controller).
    let (mut move_source, move_fd) = match opts.move_watcher.take().map(|start| {
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
    let mut move_batch: Vec<MoveRecord> = Vec::with_capacity(64);
    let mut moves_lost_seen = 0u64;
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
    for (cgroup, value) in read_focus_xattrs(&cgroup_root, opts.cgroup_scope.as_deref()) {
        ctl.handle(
            Event::FocusChanged {
                cgroup,
                value: Some(value),
            },
            Instant::now(),
        );
    }

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(256);
    let server_task = tokio::spawn(server::serve(listener, ctl_tx.clone(), opts.limits));
    let metrics_task = match opts.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?;
            Some(tokio::spawn(serve_metrics(l, ctl_tx.clone())))
        }
        None => None,
    };

    // Signals arrive as messages: true = stop (SIGTERM/SIGINT), false = reload (SIGHUP).
    let (sig_tx, mut sig_rx) = mpsc::channel::<bool>(8);
    let signal_task = if opts.handle_signals {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
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

    let cgroup_root_str = cgroup_root.to_string_lossy().into_owned();
    let mut policy_debounce: Option<Instant> = None;
    // Moves that no event reports are caught by a periodic re-read of tracked cgroups.
    let mut reconcile = tokio::time::interval_at(Instant::now() + RECONCILE_EVERY, RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
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
                        // One batch (up to 64 datagrams) at a time: large enough to amortize the
                        // wakeup, small enough that the first event of a storm is not kept waiting.
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
                let mut budget = 1024;
                while let Some(i) = next {
                    match i {
                        Input::Event(e) => ctl.handle(e, now),
                        Input::PolicyChanged => policy_debounce = Some(now + Duration::from_millis(200)),
                    }
                    budget -= 1;
                    next = if budget > 0 { in_rx.try_recv().ok() } else { None };
                }
            }
            _ = persist.tick() => ctl.persist_state(false),
            _ = reconcile.tick() => {
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
            _ = async { tokio::time::sleep_until(timer.unwrap()).await }, if timer.is_some() => {
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
        Request::State { cgroup, state } => match normalize_cgroup(&cgroup, cgroup_root) {
            Ok(c) => Request::State { cgroup: c, state },
            Err(e) => {
                ctl.stats.counters.api_errors += 1;
                return Response::error(e.to_string());
            }
        },
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

async fn serve_metrics(listener: tokio::net::TcpListener, ctl: mpsc::Sender<ControlMsg>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
            let (reply, answer) = oneshot::channel();
            let peer = Peer {
                uid: 0,
                gid: 0,
                pid: None,
            };
            if ctl
                .send(ControlMsg {
                    peer,
                    request: Request::Metrics {},
                    reply,
                })
                .await
                .is_err()
            {
                return;
            }
            let Ok(resp) = answer.await else { return };
            let text = resp
                .result
                .as_ref()
                .and_then(|v| v["text"].as_str())
                .unwrap_or("")
                .to_string();
            let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n", text.len());
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(text.as_bytes()).await
            })
            .await;
        });
    }
}

// ----- event source threads ------------------------------------------------------------------

/// Subscribes to the proc connector (canopy-sys: filtered where the kernel can, batched,
/// overruns surfaced as an event).
fn subscribe_proc_events(
    rcvbuf: Option<usize>,
) -> Result<canopy_sys::proc_events::ProcEvents, DaemonError> {
    let mut config = canopy_sys::proc_events::ProcEventsConfig::default();
    if rcvbuf.is_some() {
        config.receive_buffer_bytes = rcvbuf;
    }
    canopy_sys::proc_events::ProcEvents::subscribe(config)
        .map_err(|e| DaemonError::ProcConnector(e.to_string()))
}

/// Translates a canopy-sys proc event into the controller's vocabulary.
fn translate(ev: &canopy_sys::proc_events::ProcEvent) -> Option<Event> {
    use canopy_sys::proc_events::EventKind as K;
    let ts = Some(ev.timestamp_ns);
    Some(match ev.kind {
        K::Fork {
            parent_tid,
            parent_pid,
            child_tid,
            child_pid,
        } => Event::Fork {
            parent_tid: parent_tid as u32,
            parent_tgid: parent_pid as u32,
            child_tid: child_tid as u32,
            child_tgid: child_pid as u32,
            timestamp_ns: ts,
        },
        K::Exec { tid, pid } => Event::Exec {
            tid: tid as u32,
            tgid: pid as u32,
            timestamp_ns: ts,
        },
        K::Comm { tid, pid, comm } => Event::Comm {
            tid: tid as u32,
            tgid: pid as u32,
            comm: Some(comm.to_string_lossy()),
            timestamp_ns: ts,
        },
        K::Exit { tid, pid, .. } => Event::Exit {
            tid: tid as u32,
            tgid: pid as u32,
        },
        K::Overrun => {
            tracing::warn!("proc connector overrun: events lost, rescanning");
            Event::Overrun
        }
        K::Other { .. } => return None,
    })
}

/// The xattr Mutter writes on an app's cgroup.
pub const FOCUS_XATTR: &str = "user.xdg.inactive-since";

/// Reads the focus xattr of a cgroup directory.
pub fn read_focus_xattr(dir: &Path) -> Option<String> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let name = CString::new(FOCUS_XATTR).expect("no NUL");
    let mut buf = [0u8; 64];
    // SAFETY: getxattr writes at most buf.len() bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    Some(
        String::from_utf8_lossy(&buf[..n as usize])
            .trim_end_matches('\0')
            .trim()
            .to_string(),
    )
}

/// The cgroup and policy watches on a task of their own: canopy-sys's [`Watcher`] (cgroups
/// created and removed under `watch_root`, focus xattrs, writes to cgroup.procs/cgroup.threads,
/// the policy's files and `policy.d` drop-ins by the discovery rules of
/// `canopy_sys::policy_files`), translated into controller inputs. `None` without inotify.
fn start_watcher(
    tx: mpsc::Sender<Input>,
    cgroup_root: PathBuf,
    watch_root: &Path,
    policy_paths: &[PathBuf],
    watch_members: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut watcher = match Watcher::new() {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "no cgroup or policy watching");
            return None;
        }
    };
    match watcher.watch_cgroup_tree(watch_root) {
        Ok(dirs) => tracing::info!(cgroups = dirs.len(), "watching cgroups"),
        Err(error) => tracing::warn!(%error, "cgroups created or removed are not watched"),
    }
    for path in policy_paths {
        if let Err(error) = watcher.watch_policy(path) {
            tracing::warn!(%error, policy = %path.display(), "policy changes there reload only on SIGHUP or `ctl reload`");
        }
    }
    Some(tokio::spawn(forward_watch_events(
        watcher,
        tx,
        cgroup_root,
        watch_members,
    )))
}

/// Turns watch events into controller inputs until the controller loop is gone.
async fn forward_watch_events(
    mut watcher: Watcher,
    tx: mpsc::Sender<Input>,
    cgroup_root: PathBuf,
    watch_members: bool,
) {
    // The focus value last reported per cgroup.
    let mut last_focus: HashMap<String, Option<String>> = HashMap::new();
    let relative = |dir: &Path| {
        dir.strip_prefix(&cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    loop {
        let event = match watcher.next_event().await {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "inotify failed: cgroup and policy changes are no longer watched");
                return;
            }
        };
        let inputs: Vec<Input> = match event {
            WatchEvent::CgroupCreated { dir } => {
                let cgroup = relative(&dir);
                // Tasks moved in before the watch on its cgroup.procs existed are picked up,
                // and so is a focus xattr set before the watch on the directory.
                let focus = read_focus_xattr(&dir)
                    .and_then(|value| focus_change(&mut last_focus, &cgroup, Some(value)));
                [
                    Input::Event(Event::CgroupCreated {
                        cgroup: cgroup.clone(),
                    }),
                    Input::Event(Event::CgroupMembershipChanged { cgroup }),
                ]
                .into_iter()
                .chain(focus)
                .collect()
            }
            WatchEvent::CgroupRemoved { dir } => {
                let cgroup = relative(&dir);
                last_focus.remove(&cgroup);
                vec![Input::Event(Event::CgroupRemoved { cgroup })]
            }
            WatchEvent::CgroupAttributesChanged { dir } => {
                focus_change(&mut last_focus, &relative(&dir), read_focus_xattr(&dir))
                    .into_iter()
                    .collect()
            }
            // With the BPF move watcher, moves come from the ring buffer.
            WatchEvent::CgroupMembershipChanged { dir } if watch_members => {
                vec![Input::Event(Event::CgroupMembershipChanged {
                    cgroup: relative(&dir),
                })]
            }
            WatchEvent::CgroupMembershipChanged { .. } => Vec::new(),
            WatchEvent::PolicyChanged { .. } => vec![Input::PolicyChanged],
            // Lost events may have been cgroup or policy changes: rescan and reload.
            WatchEvent::Overflow => vec![Input::Event(Event::Overrun), Input::PolicyChanged],
        };
        for input in inputs {
            if tx.send(input).await.is_err() {
                return;
            }
        }
    }
}

/// A focus change to report, unless `value` is what was last reported for `cgroup` (IN_ATTRIB
/// fires for any attribute change, not only the focus xattr).
fn focus_change(
    last_focus: &mut HashMap<String, Option<String>>,
    cgroup: &str,
    value: Option<String>,
) -> Option<Input> {
    if last_focus.get(cgroup) == Some(&value) {
        return None;
    }
    last_focus.insert(cgroup.to_string(), value.clone());
    Some(Input::Event(Event::FocusChanged {
        cgroup: cgroup.to_string(),
        value,
    }))
}

/// Every cgroup under the root (or scope) that already carries a focus xattr.
pub fn read_focus_xattrs(cgroup_root: &Path, scope: Option<&str>) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        if let Some(v) = read_focus_xattr(dir) {
            let rel = dir
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((rel, v));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(root, &e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    let start = match scope {
        Some(s) => cgroup_root.join(s),
        None => cgroup_root.to_path_buf(),
    };
    walk(cgroup_root, &start, &mut out);
    out
}
