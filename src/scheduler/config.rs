// SPDX-License-Identifier: GPL-2.0-only
//! The scheduler-side configuration: exactly what the BPF schedulers need from a compiled
//! policy (class parameters, the default class (`policy_defaults`), the weight of the root's own tasks, and per
//! cgroup: weight, guarantee, cap and the scheduler names admitted there). It is a plain
//! value, 1:1 with what the policy's Plan provides, so `canopy run` can build it from a Plan;
//! until then it can be read from JSON (`canopy scheduler run --config`).
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use super::bpf_intf;
use super::SchedulerError;

/// The ops name of canopy's own child scheduler.
pub const CANOPY_CHILD_NAME: &str = "canopy_child";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Class for tasks the controller has not tagged.
    #[serde(default = "default_class_name")]
    pub default_class: String,
    /// Weight of the root's own tasks (those outside every child) against the children.
    #[serde(default = "default_weight")]
    pub own_weight: u32,
    /// Parameters per class. When every name is a built-in class, these override the
    /// built-ins and classes not listed keep `ClassConfig::builtin`. When any name is a custom
    /// class, the list is the whole class table, highest first (a class's id is its position),
    /// and it must hold the five built-ins too.
    #[serde(default)]
    pub classes: Vec<ClassConfig>,
    /// The cgroups the policy names.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// USER_INTERACTIVE, USER_INITIATED, DEFAULT, UTILITY, BACKGROUND or a custom class.
    pub name: String,
    /// CPU share among runnable tasks, 1..10000 on the kernel's task scale (1024 = a nice-0
    /// task, the scale of the nice-to-weight table and of the daemon's policy classes); a
    /// cgroup at cpu.weight w weighs w * 1024 / 100 against it (bpf/cpu_tree.bpf.h).
    pub weight: u32,
    /// Time slice in microseconds.
    pub slice_us: u64,
    /// A waking task of this class preempts a running task of a preemptible class.
    #[serde(default)]
    pub preempts: bool,
    /// Tasks of this class may be preempted by a preempting class.
    #[serde(default)]
    pub preemptible: bool,
    /// When not `preemptible`: a task of this class may be preempted once it has run this many
    /// microseconds of its current slice (0: never). Bounds how long a waking USER_INTERACTIVE
    /// task waits behind a DEFAULT one without preempting DEFAULT at every wakeup.
    #[serde(default)]
    pub preemptible_after_us: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The cgroup, relative to /sys/fs/cgroup or absolute.
    pub cgroup: PathBuf,
    /// CPU weight against the other children and the root's own tasks; None follows the
    /// cgroup's cpu.weight.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Percent of all CPUs kept available to it under contention (0 = none).
    #[serde(default)]
    pub guarantee_pct: u32,
    /// Most of all CPUs it may use, in percent (0 or 100 = no cap).
    #[serde(default)]
    pub cap_pct: u32,
    /// Ops names of the sub-schedulers the policy admits on this cgroup (empty: none).
    #[serde(default)]
    pub admit: Vec<String>,
    /// Whether canopy attaches its own child scheduler here (`canopy_child` must be admitted).
    #[serde(default)]
    pub attach_canopy_child: bool,
}

fn default_class_name() -> String {
    "DEFAULT".into()
}

fn default_weight() -> u32 {
    bpf_intf::CANOPY_DEFAULT_WEIGHT
}

/// Class id (index into `class_params`) of a built-in class name in the built-in table.
pub fn class_id(name: &str) -> Result<u32, SchedulerError> {
    Ok(match name {
        "USER_INTERACTIVE" => bpf_intf::CANOPY_CLASS_USER_INTERACTIVE,
        "USER_INITIATED" => bpf_intf::CANOPY_CLASS_USER_INITIATED,
        "DEFAULT" => bpf_intf::CANOPY_CLASS_DEFAULT,
        "UTILITY" => bpf_intf::CANOPY_CLASS_UTILITY,
        "BACKGROUND" => bpf_intf::CANOPY_CLASS_BACKGROUND,
        other => return Err(SchedulerError::Config(format!("unknown class {other}"))),
    })
}

/// How long a DEFAULT task runs before a waking preempting-class task may preempt it.
pub const DEFAULT_PREEMPTIBLE_AFTER_US: u32 = 1000;

impl ClassConfig {
    /// The shipped class table: weights 8192/4096/1024/512/256 (the task scale, 1024 = nice
    /// 0: DEFAULT weighs as a nice-0 task, as a cgroup at cpu.weight 100), slices 3/5/10/20/20 ms;
    /// USER_INTERACTIVE preempts UTILITY and BACKGROUND.
    pub fn builtin() -> Vec<ClassConfig> {
        let class = |name: &str, weight, slice_ms: u64, preempts, preemptible| ClassConfig {
            name: name.into(),
            weight,
            slice_us: slice_ms * 1000,
            preempts,
            preemptible,
            preemptible_after_us: if name == "DEFAULT" {
                DEFAULT_PREEMPTIBLE_AFTER_US
            } else {
                0
            },
        };
        vec![
            class("USER_INTERACTIVE", 8192, 3, true, false),
            class("USER_INITIATED", 4096, 5, false, false),
            class("DEFAULT", 1024, 10, false, false),
            class("UTILITY", 512, 20, false, true),
            class("BACKGROUND", 256, 20, false, true),
        ]
    }

    pub fn to_params(&self) -> bpf_intf::canopy_class_params {
        bpf_intf::canopy_class_params {
            weight: self.weight.clamp(1, 10000),
            preempts: self.preempts as u32,
            preemptible: self.preemptible as u32,
            preemptible_after_us: self.preemptible_after_us,
            slice_ns: self.slice_us * 1000,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            default_class: default_class_name(),
            own_weight: default_weight(),
            classes: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl SchedulerConfig {
    pub fn from_json(text: &str) -> Result<Self, SchedulerError> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| SchedulerError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once, before anything reaches the kernel.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let mut problems = Vec::new();
        if let Err(e) = self.class_table().and_then(|_| self.default_class_id()) {
            problems.push(e.to_string());
        }
        for class in &self.classes {
            if class.weight == 0 || class.weight > 10000 {
                problems.push(format!(
                    "class {}: weight {} is not in 1..10000",
                    class.name, class.weight
                ));
            }
        }
        let max_admitted = bpf_intf::CANOPY_MAX_ADMITTED as usize;
        for group in &self.groups {
            let at = group.cgroup.display();
            if group.admit.len() > max_admitted {
                problems.push(format!(
                    "{at}: at most {max_admitted} admitted scheduler names"
                ));
            }
            for name in &group.admit {
                if name.is_empty() || name.len() >= bpf_intf::CANOPY_NAME_LEN as usize {
                    problems.push(format!("{at}: scheduler name {name:?} must be 1..31 bytes"));
                }
            }
            if group.guarantee_pct > 100 || group.cap_pct > 100 {
                problems.push(format!("{at}: guarantee and cap are percentages (0..100)"));
            }
            if group.cap_pct != 0 && group.guarantee_pct > group.cap_pct {
                problems.push(format!(
                    "{at}: guarantee {}% exceeds cap {}%",
                    group.guarantee_pct, group.cap_pct
                ));
            }
            if group.weight == Some(0) || group.weight.is_some_and(|w| w > 10000) {
                problems.push(format!("{at}: weight must be in 1..10000"));
            }
            if group.attach_canopy_child && !group.admit.iter().any(|n| n == CANOPY_CHILD_NAME) {
                problems.push(format!(
                    "{at}: attach_canopy_child needs {CANOPY_CHILD_NAME:?} in admit"
                ));
            }
        }
        for outer in self.groups.iter().filter(|g| g.attach_canopy_child) {
            for inner in self.groups.iter().filter(|g| !g.admit.is_empty()) {
                if inner.cgroup != outer.cgroup && inner.cgroup.starts_with(&outer.cgroup) {
                    problems.push(format!(
                        "{}: no sub-scheduler can attach below {}, whose canopy_child does not host children",
                        inner.cgroup.display(),
                        outer.cgroup.display()
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SchedulerError::Config(problems.join("; ")))
        }
    }

    /// The class table with this config's overrides applied, indexed by class id.
    /// The class table the schedulers get, index = class id (see `classes`).
    pub fn class_table(&self) -> Result<Vec<ClassConfig>, SchedulerError> {
        let custom = self
            .classes
            .iter()
            .any(|class| class_id(&class.name).is_err());
        if !custom {
            let mut table = ClassConfig::builtin();
            for class in &self.classes {
                table[class_id(&class.name)? as usize] = class.clone();
            }
            return Ok(table);
        }
        let max = bpf_intf::CANOPY_MAX_CLASSES as usize;
        if self.classes.len() > max {
            return Err(SchedulerError::Config(format!(
                "{} classes: the schedulers hold at most {max}",
                self.classes.len()
            )));
        }
        for (index, class) in self.classes.iter().enumerate() {
            if self.classes[..index].iter().any(|c| c.name == class.name) {
                return Err(SchedulerError::Config(format!(
                    "class {} is listed twice",
                    class.name
                )));
            }
        }
        for builtin in ClassConfig::builtin() {
            if !self.classes.iter().any(|class| class.name == builtin.name) {
                return Err(SchedulerError::Config(format!(
                    "a class table with custom classes must list every built-in class: {} is missing",
                    builtin.name
                )));
            }
        }
        Ok(self.classes.clone())
    }

    /// The id of a class name in this config's table.
    pub fn class_id_of(&self, name: &str) -> Result<u32, SchedulerError> {
        self.class_table()?
            .iter()
            .position(|class| class.name == name)
            .map(|id| id as u32)
            .ok_or_else(|| SchedulerError::Config(format!("unknown class {name}")))
    }

    pub fn default_class_id(&self) -> Result<u32, SchedulerError> {
        self.class_id_of(&self.default_class)
    }

    /// The `policy_defaults` entry for this config: the default class's id in this config's
    /// table, plus one (0 would mean the built-in DEFAULT to the schedulers).
    pub fn policy_defaults(&self) -> Result<bpf_intf::canopy_policy_defaults, SchedulerError> {
        Ok(bpf_intf::canopy_policy_defaults {
            default_class_plus_one: self.default_class_id()? + 1,
            ..Default::default()
        })
    }
}

impl GroupConfig {
    pub fn to_policy(&self) -> bpf_intf::canopy_group_policy {
        let mut policy = bpf_intf::canopy_group_policy {
            weight: self.weight.unwrap_or(0),
            guarantee_pct: self.guarantee_pct,
            cap_pct: self.cap_pct,
            nr_admitted: self.admit.len() as u32,
            ..Default::default()
        };
        for (slot, name) in policy.admitted.iter_mut().zip(&self.admit) {
            for (dst, src) in slot.iter_mut().zip(name.bytes()) {
                *dst = src as std::os::raw::c_char;
            }
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_config_round_trips_and_validates() {
        let config = SchedulerConfig::from_json(
            r#"{"groups":[{"cgroup":"a","weight":200,"admit":["canopy_child"],"attach_canopy_child":true}]}"#,
        )
        .unwrap();
        assert_eq!(config.groups[0].weight, Some(200));
        let policy = config.groups[0].to_policy();
        assert_eq!(policy.nr_admitted, 1);
        assert_eq!(policy.admitted[0][0] as u8, b'c');
    }

    #[test]
    fn every_problem_is_reported() {
        let err = SchedulerConfig::from_json(
            r#"{"default_class":"NOPE","groups":[{"cgroup":"a","guarantee_pct":50,"cap_pct":20,"attach_canopy_child":true}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown class NOPE"), "{err}");
        assert!(err.contains("exceeds cap"), "{err}");
        assert!(err.contains("attach_canopy_child"), "{err}");
    }

    #[test]
    fn nesting_below_canopy_child_is_refused() {
        let err = SchedulerConfig::from_json(
            r#"{"groups":[{"cgroup":"a","admit":["canopy_child"],"attach_canopy_child":true},
                          {"cgroup":"a/b","admit":["canopy_child"]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not host children"), "{err}");
    }

    /// A config whose class list adds BATCH between DEFAULT and UTILITY, with `default_class`.
    fn with_batch_class(default_class: &str) -> String {
        format!(
            r#"{{"default_class":"{default_class}","classes":[
                {{"name":"USER_INTERACTIVE","weight":800,"slice_us":3000,"preempts":true}},
                {{"name":"USER_INITIATED","weight":400,"slice_us":5000}},
                {{"name":"DEFAULT","weight":100,"slice_us":10000}},
                {{"name":"BATCH","weight":70,"slice_us":15000,"preemptible":true}},
                {{"name":"UTILITY","weight":50,"slice_us":20000,"preemptible":true}},
                {{"name":"BACKGROUND","weight":25,"slice_us":20000,"preemptible":true}}]}}"#
        )
    }

    #[test]
    fn custom_classes_make_the_list_the_whole_table() {
        let config = SchedulerConfig::from_json(&with_batch_class("BATCH")).unwrap();
        let table = config.class_table().unwrap();
        assert_eq!(table.len(), 6);
        assert_eq!(config.default_class_id().unwrap(), 3);
        assert_eq!(config.class_id_of("BACKGROUND").unwrap(), 5);
    }

    #[test]
    fn the_default_class_reaches_the_schedulers_as_its_id_plus_one() {
        let builtin = SchedulerConfig::default();
        assert_eq!(
            builtin.policy_defaults().unwrap().default_class_plus_one,
            bpf_intf::CANOPY_CLASS_DEFAULT + 1
        );
        let background = SchedulerConfig::from_json(r#"{"default_class":"BACKGROUND"}"#).unwrap();
        assert_eq!(
            background.policy_defaults().unwrap().default_class_plus_one,
            bpf_intf::CANOPY_CLASS_BACKGROUND + 1
        );
        // a custom class ahead of the default shifts its id: the entry follows the table
        let shifted = SchedulerConfig::from_json(&with_batch_class("UTILITY")).unwrap();
        assert_eq!(shifted.policy_defaults().unwrap().default_class_plus_one, 5);
        let unknown = SchedulerConfig {
            default_class: "NOPE".into(),
            ..Default::default()
        };
        assert!(unknown.policy_defaults().is_err());
    }

    #[test]
    fn a_custom_table_without_every_builtin_is_refused() {
        let err = SchedulerConfig::from_json(
            r#"{"classes":[{"name":"BATCH","weight":70,"slice_us":15000}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("USER_INTERACTIVE is missing"), "{err}");
    }

    #[test]
    fn builtin_classes_follow_intf_ids() {
        let table = ClassConfig::builtin();
        assert_eq!(table.len(), bpf_intf::CANOPY_NR_CLASSES as usize);
        for (id, class) in table.iter().enumerate() {
            assert_eq!(class_id(&class.name).unwrap() as usize, id);
        }
    }
}
