//! The control API's answers, as the controller gives them: `ctl state` (`request_state`),
//! `ctl tag` (`request_tag`), `ctl explain` (`explain`) and `status`/`metrics` (`snapshot`).
//! Authorization happens before these (`crate::auth`); the daemon's `handle_control` routes a
//! request here.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use super::*;
use crate::auth::TaskOwner;
use crate::backend::Gone;
use crate::stats::{GroupSnapshot, Snapshot};

/// Why a control request could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No tracked task or process with that id.
    #[error("no task {0}")]
    NoTask(u32),
    /// The cgroup is not covered by any group of the policy.
    #[error("cgroup {0:?} belongs to no group of the policy")]
    NoGroup(String),
    /// The group has no state of that name.
    #[error("group {group} has no state {state:?}")]
    NoState {
        /// Group name.
        group: String,
        /// Requested state.
        state: String,
    },
    /// The policy has no class of that name.
    #[error("no class named {0:?}")]
    NoClass(String),
}

/// Why a request's cgroup path was refused before anything looked it up by name or stored it.
#[derive(Debug, thiserror::Error)]
pub enum RequestPathError {
    /// Too long, a component too long, NUL, `..`, `.`, an empty component, or outside the root.
    #[error("invalid cgroup path: {0}")]
    Invalid(String),
    /// No such cgroup (nothing is created or remembered for it).
    #[error("no cgroup {0:?} under the cgroup root")]
    Missing(String),
    /// A non-root caller named a cgroup it does not own.
    #[error("permission denied: cgroup {cgroup:?} is owned by uid {owner}, not by uid {uid}")]
    NotOwner {
        /// The cgroup, relative to the root.
        cgroup: String,
        /// Its owner.
        owner: u32,
        /// The caller.
        uid: u32,
    },
}

impl RequestPathError {
    /// Whether this is a refusal (counted as refused) rather than a bad request.
    pub fn is_refusal(&self) -> bool {
        matches!(self, RequestPathError::NotOwner { .. })
    }
}

/// Resolves a `state` request's cgroup path, before the controller sees it: the PATH_MAX and
/// NAME_MAX limits first (a 60 KiB path is refused before any copy of it), then normalised
/// (relative to the root; `..`, `.`, empty components refused), then resolved by the kernel
/// strictly beneath `cgroup_root` with no symlink (`canopy_sys::beneath`): it must exist and, for
/// a non-root caller, be owned by the caller (systemd hands `user@UID.service` to its user).
/// Example: uid 1000 asking for `user.slice/user-1000.slice/user@1000.service/app.slice/gone`
/// gets `Missing` and the controller stores nothing for it.
pub fn resolve_request_cgroup(
    path: &str,
    cgroup_root: &str,
    caller_uid: u32,
) -> Result<String, RequestPathError> {
    let root = std::path::Path::new(cgroup_root);
    canopy_sys::beneath::check_limits(root, path)
        .map_err(|e| RequestPathError::Invalid(e.to_string()))?;
    let cgroup = crate::protocol::normalize_cgroup(path, cgroup_root)
        .map_err(|e| RequestPathError::Invalid(e.to_string()))?;
    let dir = canopy_sys::beneath::dir_beneath(root, &cgroup).map_err(|e| match e {
        canopy_sys::beneath::BeneathError::Missing(_) => RequestPathError::Missing(cgroup.clone()),
        other => RequestPathError::Invalid(other.to_string()),
    })?;
    if caller_uid != 0 && dir.owner_uid != caller_uid {
        return Err(RequestPathError::NotOwner {
            cgroup,
            owner: dir.owner_uid,
            uid: caller_uid,
        });
    }
    Ok(cgroup)
}

/// The answer to `explain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread comm.
    pub comm: String,
    /// cgroup path.
    pub cgroup: String,
    /// The process rule that matched.
    pub rule: Option<String>,
    /// The thread rule that chose the class.
    pub thread_rule: Option<String>,
    /// Rule inherited from an ancestor.
    pub inherited_rule: Option<String>,
    /// `ctl tag` override.
    pub manual_class: Option<String>,
    /// Policy group.
    pub group: Option<String>,
    /// Group state.
    pub state: Option<String>,
    /// Requested class.
    pub requested: Option<String>,
    /// Effective class.
    pub effective: Option<String>,
    /// Why the task is not managed.
    pub skipped: Option<Skip>,
    /// One sentence on why the effective class is what it is.
    pub why: String,
}

impl<B: Backend, S: TaskSource> Controller<B, S> {
    /// `ctl state <cgroup> <state>` (authorization happens before this). `base` (or an empty
    /// name) returns the group to its base state.
    pub fn request_state(
        &mut self,
        cgroup: &str,
        state: &str,
        now: Instant,
    ) -> Result<(), RequestError> {
        let group = self
            .group_of(cgroup)
            .ok_or_else(|| RequestError::NoGroup(cgroup.into()))?;
        let state = if state.is_empty() || state == "base" {
            None
        } else {
            if self.plan.state_info(group, state).is_none() {
                return Err(RequestError::NoState {
                    group: self.plan.group_name(group).to_string(),
                    state: state.into(),
                });
            }
            Some(state.to_string())
        };
        self.ensure_group(cgroup);
        self.switch_state(cgroup, state, now);
        Ok(())
    }

    /// `ctl tag --tid N CLASS` or `--pid N CLASS` (every thread). Returns the tids tagged.
    pub fn request_tag(
        &mut self,
        id: u32,
        whole_process: bool,
        class: &str,
    ) -> Result<Vec<u32>, RequestError> {
        let class_id = self
            .plan
            .class_by_name(class)
            .ok_or_else(|| RequestError::NoClass(class.into()))?;
        let class_name: Arc<str> = self.plan.class_params(class_id).name.clone();
        // A new process still waiting is handled first (`newborns.rs`).
        self.end_wait(id, Instant::now());
        let tids = if whole_process {
            if !self.processes.contains_key(&id) {
                self.on_task_moved(id, MoveNoticedBy::Request);
            }
            self.threads_of(id)
        } else {
            if !self.tasks.contains_key(&id) {
                if let Ok(tgid) = self.source.tgid_of(id) {
                    self.on_comm(id, tgid, None);
                }
            }
            if self.tasks.contains_key(&id) {
                vec![id]
            } else {
                vec![]
            }
        };
        if tids.is_empty() {
            return Err(RequestError::NoTask(id));
        }
        for &tid in &tids {
            if let Some(t) = self.tasks.get_mut(&tid) {
                t.manual = Some(class_name.clone());
            }
            self.evaluate(tid, Cause::Request);
        }
        Ok(tids)
    }

    /// Who owns, now, the threads `explain(id)` would show (for authorizing `explain`): each
    /// one's uids are read from `/proc/TID/status` at this moment, since a thread may have
    /// changed them (`setresuid`) after canopy read its process's facts at fork or exec. A
    /// process id covers all its tracked threads, so one thread of another user's makes the
    /// whole process [`TaskOwner::Several`]; threads gone meanwhile are skipped.
    pub fn explain_owner(&mut self, id: u32) -> TaskOwner {
        self.end_wait(id, Instant::now());
        let Some(tids) = self.explained_tids(id) else {
            return TaskOwner::Unknown;
        };
        let mut owner = None;
        for tid in tids {
            match self.source.thread_owner(tid) {
                Err(Gone(_)) => continue,
                Ok(Some(uid)) if owner.is_none_or(|o| o == uid) => owner = Some(uid),
                Ok(_) => return TaskOwner::Several,
            }
        }
        owner.map_or(TaskOwner::Unknown, TaskOwner::Uid)
    }

    /// The threads `explain(id)` covers: every tracked thread of process `id`, or the one
    /// tracked thread `id`; `None` when neither is tracked.
    fn explained_tids(&self, id: u32) -> Option<Vec<u32>> {
        if self.processes.contains_key(&id) {
            Some(self.threads_of(id))
        } else if self.tasks.contains_key(&id) {
            Some(vec![id])
        } else {
            None
        }
    }

    /// `ctl explain --pid N`: one explanation per thread (or the one thread for a tid).
    pub fn explain(&mut self, id: u32) -> Result<Vec<Explanation>, RequestError> {
        self.end_wait(id, Instant::now());
        let Some(tids) = self.explained_tids(id) else {
            return Err(RequestError::NoTask(id));
        };
        let mut out = Vec::new();
        for tid in tids {
            let Some(task) = self.tasks.get(&tid) else {
                continue;
            };
            let Some(process) = self.processes.get(&task.tgid) else {
                continue;
            };
            let cgroup = process.facts.cgroup.clone();
            let requested = self.requested(task, process);
            let group = self
                .group_cache
                .get(&cgroup)
                .copied()
                .flatten()
                .or_else(|| self.plan.group_for_cgroup(&cgroup));
            let state = self.groups.get(&cgroup).and_then(|g| g.state.clone());
            let name = |c: ClassId| self.plan.class_params(c).name.to_string();
            let clamp = requested.map(|r| self.plan.effective_class(r, group, state.as_deref()));
            let source = if task.manual.is_some() {
                "set by `ctl tag`".to_string()
            } else if let Some(r) = &task.rule {
                match &r.thread_rule {
                    Some(tr) => format!("rule {} (thread rule {tr})", r.rule),
                    None => format!("rule {}", r.rule),
                }
            } else if let Some(r) = &process.inherited {
                format!("inherited from an ancestor matched by rule {}", r.rule)
            } else {
                "the policy's default class".to_string()
            };
            let group_name = group.map(|g| self.plan.group_name(g).to_string());
            // A kernel thread or an RT/DL task that is managed: because the policy says so.
            let managed_because = match (task.skip, task.applied) {
                (None, Some(_)) if process.facts.kthread => {
                    "; a kernel thread, managed because the policy sets leave_kernel_threads = false"
                }
                (None, Some(_)) if task.realtime && self.backend.mode() == Mode::Fallback => {
                    "; an RT/DL task, managed because the policy sets leave_realtime = false (its RT/DL policy returns on stop)"
                }
                // sched_ext schedules fair-policy tasks only: the class waits in the map.
                (None, Some(_)) if task.realtime => {
                    "; an RT/DL task the policy manages (leave_realtime = false), but it keeps its RT/DL policy, which sched_ext does not schedule, so the class has no effect"
                }
                _ => "",
            };
            let mut why: String = match (task.skip, clamp) {
                (Some(Skip::KernelThread), _) => "kernel thread: left alone by the policy".into(),
                (Some(Skip::Realtime), _) => "RT/DL task: left alone by the policy".into(),
                (Some(Skip::OutOfScope), _) => "outside the daemon's cgroup scope".into(),
                (Some(Skip::Daemon), _) => {
                    "canopy's own process: left as the service manager started it".into()
                }
                _ if self.config.daemon_pid == Some(task.tgid) => format!(
                    "canopy's own process: runs in {DAEMON_CLASS} so it keeps up with the load it manages"
                ),
                (_, None) => "no rule matched and the policy has no default class".into(),
                (_, Some(c)) => {
                    let req = name(requested.expect("clamp implies requested"));
                    let gs = format!(
                        "group {} in state {}",
                        group_name.as_deref().unwrap_or("(none)"),
                        state.as_deref().unwrap_or("base")
                    );
                    match c.reason {
                        ClampReason::Unclamped => {
                            format!("{req} requested by {source}; allowed by {gs}")
                        }
                        ClampReason::Ceiling => format!(
                            "{req} requested by {source}; lowered to {} by the ceiling of {gs}",
                            name(c.class)
                        ),
                        ClampReason::Floor => format!(
                            "{req} requested by {source}; raised to {} by the floor of {gs}",
                            name(c.class)
                        ),
                        ClampReason::Denied => format!(
                            "{req} requested by {source}; denied in {gs}, so {}",
                            name(c.class)
                        ),
                    }
                }
            };
            why.push_str(managed_because);
            if task.reapply_pending() {
                why.push_str("; not applied yet under the reloaded policy (applying it failed, see the log; retried on the task's next event)");
            }
            out.push(Explanation {
                tid,
                tgid: task.tgid,
                comm: task.comm.clone(),
                cgroup,
                rule: task.rule.as_ref().map(|r| r.rule.to_string()),
                thread_rule: task
                    .rule
                    .as_ref()
                    .and_then(|r| r.thread_rule.as_ref().map(|s| s.to_string())),
                inherited_rule: process.inherited.as_ref().map(|r| r.rule.to_string()),
                manual_class: task.manual.as_ref().map(|m| m.to_string()),
                group: group_name,
                state,
                requested: requested.map(name),
                effective: task.current_class().map(name),
                skipped: task.skip,
                why,
            });
        }
        Ok(out)
    }

    /// A point-in-time view for `status` and `metrics`.
    pub fn snapshot(&mut self, now: Instant) -> Snapshot {
        let mut per_cgroup: HashMap<&str, u64> = HashMap::new();
        for p in self.processes.values() {
            *per_cgroup.entry(p.facts.cgroup.as_str()).or_default() += p.threads.len() as u64;
        }
        let mut groups: Vec<GroupSnapshot> =
            self.groups
                .iter()
                .map(|(cgroup, g)| GroupSnapshot {
                    cgroup: cgroup.clone(),
                    group: self.plan.group_name(g.group).to_string(),
                    state: g.state.clone().unwrap_or_else(|| "base".into()),
                    pending: g.pending.as_ref().map(|(at, s)| {
                        (s.clone(), at.saturating_duration_since(now).as_secs_f64())
                    }),
                    tasks: per_cgroup.get(cgroup.as_str()).copied().unwrap_or(0),
                    cpu_usage_usec: None,
                    weight: self
                        .plan
                        .scx_group_policy(g.group, g.state.as_deref())
                        .weight,
                })
                .collect();
        groups.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        for g in &mut groups {
            g.cpu_usage_usec = self.source_cpu_usage(&g.cgroup);
        }
        let mut tasks_by_class: BTreeMap<String, u64> = BTreeMap::new();
        for class in self.tasks.values().filter_map(Task::current_class) {
            *tasks_by_class
                .entry(self.plan.class_params(class).name.to_string())
                .or_default() += 1;
        }
        let mut counters = self.stats.counters.clone();
        counters.policy_compiles = canopy_policy::compiles_so_far();
        Snapshot {
            mode: self.backend.mode().label().into(),
            mode_reason: self.config.mode_reason.clone(),
            move_watcher: self.config.move_watcher.clone(),
            task_watcher: self.config.task_watcher.clone(),
            policy_hash: self.plan.hash(),
            policy_error: self.policy_error.clone(),
            notes: self.backend.notes(),
            tasks_tracked: self.tasks.len() as u64,
            tasks_managed: self.tasks.values().filter(|t| t.applied.is_some()).count() as u64,
            tasks_by_class,
            counters,
            events: self
                .stats
                .events
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            event_handling_us: self
                .stats
                .event_handling_ns
                .iter()
                .map(|(k, ns)| (k.to_string(), ns / 1000))
                .collect(),
            refused_subsched_attaches: self.backend.refused_subsched_attaches(),
            apply_latency_p50_us: self.stats.apply_latency.quantile_us(0.5),
            apply_latency_p99_us: self.stats.apply_latency.quantile_us(0.99),
            move_latency_p50_us: self.stats.move_latency.quantile_us(0.5),
            move_latency_p99_us: self.stats.move_latency.quantile_us(0.99),
            preempting_wakeups: self.backend.preempting_wakeups(),
            groups,
        }
    }

    fn source_cpu_usage(&mut self, cgroup: &str) -> Option<u64> {
        self.source.cgroup_cpu_usage_usec(cgroup)
    }
}
