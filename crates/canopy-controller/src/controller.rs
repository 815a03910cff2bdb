//! The controller's state and its reaction to events: which tasks exist, which rule each matches,
//! which group each sits in and that group's state, and what class each runs as. Every class
//! decision goes through [`PolicyPlan::effective_class`] (the clamp) in `evaluate`; the backend
//! only applies the result. Synchronous and free of I/O except through [`TaskSource`] and
//! [`Backend`], so it is driven the same way by the daemon, the tests and the benchmark.
//!
//! This file holds the state (the task, process and group tables) and the plan's lifecycle
//! (`install_plan`, crash record, restore); the methods that work on the state are split by
//! concern into `controller/`: `events.rs` (one handler per event), `discovery.rs` (rescans,
//! adding and forgetting tasks), `group_states.rs` (groups, focus, delayed states),
//! `decision.rs` (the one decision path) and `requests.rs` (the control API's answers). The
//! unit tests are in `controller_tests.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_sys::cgroup::Focus;
use canopy_sys::monotonic_now_ns;
use tokio::time::Instant;

use crate::backend::{ApplyError, Backend, Gone, Mode, RestoreReport, TaskSource};
use crate::event::Event;
use crate::policy_port::{
    ClampReason, ClassId, GroupId, PolicyPlan, ProcessFacts, RuleMatch, ThreadFacts,
};
use crate::stats::Stats;

mod decision;
mod discovery;
mod events;
mod group_states;
mod newborns;
mod requests;
pub use requests::{resolve_request_cgroup, Explanation, RequestError, RequestPathError};

/// The class canopy's own threads run in, in scx mode: USER_INITIATED, a preempting class (so a
/// waking daemon thread still preempts the load whose events it handles) that the schedulers
/// make preemptible after 1 ms of running (so the user's USER_INTERACTIVE threads never queue
/// behind the daemon for longer). In USER_INTERACTIVE until 2026-12-05, where it was most of
/// what waking frame and audio threads queued behind (docs/scheduler-benchmark.md).
const DAEMON_CLASS: &str = "USER_INITIATED";
/// Levels above a task's cgroup searched for the group that governs it (as the schedulers'
/// CANOPY_MAX_CGROUP_DEPTH).
const MAX_OWNER_LEVELS: usize = 16;

const SCHED_FIFO: i32 = 1;
const SCHED_RR: i32 = 2;
const SCHED_DEADLINE: i32 = 6;

/// Settings that are not policy: where the controller looks and what it reports.
#[derive(Debug, Clone, Default)]
pub struct ControllerConfig {
    /// Manage only tasks whose cgroup is this path (relative to the cgroup2 root) or below it;
    /// `None` manages the whole system. Tests and staged roll-outs use it.
    pub cgroup_scope: Option<String>,
    /// Why the daemon runs in its mode (shown by `status`).
    pub mode_reason: String,
    /// How cgroup moves are noticed (shown by `status`).
    pub move_watcher: String,
    /// How forks, execs and thread exits are noticed (shown by `status`).
    pub task_watcher: String,
    /// canopy's own process. The policy it enforces never demotes it: its latency is what the
    /// acceptance figures measure. In scx mode its threads run in USER_INITIATED (`DAEMON_CLASS`,
    /// the schedulers' counterpart of the systemd unit's Nice=-5); in fallback mode they keep what
    /// the service manager gave them.
    pub daemon_pid: Option<u32>,
    /// How long a process forked from a tracked one runs before it is handled
    /// (`controller/newborns.rs`); `None` handles every fork at once. Only where the process
    /// meanwhile runs as its parent does: fallback mode, or scx mode with the task watcher
    /// copying the parent's class entry at fork.
    pub newborn_wait: Option<std::time::Duration>,
}

/// What told the controller that a process may have changed cgroup (not to be confused with
/// `daemon::TaskWatchSource`, the BPF watcher the daemon polls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveNoticedBy {
    /// The BPF move watcher (cgroup_attach_task through a ring buffer).
    RingBuffer,
    /// inotify on cgroup.procs / cgroup.threads.
    Inotify,
    /// The periodic re-read of every tracked process's cgroup.
    Reconcile,
    /// A control request about a process not tracked yet.
    Request,
}

/// Why a task is not managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// A kernel thread and the policy leaves those alone.
    KernelThread,
    /// SCHED_FIFO/RR/DEADLINE and the policy leaves those alone.
    Realtime,
    /// Outside the configured cgroup scope.
    OutOfScope,
    /// No rule matched and the policy has no default class.
    Unmatched,
    /// canopy's own process in fallback mode (left as the service manager started it).
    Daemon,
}

/// What made us evaluate a task: a new class request, or a change of its group or state. Decides
/// whether a clamp counts as a refused promotion or as a demotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Request,
    Group,
}

#[derive(Debug)]
struct Process {
    facts: Arc<ProcessFacts>,
    threads: Vec<u32>,
    /// Match inherited from an ancestor whose rule has `inherit`.
    inherited: Option<RuleMatch>,
}

#[derive(Debug)]
struct Task {
    tgid: u32,
    comm: String,
    /// The thread was RT/DL when first seen.
    realtime: bool,
    rule: Option<RuleMatch>,
    /// `ctl tag` override, by class name (class ids are plan-local).
    manual: Option<Arc<str>>,
    /// The class applied, and why, when managed; [`REAPPLY_PENDING`] after a reload until the
    /// new plan's class is applied (read the class through [`Task::current_class`]).
    applied: Option<(ClassId, ClampReason)>,
    /// The class handed to the backend for it (scx: the request, when the schedulers' own
    /// clamp gives `applied`; see `class_for_backend`). None whenever `applied` is None.
    handed: Option<ClassId>,
    /// The class last requested (to count a refused promotion once per new request).
    requested: Option<ClassId>,
    /// CLOCK_MONOTONIC ns when we first learned of it (event timestamp, else discovery time):
    /// tells a stale entry under a reused id from one a reordered event created.
    seen_ns: u64,
    skip: Option<Skip>,
}

/// What `applied` holds after a reload until the task's class under the new plan is applied
/// (a failed re-apply leaves it there): class ids are plan-local, so the old one names nothing
/// in the new plan. Never a real class: a plan has at most `canopy_policy::MAX_CLASSES` (32).
const REAPPLY_PENDING: ClassId = ClassId(u8::MAX);

impl Task {
    /// The class applied under the current plan; `None` while unmanaged or while a reload's
    /// re-apply is pending.
    fn current_class(&self) -> Option<ClassId> {
        self.applied
            .map(|(class, _)| class)
            .filter(|&class| class != REAPPLY_PENDING)
    }

    /// Whether a reload's re-apply of this task has not succeeded yet.
    fn reapply_pending(&self) -> bool {
        self.applied
            .is_some_and(|(class, _)| class == REAPPLY_PENDING)
    }
}

#[derive(Debug)]
struct GroupInstance {
    group: GroupId,
    state: Option<String>,
    /// A state waiting for its delay (unfocused after N s).
    pending: Option<(Instant, String)>,
    /// The backend took the current state's knobs / map entry (scx: the schedulers clamp
    /// this cgroup's tasks by it themselves).
    limits_applied: bool,
}

/// The controller: state plus the plan in force, a task source and a backend.
pub struct Controller<B: Backend, S: TaskSource> {
    plan: Arc<dyn PolicyPlan>,
    backend: B,
    source: S,
    config: ControllerConfig,
    processes: HashMap<u32, Process>,
    tasks: HashMap<u32, Task>,
    groups: HashMap<String, GroupInstance>,
    group_cache: HashMap<String, Option<GroupId>>,
    /// Processes outside the cgroup scope: not tracked, their events are dropped cheaply.
    ignored: std::collections::HashSet<u32>,
    /// New processes not handled yet (`config.newborn_wait`).
    newborns: newborns::Newborns,
    /// An overrun rescan waiting out the rate limit.
    rescan_due: Option<Instant>,
    /// The earliest start of the next overrun rescan (see `overrun_rescan`).
    next_overrun_rescan: Option<Instant>,
    /// One more rescan once an overrun storm has calmed down: while a netlink socket stays
    /// congested the kernel drops further events without reporting ENOBUFS again.
    settle_rescan: Option<Instant>,
    policy_error: Option<String>,
    /// Timestamp of the event being handled, if it carries one.
    event_ns: Option<u64>,
    /// Counters; public so the daemon can count API traffic.
    pub stats: Stats,
}

impl<B: Backend, S: TaskSource> Controller<B, S> {
    /// A controller with no tasks yet; call [`Controller::rescan`] after subscribing to events.
    pub fn new(
        plan: Arc<dyn PolicyPlan>,
        mut backend: B,
        mut source: S,
        config: ControllerConfig,
    ) -> Self {
        backend.set_manage_realtime(plan.manage_realtime());
        source.read_cmdlines(plan.uses_cmdline());
        Controller {
            plan,
            backend,
            source,
            config,
            processes: HashMap::new(),
            tasks: HashMap::new(),
            groups: HashMap::new(),
            group_cache: HashMap::new(),
            ignored: std::collections::HashSet::new(),
            newborns: newborns::Newborns::default(),
            rescan_due: None,
            next_overrun_rescan: None,
            settle_rescan: None,
            policy_error: None,
            event_ns: None,
            stats: Stats::default(),
        }
    }

    /// The plan in force.
    pub fn plan(&self) -> &Arc<dyn PolicyPlan> {
        &self.plan
    }

    /// The backend (tests inspect it).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The command line held in a known process's facts (tests).
    #[cfg(test)]
    pub(crate) fn known_cmdline(&self, tgid: u32) -> Option<Arc<str>> {
        self.processes.get(&tgid).map(|p| p.facts.cmdline.clone())
    }

    /// The task source (tests feed it).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Number of tracked tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The class applied to a thread under the current plan, by name.
    pub fn applied_class(&self, tid: u32) -> Option<Arc<str>> {
        let class = self.tasks.get(&tid)?.current_class()?;
        Some(self.plan.class_params(class).name.clone())
    }

    /// A cgroup's current state.
    pub fn group_state(&self, cgroup: &str) -> Option<String> {
        self.groups.get(cgroup).and_then(|g| g.state.clone())
    }

    /// Swaps in a freshly compiled plan and re-evaluates every task and group.
    pub fn install_plan(&mut self, plan: Arc<dyn PolicyPlan>) {
        if let Err(error) = self.backend.plan_changed(&plan) {
            self.stats.counters.apply_errors += 1;
            tracing::error!(%error, "the backend could not follow the new policy everywhere");
        }
        self.backend.set_manage_realtime(plan.manage_realtime());
        // Command lines are read only while a rule matches on them; a plan that starts to
        // needs them read for every known process, before the re-match below.
        let uses_cmdline = plan.uses_cmdline();
        let cmdlines_needed = uses_cmdline && !self.plan.uses_cmdline();
        self.source.read_cmdlines(uses_cmdline);
        self.plan = plan;
        self.policy_error = None;
        self.stats.counters.reloads_ok += 1;
        self.group_cache.clear();
        // Groups: keep states that still exist in the new plan, drop what no longer matches.
        let cgroups: Vec<String> = self.groups.keys().cloned().collect();
        for cgroup in cgroups {
            match self.plan.group_for_cgroup(&cgroup) {
                Some(group) => {
                    let inst = self.groups.get_mut(&cgroup).expect("listed");
                    inst.group = group;
                    if let Some(s) = inst.state.clone() {
                        if self.plan.state_info(group, &s).is_none() {
                            inst.state = None;
                        }
                    }
                    self.apply_group_knobs(&cgroup);
                }
                None => {
                    self.groups.remove(&cgroup);
                    self.backend.release_group(&cgroup);
                }
            }
        }
        let cgroups: Vec<String> = self
            .processes
            .values()
            .map(|p| p.facts.cgroup.clone())
            .collect();
        for c in cgroups {
            self.ensure_group(&c);
        }
        if cmdlines_needed {
            // Only the command line is missing from the facts (one read per process, not all
            // of them); a process gone meanwhile is forgotten at its exit event.
            let known: Vec<u32> = self.processes.keys().copied().collect();
            for tgid in known {
                let Ok(cmdline) = self.source.process_cmdline(tgid) else {
                    continue;
                };
                if let Some(p) = self.processes.get_mut(&tgid) {
                    Arc::make_mut(&mut p.facts).cmdline = cmdline;
                }
            }
        }
        let tids: Vec<u32> = self.tasks.keys().copied().collect();
        for tid in tids {
            // Re-derive skips the plan decides (kernel threads, RT) and re-match.
            let (kthread, realtime) = match self.tasks.get(&tid) {
                Some(t) => (
                    self.processes.get(&t.tgid).is_some_and(|p| p.facts.kthread),
                    t.realtime,
                ),
                None => continue,
            };
            let plan = self.plan.clone();
            if let Some(t) = self.tasks.get_mut(&tid) {
                if !matches!(t.skip, Some(Skip::OutOfScope | Skip::Daemon)) {
                    t.skip = if kthread && !plan.manage_kernel_threads() {
                        Some(Skip::KernelThread)
                    } else if realtime && !plan.manage_realtime() {
                        Some(Skip::Realtime)
                    } else {
                        None
                    };
                }
                if t.skip.is_some() && t.applied.is_some() {
                    t.applied = None;
                    t.handed = None;
                    self.backend.release_task(tid);
                }
            }
            self.rematch(tid);
            // Class ids are plan-local: force a re-apply.
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.applied = t.applied.map(|_| (REAPPLY_PENDING, ClampReason::Unclamped));
                t.requested = None;
            }
            self.evaluate(tid, Cause::Request);
        }
    }

    /// Writes the backend's crash record if it changed (see [`Backend::persist`]).
    pub fn persist_state(&mut self, force: bool) {
        self.backend.persist(force);
    }

    /// Restores what a crashed predecessor changed and this daemon did not take over.
    pub fn settle_adopted(&mut self) {
        self.backend.settle_adopted();
    }

    /// Records a failed reload: the old plan stays in force.
    pub fn record_reload_error(&mut self, error: String) {
        tracing::error!(%error, "policy reload failed; the old policy stays in force");
        self.stats.counters.reloads_failed += 1;
        self.policy_error = Some(error);
    }

    /// Puts every task and group back as found (SIGTERM).
    pub fn restore_all(&mut self) -> RestoreReport {
        for t in self.tasks.values_mut() {
            t.applied = None;
            t.handed = None;
        }
        self.backend.restore_all()
    }

    /// The backend's mode.
    pub fn mode(&self) -> Mode {
        self.backend.mode()
    }

    /// Hands every task and group to `backend` from now on (the scx schedulers were ejected:
    /// the fallback takes over) with `mode_reason` for `status`, and returns the old backend.
    /// Every group and task is applied afresh through the new backend; canopy's own threads are
    /// left alone in fallback mode, as when the daemon starts in it.
    pub fn switch_backend(&mut self, backend: B, mode_reason: String) -> B {
        let old = std::mem::replace(&mut self.backend, backend);
        self.backend
            .set_manage_realtime(self.plan.manage_realtime());
        self.config.mode_reason = mode_reason;
        let cgroups: Vec<String> = self.groups.keys().cloned().collect();
        for cgroup in cgroups {
            self.apply_group_knobs(&cgroup);
        }
        let fallback = self.backend.mode() == Mode::Fallback;
        let daemon_pid = self.config.daemon_pid;
        let tids: Vec<u32> = self.tasks.keys().copied().collect();
        for tid in tids {
            if let Some(t) = self.tasks.get_mut(&tid) {
                // nothing reached the new backend yet: the next evaluation applies
                t.handed = None;
                if fallback && daemon_pid == Some(t.tgid) {
                    t.skip = Some(Skip::Daemon);
                    t.applied = None;
                }
            }
            self.evaluate(tid, Cause::Request);
        }
        old
    }
}
