//! The controller's reaction to each event (`Controller::handle`): fork, exec, rename, exit,
//! cgroup membership changes and moves (ring buffer, inotify, the periodic reconcile), cgroup
//! creation and removal, focus. Each handler updates the task tables in `controller.rs` and ends
//! in the one decision path (`decision.rs`) or a group state switch (`group_states.rs`).

use std::time::Duration;

use super::*;

impl<B: Backend, S: TaskSource> Controller<B, S> {
    /// Handles one event at time `now` (tokio's clock, so tests can pause it). An event of a
    /// new process may wait with it (`newborns.rs`).
    pub fn handle(&mut self, event: Event, now: Instant) {
        let started = std::time::Instant::now();
        let kind = event.kind();
        self.stats.count_event(kind);
        if let Some(event) = self.newborn_event(event, now) {
            self.dispatch(event, now, false);
        }
        self.stats.add_event_handling(kind, started.elapsed());
    }

    /// What the wait of new processes does with `event`: keeps it (None: a waiting process's
    /// fork, exec, rename or exit), or ends the wait of the process it concerns, handling that
    /// process's events first, and returns it to be handled now.
    fn newborn_event(&mut self, event: Event, now: Instant) -> Option<Event> {
        let Some(wait) = self.config.newborn_wait else {
            return Some(event);
        };
        match event {
            Event::Fork {
                parent_tid,
                parent_tgid,
                child_tid,
                child_tgid,
                timestamp_ns,
            } => {
                // A thread makes its process more than a short job. (The kernel names a thread's
                // process's parent as the thread's parent: a thread is told by its id.)
                if child_tid != child_tgid {
                    self.end_wait(child_tgid, now);
                    return Some(event);
                }
                // A child process inherits its parent's rule, which needs the parent handled.
                self.end_wait(parent_tgid, now);
                // A child that inherits a rule is handled at once, as before the wait: its
                // parent may have exited when the wait ends (`sh -c 'cmd &'` under a make an
                // inheriting rule tags), and the inheritance is read from the parent.
                let fresh = child_tgid != parent_tgid
                    && self.processes.contains_key(&parent_tgid)
                    && !self.processes.contains_key(&child_tgid)
                    && !self.tasks.contains_key(&child_tid)
                    && self.rule_to_inherit(parent_tgid).is_none();
                if !fresh {
                    return Some(event);
                }
                // What the child inherited at fork (fallback: the parent's original attributes
                // are its originals) is known now; the parent may be gone when the wait ends.
                self.backend.inherit_original(child_tid, parent_tid);
                // The wait counts from the fork (the watcher's ring is read up to 50 ms after),
                // in whole milliseconds.
                let age = timestamp_ns.map_or(Duration::ZERO, |fork_ns| {
                    let age_ns = monotonic_now_ns().saturating_sub(fork_ns);
                    Duration::from_millis(age_ns / 1_000_000)
                });
                match self
                    .newborns
                    .wait(child_tgid, event, now + wait.saturating_sub(age))
                {
                    Ok(()) => {
                        self.stats.counters.newborns_waited += 1;
                        None
                    }
                    Err(fork) => Some(fork),
                }
            }
            // Its exec, and its renames (some programs name themselves as they start): the
            // class they lead to is applied when the wait ends, with the fork's.
            Event::Exec { tgid, .. } | Event::Comm { tgid, .. }
                if self.newborns.is_waiting(tgid) =>
            {
                match self.newborns.push(tgid, event) {
                    Ok(replaced_a_rename) => {
                        self.stats.counters.renames_coalesced += u64::from(replaced_a_rename);
                        None
                    }
                    // Its queue is full: its events are handled now, then this one.
                    Err(event) => {
                        self.end_wait(tgid, now);
                        Some(event)
                    }
                }
            }
            Event::Exit { tid, tgid, .. } if tid == tgid && self.newborns.is_waiting(tgid) => {
                // Its only thread (a thread would have ended the wait): gone unhandled.
                self.newborns.take(tgid);
                self.backend.forget_task(tid);
                self.stats.counters.newborns_gone += 1;
                None
            }
            Event::Exit { tgid, .. } => {
                self.end_wait(tgid, now);
                Some(event)
            }
            Event::TaskMoved { tid, .. } => {
                self.end_wait(tid, now);
                Some(event)
            }
            other => Some(other),
        }
    }

    /// Ends process `tgid`'s wait, if it waits: handles its events now, oldest first.
    pub(super) fn end_wait(&mut self, tgid: u32, now: Instant) {
        if let Some(events) = self.newborns.take(tgid) {
            self.handle_waited(events, now);
        }
    }

    /// Handles the events of every process whose wait is over at `now`.
    pub(super) fn end_due_waits(&mut self, now: Instant) {
        while let Some((_, events)) = self.newborns.pop_due(now) {
            self.handle_waited(events, now);
        }
    }

    /// The events of a process that waited, in order (each counted when it arrived; the time
    /// spent on it now is added to its kind).
    fn handle_waited(&mut self, events: Vec<Event>, now: Instant) {
        for event in events {
            let started = std::time::Instant::now();
            let kind = event.kind();
            self.dispatch(event, now, true);
            self.stats.add_event_handling(kind, started.elapsed());
        }
    }

    /// Handles one event now: the handler for its kind. A rename that `waited` with its new
    /// process is not timed: rename → applied measures the daemon, not the wait.
    fn dispatch(&mut self, event: Event, now: Instant, waited: bool) {
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
                self.on_fork(
                    (parent_tid, parent_tgid),
                    (child_tid, child_tgid),
                    timestamp_ns,
                    waited,
                );
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
                if !waited {
                    self.record_latency(tid, timestamp_ns);
                }
            }
            Event::Exit {
                tid,
                tgid,
                timestamp_ns,
            } => self.on_exit(tid, tgid, timestamp_ns),
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

    pub(super) fn record_latency(&mut self, tid: u32, timestamp_ns: Option<u64>) {
        let Some(ts) = timestamp_ns else { return };
        if self.tasks.get(&tid).is_none_or(|t| t.applied.is_none()) {
            return;
        }
        let now = monotonic_now_ns();
        if now >= ts {
            self.stats.apply_latency.record((now - ts) / 1000);
        }
    }

    /// Forgets an exited thread, unless the task known under its id was first seen after the
    /// exit: a newer task under a reused id. (Exits from the BPF watcher are read in batches,
    /// after every proc connector event that happened before them; the id of a thread gone
    /// for a second can have been reused once pid_max wrapped.)
    pub(super) fn on_exit(&mut self, tid: u32, tgid: u32, exit_ns: Option<u64>) {
        let newer = |seen: u64| exit_ns.is_some_and(|exited| seen > exited);
        if self.tasks.get(&tid).is_some_and(|t| newer(t.seen_ns)) {
            return;
        }
        self.forget_task_exited_at(tid, tgid, exit_ns);
    }

    /// The rule a child of process `parent_tgid` inherits: the parent's own rule if it is
    /// inheriting, else what the parent inherited; None for an unknown parent.
    fn rule_to_inherit(&self, parent_tgid: u32) -> Option<RuleMatch> {
        let parent = self.processes.get(&parent_tgid)?;
        let own = self
            .tasks
            .get(&parent_tgid)
            .and_then(|t| t.rule.clone())
            .filter(|r| r.inherit);
        own.or_else(|| parent.inherited.clone())
    }

    /// A fork of (thread, process) `parent` into `child`; `waited`: the child waited as a new
    /// process, whose originals were inherited when its wait began.
    pub(super) fn on_fork(
        &mut self,
        (parent_tid, parent_tgid): (u32, u32),
        (child_tid, child_tgid): (u32, u32),
        fork_ns: Option<u64>,
        waited: bool,
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
        // What the child was copied from at clone: the creating thread. The proc connector
        // names a thread's process's parent as its parent (`real_parent`), not its creator, so
        // a thread it reports inherits its process leader's originals, the closest it names.
        let creator = if child_tid != child_tgid && parent_tgid != child_tgid {
            child_tgid
        } else {
            parent_tid
        };
        if !waited {
            self.backend.inherit_original(child_tid, creator);
        }
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
                let inherited = self.rule_to_inherit(parent_tgid);
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
            let inherited = self.rule_to_inherit(parent_tgid);
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

    pub(super) fn on_exec(&mut self, tid: u32, tgid: u32) {
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

    pub(super) fn on_comm(&mut self, tid: u32, tgid: u32, comm: Option<String>) {
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

    pub(super) fn on_membership_changed(&mut self, cgroup: &str) {
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

    pub(super) fn on_task_moved(&mut self, tid: u32, source: MoveNoticedBy) {
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
    pub(super) fn process_moved(
        &mut self,
        tgid: u32,
        cgroup: Option<String>,
        source: MoveNoticedBy,
    ) {
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
}
