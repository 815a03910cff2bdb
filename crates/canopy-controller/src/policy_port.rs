//! The controller's port onto a compiled policy: the handful of questions the daemon asks a Plan
//! (which rule matches this task, which group owns this cgroup, what a class means, what a state
//! allows) and THE one decision function, [`PolicyPlan::effective_class`], the clamp. The daemon
//! never compares classes itself; both backends only apply what this function decided.
//!
//! `canopy_policy::Plan` implements this trait in `policy_adapter.rs`; tests may use small
//! hand-built plans. Nothing here does I/O.

use std::sync::Arc;
use std::time::Duration;

/// A class is the policy's own [`canopy_policy::ClassId`]: its index in the policy's class
/// order, highest class first, the same id the BPF schedulers use (`ClassParams::scx_id`), so 0
/// is USER_INTERACTIVE unless a custom class comes first. Only `ScxGroupPolicy::clamp` relies on
/// the order; elsewhere the controller just passes ids around.
pub use canopy_policy::ClassId;

/// Index of a group (a cgroup path glob) in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct GroupId(pub u32);

/// What the kernel's scheduling policy field should become for a class in fallback mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FairPolicy {
    /// SCHED_NORMAL (SCHED_OTHER).
    Normal,
    /// SCHED_BATCH.
    Batch,
    /// SCHED_IDLE.
    Idle,
}

/// The per-task parameters of one class, as both backends need them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassParams {
    /// The class name as written in the policy (e.g. `USER_INTERACTIVE`).
    pub name: Arc<str>,
    /// The id the BPF schedulers know this class by (index into their class array).
    pub scx_id: u32,
    /// Fair-class policy in fallback mode.
    pub policy: FairPolicy,
    /// Nice value in fallback mode (-20..19).
    pub nice: i32,
    /// Custom EEVDF slice in nanoseconds (sched_runtime); 0 leaves the kernel default.
    pub slice_ns: u64,
    /// uclamp minimum (0..1024).
    pub uclamp_min: u32,
    /// uclamp maximum (0..1024).
    pub uclamp_max: u32,
}

/// Why the effective class differs (or not) from the requested one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClampReason {
    /// The requested class is inside the group's allowed range.
    Unclamped,
    /// Lowered to the group's ceiling (a demotion).
    Ceiling,
    /// Raised to the group's floor.
    Floor,
    /// The requested class is denied in this group and was replaced.
    Denied,
}

/// The result of the one decision function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Clamp {
    /// The class the backends apply.
    pub class: ClassId,
    /// Why it is that class.
    pub reason: ClampReason,
}

/// The facts of one thread a rule can match on, as the controller keeps them (owned; the
/// borrowed view canopy-policy's matcher reads is `canopy_policy::TaskFacts`). Process-level
/// fields are shared by all threads of a process (one `Arc` per process).
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadFacts {
    /// Thread id.
    pub tid: u32,
    /// Thread comm (≤ 15 bytes).
    pub comm: String,
    /// Facts of the process the thread belongs to.
    pub process: Arc<ProcessFacts>,
}

/// Facts shared by every thread of one process.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessFacts {
    /// Thread-group id (the pid).
    pub tgid: u32,
    /// The leader's comm.
    pub comm: String,
    /// Full path of the executable (`/proc/PID/exe`), empty for kernel threads. Shared, not
    /// copied, by the facts of forked children.
    pub exe: Arc<str>,
    /// Command line with NULs replaced by spaces: its first
    /// [`canopy_sys::procfs::CMDLINE_MAX_BYTES`], and only when a rule matches on it
    /// ([`PolicyPlan::uses_cmdline`]; empty otherwise). Shared by forked children's facts.
    pub cmdline: Arc<str>,
    /// Real uid.
    pub uid: u32,
    /// The real uid's user name (NSS), when it has one: what `user = "..."` rules match.
    pub user: Option<Arc<str>>,
    /// cgroup2 path relative to the cgroup2 root, without a leading `/` (`""` is the root).
    pub cgroup: String,
    /// The parent's comm.
    pub parent_comm: String,
    /// PF_KTHREAD is set.
    pub kthread: bool,
}

/// A rule match: which rule, and the class it requests for this thread.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleMatch {
    /// The rule's name (or `file:line` when it has none).
    pub rule: Arc<str>,
    /// The class the rule requests for this thread (thread rules already applied).
    pub class: ClassId,
    /// The thread rule that chose the class, if one did.
    pub thread_rule: Option<Arc<str>>,
    /// Whether processes forked from a matched process inherit this match.
    pub inherit: bool,
}

/// Which states a group uses for focus, from the policy: by convention the states named
/// `focused` and `unfocused`. A missing `focused` state means focus returns the group to its
/// base settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FocusStates {
    /// State entered when the group gains focus (xattr `-1`); `None` = base settings.
    pub focused: Option<String>,
    /// State entered once focus is lost (xattr = a timestamp), after that state's delay.
    pub unfocused: Option<String>,
}

/// A named state of a group as the policy defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateInfo {
    /// Whether the user owning the cgroup (inside their `user@UID.service`) may set this state.
    pub user_settable: bool,
    /// How long a switch to this state waits before it applies ("unfocused for 30 s").
    pub after: Duration,
}

/// cgroup knobs the fallback backend writes for a group in a state. `None` leaves a knob alone.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GroupKnobs {
    /// cpu.weight (1..10000).
    pub weight: Option<u32>,
    /// cpu.idle.
    pub idle: Option<bool>,
    /// cpu.uclamp.min in percent.
    pub uclamp_min_pct: Option<f64>,
    /// cpu.uclamp.max in percent.
    pub uclamp_max_pct: Option<f64>,
    /// cpu.max as (quota µs or None for `max`, period µs).
    pub max: Option<(Option<u64>, u64)>,
}

/// Group policy as the scx backend writes it to the schedulers' group map.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScxGroupPolicy {
    /// Relative weight; None: the policy sets none, the cgroup's own `cpu.weight` rules.
    pub weight: Option<u32>,
    /// Guaranteed share in percent of the machine (0 = none).
    pub guarantee_pct: u32,
    /// Cap in percent of the machine (0 = none).
    pub cap_pct: u32,
    /// Lowest class a task of the group may run as.
    pub floor: Option<ClassId>,
    /// Highest class a task of the group may run as.
    pub ceiling: Option<ClassId>,
    /// Index of the current state (0 = base).
    pub state: u32,
}

impl ScxGroupPolicy {
    /// The class the BPF schedulers run a task of this group as when it asks for `requested`
    /// (canopy.bpf.h `clamp_to_cgroup`): ids count down from the highest class, so a request
    /// above the ceiling runs as the ceiling and one below the floor as the floor.
    pub fn clamp(&self, requested: ClassId) -> ClassId {
        let mut class = requested;
        if let Some(ceiling) = self.ceiling {
            class = class.max(ceiling);
        }
        if let Some(floor) = self.floor {
            class = class.min(floor);
        }
        class
    }
}

/// The questions the daemon asks a compiled policy. Implementations are immutable; a reload
/// swaps the whole `Arc<dyn PolicyPlan>`.
pub trait PolicyPlan: Send + Sync + std::fmt::Debug {
    /// A stable content hash (shown by `status`).
    fn hash(&self) -> String;
    /// The class untagged tasks get, or `None` to leave unmatched tasks alone.
    fn default_class(&self) -> Option<ClassId>;
    /// Parameters of a class.
    fn class_params(&self, class: ClassId) -> &ClassParams;
    /// Looks a class up by name (for `ctl tag`).
    fn class_by_name(&self, name: &str) -> Option<ClassId>;
    /// First matching rule for a task (process rule plus its thread rules).
    fn match_task(&self, facts: &ThreadFacts) -> Option<RuleMatch>;
    /// The group a cgroup path (relative to the cgroup2 root) belongs to.
    fn group_for_cgroup(&self, cgroup: &str) -> Option<GroupId>;
    /// A group's name for logs and status.
    fn group_name(&self, group: GroupId) -> Arc<str>;
    /// THE decision: the requested class clamped by the group's allowed classes in `state`.
    fn effective_class(
        &self,
        requested: ClassId,
        group: Option<GroupId>,
        state: Option<&str>,
    ) -> Clamp;
    /// A named state of a group, if the policy defines it.
    fn state_info(&self, group: GroupId, state: &str) -> Option<StateInfo>;
    /// The focus states of a group, if the policy gives it any.
    fn focus_states(&self, group: GroupId) -> Option<FocusStates>;
    /// The state a newly seen cgroup of this group starts in.
    fn default_state(&self, group: GroupId) -> Option<String>;
    /// Fallback knobs for a group in a state.
    fn group_knobs(&self, group: GroupId, state: Option<&str>) -> GroupKnobs;
    /// scx group policy for a group in a state.
    fn scx_group_policy(&self, group: GroupId, state: Option<&str>) -> ScxGroupPolicy;
    /// Whether kernel threads are managed (default: left alone).
    fn manage_kernel_threads(&self) -> bool;
    /// Whether RT and DL tasks are managed (default: left alone).
    fn manage_realtime(&self) -> bool;
    /// Whether any rule matches on the command line: if none does, it is never read.
    fn uses_cmdline(&self) -> bool {
        true
    }
    /// The compiled policy behind this plan, when there is one (the scheduler loader derives its
    /// own configuration from it on a reload); test plans have none.
    fn compiled(&self) -> Option<&canopy_policy::Plan> {
        None
    }
}

/// Compiles the policy at the given paths. The daemon calls it at start and on every reload; an
/// `Err` carries the full diagnostics text, and the old plan stays in force.
pub type PlanLoader = Arc<dyn Fn() -> Result<Arc<dyn PolicyPlan>, String> + Send + Sync + 'static>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedulers_clamp_counts_ids_down_from_the_highest_class() {
        let limits = ScxGroupPolicy {
            weight: Some(100),
            guarantee_pct: 0,
            cap_pct: 0,
            floor: Some(ClassId(3)),
            ceiling: Some(ClassId(1)),
            state: 1,
        };
        assert_eq!(limits.clamp(ClassId(0)), ClassId(1), "above the ceiling");
        assert_eq!(limits.clamp(ClassId(2)), ClassId(2), "allowed");
        assert_eq!(limits.clamp(ClassId(4)), ClassId(3), "below the floor");
        let open = ScxGroupPolicy {
            floor: None,
            ceiling: None,
            ..limits
        };
        assert_eq!(open.clamp(ClassId(0)), ClassId(0));
    }
}
