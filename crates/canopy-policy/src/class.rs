//! QoS classes: the built-in table (schedqos's mapping, in Apple's QoS order), `ClassId`, the
//! parameters each class carries to the kernel, and `ClassMask`, a set of classes. Class ids are
//! small integers in priority order (0 = highest); the BPF schedulers use them as array indices.

use serde::Serialize;

use crate::model::SchedPolicy;

/// The most classes a plan may have (the BPF class table's size; a `ClassMask` is a `u64`).
pub const MAX_CLASSES: usize = 32;

/// A class's position in the order: 0 is the highest class. Stable for one plan only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ClassId(pub u8);

impl ClassId {
    /// The id as an array index.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// Whether `self` is a higher class (more important) than `other`.
    pub fn is_higher_than(self, other: ClassId) -> bool {
        self.0 < other.0
    }
}

/// The scheduling parameters of one class, as the daemon applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassParams {
    /// Linux scheduling policy for fair tasks.
    pub policy: SchedPolicy,
    /// Nice value, -20..=19.
    pub nice: i8,
    /// Time slice in microseconds.
    pub slice_us: u32,
    /// Minimum utilization clamp, 0..=1024.
    pub uclamp_min: u16,
    /// Maximum utilization clamp, 0..=1024.
    pub uclamp_max: u16,
    /// Relative weight in canopy's BPF schedulers, 1..=10000.
    pub weight: u32,
    /// Whether a waking task of this class may preempt lower classes.
    pub preempt: bool,
}

/// One class of a compiled plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Class {
    /// Position in the order (0 = highest).
    pub id: ClassId,
    /// Name, e.g. `USER_INTERACTIVE`.
    pub name: String,
    /// Whether this is one of the five built-in classes.
    pub builtin: bool,
    /// One line on what the class is for.
    pub description: String,
    /// Scheduling parameters.
    pub params: ClassParams,
}

/// A built-in class: name, description and default parameters.
pub(crate) struct Builtin {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) params: ClassParams,
}

const fn params(
    policy: SchedPolicy,
    nice: i8,
    slice_us: u32,
    uclamp_max: u16,
    weight: u32,
    preempt: bool,
) -> ClassParams {
    ClassParams {
        policy,
        nice,
        slice_us,
        uclamp_min: 0,
        uclamp_max,
        weight,
        preempt,
    }
}

/// The built-in classes in priority order. Parameters follow schedqos v0.1's `qos_mappings.json`
/// (DEFAULT = UTILITY); weights are the kernel's nice-to-weight values for the class's nice.
/// DEFAULT sits between USER_INITIATED and UTILITY as in Apple's QoS order.
pub(crate) const BUILTINS: [Builtin; 5] = [
    Builtin {
        name: "USER_INTERACTIVE",
        description: "Work the user is waiting on right now: UI threads, audio, input.",
        params: params(SchedPolicy::Normal, -4, 8_000, 1024, 2501, true),
    },
    Builtin {
        name: "USER_INITIATED",
        description: "Work the user asked for and waits on soon: loading, opening, saving.",
        params: params(SchedPolicy::Normal, -2, 12_000, 768, 1586, true),
    },
    Builtin {
        name: "DEFAULT",
        description: "Untagged tasks; the same parameters as UTILITY unless overridden.",
        params: params(SchedPolicy::Batch, 2, 16_000, 512, 655, false),
    },
    Builtin {
        name: "UTILITY",
        description: "Long-running work the user knows about: downloads, builds they watch.",
        params: params(SchedPolicy::Batch, 2, 16_000, 512, 655, false),
    },
    Builtin {
        name: "BACKGROUND",
        description: "Work nobody waits on: indexing, backups, compilers in a build farm.",
        params: params(SchedPolicy::Batch, 4, 20_000, 256, 423, false),
    },
];

/// Names of the built-in classes, in order.
pub fn builtin_class_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|builtin| builtin.name)
}

/// A set of classes, one bit per `ClassId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct ClassMask(pub u64);

impl ClassMask {
    /// Every class of a table of `count` classes.
    pub fn all(count: usize) -> Self {
        ClassMask(if count >= 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        })
    }

    /// Whether `class` is in the set.
    pub fn contains(self, class: ClassId) -> bool {
        class.0 < 64 && self.0 & (1u64 << class.0) != 0
    }

    /// The set with `class` added.
    pub fn with(self, class: ClassId) -> Self {
        ClassMask(self.0 | 1u64.checked_shl(class.0.into()).unwrap_or(0))
    }

    /// The set with `class` removed.
    pub fn without(self, class: ClassId) -> Self {
        ClassMask(self.0 & !1u64.checked_shl(class.0.into()).unwrap_or(0))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_follow_schedqos_mapping() {
        let interactive = &BUILTINS[0].params;
        assert_eq!(
            (
                interactive.nice,
                interactive.slice_us,
                interactive.uclamp_max
            ),
            (-4, 8_000, 1024)
        );
        let background = &BUILTINS[4].params;
        assert_eq!(background.policy, SchedPolicy::Batch);
        assert_eq!(
            (background.nice, background.slice_us, background.uclamp_max),
            (4, 20_000, 256)
        );
        assert_eq!(BUILTINS[2].params, BUILTINS[3].params, "DEFAULT = UTILITY");
    }

    #[test]
    fn mask_operations() {
        let mask = ClassMask::all(5).without(ClassId(0));
        assert!(!mask.contains(ClassId(0)));
        assert!(mask.contains(ClassId(4)));
        assert!(!mask.contains(ClassId(5)));
        assert!(ClassMask::default().with(ClassId(3)).contains(ClassId(3)));
        assert!(ClassId(0).is_higher_than(ClassId(1)));
    }
}
