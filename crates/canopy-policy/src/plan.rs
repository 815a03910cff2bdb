//! The compiled Plan: the immutable, validated, resolved policy the daemon runs, with its stable
//! content hash, its indexed rule matcher, group lookup, and THE decision function
//! `effective_class` that both daemon backends (sched_ext and fallback) call.

use std::collections::HashMap;

use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use crate::class::Class;
use crate::class::ClassId;
use crate::class::ClassMask;
use crate::class::ClassParams;
use crate::diagnostic::Location;
use crate::glob::GlobIndex;
use crate::matcher::RuleMatcher;
use crate::model::DaemonMode;
use crate::rule::Rule;
use crate::rule::RuleMatch;
use crate::rule::TaskFacts;

/// A reference to a group of a plan (its index in `Plan::groups()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupRef(pub usize);

/// Why `effective_class` decided what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// The task is in no group: the requested class stands.
    NoGroup,
    /// The group allows the requested class.
    Allowed,
    /// The requested class is above the group's ceiling; lowered to the nearest allowed class.
    ClampedToCeiling,
    /// The requested class is below the group's floor; raised to the nearest allowed class.
    RaisedToFloor,
    /// The group's allow/deny lists exclude the requested class; the nearest allowed class below
    /// it (or, if none, above it) is used.
    NotAllowed,
}

/// The result of the one decision function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The class to apply.
    pub class: ClassId,
    /// Why.
    #[serde(flatten)]
    pub reason: Reason,
}

/// How a group's CPU time is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cap {
    /// At most this share of the machine, in percent.
    Percent(u8),
    /// At most `quota_us` per `period_us` (as cgroup `cpu.max`).
    Quota {
        /// CPU time per period, microseconds.
        quota_us: u64,
        /// Period, microseconds.
        period_us: u64,
    },
}

/// The effective settings of a group in one state (or in its base settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSettings {
    /// CPU weight, 1..=10000; None: the policy sets none and each cgroup's own `cpu.weight`
    /// rules (docs/policy.md, "Precedence").
    pub weight: Option<u32>,
    /// `allow` list as written (None: every class).
    pub allow: Option<Vec<ClassId>>,
    /// `deny` list as written.
    pub deny: Vec<ClassId>,
    /// Highest class allowed.
    pub ceiling: Option<ClassId>,
    /// Lowest class allowed.
    pub floor: Option<ClassId>,
    /// The classes allowed here: allow ∩ ¬deny ∩ [ceiling, floor]. Never empty.
    pub allowed: ClassMask,
    /// Guaranteed minimum share of the machine, percent.
    pub guarantee_percent: Option<u8>,
    /// Maximum CPU.
    pub cap: Option<Cap>,
}

/// The overrides one state writes (None: keep the group's value). Kept for printing and diffs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SettingsOverrides {
    /// New weight.
    pub weight: Option<u32>,
    /// New allow list.
    pub allow: Option<Vec<ClassId>>,
    /// New deny list.
    pub deny: Option<Vec<ClassId>>,
    /// New ceiling.
    pub ceiling: Option<ClassId>,
    /// New floor.
    pub floor: Option<ClassId>,
    /// New guarantee.
    pub guarantee_percent: Option<u8>,
    /// New cap.
    pub cap: Option<Cap>,
}

/// One named state of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupState {
    /// Name, e.g. `unfocused`.
    pub name: String,
    /// Seconds the group must have been in this state before the overrides apply.
    pub after_s: u32,
    /// Whether the cgroup's owner may select this state.
    pub user_settable: bool,
    /// What the state overrides.
    pub overrides: SettingsOverrides,
    /// The group's settings in this state (base settings with the overrides applied).
    pub settings: GroupSettings,
}

/// Which scheduler runs a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// canopy's own child scheduler.
    Canopy,
    /// A foreign sched_ext scheduler; these ops names are admitted.
    External(Vec<String>),
    /// None: the root scheduler runs the tasks.
    None,
}

impl Scheduler {
    /// `canopy`, `external` or `none`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Scheduler::Canopy => "canopy",
            Scheduler::External(_) => "external",
            Scheduler::None => "none",
        }
    }
}

/// One group of a compiled plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Name (the key under `[groups]`).
    pub name: String,
    /// cgroup path glob relative to the cgroup2 root.
    pub path: String,
    /// Child scheduler.
    pub scheduler: Scheduler,
    /// Settings outside any state.
    pub base: GroupSettings,
    /// Named states, in definition order.
    pub states: Vec<GroupState>,
    /// State a newly seen cgroup starts in.
    pub default_state: Option<String>,
    /// Where the group is defined.
    #[serde(skip)]
    pub defined_at: Option<Location>,
}

impl Group {
    /// The state named `name`.
    pub fn state(&self, name: &str) -> Option<&GroupState> {
        self.states.iter().find(|state| state.name == name)
    }

    /// Settings in state `state` (base settings for `None` or an unknown state).
    pub fn settings(&self, state: Option<&str>) -> &GroupSettings {
        state
            .and_then(|name| self.state(name))
            .map_or(&self.base, |state| &state.settings)
    }
}

/// Defaults for untagged tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// Class of tasks no rule matches.
    pub class: ClassId,
    /// Leave kernel threads alone.
    pub leave_kernel_threads: bool,
    /// Leave RT and DL tasks alone.
    pub leave_realtime: bool,
}

/// Daemon settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonSettings {
    /// Control socket path.
    pub socket_path: String,
    /// Metrics address, if any.
    pub metrics_address: Option<String>,
    /// Enforcement mode.
    pub mode: DaemonMode,
}

/// Default control socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/run/canopy/control.sock";

/// The resolved policy: everything the hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PlanData {
    pub(crate) classes: Vec<Class>,
    pub(crate) defaults: Defaults,
    pub(crate) daemon: DaemonSettings,
    pub(crate) rules: Vec<Rule>,
    pub(crate) groups: Vec<Group>,
}

/// Feeds the canonical serialization straight into the hasher.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The compiled policy. Immutable; cheap to share behind an `Arc`.
pub struct Plan {
    data: PlanData,
    class_by_name: HashMap<String, ClassId>,
    matcher: RuleMatcher,
    groups_by_path: GlobIndex,
    hash: [u8; 32],
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("hash", &self.hash_hex())
            .finish_non_exhaustive()
    }
}

impl Plan {
    pub(crate) fn new(data: PlanData, matcher: RuleMatcher, groups_by_path: GlobIndex) -> Self {
        let mut hasher = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hasher, &data).expect("plan data serializes");
        let hash: [u8; 32] = hasher.0.finalize().into();
        let class_by_name = data
            .classes
            .iter()
            .map(|class| (class.name.clone(), class.id))
            .collect();
        Plan {
            data,
            class_by_name,
            matcher,
            groups_by_path,
            hash,
        }
    }

    /// SHA-256 of the canonical serialization of the resolved policy. Two policies that resolve
    /// to the same classes, rules, groups, defaults and daemon settings have the same hash,
    /// whatever their file layout, comments or spelling.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// `hash()` as 64 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        self.hash.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The classes in order; `classes()[id.index()]` is class `id`.
    pub fn classes(&self) -> &[Class] {
        &self.data.classes
    }

    /// Class `id`. Panics on an id from another plan that is out of range.
    pub fn class(&self, id: ClassId) -> &Class {
        &self.data.classes[id.index()]
    }

    /// Parameters of class `id`.
    pub fn class_params(&self, id: ClassId) -> &ClassParams {
        &self.class(id).params
    }

    /// The class named `name`.
    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.class_by_name.get(name).copied()
    }

    /// Defaults for untagged tasks.
    pub fn defaults(&self) -> &Defaults {
        &self.data.defaults
    }

    /// Daemon settings.
    pub fn daemon(&self) -> &DaemonSettings {
        &self.data.daemon
    }

    /// Rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.data.rules
    }

    /// Groups in definition order (the first matching group owns a cgroup).
    pub fn groups(&self) -> &[Group] {
        &self.data.groups
    }

    /// The group behind `group`.
    pub fn group(&self, group: GroupRef) -> &Group {
        &self.data.groups[group.0]
    }

    /// The first rule matching `task`, with the thread rule matching its thread name.
    pub fn match_task(&self, task: &TaskFacts<'_>) -> Option<RuleMatch> {
        let rule_index = self.matcher.first_match(task)?;
        let rule = &self.data.rules[rule_index];
        let thread_rule = self.matcher.thread_rule(rule_index, task.thread_name);
        Some(RuleMatch {
            rule: rule_index,
            class: rule.class,
            thread_class: thread_rule.map(|(_, class)| class),
            thread_rule: thread_rule.map(|(index, _)| index),
            inherit: rule.inherit,
        })
    }

    /// The group owning the cgroup at `path` (relative to the cgroup2 root; a leading `/` is
    /// ignored): the first group in definition order whose glob matches.
    pub fn group_for_cgroup(&self, path: &str) -> Option<GroupRef> {
        let path = path.trim_start_matches('/');
        self.groups_by_path.first_match(path).map(GroupRef)
    }

    /// THE decision: the class a task requesting `requested` gets in `group` while the group is
    /// in `state` (None or an unknown name: the group's base settings). The requested class is
    /// kept when allowed; above the ceiling it is lowered to the nearest allowed class, below the
    /// floor raised to the nearest allowed class, and when excluded by allow/deny the nearest
    /// allowed class below it (else above it) is used.
    pub fn effective_class(
        &self,
        requested: ClassId,
        group: Option<GroupRef>,
        state: Option<&str>,
    ) -> Decision {
        let Some(group) = group else {
            return Decision {
                class: requested,
                reason: Reason::NoGroup,
            };
        };
        let settings = self.group(group).settings(state);
        decide(requested, settings, self.data.classes.len())
    }
}

/// The clamp, on one group's settings. Validation guarantees `allowed` is not empty.
pub(crate) fn decide(requested: ClassId, settings: &GroupSettings, class_count: usize) -> Decision {
    let allowed = settings.allowed;
    if allowed.contains(requested) {
        return Decision {
            class: requested,
            reason: Reason::Allowed,
        };
    }
    let lower = || {
        (u16::from(requested.0) + 1..class_count as u16)
            .map(|id| ClassId(id as u8))
            .find(|&c| allowed.contains(c))
    };
    let higher = || {
        (0..requested.0.min(class_count as u8))
            .rev()
            .map(ClassId)
            .find(|&c| allowed.contains(c))
    };
    let above_ceiling = settings
        .ceiling
        .is_some_and(|ceiling| requested.is_higher_than(ceiling));
    let below_floor = settings
        .floor
        .is_some_and(|floor| floor.is_higher_than(requested));
    let (found, reason) = if above_ceiling {
        (lower().or_else(higher), Reason::ClampedToCeiling)
    } else if below_floor {
        (higher().or_else(lower), Reason::RaisedToFloor)
    } else {
        (lower().or_else(higher), Reason::NotAllowed)
    };
    Decision {
        class: found.unwrap_or(requested),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Plan>();
    }

    fn settings(allowed: ClassMask, ceiling: Option<u8>, floor: Option<u8>) -> GroupSettings {
        GroupSettings {
            weight: None,
            allow: None,
            deny: Vec::new(),
            ceiling: ceiling.map(ClassId),
            floor: floor.map(ClassId),
            allowed,
            guarantee_percent: None,
            cap: None,
        }
    }

    #[test]
    fn decide_clamps_to_ceiling_and_raises_to_floor() {
        // Classes 0..5; ceiling 1, floor 3: allowed {1,2,3}.
        let group = settings(ClassMask(0b01110), Some(1), Some(3));
        assert_eq!(
            decide(ClassId(0), &group, 5),
            Decision {
                class: ClassId(1),
                reason: Reason::ClampedToCeiling
            }
        );
        assert_eq!(
            decide(ClassId(4), &group, 5),
            Decision {
                class: ClassId(3),
                reason: Reason::RaisedToFloor
            }
        );
        assert_eq!(
            decide(ClassId(2), &group, 5),
            Decision {
                class: ClassId(2),
                reason: Reason::Allowed
            }
        );
    }

    #[test]
    fn decide_survives_a_class_id_from_another_plan() {
        let group = settings(ClassMask(0b00110), None, None);
        assert_eq!(decide(ClassId(200), &group, 5).class, ClassId(2));
    }

    #[test]
    fn decide_prefers_the_class_below_a_denied_one() {
        // Deny class 1 of 0..5.
        let group = settings(ClassMask(0b11101), None, None);
        assert_eq!(
            decide(ClassId(1), &group, 5),
            Decision {
                class: ClassId(2),
                reason: Reason::NotAllowed
            }
        );
        // Only class 0 allowed: go up.
        let group = settings(ClassMask(0b00001), None, None);
        assert_eq!(decide(ClassId(3), &group, 5).class, ClassId(0));
    }
}
