//! Finding and forgetting tasks: the full /proc rescan (at start, after a reload's re-read and
//! after lost events, rate-limited), loading a process's facts, and the task table's
//! add/forget bookkeeping.

use super::*;

impl<B: Backend, S: TaskSource> Controller<B, S> {
    /// Re-reads every task in /proc: adds what is new, forgets what vanished, re-reads facts
    /// and re-matches everything (events may have been lost).
    pub fn rescan(&mut self) {
        self.stats.counters.rescans += 1;
        self.ignored.clear();
        // New processes still waiting are read below like any other (what they inherited at
        // fork stays with the backend).
        self.newborns.clear();
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
            let Ok((comm, start)) = self.source.thread_comm_and_start(tgid, tid) else {
                continue;
            };
            // A tid the daemon tracks may now be another thread's: the first exited unseen
            // (events were lost) and the kernel reused its id. What was kept for the old thread
            // (the fallback backend's original attributes) must not be put on the new one on
            // stop: forget the old task, and take the new thread as new (its own original).
            let reused = match self.tasks.get(&tid) {
                Some(t) => {
                    let old_tgid = t.tgid;
                    let other_thread = self.backend.thread_seen(tid, start);
                    (old_tgid != tgid || other_thread).then_some(old_tgid)
                }
                None => None,
            };
            if let Some(old_tgid) = reused {
                tracing::info!(
                    tid,
                    old_tgid,
                    tgid,
                    "rescan: tid reused by another thread; its predecessor's original is dropped"
                );
                self.forget_task(tid, old_tgid);
                // Forgetting a reused leader forgets its process too: read it afresh.
                if !self.processes.contains_key(&tgid)
                    && !matches!(self.load_process(tgid, None), Ok(true))
                {
                    continue;
                }
            }
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
    pub(super) fn load_process(
        &mut self,
        tgid: u32,
        inherited: Option<RuleMatch>,
    ) -> Result<bool, Gone> {
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

    /// Events were lost: rescan, paced by `overrun_rescan` (an overrun storm must not become a
    /// rescan storm); a deferred rescan runs from `fire_timers`.
    pub(super) fn overrun(&mut self, now: Instant) {
        const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
        self.settle_rescan = Some(now + SETTLE);
        match self.next_overrun_rescan {
            Some(next) if now < next => {
                self.rescan_due.get_or_insert(next);
            }
            _ => {
                self.rescan_due = None;
                self.overrun_rescan();
            }
        }
    }

    /// A rescan for lost events. The next one may start no sooner than 100 ms, nor sooner than
    /// this one took, after it ends: overruns (anyone who forks fast enough causes them) keep
    /// rescans to at most half of the loop's time, however long a rescan takes on a loaded
    /// machine (3,000 tasks: ~0.1 s idle, seconds under heavy load).
    pub(super) fn overrun_rescan(&mut self) {
        const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
        let started = Instant::now();
        self.rescan();
        let ended = Instant::now();
        self.next_overrun_rescan = Some(ended + MIN_INTERVAL.max(ended - started));
    }

    pub(super) fn add_task(&mut self, tgid: u32, tid: u32, comm: String, cause: Cause) {
        let Some(process) = self.processes.get_mut(&tgid) else {
            return;
        };
        if !process.threads.contains(&tid) {
            process.threads.push(tid);
        }
        let facts = Arc::clone(&process.facts);
        let kthread = facts.kthread;
        let in_scope = self.in_scope(&facts.cgroup);
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

    pub(super) fn forget_task(&mut self, tid: u32, tgid: u32) {
        self.forget_task_exited_at(tid, tgid, None);
    }

    /// Forgets a task; `exited_ns` when an exit event timed it (the backend may then skip what
    /// the kernel-side exit watcher already did).
    pub(super) fn forget_task_exited_at(&mut self, tid: u32, tgid: u32, exited_ns: Option<u64>) {
        if tid == tgid {
            self.ignored.remove(&tgid);
        }
        if self.tasks.remove(&tid).is_some() {
            match exited_ns {
                Some(at) => self.backend.forget_exited_task(tid, at),
                None => self.backend.forget_task(tid),
            }
        }
        if let Some(p) = self.processes.get_mut(&tgid) {
            p.threads.retain(|&t| t != tid);
            if p.threads.is_empty() && (tid == tgid || !self.tasks.contains_key(&tgid)) {
                self.processes.remove(&tgid);
            }
        }
    }

    pub(super) fn forget_gone(&mut self, tid: u32, tgid: u32) {
        self.count_gone();
        self.forget_task(tid, tgid);
    }

    pub(super) fn count_gone(&mut self) {
        self.stats.counters.tasks_gone += 1;
    }

    pub(super) fn threads_of(&self, tgid: u32) -> Vec<u32> {
        self.processes
            .get(&tgid)
            .map(|p| p.threads.clone())
            .unwrap_or_default()
    }
}
