//! `canopy compile [--explain]`: print the resolved policy as canonical TOML, or explain it:
//! classes, rules in evaluation order, groups, and which existing cgroups each group owns on this
//! machine (found by walking the cgroup2 mount, bounded in depth and count).

use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use canopy_policy::Cap;
use canopy_policy::GroupSettings;
use canopy_policy::Plan;
use canopy_policy::Scheduler;
use canopy_sys::cgroup::Cgroup;

use super::load_and_compile;

/// Deepest cgroup level walked.
const MAX_CGROUP_LEVELS: usize = 16;
/// Most cgroups listed.
const MAX_CGROUPS: usize = 100_000;
/// Most cgroups printed per group.
const SHOWN_PER_GROUP: usize = 10;

pub(crate) fn run(
    paths: &[PathBuf],
    explain: bool,
    cgroup_root: Option<&Path>,
) -> Result<ExitCode> {
    let cgroup_root =
        cgroup_root.unwrap_or_else(|| canopy_sys::cgroup::CgroupHierarchy::system().mount_point());
    let Some(compiled) = load_and_compile(paths)? else {
        return Ok(ExitCode::from(1));
    };
    if explain {
        let cgroups = existing_cgroups(cgroup_root);
        print!(
            "{}",
            explanation(&compiled.plan, cgroup_root, cgroups.as_deref())
        );
    } else {
        println!("# canopy plan {}", compiled.plan.hash_hex());
        print!("{}", canopy_policy::to_toml(&compiled.plan));
    }
    Ok(ExitCode::SUCCESS)
}

/// cgroup paths under `root`, relative to it; None when `root` is not a readable cgroup2 mount.
fn existing_cgroups(root: &Path) -> Option<Vec<String>> {
    let mount = Cgroup::from_dir(root);
    mount.controllers().ok()?;
    let mut found = mount.descendants(MAX_CGROUP_LEVELS, MAX_CGROUPS);
    found.sort();
    Some(found)
}

fn settings_line(plan: &Plan, settings: &GroupSettings) -> String {
    let name = |id: canopy_policy::ClassId| plan.class(id).name.clone();
    let allowed: Vec<String> = plan
        .classes()
        .iter()
        .filter(|c| settings.allowed.contains(c.id))
        .map(|c| c.name.clone())
        .collect();
    let weight = match settings.weight {
        Some(weight) => weight.to_string(),
        None => "the cgroup's cpu.weight".to_string(),
    };
    let mut line = format!("weight {weight}; allowed {}", allowed.join(","));
    if let Some(ceiling) = settings.ceiling {
        let _ = write!(line, "; ceiling {}", name(ceiling));
    }
    if let Some(floor) = settings.floor {
        let _ = write!(line, "; floor {}", name(floor));
    }
    if let Some(guarantee) = settings.guarantee_percent {
        let _ = write!(line, "; guarantee {guarantee}%");
    }
    match settings.cap {
        Some(Cap::Percent(percent)) => {
            let _ = write!(line, "; cap {percent}%");
        }
        Some(Cap::Quota {
            quota_us,
            period_us,
        }) => {
            let _ = write!(line, "; cap {quota_us}/{period_us} us");
        }
        None => {}
    }
    line
}

/// The human explanation of a plan.
pub(crate) fn explanation(plan: &Plan, cgroup_root: &Path, cgroups: Option<&[String]>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan {}\n", plan.hash_hex());
    let _ = writeln!(out, "classes (highest first):");
    for class in plan.classes() {
        let p = &class.params;
        let _ = writeln!(
            out,
            "  {:>2} {:<18} {:?} nice {:>3} slice {:>6} us uclamp {}..{} weight {:>5}{}{}",
            class.id.0,
            class.name,
            p.policy,
            p.nice,
            p.slice_us,
            p.uclamp_min,
            p.uclamp_max,
            p.weight,
            if p.preempt { " preempts" } else { "" },
            if class.builtin { "" } else { " (custom)" },
        );
    }
    let defaults = plan.defaults();
    let _ = writeln!(
        out,
        "\ndefaults: untagged tasks {}; leave kernel threads {}; leave RT/DL tasks {}",
        plan.class(defaults.class).name,
        defaults.leave_kernel_threads,
        defaults.leave_realtime
    );
    let daemon = plan.daemon();
    let _ = writeln!(
        out,
        "daemon: mode {:?}; socket {}; metrics {}",
        daemon.mode,
        daemon.socket_path,
        daemon.metrics_address.as_deref().unwrap_or("off")
    );
    let _ = writeln!(out, "\nrules in evaluation order (first match wins):");
    if plan.rules().is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (index, rule) in plan.rules().iter().enumerate() {
        let conditions = rule.conditions.describe();
        let class = if rule.class_explicit {
            plan.class(rule.class).name.clone()
        } else {
            format!("({})", plan.class(rule.class).name)
        };
        let _ = writeln!(
            out,
            "  {:>3}. {} -> {}{}{}",
            index + 1,
            conditions,
            class,
            if rule.inherit {
                ", inherited by children"
            } else {
                ""
            },
            rule.name
                .as_ref()
                .map(|n| format!("  [{n}]"))
                .unwrap_or_default(),
        );
        for thread in &rule.threads {
            let _ = writeln!(
                out,
                "         thread {:?} -> {}",
                thread.name,
                plan.class(thread.class).name
            );
        }
        if let Some(location) = &rule.defined_at {
            let _ = writeln!(out, "         at {location}");
        }
    }
    let _ = writeln!(out, "\ngroups (first matching group owns a cgroup):");
    if plan.groups().is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let mut owned: Vec<Vec<&str>> = vec![Vec::new(); plan.groups().len()];
    if let Some(cgroups) = cgroups {
        for cgroup in cgroups {
            if let Some(group) = plan.group_for_cgroup(cgroup) {
                owned[group.0].push(cgroup);
            }
        }
    }
    for (index, group) in plan.groups().iter().enumerate() {
        let scheduler = match &group.scheduler {
            Scheduler::External(ops) => format!("external ({})", ops.join(", ")),
            other => other.kind_name().to_string(),
        };
        let _ = writeln!(
            out,
            "  {} \"{}\" scheduler {}",
            group.name, group.path, scheduler
        );
        let _ = writeln!(out, "      base: {}", settings_line(plan, &group.base));
        for state in &group.states {
            let default = if group.default_state.as_deref() == Some(&state.name) {
                " (default)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "      state {}{}: after {} s{}; {}",
                state.name,
                default,
                state.after_s,
                if state.user_settable {
                    ", user-settable"
                } else {
                    ""
                },
                settings_line(plan, &state.settings)
            );
        }
        match cgroups {
            None => {
                let _ = writeln!(
                    out,
                    "      cgroups: {} is not a readable cgroup2 mount",
                    cgroup_root.display()
                );
            }
            Some(_) => {
                let matched = &owned[index];
                let _ = writeln!(out, "      cgroups on this machine: {}", matched.len());
                for cgroup in matched.iter().take(SHOWN_PER_GROUP) {
                    let _ = writeln!(out, "        {cgroup}");
                }
                if matched.len() > SHOWN_PER_GROUP {
                    let _ = writeln!(
                        out,
                        "        ... and {} more",
                        matched.len() - SHOWN_PER_GROUP
                    );
                }
            }
        }
    }
    out
}
