//! The controller's state and its reaction to events: which tasks exist, which rule each matches,
//! which group each sits in and that group's state, and what class each runs as. Every class
//! decision goes through [`PolicyPlan::effective_class`] (the clamp) in `evaluate`; the backend
//! only applies the result. Synchronous and free of I/O except through [`TaskSource`] and
//! [`Backend`], so it is driven the same way by the daemon, the tests and the benchmark.
//!
//! Why one file of about 1,200 lines: the event handlers, the task/group tables and `evaluate`
//! are one state machine (every handler ends in `evaluate` or `set_state`, which read and write
//! the same private tables); split apart, each part would reach into the others' state. The
//! control API's answers are in `controller/requests.rs`, the unit tests in
//! `controller_tests.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_sys::cgroup::Focus;
use canopy_sys::monotonic_now_ns;
use tokio::time::Instant;

use crate::backend::{ApplyError, Backend, Gone, Mode, RestoreReport, TaskSource};
use crate::event::Event;
use crate::plan::{ClampReason, ClassId, GroupId, PolicyPlan, ProcessFacts, RuleMatch, TaskFacts};
use crate::stats::Stats;

mod requests;
pub use requests::{Explanation, RequestError};

/// The class canopy's own threads run in, in scx mode (the schedulers' highest built-in class).
const HIGHEST_CLASS: &str = "USER_INTERACTIVE";
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
    /// canopy's own process. The policy it enforces never demotes it: its latency is what the
    /// acceptance figures measure. In scx mode its threads run in the highest class,
    /// USER_INTERACTIVE (the schedulers' counterpart of the systemd unit's Nice=-5); in fallback
    /// mode they keep what the service manager gave them.
    pub daemon_pid: Option<u32>,
}

/// What told the controller that a process may have changed cgroup (not to be confused with
/// `daemon::MoveSource`, the BPF watcher the daemon polls).
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
    /// The class applied, and why, when managed.
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
    /// An overrun rescan waiting out the rate limit.
    rescan_due: Option<Instant>,
    /// When the last overrun rescan ran.
    last_overrun_rescan: Option<Instant>,
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
        source: S,
        config: ControllerConfig,
    ) -> Self {
        backend.set_manage_realtime(plan.manage_realtime());
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
            rescan_due: None,
            last_overrun_rescan: None,
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

    /// The task source (tests feed it).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Number of tracked tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The class applied to a thread, by name.
    pub fn applied_class(&self, tid: u32) -> Option<Arc<str>> {
        let (class, _) = self.tasks.get(&tid)?.applied?;
        Some(self.plan.class_params(class).name.clone())
    }

    /// A cgroup's current state.
    pub fn group_state(&self, cgroup: &str) -> Option<String> {
        self.groups.get(cgroup).and_then(|g| g.state.clone())
    }

    // ----- events -------------------------------------------------------------------------

    /// Handles one event at time `now` (tokio's clock, so tests can pause it).
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.stats.count_event(event.kind());
        self.event_ns = match &event {
            Event::Fork { timestamp_ns, .. }
            | Event::Exec { timestamp_ns, .. }
            | Event::Comm { timestamp_ns, .. } => *timestamp_ns,
            _ => None,
        };
        match event {
            Event::Fork {
                parent_tid,
                parent_tgid,
                child_tid,
                child_tgid,
                timestamp_ns,
            } => {
                self.on_fork(parent_tid, parent_tgid, child_tid, child_tgid, timestamp_ns);
            }
            Event::Exec {
                tid,
                tgid,
                timestamp_ns,
            } => {
                let _ = timestamp_ns;
                self.on_exec(tid, tgid);
            }
            Event::Comm {
                tid,
                tgid,
                comm,
                timestamp_ns,
            } => {
                self.on_comm(tid, tgid, comm);
                self.record_latency(tid, timestamp_ns);
            }
            Event::Exit { tid, tgid } => self.forget_task(tid, tgid),
            Event::CgroupMembershipChanged { cgroup } => self.on_membership_changed(&cgroup),
            Event::TaskMoved {
                tid, timestamp_ns, ..
            } => {
                self.on_task_moved(tid, MoveNoticedBy::RingBuffer);
                if let Some(ts) = timestamp_ns {
                    let now = monotonic_now_ns();
                    if now >= ts {
                        self.stats.move_latency.record((now - ts) / 1000);
                    }
                }
            }
            Event::Overrun => self.overrun(now),
            Event::CgroupCreated { cgroup } => {
                self.ensure_group(&cgroup);
            }
            Event::CgroupRemoved { cgroup } => {
                if self.groups.remove(&cgroup).is_some() {
                    self.backend.release_group(&cgroup);
                }
                self.group_cache.remove(&cgroup);
            }
            Event::FocusChanged { cgroup, focus } => self.on_focus(&cgroup, focus, now),
        }
        // Tasks found outside event handling (rescans, requests) are stamped with the clock.
        self.event_ns = None;
    }

    fn record_latency(&mut self, tid: u32, timestamp_ns: Option<u64>) {
        let Some(ts) = timestamp_ns else { return };
        if self.tasks.get(&tid).is_none_or(|t| t.applied.is_none()) {
            return;
        }
        let now = monotonic_now_ns();
        if now >= ts {
            self.stats.apply_latency.record((now - ts) / 1000);
        }
    }

    fn on_fork(
        &mut self,
        parent_tid: u32,
        parent_tgid: u32,
        child_tid: u32,
        child_tgid: u32,
        fork_ns: Option<u64>,
    ) {
        // Events from different CPUs arrive out of order: a rename may be handled before the
        // fork that created the thread. An entry first seen after the fork happened is that
        // newer knowledge: keep it. One seen before it is stale (its exit event was lost and
        // the id reused): replace it.
        let stale = |seen: u64| fork_ns.is_some_and(|f| seen <= f);
        if let Some(t) = self.tasks.get(&child_tid) {
            if !stale(t.seen_ns) {
                return;
            }
            let stale_tgid = t.tgid;
            self.forget_task(child_tid, stale_tgid);
        }
        if child_tid == child_tgid {
            self.ignored.remove(&child_tgid);
            if let Some(stale) = self.processes.remove(&child_tgid) {
                for t in stale.threads {
                    if self.tasks.remove(&t).is_some() {
                        self.backend.forget_task(t);
                    }
                }
            }
        } else if self.ignored.contains(&child_tgid) {
            return;
        }
        self.backend.inherit_original(child_tid, parent_tid);
        if child_tgid == parent_tgid && self.processes.contains_key(&child_tgid) {
            // A new thread: same process facts; at clone time it carries its creator's comm.
            let comm = match self.tasks.get(&parent_tid) {
                Some(p) => p.comm.clone(),
                None => match self.source.thread_comm(child_tgid, child_tid) {
                    Ok(c) => c,
                    Err(_) => return self.count_gone(),
                },
            };
            self.add_task(child_tgid, child_tid, comm, Cause::Request);
            return;
        }
        // A new process forked from one we know: fork copies exe, cmdline, uid and the creating
        // thread's comm; only the cgroup can differ (clone3 CLONE_INTO_CGROUP). One read.
        if child_tgid == child_tid && !self.processes.contains_key(&child_tgid) {
            if let (Some(parent), Some(creator)) = (
                self.processes.get(&parent_tgid),
                self.tasks.get(&parent_tid),
            ) {
                let mut facts = (*parent.facts).clone();
                let own = self
                    .tasks
                    .get(&parent_tgid)
                    .and_then(|t| t.rule.clone())
                    .filter(|r| r.inherit);
                let inherited = own.or_else(|| parent.inherited.clone());
                let comm = creator.comm.clone();
                facts.parent_comm = std::mem::replace(&mut facts.comm, comm.clone());
                facts.tgid = child_tgid;
                facts.cgroup = match self.source.process_cgroup(child_tgid) {
                    Ok(c) => c,
                    Err(_) => return self.count_gone(),
                };
                if !self.in_scope(&facts.cgroup) && self.config.cgroup_scope.is_some() {
                    self.ignored.insert(child_tgid);
                    return;
                }
                self.ensure_group(&facts.cgroup);
                self.processes.insert(
                    child_tgid,
                    Process {
                        facts: Arc::new(facts),
                        threads: Vec::new(),
                        inherited,
                    },
                );
                self.add_task(child_tgid, child_tid, comm, Cause::Request);
                return;
            }
        }
        // A new process (or a thread of a process we never saw): read its facts.
        if !self.processes.contains_key(&child_tgid) {
            let inherited = self.processes.get(&parent_tgid).and_then(|p| {
                let own = self
                    .tasks
                    .get(&parent_tgid)
                    .and_then(|t| t.rule.clone())
                    .filter(|r| r.inherit);
                own.or_else(|| p.inherited.clone())
            });
            match self.load_process(child_tgid, inherited) {
                Err(_) => return self.count_gone(),
                Ok(false) => return,
                Ok(true) => {}
            }
        }
        match self.source.thread_comm(child_tgid, child_tid) {
            Ok(comm) => self.add_task(child_tgid, child_tid, comm, Cause::Request),
            Err(_) => self.count_gone(),
        }
    }

    fn on_exec(&mut self, tid: u32, tgid: u32) {
        if self.ignored.contains(&tgid) {
            return;
        }
        // execve kills the other threads and may change everything a rule matches on.
        let inherited = self.processes.get(&tgid).and_then(|p| p.inherited.clone());
        let old_threads = self
            .processes
            .get(&tgid)
            .map(|p| p.threads.clone())
            .unwrap_or_default();
        for t in old_threads {
            if t != tid {
                self.forget_task(t, tgid);
            }
        }
        let reloaded = match self.processes.get(&tgid).map(|p| p.facts.clone()) {
            // exec changes comm, exe, cmdline and maybe the uid; nothing else.
            Some(prev) => match self.source.exec_facts(&prev) {
                Ok(facts) => {
                    if let Some(p) = self.processes.get_mut(&tgid) {
                        p.facts = Arc::new(facts);
                    }
                    Ok(true)
                }
                Err(g) => Err(g),
            },
            None => self.load_process(tgid, inherited),
        };
        match reloaded {
            Err(_) => {
                self.forget_task(tid, tgid);
                return self.count_gone();
            }
            Ok(false) => return,
            Ok(true) => {}
        }
        // After execve the thread is the leader and its comm is the process comm just read.
        let comm = match self.processes.get(&tgid) {
            Some(p) if tid == tgid => p.facts.comm.clone(),
            _ => match self.source.thread_comm(tgid, tid) {
                Ok(c) => c,
                Err(_) => {
                    self.forget_task(tid, tgid);
                    return self.count_gone();
                }
            },
        };
        if let Some(task) = self.tasks.get_mut(&tid) {
            task.comm = comm;
            self.rematch(tid);
            self.evaluate(tid, Cause::Request);
        } else {
            self.add_task(tgid, tid, comm, Cause::Request);
        }
    }

    fn on_comm(&mut self, tid: u32, tgid: u32, comm: Option<String>) {
        if self.ignored.contains(&tgid) {
            return;
        }
        if !self.tasks.contains_key(&tid) {
            // Not seen yet (e.g. the fork event was lost): discover it.
            if !self.processes.contains_key(&tgid) {
                match self.load_process(tgid, None) {
                    Err(_) => return self.count_gone(),
                    Ok(false) => return,
                    Ok(true) => {}
                }
            }
            let comm = match comm {
                Some(c) => c,
                None => match self.source.thread_comm(tgid, tid) {
                    Ok(c) => c,
                    Err(_) => return self.count_gone(),
                },
            };
            self.add_task(tgid, tid, comm, Cause::Request);
            return;
        }
        let comm = match comm {
            Some(c) => c,
            None => match self.source.thread_comm(tgid, tid) {
                Ok(c) => c,
                Err(_) => return self.forget_gone(tid, tgid),
            },
        };
        if tid == tgid {
            // The leader's comm is also the process comm rules match on.
            if let Some(p) = self.processes.get_mut(&tgid) {
                let mut facts = (*p.facts).clone();
                facts.comm = comm.clone();
                p.facts = Arc::new(facts);
            }
            for t in self.threads_of(tgid) {
                if t != tid {
                    self.rematch(t);
                    self.evaluate(t, Cause::Request);
                }
            }
        }
        if let Some(task) = self.tasks.get_mut(&tid) {
            task.comm = comm;
        }
        self.rematch(tid);
        self.evaluate(tid, Cause::Request);
    }

    fn on_membership_changed(&mut self, cgroup: &str) {
        let tids = self.source.cgroup_threads(cgroup);
        let mut moved_processes = Vec::new();
        for tid in tids {
            let tgid = match self.tasks.get(&tid) {
                Some(t) => t.tgid,
                None => match self.source.tgid_of(tid) {
                    Ok(tgid) => tgid,
                    Err(_) => continue,
                },
            };
            let known_cgroup = self.processes.get(&tgid).map(|p| p.facts.cgroup.as_str());
            if known_cgroup != Some(cgroup) && !moved_processes.contains(&tgid) {
                moved_processes.push(tgid);
            }
        }
        for tgid in moved_processes {
            self.process_moved(tgid, Some(cgroup.to_string()), MoveNoticedBy::Inotify);
        }
    }

    fn on_task_moved(&mut self, tid: u32, source: MoveNoticedBy) {
        let tgid = match self.tasks.get(&tid) {
            Some(t) => t.tgid,
            None => match self.source.tgid_of(tid) {
                Ok(t) => t,
                Err(_) => return self.count_gone(),
            },
        };
        self.process_moved(tgid, None, source);
    }

    /// A process changed cgroup: update its facts, then re-match (rules can match on the
    /// cgroup) and re-clamp every thread at once.
    fn process_moved(&mut self, tgid: u32, cgroup: Option<String>, source: MoveNoticedBy) {
        let cgroup = match cgroup {
            Some(c) => c,
            None => match self.source.process_cgroup(tgid) {
                Ok(c) => c,
                Err(_) => return self.count_gone(),
            },
        };
        let known = self.processes.get(&tgid).map(|p| p.facts.cgroup.as_str());
        if known != Some(cgroup.as_str()) {
            let counters = &mut self.stats.counters;
            match source {
                MoveNoticedBy::RingBuffer => counters.moves_ring_buffer += 1,
                MoveNoticedBy::Inotify => counters.moves_inotify += 1,
                MoveNoticedBy::Reconcile => counters.moves_reconcile += 1,
                MoveNoticedBy::Request => {}
            }
        }
        self.ignored.remove(&tgid);
        if !self.processes.contains_key(&tgid) {
            match self.load_process(tgid, None) {
                Err(_) => return self.count_gone(),
                Ok(false) => return,
                Ok(true) => {}
            }
            for tid in self.source.threads_of(tgid) {
                if let Ok(comm) = self.source.thread_comm(tgid, tid) {
                    self.add_task(tgid, tid, comm, Cause::Group);
                }
            }
            return;
        }
        if let Some(p) = self.processes.get_mut(&tgid) {
            let mut facts = (*p.facts).clone();
            facts.cgroup = cgroup.clone();
            p.facts = Arc::new(facts);
        }
        self.ensure_group(&cgroup);
        let scope_ok = self.in_scope(&cgroup);
        for tid in self.threads_of(tgid) {
            if let Some(t) = self.tasks.get_mut(&tid) {
                match (t.skip, scope_ok) {
                    (Some(Skip::OutOfScope), true) => t.skip = None,
                    (None, false) | (Some(Skip::Unmatched), false) => {
                        t.skip = Some(Skip::OutOfScope)
                    }
                    _ => {}
                }
            }
            self.rematch(tid);
            self.evaluate(tid, Cause::Group);
        }
    }

    fn on_focus(&mut self, cgroup: &str, focus_xattr: Focus, now: Instant) {
        let Some(group) = self.group_of(cgroup) else {
            return;
        };
        let Some(focus) = self.plan.focus_states(group) else {
            return;
        };
        self.ensure_group(cgroup);
        match focus_xattr {
            Focus::Focused => self.switch_state(cgroup, focus.focused, now),
            Focus::InactiveSince { .. } => {
                if let Some(unfocused) = focus.unfocused {
                    self.switch_state(cgroup, Some(unfocused), now);
                }
            }
            Focus::NotSet => self.switch_state(cgroup, None, now),
        }
    }

    /// Switches a group to `state`, at once or after the state's delay from the policy. A newer
    /// switch replaces a pending one.
    fn switch_state(&mut self, cgroup: &str, state: Option<String>, now: Instant) {
        let Some(inst) = self.groups.get(cgroup) else {
            return;
        };
        let delay = state
            .as_deref()
            .and_then(|s| self.plan.state_info(inst.group, s))
            .map(|i| i.after)
            .unwrap_or_default();
        if let Some(g) = self.groups.get_mut(cgroup) {
            g.pending = None;
            if !delay.is_zero() && g.state != state {
                if let Some(s) = state {
                    g.pending = Some((now + delay, s));
                }
                return;
            }
        }
        self.set_state(cgroup, state);
    }

    /// Safety net for moves no event reported (clone3 into a cgroup, writes outside the watched
    /// subtree): re-reads every tracked process's cgroup and re-clamps the ones that moved.
    /// Returns how many had moved.
    pub fn reconcile_cgroups(&mut self) -> usize {
        let tracked: Vec<(u32, String)> = self
            .processes
            .iter()
            .map(|(&tgid, p)| (tgid, p.facts.cgroup.clone()))
            .collect();
        let mut moved = 0;
        for (tgid, known) in tracked {
            match self.source.process_cgroup(tgid) {
                Ok(now) if now != known => {
                    moved += 1;
                    self.stats.count_event(crate::event::EventType::Move);
                    self.process_moved(tgid, Some(now), MoveNoticedBy::Reconcile);
                }
                _ => {}
            }
        }
        moved
    }

    /// The earliest pending delayed state change.
    pub fn next_deadline(&self) -> Option<Instant> {
        let state = self
            .groups
            .values()
            .filter_map(|g| g.pending.as_ref().map(|p| p.0))
            .min();
        [state, self.rescan_due, self.settle_rescan]
            .into_iter()
            .flatten()
            .min()
    }

    /// Applies every delayed state whose time has come.
    pub fn fire_timers(&mut self, now: Instant) {
        let settle = self.settle_rescan.is_some_and(|d| d <= now);
        if settle || self.rescan_due.is_some_and(|d| d <= now) {
            self.rescan_due = None;
            if settle {
                self.settle_rescan = None;
            }
            self.last_overrun_rescan = Some(now);
            self.rescan();
        }
        let due: Vec<(String, String)> = self
            .groups
            .iter()
            .filter_map(|(c, g)| match &g.pending {
                Some((at, state)) if *at <= now => Some((c.clone(), state.clone())),
                _ => None,
            })
            .collect();
        for (cgroup, state) in due {
            if let Some(g) = self.groups.get_mut(&cgroup) {
                g.pending = None;
            }
            self.set_state(&cgroup, Some(state));
        }
    }

    // ----- discovery ----------------------------------------------------------------------

    /// Re-reads every task in /proc: adds what is new, forgets what vanished, re-reads facts
    /// and re-matches everything (events may have been lost).
    pub fn rescan(&mut self) {
        self.stats.counters.rescans += 1;
        self.ignored.clear();
        let all = match self.config.cgroup_scope.clone() {
            Some(scope) => self.source.scope_tasks(&scope),
            None => self.source.all_tasks(),
        };
        let alive: std::collections::HashSet<u32> = all.iter().map(|&(_, tid)| tid).collect();
        let vanished: Vec<(u32, u32)> = self
            .tasks
            .iter()
            .filter(|(tid, _)| !alive.contains(tid))
            .map(|(&tid, t)| (tid, t.tgid))
            .collect();
        for (tid, tgid) in vanished {
            self.forget_task(tid, tgid);
        }
        let mut seen_processes = std::collections::HashSet::new();
        for (tgid, tid) in all {
            if seen_processes.insert(tgid) {
                let inherited = self.processes.get(&tgid).and_then(|p| p.inherited.clone());
                if !matches!(self.load_process(tgid, inherited), Ok(true)) {
                    continue;
                }
            }
            if !self.processes.contains_key(&tgid) {
                continue;
            }
            let Ok(comm) = self.source.thread_comm(tgid, tid) else {
                continue;
            };
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.comm = comm;
                self.rematch(tid);
                self.evaluate(tid, Cause::Request);
            } else {
                self.add_task(tgid, tid, comm, Cause::Request);
            }
        }
    }

    /// Reads a process's facts. `Ok(false)`: it is outside the cgroup scope and now ignored.
    fn load_process(&mut self, tgid: u32, inherited: Option<RuleMatch>) -> Result<bool, Gone> {
        if self.config.cgroup_scope.is_some() && !self.processes.contains_key(&tgid) {
            // One cheap read decides whether the process is ours at all.
            let cgroup = self.source.process_cgroup(tgid)?;
            if !self.in_scope(&cgroup) {
                self.ignored.insert(tgid);
                return Ok(false);
            }
        }
        let facts = self.source.process_facts(tgid)?;
        self.ensure_group(&facts.cgroup);
        match self.processes.get_mut(&tgid) {
            Some(p) => {
                p.facts = Arc::new(facts);
                if inherited.is_some() {
                    p.inherited = inherited;
                }
            }
            None => {
                self.processes.insert(
                    tgid,
                    Process {
                        facts: Arc::new(facts),
                        threads: Vec::new(),
                        inherited,
                    },
                );
            }
        }
        Ok(true)
    }

    /// Events were lost: rescan, at most every 100 ms (an overrun storm must not become a
    /// rescan storm); a deferred rescan runs from `fire_timers`.
    fn overrun(&mut self, now: Instant) {
        const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
        const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
        self.settle_rescan = Some(now + SETTLE);
        match self.last_overrun_rescan {
            Some(last) if now < last + MIN_INTERVAL => {
                self.rescan_due.get_or_insert(last + MIN_INTERVAL);
            }
            _ => {
                self.last_overrun_rescan = Some(now);
                self.rescan_due = None;
                self.rescan();
            }
        }
    }

    fn add_task(&mut self, tgid: u32, tid: u32, comm: String, cause: Cause) {
        let Some(process) = self.processes.get_mut(&tgid) else {
            return;
        };
        if !process.threads.contains(&tid) {
            process.threads.push(tid);
        }
        let kthread = process.facts.kthread;
        let in_scope = self.in_scope(&self.processes[&tgid].facts.cgroup);
        let realtime = if kthread && !self.plan.manage_kernel_threads() {
            false
        } else {
            match self.source.thread_policy(tid) {
                Ok(p) => matches!(p, SCHED_FIFO | SCHED_RR | SCHED_DEADLINE),
                Err(_) => return self.forget_gone(tid, tgid),
            }
        };
        let own = self.config.daemon_pid == Some(tgid);
        let skip = if own && self.backend.mode() == Mode::Fallback {
            Some(Skip::Daemon)
        } else if !in_scope && !own {
            Some(Skip::OutOfScope)
        } else if kthread && !self.plan.manage_kernel_threads() {
            Some(Skip::KernelThread)
        } else if realtime && !self.plan.manage_realtime() {
            Some(Skip::Realtime)
        } else {
            None
        };
        self.tasks.insert(
            tid,
            Task {
                tgid,
                comm,
                realtime,
                rule: None,
                manual: None,
                applied: None,
                handed: None,
                requested: None,
                seen_ns: self.event_ns.unwrap_or_else(monotonic_now_ns),
                skip,
            },
        );
        self.rematch(tid);
        self.evaluate(tid, cause);
    }

    fn forget_task(&mut self, tid: u32, tgid: u32) {
        if tid == tgid {
            self.ignored.remove(&tgid);
        }
        if self.tasks.remove(&tid).is_some() {
            self.backend.forget_task(tid);
        }
        if let Some(p) = self.processes.get_mut(&tgid) {
            p.threads.retain(|&t| t != tid);
            if p.threads.is_empty() && (tid == tgid || !self.tasks.contains_key(&tgid)) {
                self.processes.remove(&tgid);
            }
        }
    }

    fn forget_gone(&mut self, tid: u32, tgid: u32) {
        self.count_gone();
        self.forget_task(tid, tgid);
    }

    fn count_gone(&mut self) {
        self.stats.counters.tasks_gone += 1;
    }

    fn threads_of(&self, tgid: u32) -> Vec<u32> {
        self.processes
            .get(&tgid)
            .map(|p| p.threads.clone())
            .unwrap_or_default()
    }

    fn in_scope(&self, cgroup: &str) -> bool {
        match &self.config.cgroup_scope {
            None => true,
            Some(scope) => {
                cgroup == scope
                    || (cgroup.starts_with(scope.as_str())
                        && cgroup.as_bytes().get(scope.len()) == Some(&b'/'))
            }
        }
    }

    fn group_of(&mut self, cgroup: &str) -> Option<GroupId> {
        if let Some(g) = self.group_cache.get(cgroup) {
            return *g;
        }
        let g = self.plan.group_for_cgroup(cgroup);
        self.group_cache.insert(cgroup.to_string(), g);
        g
    }

    /// The cgroup whose group governs tasks in `cgroup`: `cgroup` itself when a group owns it,
    /// else its nearest ancestor that a group owns (a thread moved into `app-x.scope/sub` is
    /// clamped by `app-x.scope`'s group and state, as the schedulers' `group_policy` walk does
    /// in scx mode), at most `MAX_OWNER_LEVELS` levels up. None: no group above it.
    fn owner_of(&mut self, cgroup: &str) -> Option<(String, GroupId)> {
        let mut candidate = cgroup;
        for _ in 0..MAX_OWNER_LEVELS {
            if let Some(group) = self.group_of(candidate) {
                return Some((candidate.to_string(), group));
            }
            candidate = &candidate[..candidate.rfind('/')?];
        }
        None
    }

    /// Makes sure a managed cgroup has a group instance with its knobs applied.
    fn ensure_group(&mut self, cgroup: &str) {
        if self.groups.contains_key(cgroup) {
            return;
        }
        let Some(group) = self.group_of(cgroup) else {
            return;
        };
        if !self.in_scope(cgroup) {
            return;
        }
        let state = self.plan.default_state(group);
        self.groups.insert(
            cgroup.to_string(),
            GroupInstance {
                group,
                state,
                pending: None,
                limits_applied: false,
            },
        );
        self.apply_group_knobs(cgroup);
    }

    fn apply_group_knobs(&mut self, cgroup: &str) {
        let Some(inst) = self.groups.get(cgroup) else {
            return;
        };
        let knobs = self.plan.group_knobs(inst.group, inst.state.as_deref());
        let scx = self
            .plan
            .scx_group_policy(inst.group, inst.state.as_deref());
        let applied = match self.backend.apply_group(cgroup, &knobs, &scx) {
            Ok(()) => true,
            Err(ApplyError::Gone(_)) => false,
            Err(e) => {
                self.stats.counters.apply_errors += 1;
                tracing::warn!(cgroup, error = %e, "applying group knobs failed");
                false
            }
        };
        if let Some(inst) = self.groups.get_mut(cgroup) {
            inst.limits_applied = applied;
        }
    }

    fn set_state(&mut self, cgroup: &str, state: Option<String>) {
        let Some(inst) = self.groups.get_mut(cgroup) else {
            return;
        };
        if inst.state == state {
            return;
        }
        tracing::info!(cgroup, from = ?inst.state, to = ?state, "group state change");
        inst.state = state;
        self.stats.counters.state_changes += 1;
        self.apply_group_knobs(cgroup);
        // its tasks and those of the cgroups below it, which it governs unless a group owns them
        let members: Vec<u32> = self
            .processes
            .values()
            .filter(|p| {
                p.facts.cgroup.strip_prefix(cgroup).is_some_and(|rest| {
                    rest.is_empty() || (rest.starts_with('/') && !cgroup.is_empty())
                })
            })
            .flat_map(|p| p.threads.iter().copied())
            .collect();
        for tid in members {
            self.evaluate(tid, Cause::Group);
        }
    }

    // ----- the decision -------------------------------------------------------------------

    fn rematch(&mut self, tid: u32) {
        let Some(task) = self.tasks.get(&tid) else {
            return;
        };
        let Some(process) = self.processes.get(&task.tgid) else {
            return;
        };
        let facts = TaskFacts {
            tid,
            comm: task.comm.clone(),
            process: process.facts.clone(),
        };
        let rule = self.plan.match_task(&facts);
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.rule = rule;
        }
    }

    /// The requested class of a task: `ctl tag`, else its rule, else an inherited rule, else
    /// the policy's default class.
    fn requested(&self, task: &Task, process: &Process) -> Option<ClassId> {
        task.manual
            .as_deref()
            .and_then(|m| self.plan.class_by_name(m))
            .or(task.rule.as_ref().map(|r| r.class))
            .or(process.inherited.as_ref().map(|r| r.class))
            .or(self.plan.default_class())
    }

    /// Decides a task's class through the Plan's clamp and has the backend apply it.
    fn evaluate(&mut self, tid: u32, cause: Cause) {
        let Some(task) = self.tasks.get(&tid) else {
            return;
        };
        let Some(process) = self.processes.get(&task.tgid) else {
            return;
        };
        if matches!(
            task.skip,
            Some(Skip::OutOfScope | Skip::KernelThread | Skip::Realtime | Skip::Daemon)
        ) {
            return;
        }
        // canopy's own threads (scx mode; fallback skipped them above) run in the highest class.
        let own_class = (self.config.daemon_pid == Some(task.tgid))
            .then(|| self.plan.class_by_name(HIGHEST_CLASS))
            .flatten();
        let own = own_class.is_some();
        let requested = own_class.or_else(|| self.requested(task, process));
        let Some(requested) = requested else {
            let was_applied = task.applied.is_some();
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.skip = Some(Skip::Unmatched);
                t.applied = None;
                t.handed = None;
            }
            if was_applied {
                self.backend.release_task(tid);
            }
            return;
        };
        let cgroup = process.facts.cgroup.clone();
        let previous = task.applied;
        let previous_handed = task.handed;
        let new_request = task.requested != Some(requested);
        let tgid = task.tgid;
        // The governing cgroup: the task's own, or the nearest ancestor a group owns.
        let owner = self.owner_of(&cgroup);
        let group = owner.as_ref().map(|(_, group)| *group);
        let cgroup = owner.map_or(cgroup, |(owner, _)| owner);
        if group.is_some() {
            self.ensure_group(&cgroup);
        }
        let state = self.groups.get(&cgroup).and_then(|g| g.state.as_deref());
        let clamp = if own {
            crate::plan::Clamp {
                class: requested,
                reason: ClampReason::Unclamped,
            }
        } else {
            self.plan.effective_class(requested, group, state)
        };
        if let Some(t) = self.tasks.get_mut(&tid) {
            t.skip = None;
            t.requested = Some(requested);
        }
        if cause == Cause::Request
            && new_request
            && matches!(clamp.reason, ClampReason::Ceiling | ClampReason::Denied)
        {
            self.stats.counters.refused_promotions += 1;
        }
        let handed = self.class_for_backend(requested, clamp.class, group, &cgroup, own);
        let backend_current = previous_handed == Some(handed);
        if previous == Some((clamp.class, clamp.reason)) && backend_current {
            return;
        }
        match clamp.reason {
            ClampReason::Ceiling | ClampReason::Denied => match cause {
                Cause::Request => {}
                Cause::Group => {
                    if previous.map(|p| p.0) != Some(clamp.class) {
                        self.stats.counters.demotions_by_ceiling += 1
                    }
                }
            },
            ClampReason::Floor => self.stats.counters.raised_by_floor += 1,
            ClampReason::Unclamped => {}
        }
        // The backend already holds what it needs (fallback: this class; scx: the request,
        // which the schedulers clamp themselves): only the daemon's own view changes.
        if backend_current {
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.applied = Some((clamp.class, clamp.reason));
            }
            return;
        }
        let params = self.plan.class_params(handed).clone();
        match self.backend.apply_task(tid, handed, &params) {
            Ok(()) => {
                self.stats.counters.tags_applied += 1;
                if let Some(t) = self.tasks.get_mut(&tid) {
                    t.applied = Some((clamp.class, clamp.reason));
                    t.handed = Some(handed);
                }
            }
            Err(ApplyError::Gone(_)) => self.forget_gone(tid, tgid),
            // It turned RT/DL since we first saw it and the policy leaves those alone.
            Err(ApplyError::Realtime(_)) => {
                if let Some(t) = self.tasks.get_mut(&tid) {
                    t.realtime = true;
                    t.skip = Some(Skip::Realtime);
                    t.applied = None;
                    t.handed = None;
                    t.requested = None;
                }
            }
            Err(e) => {
                self.stats.counters.apply_errors += 1;
                tracing::warn!(tid, error = %e, "applying class failed");
            }
        }
    }

    /// The class the backend gets for a task whose clamp gave `effective`. In scx mode the
    /// schedulers clamp every enqueue by the task's cgroup state (`group_policy`), so when
    /// their clamp of the request gives the same class, the map keeps the *request*: a move
    /// into a minimized group demotes, and a move back restores, at the task's next enqueue,
    /// without waiting for the daemon. Where their ceiling/floor cannot express the decision
    /// (a denied class) the map gets the effective class. Fallback applies `effective`.
    fn class_for_backend(
        &self,
        requested: ClassId,
        effective: ClassId,
        group: Option<GroupId>,
        cgroup: &str,
        own: bool,
    ) -> ClassId {
        if own || self.backend.mode() != Mode::Scx {
            return effective;
        }
        let schedulers_clamp = match (group, self.groups.get(cgroup)) {
            // No group here: the schedulers find no entry and do not clamp.
            (None, _) => requested,
            // The schedulers hold this cgroup's current limits: they clamp as below.
            (Some(_), Some(inst)) if inst.limits_applied => self
                .plan
                .scx_group_policy(inst.group, inst.state.as_deref())
                .clamp(requested),
            // Their entry is missing (the write failed, or the group is not set up yet).
            (Some(_), _) => return effective,
        };
        if schedulers_clamp == effective {
            requested
        } else {
            effective
        }
    }

    /// Swaps in a freshly compiled plan and re-evaluates every task and group.
    pub fn install_plan(&mut self, plan: Arc<dyn PolicyPlan>) {
        if let Err(error) = self.backend.plan_changed(&plan) {
            self.stats.counters.apply_errors += 1;
            tracing::error!(%error, "the backend could not follow the new policy everywhere");
        }
        self.backend.set_manage_realtime(plan.manage_realtime());
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
                t.applied = t
                    .applied
                    .map(|_| (ClassId(u16::MAX), ClampReason::Unclamped));
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
}
