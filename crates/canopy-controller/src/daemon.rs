//! The daemon's wiring: compiles the policy once at start (or takes the plan the binary
//! compiled with the same loader) and hands that plan to the controller and, in scx mode, to the
//! scheduler loader; picks the mode from canopy-sys's kernel probe; starts the event sources
//! (`sources`: the proc connector; the BPF cgroup move watcher when the binary has it and the
//! kernel allows it, else inotify on cgroup.procs; inotify on the cgroup subtree and the policy
//! files; plus signals and timers here), subscribes before the first /proc scan, runs the
//! control socket and the optional metrics listener, reloads (the same loader) on SIGHUP or
//! policy file changes, writes the fallback backend's crash record, and on shutdown restores
//! everything it changed. All decisions stay in `controller`.
//!
//! Beside this file, in `daemon/`: `options` (what `canopy run` passes in, why a start fails,
//! the instance lock), `mode` (choosing the mode, falling back when the schedulers are
//! ejected), `control` (answering control requests, the reload), `sources` (event sources) and
//! `metrics` (the Prometheus listener).

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
pub use control::handle_control;
use control::reload;
pub use metrics::MetricsPeers;
pub use mode::choose_mode;
use mode::{fall_back_after_ejection, fallback_backend};
use options::lock_instance;
pub use options::{instance_lock_path, DaemonError, DaemonOptions, ScxEjected, ScxFactory};
use sources::{
    read_focus_xattrs, start_watcher, subscribe_proc_events, translate, BorrowedRawFd, Input,
};
pub use sources::{
    LostRecords, MoveRecord, TaskRecord, TaskRecordKind, TaskWatchSource, TaskWatcherFactory,
};

/// How often tracked processes' cgroups are re-read (moves no event reported).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// Task events (the proc connector's, after coalescing each thread's renames to its last, and
/// the watcher's forks, execs and exits) one turn of the main loop reads from the socket, and
/// handles, at most: four batches of 64 datagrams, about 2 ms of work.
const PROC_EVENTS_PER_TURN: usize = 4 * canopy_sys::proc_events::MAX_BATCH;

/// Task events read but not yet handled (a fork storm's records arrive faster than a turn's
/// budget) at most; beyond that they are dropped and the daemon rescans, as for a full ring.
const MAX_QUEUED_TASK_EVENTS: usize = 65_536;
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
        let mut proc = ProcTurns {
            events: proc_events,
            batch: Vec::with_capacity(64),
            watch: WatchRecords::new(move_source),
            queue: std::collections::VecDeque::new(),
        };

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

/// The BPF task watcher's records between reads: moves are handled as soon as they are read;
/// forks, execs and exits wait in `tasks` until they are handled in timestamp order with the
/// proc connector's renames ([`ProcTurns::socket_then_tasks`]).
struct WatchRecords {
    source: Option<Box<dyn TaskWatchSource>>,
    moves: Vec<MoveRecord>,
    tasks: Vec<TaskRecord>,
    lost_seen: LostRecords,
    /// When to read the task ring again without a wakeup (armed while records flow): the
    /// watcher's fork/exec gap after a read that found forks or execs, its exit gap after one
    /// that found exits alone ([`TaskWatchSource::fork_exec_wakeup_gap`]), so the last
    /// records of a burst are read that long after it at most.
    read_at: Option<Instant>,
    /// The watcher's (fork or exec, exit) wakeup gaps.
    read_again_after: (Duration, Duration),
}

impl WatchRecords {
    fn new(source: Option<Box<dyn TaskWatchSource>>) -> Self {
        let read_again_after = source
            .as_ref()
            .map_or((Duration::ZERO, Duration::ZERO), |s| {
                (s.fork_exec_wakeup_gap(), s.exit_wakeup_gap())
            });
        WatchRecords {
            source,
            moves: Vec::with_capacity(64),
            tasks: Vec::new(),
            lost_seen: LostRecords::default(),
            read_at: None,
            read_again_after,
        }
    }

    /// Reads both rings: handles the moves, keeps the task records; a lost record of either
    /// kind rescans, as a proc connector overrun does.
    fn read(&mut self, ctl: &mut DaemonController) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let lost = source.drain(&mut self.moves, &mut self.tasks);
        let now = Instant::now();
        for m in self.moves.drain(..) {
            ctl.handle(
                Event::TaskMoved {
                    tid: m.tid,
                    threadgroup: m.threadgroup,
                    timestamp_ns: Some(m.timestamp_ns),
                },
                now,
            );
        }
        let (new_moves, new_tasks) = (
            lost.moves.saturating_sub(self.lost_seen.moves),
            lost.tasks.saturating_sub(self.lost_seen.tasks),
        );
        if new_moves > 0 {
            tracing::warn!(
                count = new_moves,
                "cgroup move events lost (ring buffer full): rescanning"
            );
            ctl.stats.counters.moves_lost += new_moves;
        }
        if new_tasks > 0 {
            tracing::warn!(
                count = new_tasks,
                "fork, exec and exit records lost (ring buffer full): rescanning"
            );
            ctl.stats.counters.task_records_lost += new_tasks;
        }
        self.lost_seen = lost;
        if new_moves + new_tasks > 0 {
            ctl.handle(Event::Overrun, now);
        }
    }

    /// Takes the task records written no later than `until_ns` (all of them for `None`), in
    /// ring order, counts them and arms the next read (`read_at`).
    fn take_tasks(&mut self, ctl: &mut DaemonController, until_ns: Option<u64>) -> Vec<Event> {
        let end = written_until(&self.tasks, until_ns);
        if end == 0 {
            return Vec::new();
        }
        let taken: Vec<TaskRecord> = self.tasks.drain(..end).collect();
        let exits = taken
            .iter()
            .filter(|record| record.kind == TaskRecordKind::Exit)
            .count();
        ctl.stats.counters.exits_ring_buffer += exits as u64;
        ctl.stats.counters.forks_execs_ring_buffer += (taken.len() - exits) as u64;
        let (fork_exec_gap, exit_gap) = self.read_again_after;
        let again = Instant::now()
            + if exits < taken.len() {
                fork_exec_gap
            } else {
                exit_gap
            };
        self.read_at = Some(self.read_at.map_or(again, |at| at.min(again)));
        taken.iter().map(TaskRecord::event).collect()
    }
}

type DaemonController = Controller<Box<dyn Backend>, ProcSource>;

/// The proc connector's socket, its batch buffer and the BPF task watcher's records: the
/// sources of task events, read in turns that keep a thread's events in order.
struct ProcTurns {
    events: canopy_sys::proc_events::ProcEvents,
    batch: Vec<canopy_sys::proc_events::ProcEvent>,
    watch: WatchRecords,
    /// Events in timestamp order, read but beyond the last turn's budget.
    queue: std::collections::VecDeque<Event>,
}

impl ProcTurns {
    /// One turn of proc connector events once the first batch is in `batch`: reads the
    /// watcher's rings, then [`ProcTurns::socket_then_tasks`].
    fn turn(&mut self, ctl: &mut DaemonController) {
        self.watch.read(ctl);
        self.socket_then_tasks(ctl);
    }

    /// A turn that starts at the watcher (its fd was readable, or a read is due): reads the
    /// rings, and if they held task records, the proc connector's socket without waiting, then
    /// [`ProcTurns::socket_then_tasks`].
    fn turn_after_watch(&mut self, ctl: &mut DaemonController) {
        self.watch.read(ctl);
        if self.watch.tasks.is_empty() && self.queue.is_empty() {
            return;
        }
        // At least one receive: `drained()` may be left over from an earlier turn.
        if self.events.try_recv_batch(&mut self.batch).is_err() {
            return;
        }
        self.socket_then_tasks(ctl);
    }

    /// Reads whatever else the socket holds up to the turn's budget (so that a storm's renames
    /// of one thread coalesce into its last name), and handles those events and the task
    /// records in the order of their timestamps (both CLOCK_MONOTONIC). The rings were read
    /// first, so a rename queued before a record was written is in the socket by now. A turn
    /// that stops at its budget keeps the records written after its last socket event for
    /// the next one: every event of a thread is handled before its exit. At most
    /// [`PROC_EVENTS_PER_TURN`] of the merged events are handled; the rest wait, in order, for
    /// the next turn, which comes at once ([`MAX_QUEUED_TASK_EVENTS`] bounds them).
    fn socket_then_tasks(&mut self, ctl: &mut DaemonController) {
        while !self.events.drained()
            && self.batch.len() < PROC_EVENTS_PER_TURN
            && matches!(self.events.try_recv_batch(&mut self.batch), Ok(n) if n > 0)
        {}
        let coalesced = canopy_sys::proc_events::coalesce_renames(&mut self.batch);
        ctl.stats.counters.renames_coalesced += coalesced as u64;
        let until_ns = match self.batch.last() {
            Some(last) if !self.events.drained() => Some(last.timestamp_ns),
            _ => None,
        };
        let records = self.watch.take_tasks(ctl, until_ns);
        let socket: Vec<Event> = self
            .batch
            .drain(..)
            .filter_map(|ev| translate(&ev))
            .collect();
        // Later than everything queued: the queue holds events up to an earlier turn's end.
        self.queue.extend(merge_by_timestamp(socket, records));
        let now = Instant::now();
        if self.queue.len() > MAX_QUEUED_TASK_EVENTS {
            tracing::warn!(
                count = self.queue.len(),
                "task events arrive faster than they are handled: dropped, rescanning"
            );
            ctl.stats.counters.task_records_lost += self.queue.len() as u64;
            self.queue.clear();
            ctl.handle(Event::Overrun, now);
            return;
        }
        let handled = self.queue.len().min(PROC_EVENTS_PER_TURN);
        for event in self.queue.drain(..handled) {
            ctl.handle(event, now);
        }
        // The rest in the next turn, at once (the timer branch reads the rings, then this).
        if !self.queue.is_empty() {
            self.watch.read_at = Some(now);
        }
    }
}

/// How many of `records` (in ring order) come before the first written after `until_ns`: all
/// of them for `None`.
fn written_until(records: &[TaskRecord], until_ns: Option<u64>) -> usize {
    until_ns.map_or(records.len(), |until| {
        records
            .iter()
            .position(|record| record.timestamp_ns > until)
            .unwrap_or(records.len())
    })
}

/// Merges two event sequences, each in its source's order, into one by timestamp (an event
/// without one, an overrun, goes first); ties keep `first`'s event first.
fn merge_by_timestamp(first: Vec<Event>, second: Vec<Event>) -> Vec<Event> {
    if second.is_empty() {
        return first;
    }
    if first.is_empty() {
        return second;
    }
    let mut merged = Vec::with_capacity(first.len() + second.len());
    let mut first = first.into_iter().peekable();
    let mut second = second.into_iter().peekable();
    loop {
        let take_first = match (first.peek(), second.peek()) {
            (Some(a), Some(b)) => a.timestamp_ns().unwrap_or(0) <= b.timestamp_ns().unwrap_or(0),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.extend(if take_first {
            first.next()
        } else {
            second.next()
        });
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(tid: u32, at_ns: u64) -> Event {
        Event::Comm {
            tid,
            tgid: tid,
            comm: Some(format!("name-{at_ns}")),
            timestamp_ns: Some(at_ns),
        }
    }

    fn record(kind: TaskRecordKind, tid: u32, at_ns: u64) -> TaskRecord {
        TaskRecord {
            kind,
            tid,
            tgid: tid,
            timestamp_ns: at_ns,
        }
    }

    #[test]
    fn renames_and_ring_records_are_handled_in_timestamp_order() {
        // A process forks a child (10), the child renames itself (20), execs (30), renames
        // again (40) and exits (50): the socket held the renames, the ring the rest.
        let fork = TaskRecordKind::Fork {
            parent_tid: 1,
            parent_tgid: 1,
        };
        let ring = vec![
            record(fork, 7, 10).event(),
            record(TaskRecordKind::Exec, 7, 30).event(),
            record(TaskRecordKind::Exit, 7, 50).event(),
        ];
        let merged = merge_by_timestamp(vec![rename(7, 20), rename(7, 40)], ring);
        let order: Vec<u64> = merged.iter().filter_map(Event::timestamp_ns).collect();
        assert_eq!(order, [10, 20, 30, 40, 50], "{merged:?}");
        assert!(matches!(merged[4], Event::Exit { tid: 7, .. }));
        // An overrun (no timestamp) goes first; one source alone comes back as it was.
        let merged = merge_by_timestamp(vec![Event::Overrun], vec![rename(3, 5)]);
        assert_eq!(merged[0], Event::Overrun);
        assert_eq!(merge_by_timestamp(Vec::new(), vec![rename(3, 5)]).len(), 1);
    }

    #[test]
    fn a_turn_that_stops_at_its_budget_keeps_later_records_for_the_next() {
        let records = [
            record(TaskRecordKind::Exec, 7, 30),
            record(TaskRecordKind::Exit, 8, 45),
            record(TaskRecordKind::Exit, 7, 50),
        ];
        assert_eq!(written_until(&records, None), 3, "the socket was emptied");
        assert_eq!(written_until(&records, Some(45)), 2);
        assert_eq!(written_until(&records, Some(29)), 0);
    }
}
