// SPDX-License-Identifier: GPL-2.0-only
//! From a compiled policy [`Plan`] to the scheduler-side [`SchedulerConfig`]: the class table
//! (weight, slice, who preempts whom), the default class, and one group entry per *existing*
//! cgroup a policy group's path glob matches (its weight, guarantee, cap and the scheduler names
//! admitted there). Called at start and on every rescan, so cgroups created later are picked up.
use std::path::Path;

use canopy_sys::cgroup::Cgroup;

use canopy_policy::Plan;
use canopy_policy::Scheduler;

use super::bpf_intf;
use super::config::ClassConfig;
use super::config::GroupConfig;
use super::config::SchedulerConfig;
use super::config::CANOPY_CHILD_NAME;

/// How many levels below the cgroup2 root group paths are looked for.
const MAX_CGROUP_LEVELS: usize = 9;

/// The scheduler config for `plan` on this machine (cgroups under `cgroup_root`, `nr_cpus`
/// online CPUs for a group's share terms, `GroupSettings::share_terms`).
pub fn config_from_plan(plan: &Plan, cgroup_root: &Path, nr_cpus: u32) -> SchedulerConfig {
    // The whole class table in the policy's order (custom classes included): a class id is
    // its position, as in the plan, so the controller's tags need no translation.
    let default_position = plan
        .classes()
        .iter()
        .position(|class| class.name == "DEFAULT")
        .unwrap_or(bpf_intf::CANOPY_CLASS_DEFAULT as usize);
    let classes = plan
        .classes()
        .iter()
        .take(bpf_intf::CANOPY_MAX_CLASSES as usize)
        .enumerate()
        .map(|(position, class)| {
            let params = plan.class_params(class.id);
            ClassConfig {
                name: class.name.clone(),
                weight: params.weight.clamp(1, 10000),
                slice_us: params.slice_us.max(100) as u64,
                preempts: params.preempt,
                // classes below DEFAULT give way to preempting classes at once; DEFAULT and the
                // classes between it and the top (USER_INITIATED, where canopy's own daemon
                // runs) once they have run a millisecond of their slice; the top class never
                // (docs/scheduler-benchmark.md, 2026-12-05: the daemon's threads in the top
                // class were what waking frame and audio threads queued behind)
                preemptible: position > default_position,
                preemptible_after_us: if position > 0 && position <= default_position {
                    super::config::DEFAULT_PREEMPTIBLE_AFTER_US
                } else {
                    0
                },
            }
        })
        .collect();
    let default_class = plan.class(plan.defaults().class).name.clone();

    let mut groups = Vec::new();
    let relative_paths = Cgroup::from_dir(cgroup_root).descendants(MAX_CGROUP_LEVELS, usize::MAX);
    for relative in relative_paths {
        let Some(group_ref) = plan.group_for_cgroup(&relative) else {
            continue;
        };
        let group = plan.group(group_ref);
        let terms = group.base.share_terms(nr_cpus);
        let (admit, attach_canopy_child) = match &group.scheduler {
            Scheduler::Canopy => (vec![CANOPY_CHILD_NAME.to_string()], true),
            Scheduler::External(names) => (names.clone(), false),
            Scheduler::None => (Vec::new(), false),
        };
        groups.push(GroupConfig {
            cgroup: relative.into(),
            weight: terms.weight,
            guarantee_pct: terms.guarantee_percent,
            cap_pct: terms.cap_percent,
            admit,
            attach_canopy_child,
        });
    }
    // A canopy child cannot host children: drop admissions below one rather than fail.
    let canopy_roots: Vec<_> = groups
        .iter()
        .filter(|g| g.attach_canopy_child)
        .map(|g| g.cgroup.clone())
        .collect();
    for group in &mut groups {
        if canopy_roots
            .iter()
            .any(|outer| *outer != group.cgroup && group.cgroup.starts_with(outer))
        {
            group.admit.clear();
            group.attach_canopy_child = false;
        }
    }
    SchedulerConfig {
        default_class,
        own_weight: bpf_intf::CANOPY_DEFAULT_WEIGHT,
        classes,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn plan_groups_become_scheduler_groups_for_existing_cgroups() {
        let root = std::env::temp_dir().join(format!("canopy-plan-test-{}", std::process::id()));
        for dir in ["apps/editor", "batch", "other"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let compiled = canopy_policy::compile_str(
            "policy.toml",
            r#"
[groups.apps]
path = "apps/*"
weight = 300
scheduler = "canopy"
[groups.batch]
path = "batch"
weight = 50
scheduler = "none"
"#,
        )
        .expect("valid policy");
        let config = config_from_plan(&compiled.plan, &root, 2);
        fs::remove_dir_all(&root).unwrap();
        config.validate().unwrap();
        let editor = config
            .groups
            .iter()
            .find(|g| g.cgroup == Path::new("apps/editor"))
            .unwrap();
        assert_eq!(editor.weight, Some(300));
        assert!(editor.attach_canopy_child);
        assert_eq!(editor.admit, vec![CANOPY_CHILD_NAME.to_string()]);
        let batch = config
            .groups
            .iter()
            .find(|g| g.cgroup == Path::new("batch"))
            .unwrap();
        assert_eq!(batch.weight, Some(50));
        assert!(batch.admit.is_empty());
        assert!(config.groups.iter().all(|g| g.cgroup != Path::new("other")));
        assert_eq!(config.classes.len(), bpf_intf::CANOPY_NR_CLASSES as usize);
    }

    #[test]
    fn custom_classes_reach_the_schedulers_at_their_policy_ids() {
        let root = std::env::temp_dir().join(format!("canopy-plan-custom-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        let compiled = canopy_policy::compile_str(
            "policy.toml",
            r#"
[defaults]
class = "BATCH"
[classes.BATCH]
after = "DEFAULT"
weight = 70
"#,
        )
        .expect("valid policy");
        let config = config_from_plan(&compiled.plan, &root, 2);
        fs::remove_dir_all(&root).unwrap();
        config.validate().unwrap();
        let table = config.class_table().unwrap();
        let names: Vec<&str> = table.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "USER_INTERACTIVE",
                "USER_INITIATED",
                "DEFAULT",
                "BATCH",
                "UTILITY",
                "BACKGROUND"
            ]
        );
        for class in compiled.plan.classes() {
            assert_eq!(config.class_id_of(&class.name).unwrap(), class.id.0 as u32);
        }
        assert_eq!(config.default_class_id().unwrap(), 3);
        assert_eq!(table[3].weight, 70);
        assert!(table[3].preemptible && !table[2].preemptible);
        // the top class is never preemptible; USER_INITIATED (the daemon's) and DEFAULT after 1 ms
        let after: Vec<u32> = table
            .iter()
            .map(|class| class.preemptible_after_us)
            .collect();
        assert_eq!(after[..3], [0, 1000, 1000], "{after:?}");
    }
}
