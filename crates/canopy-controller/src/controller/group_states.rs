//! Groups and their states: which group a cgroup belongs to, its knobs, the focus xattr
//! (focused / unfocused after the state's delay) and the delayed state switches the daemon's
//! timer fires. A state change re-evaluates the group's tasks through `decision.rs`.
//!
//! The focus xattr is written by whoever owns the cgroup, so it carries no more authority than
//! that owner has over the control socket: it may switch a group only into a state the policy
//! marks `user_settable`, and back to the base settings only out of such a state. Example: with
//! `focused` not user-settable and `unfocused` user-settable, an app's own `-1` leaves it
//! `unfocused`; a timestamp moves it from the base to `unfocused` after that state's delay.

use super::*;

impl<B: Backend, S: TaskSource> Controller<B, S> {
    pub(super) fn on_focus(&mut self, cgroup: &str, focus_xattr: Focus, now: Instant) {
        let Some(group) = self.group_of(cgroup) else {
            return;
        };
        let Some(focus) = self.plan.focus_states(group) else {
            return;
        };
        self.ensure_group(cgroup);
        let target = match focus_xattr {
            Focus::Focused => focus.focused,
            Focus::InactiveSince { .. } => match focus.unfocused {
                Some(unfocused) => Some(unfocused),
                None => return,
            },
            // No focus information any more (the xattr removed): the group goes back to the
            // state it started in, as if the compositor had never said anything.
            Focus::NotSet => self.plan.default_state(group),
        };
        let settable = |state: &str| {
            self.plan
                .state_info(group, state)
                .is_some_and(|info| info.user_settable)
        };
        let current = self.groups.get(cgroup).and_then(|g| g.state.clone());
        let allowed = match (&target, &current) {
            _ if target == current => true,
            // Back to the start: allowed unless it means leaving a state users may not leave.
            _ if focus_xattr == Focus::NotSet => current.as_deref().is_none_or(settable),
            (Some(state), _) => settable(state),
            (None, Some(state)) => settable(state),
            (None, None) => true,
        };
        if !allowed {
            self.stats.counters.focus_xattrs_refused += 1;
            tracing::info!(cgroup, from = ?current, to = ?target, "focus xattr ignored: that state change is not user-settable in the policy");
            return;
        }
        self.switch_state(cgroup, target, now);
    }

    /// Switches a group to `state`, at once or after the state's delay from the policy. A newer
    /// switch replaces a pending one.
    pub(super) fn switch_state(&mut self, cgroup: &str, state: Option<String>, now: Instant) {
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

    /// The earliest timer: a delayed state change, a deferred rescan, or the end of a new
    /// process's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        let state = self
            .groups
            .values()
            .filter_map(|g| g.pending.as_ref().map(|p| p.0))
            .min();
        [
            state,
            self.rescan_due,
            self.settle_rescan,
            self.newborns.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies every delayed state whose time has come, and handles every new process whose
    /// wait is over.
    pub fn fire_timers(&mut self, now: Instant) {
        self.end_due_waits(now);
        let settle = self.settle_rescan.is_some_and(|d| d <= now);
        if settle || self.rescan_due.is_some_and(|d| d <= now) {
            self.rescan_due = None;
            if settle {
                self.settle_rescan = None;
            }
            self.overrun_rescan();
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

    pub(super) fn in_scope(&self, cgroup: &str) -> bool {
        match &self.config.cgroup_scope {
            None => true,
            Some(scope) => {
                cgroup == scope
                    || (cgroup.starts_with(scope.as_str())
                        && cgroup.as_bytes().get(scope.len()) == Some(&b'/'))
            }
        }
    }

    pub(super) fn group_of(&mut self, cgroup: &str) -> Option<GroupId> {
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
    pub(super) fn owner_of(&mut self, cgroup: &str) -> Option<(String, GroupId)> {
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
    pub(super) fn ensure_group(&mut self, cgroup: &str) {
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

    pub(super) fn apply_group_knobs(&mut self, cgroup: &str) {
        let Some(inst) = self.groups.get(cgroup) else {
            return;
        };
        let knobs = self.plan.group_knobs(inst.group, inst.state.as_deref());
        let scx = self
            .plan
            .scx_group_policy(inst.group, inst.state.as_deref());
        let applied = match self.backend.apply_group(cgroup, &knobs, &scx) {
            Ok(()) => true,
            // Removed before this (late) event was handled: no group lives on for it, in the
            // daemon or in the backend (a fast mkdir/move/rmdir loop left both behind).
            Err(ApplyError::Gone(_)) => {
                self.stats.counters.groups_gone += 1;
                self.groups.remove(cgroup);
                self.group_cache.remove(cgroup);
                self.backend.release_group(cgroup);
                return;
            }
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

    pub(super) fn set_state(&mut self, cgroup: &str, state: Option<String>) {
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
        let members: Vec<u32> = self
            .processes
            .values()
            // its tasks and those of the cgroups below it, which it governs unless a group owns them
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
}
