//! The one decision path: re-match a task's rule, find its requested class (`ctl tag`, rule,
//! inherited rule, default), clamp it through [`PolicyPlan::effective_class`] and hand the
//! result to the backend. Every class a task gets comes from `evaluate` here.

use super::*;

impl<B: Backend, S: TaskSource> Controller<B, S> {
    pub(super) fn rematch(&mut self, tid: u32) {
        let Some(task) = self.tasks.get(&tid) else {
            return;
        };
        let Some(process) = self.processes.get(&task.tgid) else {
            return;
        };
        let facts = ThreadFacts {
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
    pub(super) fn requested(&self, task: &Task, process: &Process) -> Option<ClassId> {
        task.manual
            .as_deref()
            .and_then(|m| self.plan.class_by_name(m))
            .or(task.rule.as_ref().map(|r| r.class))
            .or(process.inherited.as_ref().map(|r| r.class))
            .or(self.plan.default_class())
    }

    /// Decides a task's class through the Plan's clamp and has the backend apply it.
    pub(super) fn evaluate(&mut self, tid: u32, cause: Cause) {
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
        // canopy's own threads (scx mode; fallback skipped them above) run in DAEMON_CLASS.
        let own_class = (self.config.daemon_pid == Some(task.tgid))
            .then(|| self.plan.class_by_name(DAEMON_CLASS))
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
            crate::policy_port::Clamp {
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
    pub(super) fn class_for_backend(
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
}
