// SPDX-License-Identifier: GPL-2.0-only
//! The compiler: merges the parsed files (drop-ins in order), validates everything, reporting
//! every problem with its location, and builds the `Plan`. Nothing is half-compiled: any error
//! means no plan.
//!
//! Merge rules: `[defaults]` and `[daemon]` fields are overridden one by one by later files;
//! `[classes.X]` and `[groups.X]` merge field by field (states by name), except that moving a
//! class (`after`) or a group (`path`) to somewhere else is an unmergeable redefinition; a rule
//! with the `name` of an earlier file's rule replaces it in place; other rules are appended.
//!
//! The pipeline, one file per stage: `merge` (drop-ins into one policy), `classes` (the class
//! table), `rules`, `settings` and `groups` (resolution and checks), then `build_plan` here.
//! Every stage reports into the same `Reporter`, so one run lists every problem.
mod classes;
mod groups;
mod merge;
mod rules;
mod settings;

use std::collections::HashMap;

use crate::class::ClassId;
use crate::diagnostic::Diagnostic;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::diagnostic::Source;
use crate::diagnostic::Span;
use crate::glob;
use crate::matcher::RuleMatcher;
use crate::model::DaemonMode;
use crate::parse::parse_file;
use crate::plan::DaemonSettings;
use crate::plan::Defaults;
use crate::plan::Group;
use crate::plan::Plan;
use crate::plan::PlanData;
use crate::plan::DEFAULT_SOCKET_PATH;
use crate::rule::Rule;
use classes::resolve_classes;
use groups::check_group_overlaps;
use groups::resolve_group;
use merge::merge;
use merge::Merged;
use rules::check_shadowed_rules;
use rules::resolve_rule;

pub use groups::MAX_SCHEDULER_DEPTH;

/// Most process rules a plan may have (the benchmark compiles 10,000 in well under 100 ms).
pub const MAX_RULES: usize = 100_000;

/// Most groups a plan may have.
pub const MAX_GROUPS: usize = 4_096;

/// A failed compilation: every diagnostic found (errors and warnings).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the policy has {} error(s)", .diagnostics.iter().filter(|d| d.is_error()).count())]
pub struct CompileError {
    /// All diagnostics, in source order within each check.
    pub diagnostics: Vec<Diagnostic>,
}

/// A successful compilation: the plan and any warnings.
#[derive(Debug)]
pub struct Compiled {
    /// The plan.
    pub plan: Plan,
    /// Warnings (nothing here rejects the policy).
    pub warnings: Vec<Diagnostic>,
}

/// Compiles `sources` (main file first, then drop-ins in lexical order) into a plan.
pub fn compile(sources: &[Source]) -> Result<Compiled, CompileError> {
    let mut reporter = Reporter::new(sources);
    let parsed: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(file, source)| parse_file(file, &source.text, &mut reporter))
        .collect();
    let merged = merge(parsed, &mut reporter);
    let data = resolve(&merged, &mut reporter);
    let plan = data.and_then(|data| build_plan(data, &mut reporter));
    // Report in source order: file (merge order), line, column; passes keep their relative order.
    let file_order: HashMap<&str, usize> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.path.as_str(), i))
        .collect();
    reporter.diagnostics.sort_by_key(|d| {
        (
            file_order
                .get(d.location.file.as_str())
                .copied()
                .unwrap_or(usize::MAX),
            d.location.line,
            d.location.column,
        )
    });
    match plan {
        Some(plan) if !reporter.has_errors() => Ok(Compiled {
            plan,
            warnings: reporter.diagnostics,
        }),
        _ => Err(CompileError {
            diagnostics: reporter.diagnostics,
        }),
    }
}

/// Compiles one text (a convenience for tests and tools).
pub fn compile_str(path: &str, text: &str) -> Result<Compiled, CompileError> {
    compile(&[Source::new(path, text)])
}

/// Reports more than `max` items (`spans`, one per item) as an error at the first one too many;
/// whether there were.
fn too_many<'a>(
    reporter: &mut Reporter<'_>,
    what: &str,
    mut spans: impl ExactSizeIterator<Item = &'a Span>,
    max: usize,
) -> bool {
    let count = spans.len();
    let Some(span) = spans.nth(max) else {
        return false;
    };
    reporter.error(
        span,
        Problem::TooMany {
            what: what.into(),
            count,
            max,
        },
        None,
    );
    true
}

fn resolve(merged: &Merged, reporter: &mut Reporter<'_>) -> Option<PlanData> {
    // Refuse sizes whose pairwise checks would take too long, before doing any of them.
    let rules = merged.rules.iter().map(|rule| &rule.span);
    let groups = merged.groups.iter().map(|group| &group.span);
    if too_many(reporter, "rules", rules, MAX_RULES)
        || too_many(reporter, "groups", groups, MAX_GROUPS)
    {
        return None;
    }
    let table = resolve_classes(merged, reporter);
    let default_class = match &merged.defaults.class {
        Some(name) => {
            let file = merged.defaults_span.as_ref().map_or(0, |span| span.file);
            table.resolve(name, file, reporter).unwrap_or(ClassId(2))
        }
        None => table.by_name["DEFAULT"],
    };
    let defaults = Defaults {
        class: default_class,
        leave_kernel_threads: merged.defaults.leave_kernel_threads.unwrap_or(true),
        leave_realtime: merged.defaults.leave_realtime.unwrap_or(true),
    };
    let daemon = DaemonSettings {
        socket_path: merged
            .daemon
            .socket_path
            .clone()
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into()),
        metrics_address: merged.daemon.metrics_address.clone(),
        mode: merged.daemon.mode.unwrap_or(DaemonMode::Auto),
    };
    let rules: Vec<Rule> = merged
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| resolve_rule(index, rule, &table, default_class, reporter))
        .collect();
    check_shadowed_rules(&rules, &merged.rules, reporter);
    let groups: Vec<Group> = merged
        .groups
        .iter()
        .filter_map(|group| resolve_group(group, &table, reporter))
        .collect();
    check_group_overlaps(&groups, reporter);
    Some(PlanData {
        classes: table.classes,
        defaults,
        daemon,
        rules,
        groups,
    })
}

fn build_plan(data: PlanData, reporter: &mut Reporter<'_>) -> Option<Plan> {
    if reporter.has_errors() {
        return None;
    }
    let matcher = match RuleMatcher::build(&data.rules) {
        Ok(matcher) => matcher,
        Err(error) => {
            reporter.error(
                &Span::new(0, 0..0),
                Problem::InvalidRegex {
                    pattern: "(rule set)".into(),
                    reason: error.to_string(),
                },
                None,
            );
            return None;
        }
    };
    let mut groups_by_path = glob::GlobIndex::default();
    for group in &data.groups {
        groups_by_path.add(&group.path, &glob::path_glob(&group.path).ok()?, true);
    }
    Some(Plan::new(data, matcher, groups_by_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Reason;
    use crate::rule::TaskFacts;

    fn plan(sources: &[(&str, &str)]) -> Plan {
        let sources: Vec<Source> = sources.iter().map(|(p, t)| Source::new(*p, *t)).collect();
        match compile(&sources) {
            Ok(compiled) => compiled.plan,
            Err(error) => panic!(
                "{:#?}",
                error
                    .diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ),
        }
    }

    fn task<'a>(comm: &'a str, cgroup: &'a str) -> TaskFacts<'a> {
        TaskFacts {
            comm,
            thread_name: comm,
            cgroup,
            ..TaskFacts::default()
        }
    }

    #[test]
    fn drop_in_rule_with_same_name_replaces_in_place() {
        let plan = plan(&[
            ("a.toml", "[[rules]]\nname = \"build\"\ncomm = \"make\"\nclass = \"BACKGROUND\"\n\n[[rules]]\ncomm = \"x\"\nclass = \"UTILITY\"\n"),
            ("b.toml", "[[rules]]\nname = \"build\"\ncomm = \"make\"\nclass = \"UTILITY\"\n\n[[rules]]\ncomm = \"y\"\nclass = \"UTILITY\"\n"),
        ]);
        let comms: Vec<_> = plan
            .rules()
            .iter()
            .map(|r| r.conditions.comm.clone().unwrap())
            .collect();
        assert_eq!(comms, ["make", "x", "y"]);
        assert_eq!(plan.class(plan.rules()[0].class).name, "UTILITY");
    }

    #[test]
    fn drop_in_group_and_state_fields_merge() {
        let plan = plan(&[
            ("a.toml", "[groups.apps]\npath = \"apps/*\"\nweight = 100\nceiling = \"USER_INITIATED\"\n\n[groups.apps.states.unfocused]\nceiling = \"UTILITY\"\n"),
            ("b.toml", "[groups.apps]\nweight = 300\n\n[groups.apps.states.unfocused]\nafter_s = 30\n"),
        ]);
        let group = &plan.groups()[0];
        assert_eq!(group.base.weight, Some(300));
        assert_eq!(group.base.ceiling, plan.class_id("USER_INITIATED"));
        let state = group.state("unfocused").unwrap();
        assert_eq!(state.after_s, 30);
        assert_eq!(state.settings.ceiling, plan.class_id("UTILITY"));
    }

    #[test]
    fn custom_classes_are_inserted_in_order_and_inherit_parameters() {
        let plan = plan(&[(
            "a.toml",
            "[classes.GAME]\nafter = \"USER_INTERACTIVE\"\n\n[classes.GAME_BG]\nafter = \"GAME\"\nnice = 0\n\n[classes.LATE]\nafter = \"USER_INTERACTIVE\"\n",
        )]);
        let names: Vec<_> = plan.classes().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "USER_INTERACTIVE",
                "GAME",
                "GAME_BG",
                "LATE",
                "USER_INITIATED",
                "DEFAULT",
                "UTILITY",
                "BACKGROUND"
            ]
        );
        let game = plan.class(plan.class_id("GAME").unwrap());
        assert_eq!(game.id.0, 1);
        assert_eq!(game.params.nice, -4, "starts from USER_INTERACTIVE");
        assert_eq!(plan.class_params(plan.class_id("GAME_BG").unwrap()).nice, 0);
    }

    #[test]
    fn effective_class_clamps_per_state() {
        let plan = plan(&[(
            "a.toml",
            "[[rules]]\ncomm = \"game\"\nclass = \"USER_INTERACTIVE\"\n\n[groups.apps]\npath = \"apps/*\"\nceiling = \"USER_INITIATED\"\n\n[groups.apps.states.unfocused]\nafter_s = 30\nceiling = \"BACKGROUND\"\n\n[groups.bg]\npath = \"bg/*\"\nfloor = \"UTILITY\"\ndeny = [\"DEFAULT\"]\n",
        )]);
        let t = task("game", "apps/steam");
        let requested = plan.match_task(&t).unwrap().requested_class();
        let group = plan.group_for_cgroup(t.cgroup);
        let focused = plan.effective_class(requested, group, None);
        assert_eq!(
            (plan.class(focused.class).name.as_str(), focused.reason),
            ("USER_INITIATED", Reason::ClampedToCeiling)
        );
        let unfocused = plan.effective_class(requested, group, Some("unfocused"));
        assert_eq!(plan.class(unfocused.class).name, "BACKGROUND");
        let outside = plan.effective_class(requested, plan.group_for_cgroup("/elsewhere"), None);
        assert_eq!(outside.reason, Reason::NoGroup);
        let bg = plan.group_for_cgroup("bg/x");
        let denied = plan.effective_class(plan.class_id("DEFAULT").unwrap(), bg, None);
        assert_eq!(
            (plan.class(denied.class).name.as_str(), denied.reason),
            ("UTILITY", Reason::NotAllowed)
        );
        let raised = plan.effective_class(plan.class_id("BACKGROUND").unwrap(), bg, None);
        assert_eq!(
            (plan.class(raised.class).name.as_str(), raised.reason),
            ("UTILITY", Reason::RaisedToFloor)
        );
    }

    #[test]
    fn first_matching_rule_and_group_win() {
        let plan = plan(&[(
            "a.toml",
            "[[rules]]\ncomm = \"cc*\"\ncgroup = \"build/*\"\nclass = \"BACKGROUND\"\n\n[[rules]]\ncomm = \"cc1\"\nclass = \"UTILITY\"\ninherit = true\n\n[[rules]]\nexe = \"/opt/*/bin/tool\"\nclass = \"USER_INITIATED\"\n\n[[rules]]\nuid = 1000\nthreads = [{ name = \"render*\", class = \"USER_INTERACTIVE\" }]\n\n[groups.one]\npath = \"build/*\"\n\n[groups.two]\npath = \"other/*\"\n",
        )]);
        let m = plan.match_task(&task("cc1", "build/job")).unwrap();
        assert_eq!(
            (m.rule, plan.class(m.class).name.as_str()),
            (0, "BACKGROUND")
        );
        let m = plan.match_task(&task("cc1", "/user.slice/x")).unwrap();
        assert_eq!((m.rule, m.inherit), (1, true));
        let tool = TaskFacts {
            exe: Some("/opt/acme/bin/tool"),
            ..task("tool", "")
        };
        assert_eq!(plan.match_task(&tool).unwrap().rule, 2);
        let not_tool = TaskFacts {
            exe: Some("/opt/a/b/bin/tool"),
            ..task("tool", "")
        };
        assert_eq!(
            plan.match_task(&not_tool),
            None,
            "`*` does not cross `/` in a path glob"
        );
        let render = TaskFacts {
            uid: 1000,
            thread_name: "render-0",
            ..task("app", "")
        };
        let m = plan.match_task(&render).unwrap();
        assert_eq!(m.rule, 3);
        assert_eq!(plan.class(m.requested_class()).name, "USER_INTERACTIVE");
        assert_eq!(
            plan.class(m.class).name,
            "DEFAULT",
            "no process class: the default class"
        );
        assert_eq!(
            plan.group_for_cgroup("build/x"),
            Some(crate::plan::GroupRef(0))
        );
        assert_eq!(plan.group_for_cgroup("build/x/y"), None);
    }

    #[test]
    fn hash_ignores_layout_and_comments_but_not_meaning() {
        let a = plan(&[(
            "a.toml",
            "[[rules]]\ncomm = \"make\"\nclass = \"BACKGROUND\"\n",
        )]);
        let b = plan(&[(
            "b.toml",
            "# comment\n[[rules]]\nclass = \"BACKGROUND\" # trailing\ncomm = 'make'\n",
        )]);
        let c = plan(&[(
            "c.toml",
            "[[rules]]\ncomm = \"make\"\nclass = \"UTILITY\"\n",
        )]);
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        let split = plan(&[
            (
                "1.toml",
                "[[rules]]\ncomm = \"make\"\nclass = \"BACKGROUND\"\n",
            ),
            ("2.toml", ""),
        ]);
        assert_eq!(a.hash(), split.hash());
    }

    #[test]
    fn too_many_groups_is_an_error_before_pairwise_checks() {
        let text: String = (0..=MAX_GROUPS)
            .map(|i| format!("[groups.g{i}]\npath = \"t/*\"\n"))
            .collect();
        let error = compile_str("big.toml", &text).unwrap_err();
        let messages: Vec<String> = error.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [format!(
                "big.toml:{}:9: error: {} groups defined; at most {MAX_GROUPS} are supported",
                2 * MAX_GROUPS + 1,
                MAX_GROUPS + 1
            )]
        );
    }

    #[test]
    fn too_many_classes_above_default_is_reported_not_a_panic() {
        let text: String = (0..40)
            .map(|i| format!("[classes.C{i}]\nafter = \"USER_INTERACTIVE\"\n"))
            .collect();
        let error = compile_str("classes.toml", &text).unwrap_err();
        assert!(error
            .diagnostics
            .iter()
            .any(|d| d.problem.code() == "too-many-classes"));
    }

    #[test]
    fn identical_group_paths_are_reported_once_each() {
        let text: String = (0..50)
            .map(|i| format!("[groups.g{i}]\npath = \"t/*\"\n"))
            .collect();
        let compiled = compile_str("same.toml", &text).unwrap();
        assert_eq!(compiled.warnings.len(), 49);
    }

    #[test]
    fn defaults_and_daemon_settings() {
        let plan = plan(&[(
            "a.toml",
            "[defaults]\nclass = \"UTILITY\"\nleave_kernel_threads = false\n\n[daemon]\nmode = \"fallback\"\nmetrics_address = \"127.0.0.1:9617\"\n",
        )]);
        assert_eq!(plan.class(plan.defaults().class).name, "UTILITY");
        assert!(!plan.defaults().leave_kernel_threads);
        assert!(plan.defaults().leave_realtime);
        assert_eq!(plan.daemon().mode, DaemonMode::Fallback);
        assert_eq!(plan.daemon().socket_path, DEFAULT_SOCKET_PATH);
    }
}
