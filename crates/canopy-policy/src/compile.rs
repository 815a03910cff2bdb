//! The compiler: merges the parsed files (drop-ins in order), validates everything, reporting
//! every problem with its location, and builds the `Plan`. Nothing is half-compiled: any error
//! means no plan.
//!
//! Merge rules: `[defaults]` and `[daemon]` fields are overridden one by one by later files;
//! `[classes.X]` and `[groups.X]` merge field by field (states by name), except that moving a
//! class (`after`) or a group (`path`) to somewhere else is an unmergeable redefinition; a rule
//! with the `name` of an earlier file's rule replaces it in place; other rules are appended.

use std::collections::HashMap;

use toml::Spanned;

use crate::class::Class;
use crate::class::ClassId;
use crate::class::ClassMask;
use crate::class::ClassParams;
use crate::class::BUILTINS;
use crate::class::MAX_CLASSES;
use crate::diagnostic::did_you_mean;
use crate::diagnostic::Diagnostic;
use crate::diagnostic::FileId;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::diagnostic::Source;
use crate::diagnostic::Span;
use crate::glob;
use crate::matcher::RuleMatcher;
use crate::matcher::REGEX_SIZE_LIMIT;
use crate::model::ClassDef;
use crate::model::DaemonDef;
use crate::model::DaemonMode;
use crate::model::DefaultsDef;
use crate::model::GroupDef;
use crate::model::RuleDef;
use crate::model::SchedulerKind;
use crate::model::StateDef;
use crate::parse::parse_file;
use crate::parse::Named;
use crate::plan::Cap;
use crate::plan::Conditions;
use crate::plan::DaemonSettings;
use crate::plan::Defaults;
use crate::plan::Group;
use crate::plan::GroupSettings;
use crate::plan::GroupState;
use crate::plan::Plan;
use crate::plan::PlanData;
use crate::plan::Rule;
use crate::plan::Scheduler;
use crate::plan::SettingsOverrides;
use crate::plan::ThreadRule;
use crate::plan::DEFAULT_SOCKET_PATH;

/// Deepest nesting of child schedulers below the root scheduler the kernel allows.
pub const MAX_SCHEDULER_DEPTH: usize = 3;

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

// ---------------------------------------------------------------------------------------------
// Merging drop-ins.

struct MergedClass {
    name: String,
    span: Span,
    def: ClassDef,
    after_file: Option<FileId>,
    /// Which file each overridden field last came from (default: the defining file).
    field_files: HashMap<&'static str, FileId>,
}

struct MergedRule {
    def: RuleDef,
    span: Span,
    file: FileId,
    /// A bad field was dropped while parsing: don't report what its absence implies.
    damaged: bool,
}

struct MergedGroup {
    name: String,
    span: Span,
    def: GroupDef,
    path_file: Option<FileId>,
    state_spans: HashMap<String, Span>,
    /// Which file each overridden field last came from (default: the defining file).
    field_files: HashMap<&'static str, FileId>,
    /// The same for each state's fields.
    state_field_files: HashMap<String, HashMap<&'static str, FileId>>,
}

#[derive(Default)]
struct Merged {
    defaults: DefaultsDef,
    defaults_span: Option<Span>,
    daemon: DaemonDef,
    classes: Vec<MergedClass>,
    rules: Vec<MergedRule>,
    groups: Vec<MergedGroup>,
}

macro_rules! override_fields {
    ($target:expr, $source:expr, $($field:ident),+ $(,)?) => {
        $( if $source.$field.is_some() { $target.$field = $source.$field.clone(); } )+
    };
    (files $files:expr, $file:expr; $target:expr, $source:expr, $($field:ident),+ $(,)?) => {
        $( if $source.$field.is_some() {
            $target.$field = $source.$field.clone();
            $files.insert(stringify!($field), $file);
        } )+
    };
}

fn spanned_span<T>(file: FileId, value: &Spanned<T>) -> Span {
    Span::new(file, value.span())
}

fn merge(parsed: Vec<crate::parse::ParsedFile>, reporter: &mut Reporter<'_>) -> Merged {
    let mut merged = Merged::default();
    for (file, parsed) in parsed.into_iter().enumerate() {
        if let Some((defaults, span)) = parsed.defaults {
            if defaults.class.is_some() {
                merged.defaults_span = Some(span);
            }
            override_fields!(
                merged.defaults,
                defaults,
                class,
                leave_kernel_threads,
                leave_realtime
            );
            // Spans of `class` are only meaningful with their file: remember it.
            if let Some(class) = &defaults.class {
                merged.defaults_span = Some(spanned_span(file, class));
            }
        }
        if let Some((daemon, _)) = parsed.daemon {
            override_fields!(merged.daemon, daemon, socket_path, metrics_address, mode);
        }
        for Named { name, span, item } in parsed.classes {
            match merged.classes.iter_mut().find(|class| class.name == name) {
                None => merged.classes.push(MergedClass {
                    name,
                    span,
                    after_file: item.after.as_ref().map(|_| file),
                    def: item,
                    field_files: HashMap::new(),
                }),
                Some(existing) => {
                    if let (Some(old), Some(new)) = (&existing.def.after, &item.after) {
                        if old.get_ref() != new.get_ref() {
                            let first = reporter
                                .location(&spanned_span(existing.after_file.unwrap_or(file), old));
                            reporter.error(
                                &spanned_span(file, new),
                                Problem::Redefinition {
                                    what: "class".into(),
                                    name: name.clone(),
                                    detail: format!(
                                        "placed after `{}`, earlier after `{}`",
                                        new.get_ref(),
                                        old.get_ref()
                                    ),
                                    first: first.to_string(),
                                },
                                Some(
                                    "a drop-in may change a class's parameters, not move it".into(),
                                ),
                            );
                            continue;
                        }
                    }
                    if item.after.is_some() && existing.def.after.is_none() {
                        existing.after_file = Some(file);
                    }
                    override_fields!(files existing.field_files, file; existing.def, item, after, description, policy, nice, slice_us, uclamp_min, uclamp_max, weight, preempt);
                }
            }
        }
        let first_rule_of_file = merged.rules.len();
        for (rule, span, damaged) in parsed.rules {
            if let Some(name) = &rule.name {
                let same_name = merged.rules.iter().position(|existing| {
                    existing
                        .def
                        .name
                        .as_ref()
                        .is_some_and(|other| other.get_ref() == name.get_ref())
                });
                if let Some(position) = same_name {
                    if position >= first_rule_of_file {
                        let first = reporter.location(&merged.rules[position].span);
                        reporter.error(
                            &spanned_span(file, name),
                            Problem::DuplicateRuleName {
                                name: name.get_ref().clone(),
                                first: first.to_string(),
                            },
                            Some("rule names must be unique within a file; a later file may reuse one to replace the rule".into()),
                        );
                    } else {
                        merged.rules[position] = MergedRule {
                            def: rule,
                            span,
                            file,
                            damaged,
                        };
                    }
                    continue;
                }
            }
            merged.rules.push(MergedRule {
                def: rule,
                span,
                file,
                damaged,
            });
        }
        for (Named { name, span, item }, state_spans) in
            parsed.groups.into_iter().zip(parsed.state_spans)
        {
            let state_spans: HashMap<String, Span> = state_spans.into_iter().collect();
            match merged.groups.iter_mut().find(|group| group.name == name) {
                None => merged.groups.push(MergedGroup {
                    name,
                    span,
                    path_file: item.path.as_ref().map(|_| file),
                    def: item,
                    state_spans,
                    field_files: HashMap::new(),
                    state_field_files: HashMap::new(),
                }),
                Some(existing) => {
                    if let (Some(old), Some(new)) = (&existing.def.path, &item.path) {
                        if old.get_ref() != new.get_ref() {
                            let first = reporter
                                .location(&spanned_span(existing.path_file.unwrap_or(file), old));
                            reporter.error(
                                &spanned_span(file, new),
                                Problem::Redefinition {
                                    what: "group".into(),
                                    name: name.clone(),
                                    detail: format!("path `{}`, earlier `{}`", new.get_ref(), old.get_ref()),
                                    first: first.to_string(),
                                },
                                Some("give the new group another name, or drop `path` to only change its settings".into()),
                            );
                            continue;
                        }
                    }
                    if item.path.is_some() && existing.path_file.is_none() {
                        existing.path_file = Some(file);
                    }
                    let def = &mut existing.def;
                    override_fields!(files existing.field_files, file; def, item, path, scheduler, external_ops, default_state, weight, allow, deny, ceiling, floor, guarantee_percent, cap_percent, cap_quota_us, cap_period_us);
                    for (state_name, state) in item.states {
                        match def.states.get_mut(&state_name) {
                            Some(old) => {
                                let files = existing
                                    .state_field_files
                                    .entry(state_name.clone())
                                    .or_default();
                                override_fields!(files files, file; old, state, after_s, user_settable, weight, allow, deny, ceiling, floor, guarantee_percent, cap_percent, cap_quota_us, cap_period_us);
                            }
                            None => {
                                def.states.insert(state_name.clone(), state);
                                let files = existing
                                    .state_field_files
                                    .entry(state_name.clone())
                                    .or_default();
                                for field in STATE_FIELDS {
                                    files.insert(field, file);
                                }
                            }
                        }
                        if let Some(span) = state_spans.get(&state_name) {
                            existing
                                .state_spans
                                .entry(state_name)
                                .or_insert_with(|| span.clone());
                        }
                    }
                }
            }
        }
    }
    merged
}

const STATE_FIELDS: [&str; 11] = [
    "after_s",
    "user_settable",
    "weight",
    "allow",
    "deny",
    "ceiling",
    "floor",
    "guarantee_percent",
    "cap_percent",
    "cap_quota_us",
    "cap_period_us",
];

// ---------------------------------------------------------------------------------------------
// Resolution and validation.

/// Class names → ids, with the ability to report unknown names.
struct ClassTable {
    classes: Vec<Class>,
    by_name: HashMap<String, ClassId>,
}

impl ClassTable {
    fn resolve(
        &self,
        name: &Spanned<String>,
        file: FileId,
        reporter: &mut Reporter<'_>,
    ) -> Option<ClassId> {
        let text = name.get_ref();
        if let Some(id) = self.by_name.get(text) {
            return Some(*id);
        }
        let hint = match text.strip_prefix("QOS_") {
            Some(stripped) if self.by_name.contains_key(stripped) => Some(format!(
                "canopy class names have no `QOS_` prefix: write `{stripped}`"
            )),
            _ => did_you_mean(text, self.classes.iter().map(|class| class.name.as_str())).or_else(
                || {
                    Some(format!(
                        "classes are: {}",
                        self.classes
                            .iter()
                            .map(|class| class.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                },
            ),
        };
        reporter.error(
            &spanned_span(file, name),
            Problem::UnknownClass { name: text.clone() },
            hint,
        );
        None
    }
}

fn check_range(
    value: &Option<Spanned<i64>>,
    field: &str,
    min: i64,
    max: i64,
    file: FileId,
    reporter: &mut Reporter<'_>,
) -> Option<i64> {
    let value = value.as_ref()?;
    let number = *value.get_ref();
    if number < min || number > max {
        reporter.error(
            &spanned_span(file, value),
            Problem::OutOfRange {
                field: field.into(),
                value: number,
                min,
                max,
            },
            None,
        );
        return None;
    }
    Some(number)
}

fn resolve_classes(merged: &Merged, reporter: &mut Reporter<'_>) -> ClassTable {
    // Place custom classes: children of each anchor in definition order, depth first.
    let builtin_names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
    let mut children: HashMap<&str, Vec<&MergedClass>> = HashMap::new();
    for class in &merged.classes {
        let is_builtin = builtin_names.contains(&class.name.as_str());
        match (&class.def.after, is_builtin) {
            (Some(after), true) => reporter.error(
                &spanned_span(class.after_file.unwrap_or(class.span.file), after),
                Problem::BuiltinClassMoved {
                    class: class.name.clone(),
                },
                Some("remove `after`; built-in classes keep their order".into()),
            ),
            (None, false) => reporter.error(
                &class.span,
                Problem::CustomClassUnplaced {
                    class: class.name.clone(),
                },
                Some(format!(
                    "for example `after = \"UTILITY\"`{}",
                    did_you_mean(&class.name, builtin_names.iter().copied())
                        .map(|h| format!("; or {h}"))
                        .unwrap_or_default()
                )),
            ),
            (Some(after), false) => children
                .entry(after.get_ref().as_str())
                .or_default()
                .push(class),
            (None, true) => {}
        }
    }
    let mut order: Vec<(String, Option<&MergedClass>)> = Vec::new();
    fn place<'m>(
        name: &str,
        children: &HashMap<&str, Vec<&'m MergedClass>>,
        order: &mut Vec<(String, Option<&'m MergedClass>)>,
        depth: usize,
    ) {
        if depth > MAX_CLASSES + 1 {
            return;
        }
        for child in children.get(name).into_iter().flatten() {
            if order.iter().any(|(placed, _)| placed == &child.name) {
                continue;
            }
            order.push((child.name.clone(), Some(child)));
            place(&child.name, children, order, depth + 1);
        }
    }
    for builtin in &builtin_names {
        order.push((
            builtin.to_string(),
            merged.classes.iter().find(|c| c.name == *builtin),
        ));
        place(builtin, &children, &mut order, 0);
    }
    // Customs never placed: unknown anchor or a cycle.
    for class in &merged.classes {
        if builtin_names.contains(&class.name.as_str())
            || order.iter().any(|(name, _)| name == &class.name)
        {
            continue;
        }
        let Some(after) = &class.def.after else {
            continue;
        };
        let known = builtin_names.contains(&after.get_ref().as_str())
            || merged.classes.iter().any(|c| c.name == *after.get_ref());
        let span = spanned_span(class.after_file.unwrap_or(class.span.file), after);
        // Still check its parameters, so their problems are reported in the same run.
        apply_class_def(
            &mut BUILTINS[2].params.clone(),
            &mut String::new(),
            class,
            reporter,
        );
        if known {
            reporter.error(
                &span,
                Problem::ClassOrderCycle {
                    class: class.name.clone(),
                },
                None,
            );
        } else {
            let names = builtin_names
                .iter()
                .copied()
                .chain(merged.classes.iter().map(|c| c.name.as_str()));
            reporter.error(
                &span,
                Problem::UnknownClass {
                    name: after.get_ref().clone(),
                },
                did_you_mean(after.get_ref(), names),
            );
        }
    }
    if order.len() > MAX_CLASSES {
        reporter.error(
            &merged
                .classes
                .last()
                .map(|c| c.span.clone())
                .unwrap_or(Span::new(0, 0..0)),
            Problem::TooManyClasses {
                count: order.len(),
                max: MAX_CLASSES,
            },
            None,
        );
        // Keep every built-in class (later code relies on them) and drop custom ones from the end.
        while order.len() > MAX_CLASSES {
            let Some(last_custom) = order
                .iter()
                .rposition(|(name, _)| !builtin_names.contains(&name.as_str()))
            else {
                break;
            };
            order.remove(last_custom);
        }
    }
    let mut classes: Vec<Class> = Vec::with_capacity(order.len());
    for (index, (name, merged_class)) in order.iter().enumerate() {
        let builtin = BUILTINS.iter().find(|b| b.name == name);
        let (mut params, mut description) = match builtin {
            Some(builtin) => (builtin.params.clone(), builtin.description.to_string()),
            None => {
                let anchor = merged_class
                    .and_then(|c| c.def.after.as_ref())
                    .map(|a| a.get_ref().clone());
                let base = anchor
                    .and_then(|a| classes.iter().find(|c| c.name == a))
                    .map(|c| c.params.clone());
                (
                    base.unwrap_or_else(|| BUILTINS[2].params.clone()),
                    String::new(),
                )
            }
        };
        if let Some(merged_class) = merged_class {
            apply_class_def(&mut params, &mut description, merged_class, reporter);
        }
        classes.push(Class {
            id: ClassId(index as u8),
            name: name.clone(),
            builtin: builtin.is_some(),
            description,
            params,
        });
    }
    let by_name = classes
        .iter()
        .map(|class| (class.name.clone(), class.id))
        .collect();
    ClassTable { classes, by_name }
}

fn apply_class_def(
    params: &mut ClassParams,
    description: &mut String,
    class: &MergedClass,
    reporter: &mut Reporter<'_>,
) {
    // Field spans may come from different files; the class's own span file is used for all
    // fields, which is right for the common case of one definition.
    let file_of = |field: &str| {
        class
            .field_files
            .get(field)
            .copied()
            .unwrap_or(class.span.file)
    };
    let def = &class.def;
    if let Some(text) = &def.description {
        *description = text.clone();
    }
    if let Some(policy) = def.policy {
        params.policy = policy;
    }
    if let Some(nice) = check_range(&def.nice, "nice", -20, 19, file_of("nice"), reporter) {
        params.nice = nice as i8;
    }
    if let Some(slice) = check_range(
        &def.slice_us,
        "slice_us",
        100,
        100_000,
        file_of("slice_us"),
        reporter,
    ) {
        params.slice_us = slice as u32;
    }
    if let Some(min) = check_range(
        &def.uclamp_min,
        "uclamp_min",
        0,
        1024,
        file_of("uclamp_min"),
        reporter,
    ) {
        params.uclamp_min = min as u16;
    }
    if let Some(max) = check_range(
        &def.uclamp_max,
        "uclamp_max",
        0,
        1024,
        file_of("uclamp_max"),
        reporter,
    ) {
        params.uclamp_max = max as u16;
    }
    if let Some(weight) = check_range(
        &def.weight,
        "weight",
        1,
        10_000,
        file_of("weight"),
        reporter,
    ) {
        params.weight = weight as u32;
    }
    if let Some(preempt) = def.preempt {
        params.preempt = preempt;
    }
    if params.uclamp_min > params.uclamp_max {
        reporter.error(
            &class.span,
            Problem::UclampInverted {
                class: class.name.clone(),
                min: params.uclamp_min.into(),
                max: params.uclamp_max.into(),
            },
            None,
        );
    }
}

fn resolve(merged: &Merged, reporter: &mut Reporter<'_>) -> Option<PlanData> {
    // Refuse sizes whose pairwise checks would take too long, before doing any of them.
    if merged.rules.len() > MAX_RULES {
        let span = &merged.rules[MAX_RULES].span;
        reporter.error(
            span,
            Problem::TooMany {
                what: "rules".into(),
                count: merged.rules.len(),
                max: MAX_RULES,
            },
            None,
        );
        return None;
    }
    if merged.groups.len() > MAX_GROUPS {
        let span = &merged.groups[MAX_GROUPS].span;
        reporter.error(
            span,
            Problem::TooMany {
                what: "groups".into(),
                count: merged.groups.len(),
                max: MAX_GROUPS,
            },
            None,
        );
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

fn resolve_rule(
    index: usize,
    merged: &MergedRule,
    table: &ClassTable,
    default_class: ClassId,
    reporter: &mut Reporter<'_>,
) -> Rule {
    let file = merged.file;
    let def = &merged.def;
    let label = match &def.name {
        Some(name) => format!("`{}`", name.get_ref()),
        None => format!("#{}", index + 1),
    };
    let mut pattern =
        |value: &Option<Spanned<String>>, field: &str, path: bool| -> Option<String> {
            let value = value.as_ref()?;
            let text = value.get_ref();
            if text.is_empty() {
                reporter.error(
                    &spanned_span(file, value),
                    Problem::EmptyPattern {
                        field: field.into(),
                    },
                    None,
                );
                return None;
            }
            let compiled = if glob::is_literal(text) {
                Ok(())
            } else if path {
                glob::path_glob(text).map(drop)
            } else {
                glob::name_glob(text).map(drop)
            };
            if let Err(error) = compiled {
                reporter.error(
                    &spanned_span(file, value),
                    Problem::InvalidGlob {
                        pattern: text.clone(),
                        reason: glob::glob_error_reason(&error),
                    },
                    None,
                );
                return None;
            }
            Some(text.clone())
        };
    let comm = pattern(&def.comm, "comm", false);
    let exe = def.exe.as_ref().and_then(|exe| {
        let path = exe.get_ref().contains('/');
        pattern(&def.exe, "exe", path)
    });
    let cgroup =
        pattern(&def.cgroup, "cgroup", true).map(|p| p.trim_start_matches('/').to_string());
    let parent_comm = pattern(&def.parent_comm, "parent_comm", false);
    if let Some(exe) = &def.exe {
        let text = exe.get_ref();
        if text.contains('/') && !text.starts_with('/') && !text.starts_with('*') {
            reporter.warning(
                &spanned_span(file, exe),
                Problem::IneffectiveSetting {
                    message: format!("exe pattern `{text}` has a `/`, so it is matched against the full path, which starts with `/`; it never matches"),
                },
                Some(format!("write `/{text}` or `**/{text}`, or drop the directory to match the basename")),
            );
        }
    }
    let cmdline = def.cmdline.as_ref().and_then(|value| {
        let text = value.get_ref();
        match regex::RegexBuilder::new(text)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(_) => Some(text.clone()),
            Err(error) => {
                let reason = error
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_string();
                reporter.error(
                    &spanned_span(file, value),
                    Problem::InvalidRegex {
                        pattern: text.clone(),
                        reason,
                    },
                    Some(
                        "cmdline is a regular expression (Rust `regex` syntax), not a glob".into(),
                    ),
                );
                None
            }
        }
    });
    let user = def.user.as_ref().map(|user| user.get_ref().clone());
    let conditions = Conditions {
        comm,
        exe,
        cmdline,
        cgroup,
        uid: def.uid,
        user,
        parent_comm,
    };
    let has_condition = def.comm.is_some()
        || def.exe.is_some()
        || def.cmdline.is_some()
        || def.cgroup.is_some()
        || def.uid.is_some()
        || def.user.is_some()
        || def.parent_comm.is_some();
    if !has_condition && !merged.damaged {
        reporter.error(
            &merged.span,
            Problem::EmptyRule { rule: label.clone() },
            Some("add a condition (comm, exe, cmdline, cgroup, uid, user, parent_comm), or set `[defaults] class` for untagged tasks".into()),
        );
    }
    if def.class.is_none() && def.threads.is_empty() && !merged.damaged {
        reporter.error(
            &merged.span,
            Problem::RuleWithoutEffect {
                rule: label.clone(),
            },
            Some("add `class = \"...\"`".into()),
        );
    }
    let class = def
        .class
        .as_ref()
        .and_then(|class| table.resolve(class, file, reporter));
    let threads = def
        .threads
        .iter()
        .filter_map(|thread| {
            let name = pattern_thread(&thread.name, file, reporter);
            let class = table.resolve(&thread.class, file, reporter);
            Some(ThreadRule {
                name: name?,
                class: class?,
            })
        })
        .collect();
    Rule {
        name: def.name.as_ref().map(|name| name.get_ref().clone()),
        conditions,
        class: class.unwrap_or(default_class),
        class_explicit: def.class.is_some(),
        inherit: def.inherit.unwrap_or(false),
        threads,
        defined_at: Some(reporter.location(&merged.span)),
    }
}

fn pattern_thread(
    value: &Spanned<String>,
    file: FileId,
    reporter: &mut Reporter<'_>,
) -> Option<String> {
    let text = value.get_ref();
    if text.is_empty() {
        reporter.error(
            &spanned_span(file, value),
            Problem::EmptyPattern {
                field: "thread name".into(),
            },
            None,
        );
        return None;
    }
    if let Err(error) = glob::name_glob(text) {
        reporter.error(
            &spanned_span(file, value),
            Problem::InvalidGlob {
                pattern: text.clone(),
                reason: glob::glob_error_reason(&error),
            },
            None,
        );
        return None;
    }
    Some(text.clone())
}

/// Literal-valued conditions of a rule, for the hashed shadowing check.
fn literal_signature(c: &Conditions) -> Option<Vec<(u8, String)>> {
    let mut signature = Vec::new();
    let fields: [(u8, &Option<String>); 5] = [
        (0, &c.comm),
        (1, &c.exe),
        (2, &c.cgroup),
        (3, &c.user),
        (4, &c.parent_comm),
    ];
    for (tag, value) in fields {
        if let Some(value) = value {
            if tag != 3 && !glob::is_literal(value) {
                return None;
            }
            signature.push((tag, value.clone()));
        }
    }
    if let Some(uid) = c.uid {
        signature.push((5, uid.to_string()));
    }
    if c.cmdline.is_some() {
        return None;
    }
    Some(signature)
}

/// Compiled globs for the shadowing analysis, each compiled once.
#[derive(Default)]
struct GlobCache {
    matchers: HashMap<(String, bool), Option<globset::GlobMatcher>>,
}

impl GlobCache {
    /// Same contract as `glob::covers`, with compiled globs reused.
    fn covers(&mut self, broad: &str, narrow: &str, path: bool) -> bool {
        if broad == narrow || broad == "**" || (!path && broad == "*") {
            return true;
        }
        if !glob::is_literal(narrow) {
            return false;
        }
        self.matchers
            .entry((broad.to_string(), path))
            .or_insert_with(|| {
                let glob = if path {
                    glob::path_glob(broad)
                } else {
                    glob::name_glob(broad)
                };
                glob.ok().map(|glob| glob.compile_matcher())
            })
            .as_ref()
            .is_some_and(|matcher| matcher.is_match(narrow))
    }

    /// Whether every task `later` matches is matched by `earlier`.
    fn rule_covers(&mut self, earlier: &Conditions, later: &Conditions) -> bool {
        let mut field =
            |broad: &Option<String>, narrow: &Option<String>, path: bool| match (broad, narrow) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(b), Some(n)) => self.covers(b, n, path),
            };
        let exe_compatible = match (&earlier.exe, &later.exe) {
            (Some(b), Some(n)) => b.contains('/') == n.contains('/'),
            _ => true,
        };
        let exe_path = earlier.exe.as_deref().is_some_and(|e| e.contains('/'));
        exe_compatible
            && field(&earlier.comm, &later.comm, false)
            && field(&earlier.exe, &later.exe, exe_path)
            && field(&earlier.cgroup, &later.cgroup, true)
            && field(&earlier.parent_comm, &later.parent_comm, false)
            && (earlier.cmdline.is_none() || earlier.cmdline == later.cmdline)
            && (earlier.uid.is_none() || earlier.uid == later.uid)
            && (earlier.user.is_none() || earlier.user == later.user)
    }
}

fn has_any_condition(c: &Conditions) -> bool {
    c.comm.is_some()
        || c.exe.is_some()
        || c.cmdline.is_some()
        || c.cgroup.is_some()
        || c.uid.is_some()
        || c.user.is_some()
        || c.parent_comm.is_some()
}

/// The string conditions of a rule as (field tag, pattern, is a path glob).
fn string_fields(c: &Conditions) -> Vec<(u8, &str, bool)> {
    let mut fields = Vec::new();
    if let Some(v) = &c.comm {
        fields.push((0, v.as_str(), false));
    }
    if let Some(v) = &c.exe {
        fields.push((1, v.as_str(), v.contains('/')));
    }
    if let Some(v) = &c.cgroup {
        fields.push((2, v.as_str(), true));
    }
    if let Some(v) = &c.parent_comm {
        fields.push((4, v.as_str(), false));
    }
    fields
}

/// Earlier rules that have a glob or regex ("wild" rules), indexed by one key condition so that
/// only plausible coverers of a later rule are compared with it.
#[derive(Default)]
struct WildIndex {
    key_globs: [glob::GlobIndex; 5],
    key_rules: [Vec<usize>; 5],
    identity: HashMap<(u8, String), Vec<usize>>,
    star: [Vec<usize>; 5],
}

impl WildIndex {
    fn add(&mut self, index: usize, c: &Conditions) {
        let key = string_fields(c)
            .into_iter()
            .find(|(_, pattern, _)| !glob::is_literal(pattern));
        match key {
            Some((tag, pattern, path)) => {
                let t = tag as usize;
                if pattern == "**" || (!path && pattern == "*") {
                    self.star[t].push(index);
                }
                self.identity
                    .entry((tag, pattern.to_string()))
                    .or_default()
                    .push(index);
                let compiled = if path {
                    glob::path_glob(pattern)
                } else {
                    glob::name_glob(pattern)
                };
                if let Ok(compiled) = compiled {
                    self.key_globs[t].add(pattern, &compiled, path);
                    self.key_rules[t].push(index);
                }
            }
            None => {
                let cmdline = c.cmdline.clone().unwrap_or_default();
                self.identity.entry((6, cmdline)).or_default().push(index);
            }
        }
    }

    /// Earlier rules that may cover a rule with conditions `c`; adds the work done to `work`.
    fn candidates(&self, c: &Conditions, work: &mut usize) -> Vec<usize> {
        let mut found = Vec::new();
        let mut matched = Vec::new();
        for (tag, value, _) in string_fields(c) {
            let t = tag as usize;
            if glob::is_literal(value) && !self.key_globs[t].is_empty() {
                *work += self.key_globs[t].unprefixed_count();
                self.key_globs[t].matches_into(value, &mut matched);
                found.extend(matched.iter().map(|&id| self.key_rules[t][id]));
            }
            if let Some(rules) = self.identity.get(&(tag, value.to_string())) {
                found.extend_from_slice(rules);
            }
            found.extend_from_slice(&self.star[t]);
        }
        if let Some(cmdline) = &c.cmdline {
            if let Some(rules) = self.identity.get(&(6, cmdline.clone())) {
                found.extend_from_slice(rules);
            }
        }
        *work += found.len();
        found.sort_unstable();
        found.dedup();
        found
    }
}

/// Work budget of the shadowing analysis (glob evaluations and candidates), so a huge,
/// pathological policy (thousands of leading-wildcard globs) is checked in bounded time.
const SHADOW_ANALYSIS_BUDGET: usize = 20_000_000;

/// Warns about rules an earlier, broader rule always matches first. Literal-only earlier rules
/// are found by hashing (every subset of the later rule's literal conditions); rules with globs
/// or regexes through `WildIndex`.
fn check_shadowed_rules(rules: &[Rule], merged: &[MergedRule], reporter: &mut Reporter<'_>) {
    let mut literal_rules: HashMap<Vec<(u8, String)>, usize> = HashMap::new();
    let mut wild = WildIndex::default();
    let mut cache = GlobCache::default();
    let mut work = 0usize;
    for (index, rule) in rules.iter().enumerate() {
        if !has_any_condition(&rule.conditions) {
            continue;
        }
        if work > SHADOW_ANALYSIS_BUDGET {
            reporter.warning(
                &merged[index].span,
                Problem::AnalysisLimit {
                    analysis: "shadowed-rule".into(),
                    item: rule.label(index),
                },
                Some(
                    "the policy has too many overlapping globs to analyse fully; it still compiles"
                        .into(),
                ),
            );
            break;
        }
        let mut shadow: Option<usize> = None;
        let signature = literal_signature(&rule.conditions);
        if let Some(signature) = &signature {
            let count = signature.len();
            for subset in 1u32..(1 << count) {
                let found = if subset == (1 << count) - 1 {
                    literal_rules.get(signature)
                } else {
                    let key: Vec<(u8, String)> = (0..count)
                        .filter(|bit| subset & (1 << bit) != 0)
                        .map(|bit| signature[bit].clone())
                        .collect();
                    literal_rules.get(&key)
                };
                if let Some(&earlier) = found {
                    shadow = Some(shadow.map_or(earlier, |s: usize| s.min(earlier)));
                }
            }
        }
        let wild_shadow = wild
            .candidates(&rule.conditions, &mut work)
            .into_iter()
            .find(|&earlier| cache.rule_covers(&rules[earlier].conditions, &rule.conditions));
        if let Some(wild_shadow) = wild_shadow {
            shadow = Some(shadow.map_or(wild_shadow, |s| s.min(wild_shadow)));
        }
        if let Some(earlier) = shadow {
            let by_location = reporter.location(&merged[earlier].span);
            reporter.warning(
                &merged[index].span,
                Problem::ShadowedRule {
                    rule: rule.label(index),
                    by: rules[earlier].label(earlier),
                    by_location: by_location.to_string(),
                },
                Some("move the narrower rule before the broader one, or delete it".into()),
            );
        }
        match signature {
            Some(signature) => {
                literal_rules.entry(signature).or_insert(index);
            }
            None => wild.add(index, &rule.conditions),
        }
    }
}

#[derive(Default)]
struct SettingsInput<'d> {
    weight: Option<&'d Option<Spanned<i64>>>,
    allow: Option<&'d Option<Spanned<Vec<Spanned<String>>>>>,
    deny: Option<&'d Option<Spanned<Vec<Spanned<String>>>>>,
    ceiling: Option<&'d Option<Spanned<String>>>,
    floor: Option<&'d Option<Spanned<String>>>,
    guarantee_percent: Option<&'d Option<Spanned<i64>>>,
    cap_percent: Option<&'d Option<Spanned<i64>>>,
    cap_quota_us: Option<&'d Option<Spanned<i64>>>,
    cap_period_us: Option<&'d Option<Spanned<i64>>>,
}

fn group_input(def: &GroupDef) -> SettingsInput<'_> {
    SettingsInput {
        weight: Some(&def.weight),
        allow: Some(&def.allow),
        deny: Some(&def.deny),
        ceiling: Some(&def.ceiling),
        floor: Some(&def.floor),
        guarantee_percent: Some(&def.guarantee_percent),
        cap_percent: Some(&def.cap_percent),
        cap_quota_us: Some(&def.cap_quota_us),
        cap_period_us: Some(&def.cap_period_us),
    }
}

fn state_input(def: &StateDef) -> SettingsInput<'_> {
    SettingsInput {
        weight: Some(&def.weight),
        allow: Some(&def.allow),
        deny: Some(&def.deny),
        ceiling: Some(&def.ceiling),
        floor: Some(&def.floor),
        guarantee_percent: Some(&def.guarantee_percent),
        cap_percent: Some(&def.cap_percent),
        cap_quota_us: Some(&def.cap_quota_us),
        cap_period_us: Some(&def.cap_period_us),
    }
}

/// Resolves the overrides written in `input` (for the base settings: everything written).
fn resolve_overrides(
    input: &SettingsInput<'_>,
    file_of: &dyn Fn(&str) -> FileId,
    table: &ClassTable,
    reporter: &mut Reporter<'_>,
) -> SettingsOverrides {
    let flat = |o: Option<&Option<Spanned<i64>>>| o.and_then(|v| v.clone());
    let weight = check_range(
        &flat(input.weight),
        "weight",
        1,
        10_000,
        file_of("weight"),
        reporter,
    )
    .map(|w| w as u32);
    let mut list = |value: Option<&Option<Spanned<Vec<Spanned<String>>>>>,
                    file: FileId|
     -> Option<Vec<ClassId>> {
        let value = value?.as_ref()?;
        Some(
            value
                .get_ref()
                .iter()
                .filter_map(|name| table.resolve(name, file, reporter))
                .collect(),
        )
    };
    let allow = list(input.allow, file_of("allow"));
    let deny = list(input.deny, file_of("deny"));
    let ceiling = input
        .ceiling
        .and_then(|c| c.as_ref())
        .and_then(|c| table.resolve(c, file_of("ceiling"), reporter));
    let floor = input
        .floor
        .and_then(|c| c.as_ref())
        .and_then(|c| table.resolve(c, file_of("floor"), reporter));
    let guarantee_percent = check_range(
        &flat(input.guarantee_percent),
        "guarantee_percent",
        1,
        100,
        file_of("guarantee_percent"),
        reporter,
    )
    .map(|p| p as u8);
    let cap_percent = check_range(
        &flat(input.cap_percent),
        "cap_percent",
        1,
        100,
        file_of("cap_percent"),
        reporter,
    );
    if let (Some(period), None) = (flat(input.cap_period_us), flat(input.cap_quota_us)) {
        reporter.warning(
            &Span::new(file_of("cap_period_us"), period.span()),
            Problem::IneffectiveSetting {
                message: "cap_period_us has no effect without cap_quota_us".into(),
            },
            Some("add `cap_quota_us`, or remove `cap_period_us`".into()),
        );
    }
    let quota = check_range(
        &flat(input.cap_quota_us),
        "cap_quota_us",
        1_000,
        1_000_000_000,
        file_of("cap_quota_us"),
        reporter,
    );
    let period = check_range(
        &flat(input.cap_period_us),
        "cap_period_us",
        1_000,
        1_000_000,
        file_of("cap_period_us"),
        reporter,
    );
    let cap = match (cap_percent, quota) {
        (Some(percent), None) => Some(Cap::Percent(percent as u8)),
        (None, Some(quota_us)) => Some(Cap::Quota {
            quota_us: quota_us as u64,
            period_us: period.unwrap_or(100_000) as u64,
        }),
        _ => None,
    };
    SettingsOverrides {
        weight,
        allow,
        deny,
        ceiling,
        floor,
        guarantee_percent,
        cap,
    }
}

fn apply_overrides(base: &GroupSettings, overrides: &SettingsOverrides) -> GroupSettings {
    let mut settings = base.clone();
    if let Some(weight) = overrides.weight {
        settings.weight = weight;
    }
    if let Some(allow) = &overrides.allow {
        settings.allow = Some(allow.clone());
    }
    if let Some(deny) = &overrides.deny {
        settings.deny = deny.clone();
    }
    if overrides.ceiling.is_some() {
        settings.ceiling = overrides.ceiling;
    }
    if overrides.floor.is_some() {
        settings.floor = overrides.floor;
    }
    if overrides.guarantee_percent.is_some() {
        settings.guarantee_percent = overrides.guarantee_percent;
    }
    if overrides.cap.is_some() {
        settings.cap = overrides.cap;
    }
    settings
}

/// Computes `allowed` and reports contradictions of a group's (or state's) effective settings.
/// Where the fields that settings checks point at were written (None: not written here).
#[derive(Default)]
struct FieldSpans {
    deny: Option<Span>,
    ceiling: Option<Span>,
    guarantee: Option<Span>,
}

impl FieldSpans {
    fn of(input: &SettingsInput<'_>, file_of: &dyn Fn(&str) -> FileId) -> Self {
        let at = |field: &str, range: Option<std::ops::Range<usize>>| {
            range.map(|range| Span::new(file_of(field), range))
        };
        FieldSpans {
            deny: at(
                "deny",
                input.deny.and_then(|d| d.as_ref()).map(|d| d.span()),
            ),
            ceiling: at(
                "ceiling",
                input.ceiling.and_then(|c| c.as_ref()).map(|c| c.span()),
            ),
            guarantee: at(
                "guarantee_percent",
                input
                    .guarantee_percent
                    .and_then(|g| g.as_ref())
                    .map(|g| g.span()),
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn finish_settings(
    report: bool,
    settings: &mut GroupSettings,
    class_count: usize,
    table: &ClassTable,
    item: &str,
    span: &Span,
    fields: &FieldSpans,
    reporter: &mut Reporter<'_>,
) {
    let name = |id: ClassId| table.classes[id.index()].name.clone();
    let mut allowed = match &settings.allow {
        Some(allow) => allow
            .iter()
            .fold(ClassMask::default(), |mask, &id| mask.with(id)),
        None => ClassMask::all(class_count),
    };
    let mut consistent = true;
    for &denied in &settings.deny {
        if settings
            .allow
            .as_ref()
            .is_some_and(|allow| allow.contains(&denied))
        {
            if report {
                reporter.error(
                    fields.deny.as_ref().unwrap_or(span),
                    Problem::AllowDenyContradiction {
                        class: name(denied),
                        item: item.into(),
                    },
                    Some("remove the class from one of the two lists".into()),
                );
            }
            consistent = false;
        }
        allowed = allowed.without(denied);
    }
    if let (Some(ceiling), Some(floor)) = (settings.ceiling, settings.floor) {
        if floor.is_higher_than(ceiling) {
            if report {
                reporter.error(
                fields.ceiling.as_ref().unwrap_or(span),
                Problem::CeilingBelowFloor { ceiling: name(ceiling), floor: name(floor), item: item.into() },
                Some("classes are ordered highest first (USER_INTERACTIVE ... BACKGROUND); the ceiling must be at or above the floor".into()),
            );
            }
            consistent = false;
        }
    }
    for id in 0..class_count {
        let id = ClassId(id as u8);
        let above = settings
            .ceiling
            .is_some_and(|ceiling| id.is_higher_than(ceiling));
        let below = settings.floor.is_some_and(|floor| floor.is_higher_than(id));
        if above || below {
            allowed = allowed.without(id);
        }
    }
    if consistent && allowed.is_empty() && report {
        reporter.error(
            span,
            Problem::NothingAllowed { item: item.into() },
            Some("allow, deny, ceiling and floor together exclude every class".into()),
        );
    }
    if let (Some(guarantee), Some(Cap::Percent(cap))) = (settings.guarantee_percent, settings.cap) {
        if guarantee > cap && report {
            reporter.error(
                fields.guarantee.as_ref().unwrap_or(span),
                Problem::ShareSettings {
                    message: format!("guarantee_percent {guarantee} is above cap_percent {cap}"),
                    item: item.into(),
                },
                None,
            );
        }
    }
    settings.allowed = allowed;
}

fn resolve_group(
    merged: &MergedGroup,
    table: &ClassTable,
    reporter: &mut Reporter<'_>,
) -> Option<Group> {
    let def = &merged.def;
    let file = merged.span.file;
    let item = format!("group `{}`", merged.name);
    let class_count = table.classes.len();
    let Some(path) = &def.path else {
        reporter.error(
            &merged.span,
            Problem::MissingField {
                field: "path".into(),
                item,
            },
            Some("e.g. `path = \"system.slice/*.service\"`".into()),
        );
        return None;
    };
    let path_file = merged.path_file.unwrap_or(file);
    let path_text = path.get_ref();
    let path_span = spanned_span(path_file, path);
    let mut path_ok = true;
    if path_text.starts_with('/') {
        reporter.error(
            &path_span,
            Problem::BadGroupPath {
                path: path_text.clone(),
                reason: "must be relative to the cgroup2 root".into(),
            },
            Some(format!("write `{}`", path_text.trim_start_matches('/'))),
        );
        path_ok = false;
    } else if path_text.is_empty()
        || path_text
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        reporter.error(
            &path_span,
            Problem::BadGroupPath {
                path: path_text.clone(),
                reason: "has an empty, `.` or `..` segment".into(),
            },
            None,
        );
        path_ok = false;
    } else if let Err(error) = glob::path_glob(path_text) {
        reporter.error(
            &path_span,
            Problem::InvalidGlob {
                pattern: path_text.clone(),
                reason: glob::glob_error_reason(&error),
            },
            None,
        );
        path_ok = false;
    }
    for (field, a, b) in [(
        "cap_percent and cap_quota_us",
        def.cap_percent.is_some(),
        def.cap_quota_us.is_some(),
    )] {
        if a && b {
            reporter.error(
                &merged.span,
                Problem::ShareSettings {
                    message: format!("{field} are exclusive"),
                    item: item.clone(),
                },
                Some("cap either by percent or by quota".into()),
            );
        }
    }
    let file_of = |field: &str| merged.field_files.get(field).copied().unwrap_or(file);
    let overrides = resolve_overrides(&group_input(def), &file_of, table, reporter);
    let empty = GroupSettings {
        weight: 100,
        allow: None,
        deny: Vec::new(),
        ceiling: None,
        floor: None,
        allowed: ClassMask::all(class_count),
        guarantee_percent: None,
        cap: None,
    };
    let mut base = apply_overrides(&empty, &overrides);
    finish_settings(
        true,
        &mut base,
        class_count,
        table,
        &item,
        &merged.span,
        &FieldSpans::of(&group_input(def), &file_of),
        reporter,
    );
    let scheduler_kind = def
        .scheduler
        .as_ref()
        .map_or(SchedulerKind::Canopy, |s| *s.get_ref());
    let scheduler = match (scheduler_kind, &def.external_ops) {
        (SchedulerKind::External, Some(ops)) if !ops.get_ref().is_empty() => {
            Scheduler::External(ops.get_ref().clone())
        }
        (SchedulerKind::External, _) => {
            let span = def.scheduler.as_ref().map_or(merged.span.clone(), |s| {
                spanned_span(file_of("scheduler"), s)
            });
            reporter.error(
                &span,
                Problem::SchedulerSettings {
                    message: "`external` scheduler without admitted `external_ops`".into(),
                    group: merged.name.clone(),
                },
                Some("e.g. `external_ops = [\"lavd\"]`".into()),
            );
            Scheduler::External(Vec::new())
        }
        (kind, Some(ops)) => {
            reporter.error(
                &spanned_span(file_of("external_ops"), ops),
                Problem::SchedulerSettings {
                    message: "`external_ops` without `scheduler = \"external\"`".into(),
                    group: merged.name.clone(),
                },
                None,
            );
            if kind == SchedulerKind::None {
                Scheduler::None
            } else {
                Scheduler::Canopy
            }
        }
        (SchedulerKind::Canopy, None) => Scheduler::Canopy,
        (SchedulerKind::None, None) => Scheduler::None,
    };
    let mut states = Vec::new();
    for (name, state) in &def.states {
        let state_item = format!("state `{name}` of group `{}`", merged.name);
        let span = merged
            .state_spans
            .get(name)
            .cloned()
            .unwrap_or(merged.span.clone());
        let state_file = span.file;
        if state.cap_percent.is_some() && state.cap_quota_us.is_some() {
            reporter.error(
                &span,
                Problem::ShareSettings {
                    message: "cap_percent and cap_quota_us are exclusive".into(),
                    item: state_item.clone(),
                },
                None,
            );
        }
        let state_files = merged.state_field_files.get(name);
        let state_file_of = |field: &str| {
            state_files
                .and_then(|files| files.get(field).copied())
                .unwrap_or(state_file)
        };
        let overrides = resolve_overrides(&state_input(state), &state_file_of, table, reporter);
        let mut settings = apply_overrides(&base, &overrides);
        let restricts = overrides.allow.is_some()
            || overrides.deny.is_some()
            || overrides.ceiling.is_some()
            || overrides.floor.is_some()
            || overrides.guarantee_percent.is_some()
            || overrides.cap.is_some();
        finish_settings(
            restricts,
            &mut settings,
            class_count,
            table,
            &state_item,
            &span,
            &FieldSpans::of(&state_input(state), &state_file_of),
            reporter,
        );
        states.push(GroupState {
            name: name.clone(),
            after_s: state.after_s.unwrap_or(0),
            user_settable: state.user_settable.unwrap_or(false),
            overrides,
            settings,
        });
    }
    if let Some(default_state) = &def.default_state {
        if !def.states.contains_key(default_state.get_ref()) {
            reporter.error(
                &spanned_span(file_of("default_state"), default_state),
                Problem::UnknownState {
                    state: default_state.get_ref().clone(),
                    group: merged.name.clone(),
                },
                did_you_mean(
                    default_state.get_ref(),
                    def.states.keys().map(String::as_str),
                ),
            );
        }
    }
    path_ok.then(|| Group {
        name: merged.name.clone(),
        path: path_text.clone(),
        scheduler,
        base,
        states,
        default_state: def.default_state.as_ref().map(|s| s.get_ref().clone()),
        defined_at: Some(reporter.location(&merged.span)),
    })
}

/// Scheduler conflicts, shadowed groups and scheduler nesting depth.
fn check_group_overlaps(groups: &[Group], reporter: &mut Reporter<'_>) {
    let location = |group: &Group| {
        group
            .defined_at
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    // Bucket by segment count and first segment: globs without `**` only overlap with equal
    // counts, and only when their first segments can be equal.
    let segments: Vec<Vec<&str>> = groups.iter().map(|g| g.path.split('/').collect()).collect();
    let first_keys: Vec<&str> = segments
        .iter()
        .map(|segments| {
            if glob::is_literal(segments[0]) {
                segments[0]
            } else {
                "*"
            }
        })
        .collect();
    let first_key = |index: usize| first_keys[index];
    // Two globs without `**` can only overlap when they have as many segments and the leading
    // literal segments of one are a prefix of the other's: file each group under its segment
    // count and leading literal segments, and pair it with the groups filed under a prefix of
    // its own key (equal keys pair with earlier members only).
    let leading_literals = |index: usize| -> usize {
        segments[index]
            .iter()
            .take_while(|segment| glob::is_literal(segment))
            .count()
    };
    // A group with the same path as an earlier one is compared with that one only: it overlaps
    // exactly what the earlier one overlaps, so pairing it again would only repeat reports.
    let mut first_with_path: HashMap<&str, usize> = HashMap::new();
    let mut duplicate_of: Vec<Option<usize>> = vec![None; groups.len()];
    for (index, group) in groups.iter().enumerate() {
        match first_with_path.get(group.path.as_str()) {
            Some(&first) => duplicate_of[index] = Some(first),
            None => {
                first_with_path.insert(&group.path, index);
            }
        }
    }
    let mut by_key: HashMap<(usize, &[&str]), Vec<usize>> = HashMap::new();
    let mut deep: Vec<usize> = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        if duplicate_of[index].is_some() {
            continue;
        }
        if group.path.contains("**") {
            deep.push(index);
        } else {
            let key = &segments[index][..leading_literals(index)];
            by_key
                .entry((segments[index].len(), key))
                .or_default()
                .push(index);
        }
    }
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        if group.path.contains("**") || duplicate_of[index].is_some() {
            continue;
        }
        let count = segments[index].len();
        let key = &segments[index][..leading_literals(index)];
        for length in 0..=key.len() {
            let Some(members) = by_key.get(&(count, &key[..length])) else {
                continue;
            };
            for &other in members {
                let keep = if length == key.len() {
                    other < index
                } else {
                    true
                };
                if keep {
                    pairs.push((other.min(index), other.max(index)));
                }
            }
        }
    }
    for &index in &deep {
        for (other, duplicate) in duplicate_of.iter().enumerate() {
            if other != index && duplicate.is_none() {
                pairs.push((index.min(other), index.max(other)));
            }
        }
    }
    if !deep.is_empty() {
        pairs.sort_unstable();
        pairs.dedup();
    }
    let mut is_deep = vec![false; groups.len()];
    for &index in &deep {
        is_deep[index] = true;
    }
    let mut cache = GlobCache::default();
    let mut overlapping = Vec::new();
    for (earlier, later) in pairs {
        let (a, b) = (&groups[earlier], &groups[later]);
        let overlap = if is_deep[earlier] || is_deep[later] {
            a.path == b.path
                || cache.covers(&a.path, &b.path, true)
                || cache.covers(&b.path, &a.path, true)
        } else {
            segments[earlier].len() == segments[later].len()
                && segments[earlier]
                    .iter()
                    .zip(&segments[later])
                    .all(|(x, y)| glob::segments_intersect(x, y))
        };
        if overlap {
            overlapping.push((earlier, later));
        }
    }
    overlapping.extend(
        duplicate_of
            .iter()
            .enumerate()
            .filter_map(|(index, first)| first.map(|first| (first, index))),
    );
    overlapping.sort_unstable_by_key(|&(earlier, later)| (later, earlier));
    // Report each group at most once per kind, against the first earlier group concerned.
    let mut reported_conflict = vec![false; groups.len()];
    let mut reported_shadow = vec![false; groups.len()];
    for (earlier, later) in overlapping {
        let (a, b) = (&groups[earlier], &groups[later]);
        let conflict = a.scheduler != b.scheduler;
        let already = if conflict {
            &mut reported_conflict[later]
        } else {
            &mut reported_shadow[later]
        };
        if std::mem::replace(already, true) {
            continue;
        }
        if conflict {
            push_at(
                reporter,
                b,
                true,
                Problem::SchedulerConflict {
                    group: b.name.clone(),
                    glob: b.path.clone(),
                    scheduler: b.scheduler.kind_name().into(),
                    other: a.name.clone(),
                    other_glob: a.path.clone(),
                    other_scheduler: a.scheduler.kind_name().into(),
                    other_location: location(a),
                },
                Some("make the globs disjoint, or give both groups the same scheduler".into()),
            );
        } else if a.path == b.path {
            push_at(
                reporter,
                b,
                false,
                Problem::ShadowedGroup {
                    group: b.name.clone(),
                    glob: b.path.clone(),
                    other: a.name.clone(),
                    other_location: location(a),
                },
                Some("merge the two groups".into()),
            );
        }
    }
    // Nesting: level of a scheduler group = 1 + deepest scheduler-group ancestor.
    let mut levels: Vec<usize> = vec![0; groups.len()];
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&index| groups[index].path.split('/').count());
    let mut reported = false;
    for &index in &order {
        let group = &groups[index];
        if matches!(group.scheduler, Scheduler::None) {
            continue;
        }
        let may_be_ancestor = |other: usize| {
            other != index
                && segments[other].len() < segments[index].len()
                && (first_key(other) == "*"
                    || first_key(index) == "*"
                    || first_key(other) == first_key(index))
                && !matches!(groups[other].scheduler, Scheduler::None)
                && segments[other]
                    .iter()
                    .zip(&segments[index])
                    .all(|(x, y)| glob::segments_intersect(x, y))
                && !groups[other].path.contains("**")
                && !group.path.contains("**")
        };
        let parent = order
            .iter()
            .copied()
            .filter(|&other| may_be_ancestor(other))
            .max_by_key(|&other| levels[other]);
        levels[index] = 1 + parent.map_or(0, |p| levels[p]);
        if levels[index] > MAX_SCHEDULER_DEPTH && !reported {
            let mut chain = vec![group.name.clone()];
            let mut current = parent;
            while let Some(p) = current {
                chain.push(groups[p].name.clone());
                current = order.iter().copied().find(|&other| {
                    other != p
                        && !matches!(groups[other].scheduler, Scheduler::None)
                        && glob::path_may_contain(&groups[other].path, &groups[p].path)
                        && levels[other] + 1 == levels[p]
                });
            }
            chain.push("root".into());
            chain.reverse();
            push_at(
                reporter,
                group,
                true,
                Problem::NestingTooDeep {
                    group: group.name.clone(),
                    depth: levels[index],
                    max: MAX_SCHEDULER_DEPTH,
                    chain: chain.join(" > "),
                },
                Some("set `scheduler = \"none\"` on an intermediate group".into()),
            );
            reported = true;
        }
    }
}

/// Reports at a group's definition (resolved location already known).
fn push_at(
    reporter: &mut Reporter<'_>,
    group: &Group,
    error: bool,
    problem: Problem,
    hint: Option<String>,
) {
    let location = group
        .defined_at
        .clone()
        .expect("resolved groups have a location");
    reporter.diagnostics.push(Diagnostic {
        severity: if error {
            crate::diagnostic::Severity::Error
        } else {
            crate::diagnostic::Severity::Warning
        },
        location,
        problem,
        hint,
    });
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
    use crate::plan::TaskFacts;

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
        assert_eq!(group.base.weight, 300);
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
