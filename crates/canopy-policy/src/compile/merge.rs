// SPDX-License-Identifier: GPL-2.0-only
//! Compiler stage 1, merging: the parsed files (main file, then drop-ins in order) folded into
//! one `Merged` policy, reporting redefinitions that cannot merge.
use std::collections::HashMap;

use toml::Spanned;

use crate::diagnostic::FileId;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::diagnostic::Span;
use crate::model::ClassDef;
use crate::model::DaemonDef;
use crate::model::DefaultsDef;
use crate::model::GroupDef;
use crate::model::RuleDef;
use crate::parse::Named;

// ---------------------------------------------------------------------------------------------
// Merging drop-ins.

pub(super) struct MergedClass {
    pub(super) name: String,
    pub(super) span: Span,
    pub(super) def: ClassDef,
    pub(super) after_file: Option<FileId>,
    /// Which file each overridden field last came from (default: the defining file).
    pub(super) field_files: HashMap<&'static str, FileId>,
}

pub(super) struct MergedRule {
    pub(super) def: RuleDef,
    pub(super) span: Span,
    pub(super) file: FileId,
    /// A bad field was dropped while parsing: don't report what its absence implies.
    pub(super) damaged: bool,
}

pub(super) struct MergedGroup {
    pub(super) name: String,
    pub(super) span: Span,
    pub(super) def: GroupDef,
    pub(super) path_file: Option<FileId>,
    pub(super) state_spans: HashMap<String, Span>,
    /// Which file each overridden field last came from (default: the defining file).
    pub(super) field_files: HashMap<&'static str, FileId>,
    /// The same for each state's fields.
    pub(super) state_field_files: HashMap<String, HashMap<&'static str, FileId>>,
}

#[derive(Default)]
pub(super) struct Merged {
    pub(super) defaults: DefaultsDef,
    pub(super) defaults_span: Option<Span>,
    pub(super) daemon: DaemonDef,
    pub(super) classes: Vec<MergedClass>,
    pub(super) rules: Vec<MergedRule>,
    pub(super) groups: Vec<MergedGroup>,
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

/// The field that places or identifies a merged item, which a drop-in may repeat but not
/// change.
#[derive(Clone, Copy)]
enum Identity {
    /// A class's `after`.
    ClassAfter,
    /// A group's `path`.
    GroupPath,
}

/// Reports a drop-in that gives `identity` of item `name` a value other than the merged one
/// (each value with the file it came from); true when it did, and the drop-in's item is
/// skipped.
fn identity_changed(
    reporter: &mut Reporter,
    identity: Identity,
    name: &str,
    (old, old_file): (&Option<Spanned<String>>, FileId),
    (new, new_file): (&Option<Spanned<String>>, FileId),
) -> bool {
    let (Some(old), Some(new)) = (old, new) else {
        return false;
    };
    if old.get_ref() == new.get_ref() {
        return false;
    }
    let (what, detail, hint) = match identity {
        Identity::ClassAfter => (
            "class",
            format!(
                "placed after `{}`, earlier after `{}`",
                new.get_ref(),
                old.get_ref()
            ),
            "a drop-in may change a class's parameters, not move it",
        ),
        Identity::GroupPath => (
            "group",
            format!("path `{}`, earlier `{}`", new.get_ref(), old.get_ref()),
            "give the new group another name, or drop `path` to only change its settings",
        ),
    };
    let first = reporter.location(&spanned_span(old_file, old));
    reporter.error(
        &spanned_span(new_file, new),
        Problem::Redefinition {
            what: what.into(),
            name: name.to_owned(),
            detail,
            first: first.to_string(),
        },
        Some(hint.into()),
    );
    true
}

pub(super) fn spanned_span<T>(file: FileId, value: &Spanned<T>) -> Span {
    Span::new(file, value.span())
}

pub(super) fn merge(parsed: Vec<crate::parse::ParsedFile>, reporter: &mut Reporter<'_>) -> Merged {
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
                    let after_file = existing.after_file.unwrap_or(file);
                    if identity_changed(
                        reporter,
                        Identity::ClassAfter,
                        &name,
                        (&existing.def.after, after_file),
                        (&item.after, file),
                    ) {
                        continue;
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
                    let path_file = existing.path_file.unwrap_or(file);
                    if identity_changed(
                        reporter,
                        Identity::GroupPath,
                        &name,
                        (&existing.def.path, path_file),
                        (&item.path, file),
                    ) {
                        continue;
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

pub(super) const STATE_FIELDS: [&str; 11] = [
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
