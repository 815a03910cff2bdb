//! The two seams between the controller's decisions and the OS: [`TaskSource`] reads facts
//! (/proc, cgroupfs) and [`Backend`] applies decisions (fallback: sched_setattr + cgroup knobs;
//! scx: the schedulers' BPF maps). Backends decide nothing; they apply what the Plan's clamp chose
//! and remember what they changed so that `restore_all` can put it back.

use std::sync::Arc;

use crate::policy_port::{
    ClassId, ClassParams, GroupKnobs, PolicyPlan, ProcessFacts, ScxGroupPolicy,
};

/// A task or process vanished mid-operation (ESRCH/ENOENT). Normal flow, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task {0} is gone")]
pub struct Gone(pub u32);

/// Reads what the controller needs to know about tasks and cgroups.
pub trait TaskSource: Send {
    /// Process-level facts of `tgid`.
    fn process_facts(&mut self, tgid: u32) -> Result<ProcessFacts, Gone>;
    /// A process's facts after execve, given those before: exec changes comm, exe and cmdline;
    /// the real uid, ppid, flags and cgroup stay. Default: read everything.
    fn exec_facts(&mut self, before: &ProcessFacts) -> Result<ProcessFacts, Gone> {
        self.process_facts(before.tgid)
    }
    /// Whether [`TaskSource::process_facts`] and [`TaskSource::exec_facts`] read the command
    /// line (the controller says so from its plan); default: the source decides.
    fn read_cmdlines(&mut self, _wanted: bool) {}
    /// A process's command line alone (joined by spaces), for a reload whose plan starts to
    /// match on it. Default: read everything.
    fn process_cmdline(&mut self, tgid: u32) -> Result<Arc<str>, Gone> {
        self.process_facts(tgid).map(|facts| facts.cmdline)
    }
    /// A thread's current comm.
    fn thread_comm(&mut self, tgid: u32, tid: u32) -> Result<String, Gone>;
    /// A thread's current comm and its start time (clock ticks after boot, which tells a
    /// reused tid apart), from one read (the rescan's).
    fn thread_comm_and_start(&mut self, tgid: u32, tid: u32) -> Result<(String, u64), Gone>;
    /// A thread's scheduling policy (SCHED_* number), to leave RT/DL tasks alone.
    fn thread_policy(&mut self, tid: u32) -> Result<i32, Gone>;
    /// The one uid thread `tid` runs as now (real, effective, saved and filesystem uid all
    /// that uid), read when asked: `None` while it holds two identities (a setuid program).
    fn thread_owner(&mut self, tid: u32) -> Result<Option<u32>, Gone>;
    /// Every (tgid, tid) alive now.
    fn all_tasks(&mut self) -> Vec<(u32, u32)>;
    /// The thread ids of one process.
    fn threads_of(&mut self, tgid: u32) -> Vec<u32>;
    /// Thread ids currently in a cgroup (relative path); empty if it vanished.
    fn cgroup_threads(&mut self, cgroup: &str) -> Vec<u32>;
    /// A process's current cgroup2 path.
    fn process_cgroup(&mut self, tgid: u32) -> Result<String, Gone>;
    /// The tgid of a thread.
    fn tgid_of(&mut self, tid: u32) -> Result<u32, Gone>;
    /// Every (tgid, tid) whose process sits in `scope` (a cgroup path) or below it.
    fn scope_tasks(&mut self, scope: &str) -> Vec<(u32, u32)> {
        let all = self.all_tasks();
        let mut out = Vec::new();
        let mut last: Option<(u32, bool)> = None;
        for (tgid, tid) in all {
            let inside = match last {
                Some((t, inside)) if t == tgid => inside,
                _ => {
                    let c = self.process_cgroup(tgid).unwrap_or_default();
                    let inside = c == scope || c.starts_with(&format!("{scope}/"));
                    last = Some((tgid, inside));
                    inside
                }
            };
            if inside {
                out.push((tgid, tid));
            }
        }
        out
    }
    /// CPU time a cgroup used (cpu.stat `usage_usec`), when readable.
    fn cgroup_cpu_usage_usec(&mut self, _cgroup: &str) -> Option<u64> {
        None
    }
}

/// Which backend applies decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// sched_ext root + child schedulers; the daemon writes BPF maps.
    Scx,
    /// sched_setattr per task and cgroup v2 knobs per group.
    Fallback,
}

impl Mode {
    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Scx => "scx",
            Mode::Fallback => "fallback",
        }
    }
}

/// Why a backend could not apply a decision.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The task exited: normal flow.
    #[error(transparent)]
    Gone(#[from] Gone),
    /// The thread is real-time or deadline now (it turned so after the controller first saw
    /// it) and the policy leaves those alone: nothing was changed, nothing is held for it.
    #[error("task {0} is real-time or deadline; the policy leaves those alone")]
    Realtime(u32),
    /// The kernel refused (EPERM, EINVAL...).
    #[error("applying {what} to {target} failed: {source}")]
    Refused {
        /// What was being applied (e.g. `class BACKGROUND`, `cpu.weight=50`).
        what: String,
        /// The tid or cgroup path.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What `restore_all` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Tasks put back to their original attributes.
    pub tasks_restored: u64,
    /// Tasks that had exited meanwhile.
    pub tasks_gone: u64,
    /// Groups whose knobs were put back.
    pub groups_restored: u64,
    /// Failures, with the offending target.
    pub failures: Vec<String>,
}

/// Applies decisions. Implementations remember originals so `restore_all` can undo everything.
pub trait Backend: Send {
    /// Which mode this backend implements.
    fn mode(&self) -> Mode;
    /// Applies a class to a thread (first call for a tid saves its original attributes).
    fn apply_task(
        &mut self,
        tid: u32,
        class: ClassId,
        params: &ClassParams,
    ) -> Result<(), ApplyError>;
    /// A task was forked from `parent`: what it inherited is the parent's *applied* class, so
    /// its original attributes (for restore) are the parent's originals, when we hold those.
    fn inherit_original(&mut self, _child: u32, _parent: u32) {}
    /// Restores one thread (it left the managed set) and forgets it.
    fn release_task(&mut self, tid: u32);
    /// The thread exited: forget whatever was saved for it.
    fn forget_task(&mut self, tid: u32);
    /// The thread exited at `exited_ns` (CLOCK_MONOTONIC), reported by the kernel-side exit
    /// watcher, which already removed what the kernel holds for it (its `task_classes` entry)
    /// when [`Backend::exits_cleared_by_watcher`] was told so. Default: [`Backend::forget_task`].
    fn forget_exited_task(&mut self, tid: u32, exited_ns: u64) {
        let _ = exited_ns;
        self.forget_task(tid)
    }
    /// The exit watcher removes each exited thread's kernel-side entry itself (scx mode, the
    /// watcher sharing the schedulers' `task_classes`). Default: nothing to skip.
    fn exits_cleared_by_watcher(&mut self, cleared: bool) {
        let _ = cleared;
    }
    /// A rescan found thread `tid` alive, started at `start_ticks` (clock ticks after boot).
    /// Returns whether what the backend keeps for `tid` belonged to another thread (one that
    /// started at another time and exited unseen, its tid since reused); the backend has then
    /// dropped it, and the controller treats `tid` as a new task. Default: nothing is kept.
    fn thread_seen(&mut self, _tid: u32, _start_ticks: u64) -> bool {
        false
    }
    /// Applies a group's knobs / map entry for its current state.
    fn apply_group(
        &mut self,
        cgroup: &str,
        knobs: &GroupKnobs,
        scx: &ScxGroupPolicy,
    ) -> Result<(), ApplyError>;
    /// The group is no longer managed (or vanished): restore and forget it.
    fn release_group(&mut self, cgroup: &str);
    /// Puts every task and group back as it was found (SIGTERM).
    fn restore_all(&mut self) -> RestoreReport;
    /// One-line notes for `status` (e.g. "uclamp unsupported by this kernel").
    fn notes(&self) -> Vec<String>;
    /// Counter of sub-scheduler attaches the root refused (scx only).
    fn refused_subsched_attaches(&self) -> u64 {
        0
    }
    /// Wakeup counters of the preempting classes (scx only).
    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        None
    }
    /// A new plan is about to be installed (a successful reload): the backend brings whatever it
    /// derived from the old plan itself in line (scx: the schedulers' group setup) before the
    /// controller re-evaluates every task and group. An error leaves that part on the old plan.
    fn plan_changed(&mut self, _plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        Ok(())
    }
    /// The policy's switch for real-time and deadline tasks (`leave_realtime = false` means
    /// manage them), given at start and on every plan swap. With it on, `apply_task` changes an
    /// RT/DL thread like any other (its original policy is restored on stop); with it off, a
    /// thread found RT/DL at apply time is left alone and reported as
    /// [`ApplyError::Realtime`].
    fn set_manage_realtime(&mut self, _manage: bool) {}
    /// Writes the backend's crash record if it changed (rate-limited unless `force`). Called
    /// every second and after the first scan; a no-op for backends that keep none.
    fn persist(&mut self, _force: bool) {}
    /// The first scan is done: originals a crashed predecessor recorded for tasks and groups
    /// this daemon did not take over are restored now.
    fn settle_adopted(&mut self) {}
}

/// A backend chosen at run time (`Box<dyn Backend>`) is a backend: every method forwards,
/// the defaulted ones included.
impl<B: Backend + ?Sized> Backend for Box<B> {
    fn mode(&self) -> Mode {
        (**self).mode()
    }
    fn apply_task(
        &mut self,
        tid: u32,
        class: ClassId,
        params: &ClassParams,
    ) -> Result<(), ApplyError> {
        (**self).apply_task(tid, class, params)
    }
    fn release_task(&mut self, tid: u32) {
        (**self).release_task(tid)
    }
    fn inherit_original(&mut self, child: u32, parent: u32) {
        (**self).inherit_original(child, parent)
    }
    fn forget_task(&mut self, tid: u32) {
        (**self).forget_task(tid)
    }
    fn forget_exited_task(&mut self, tid: u32, exited_ns: u64) {
        (**self).forget_exited_task(tid, exited_ns)
    }
    fn exits_cleared_by_watcher(&mut self, cleared: bool) {
        (**self).exits_cleared_by_watcher(cleared)
    }
    fn thread_seen(&mut self, tid: u32, start_ticks: u64) -> bool {
        (**self).thread_seen(tid, start_ticks)
    }
    fn apply_group(
        &mut self,
        cgroup: &str,
        knobs: &GroupKnobs,
        scx: &ScxGroupPolicy,
    ) -> Result<(), ApplyError> {
        (**self).apply_group(cgroup, knobs, scx)
    }
    fn release_group(&mut self, cgroup: &str) {
        (**self).release_group(cgroup)
    }
    fn restore_all(&mut self) -> RestoreReport {
        (**self).restore_all()
    }
    fn notes(&self) -> Vec<String> {
        (**self).notes()
    }
    fn refused_subsched_attaches(&self) -> u64 {
        (**self).refused_subsched_attaches()
    }
    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        (**self).preempting_wakeups()
    }
    fn plan_changed(&mut self, plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        (**self).plan_changed(plan)
    }
    fn persist(&mut self, force: bool) {
        (**self).persist(force)
    }
    fn settle_adopted(&mut self) {
        (**self).settle_adopted()
    }
    fn set_manage_realtime(&mut self, manage: bool) {
        (**self).set_manage_realtime(manage)
    }
}
