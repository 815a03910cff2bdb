//! The daemon's wiring: compiles the policy once at start (or takes the plan the binary
//! compiled with the same loader) and hands that plan to the controller and, in scx mode, to the
//! scheduler loader; picks the mode from canopy-sys's kernel probe; starts the event sources
//! (`sources`: the proc connector; the BPF task watcher (cgroup moves, forks, execs, exits)
//! when the binary has it and the kernel allows it, else inotify on cgroup.procs; inotify on the
//! cgroup subtree and the policy files; plus signals and timers here), subscribes before the first /proc scan, runs the
//! control socket and the optional metrics listener, reloads (the same loader) on SIGHUP or
//! policy file changes, writes the fallback backend's crash record, and on shutdown restores
//! everything it changed. All decisions stay in `controller`.
//!
//! Beside this file, in `daemon/`: `options` (what `canopy run` passes in, why a start fails,
//! the instance lock), `mode` (choosing the mode, falling back when the schedulers are
//! ejected), `control` (answering control requests, the reload), `sources` (event sources),
//! `turns` (reading the task events in order, under a budget) and `metrics` (the Prometheus
//! listener).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use canopy_policy::DaemonMode;
use canopy_sys::cgroup::CgroupHierarchy;
use canopy_sys::instance_lock::InstanceLock;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{Backend, Mode, RestoreReport};
use crate::controller::{Controller, ControllerConfig};
use crate::event::Event;
use crate::procfs::ProcSource;
use crate::scx::ScxBackend;
use crate::sdnotify;
use crate::server::{self, ControlMsg};

mod control;
mod metrics;
mod mode;
mod options;
mod sources;
mod turns;
pub use control::handle_control;
use control::reload;
pub use metrics::MetricsPeers;
pub use mode::choose_mode;
use mode::{fall_back_after_ejection, fallback_backend};
use options::lock_instance;
pub use options::{instance_lock_path, DaemonError, DaemonOptions, ScxEjected, ScxFactory};
use sources::{read_focus_xattrs, start_watcher, subscribe_proc_events, BorrowedRawFd, Input};
pub use sources::{
    LostRecords, MoveRecord, TaskRecord, TaskRecordKind, TaskWatchSource, TaskWatcherFactory,
};
use turns::ProcTurns;

/// How often tracked processes' cgroups are re-read (moves no event reported).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Watcher inputs (cgroup and policy changes) one turn handles at most.
const INPUTS_PER_TURN: usize = 256;
/// The cgroup watch's overflows bring the reconcile forward, but no closer than this to the
/// last one (each re-reads every tracked process's cgroup).
const OVERFLOW_RECONCILE_GAP: Duration = Duration::from_secs(1);

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
    move_source: Option<Box<dyn TaskWatchSource>>,
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
        let mut backend = match scx_maps {
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

        // Subscribe to events before the first scan so nothing falls between the two. The BPF
        // task watcher first: while it reports forks, execs and exits, the proc connector is asked
        // for renames only.
        let (in_tx, in_rx) = mpsc::channel::<Input>(65536);
        // The watcher's ring buffers are polled right here (no thread hop between the kernel's
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
        let proc_events = subscribe_proc_events(opts.proc_rcvbuf, move_source.is_some())?;
        let task_watcher = match &move_source {
            Some(source) if source.clears_class_entries() => {
                "BPF ring buffer (sched_process_fork, _exec and _exit tracepoints; the exit program deletes the thread's task_classes entry), read in batches"
            }
            Some(_) => "BPF ring buffer (sched_process_fork, _exec and _exit tracepoints), read in batches",
            None => "proc connector",
        }
        .to_string();
        tracing::info!(source = %task_watcher, "forks, execs and thread exits");
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

        // In scx mode the watcher deletes exited threads' class entries in the kernel, and
        // copies a parent's entry to its new child process at fork.
        let watcher_shares_classes = move_source
            .as_ref()
            .is_some_and(|source| source.clears_class_entries());
        backend.exits_cleared_by_watcher(watcher_shares_classes);
        // A new process may wait before it is handled only where it meanwhile runs as its
        // parent does (controller/newborns.rs).
        let newborn_wait = match backend.mode() {
            Mode::Fallback => Some(NEWBORN_WAIT),
            Mode::Scx if watcher_shares_classes => Some(NEWBORN_WAIT),
            Mode::Scx => None,
        };
        let config = ControllerConfig {
            cgroup_scope: opts.cgroup_scope.clone(),
            mode_reason,
            move_watcher,
            task_watcher,
            daemon_pid: Some(std::process::id()),
            newborn_wait,
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
            proc_events,
            move_source,
            move_fd,
            watch_task,
            control: (_ctl_tx, mut ctl_rx),
            server_task,
            metrics_task,
            signals: (_sig_tx, mut sig_rx),
            signal_task,
            mut scx_ejected,
        } = self;
        let mut proc = ProcTurns::new(proc_events, move_source);

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
            let timer = [ctl.next_deadline(), policy_debounce, proc.watch.read_at]
                .into_iter()
                .flatten()
                .min();
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
                received = proc.events.recv_batch(&mut proc.batch) => {
                    match received {
                        Ok(_) => {
                            proc.turn(&mut ctl);
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
                    // Moves are handled at once; exits after the proc connector's queue.
                    proc.turn_after_watch(&mut ctl);
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
                        // The watcher's rings first: their forks, execs and exits wake the daemon
                        // at most every 50 ms and 1 s, and an answer (status, explain, a tag)
                        // must see what the kernel has reported by now. An mmap read.
                        proc.turn_after_watch(&mut ctl);
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
                    // The watcher's rings first, whichever timer this is: the task ring may be
                    // due, and a new process whose wait ends now and that has exited is then
                    // dropped unhandled (controller/newborns.rs). Reading them costs no syscall.
                    if proc.watch.read_at.is_some_and(|at| at <= now) {
                        proc.watch.read_at = None;
                    }
                    proc.turn_after_watch(&mut ctl);
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
        // The watcher's fd is registered with the runtime through move_fd: unregister it before
        // the watcher (in proc) closes it.
        drop(move_fd);
        drop(proc);
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

/// How long a process forked from a tracked one runs before the controller handles it
/// (`controller/newborns.rs`): most of a build's processes (a shell's utilities, `sh -c`
/// one-liners, a compiler driver's helpers) have exited by then and cost nothing but a queue
/// entry; a program someone starts has its class within a tenth of a second, running as its
/// parent until then.
const NEWBORN_WAIT: Duration = Duration::from_millis(100);

type DaemonController = Controller<Box<dyn Backend>, ProcSource>;
