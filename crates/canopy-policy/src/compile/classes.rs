// SPDX-License-Identifier: GPL-2.0-only
//! Compiler stage 2, classes: the built-in classes plus the policy's custom ones placed in order
//! (`after`), their parameters checked and resolved; the `ClassTable` that later stages resolve
//! class names through.
use std::collections::HashMap;

use toml::Spanned;

use super::merge::spanned_span;
use super::merge::Merged;
use super::merge::MergedClass;
use crate::class::Class;
use crate::class::ClassId;
use crate::class::ClassParams;
use crate::class::BUILTINS;
use crate::class::MAX_CLASSES;
use crate::diagnostic::did_you_mean;
use crate::diagnostic::FileId;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::diagnostic::Span;

// ---------------------------------------------------------------------------------------------
// Resolution and validation.

/// Class names → ids, with the ability to report unknown names.
pub(super) struct ClassTable {
    pub(super) classes: Vec<Class>,
    pub(super) by_name: HashMap<String, ClassId>,
}

impl ClassTable {
    pub(super) fn resolve(
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

pub(super) fn check_range(
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

pub(super) fn resolve_classes(merged: &Merged, reporter: &mut Reporter<'_>) -> ClassTable {
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
    pub(super) fn place<'m>(
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

pub(super) fn apply_class_def(
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
    let mut in_range = |value: &Option<Spanned<i64>>, field: &str, min: i64, max: i64| {
        check_range(value, field, min, max, file_of(field), reporter)
    };
    if let Some(nice) = in_range(&def.nice, "nice", -20, 19) {
        params.nice = nice as i8;
    }
    if let Some(slice) = in_range(&def.slice_us, "slice_us", 100, 100_000) {
        params.slice_us = slice as u32;
    }
    if let Some(min) = in_range(&def.uclamp_min, "uclamp_min", 0, 1024) {
        params.uclamp_min = min as u16;
    }
    if let Some(max) = in_range(&def.uclamp_max, "uclamp_max", 0, 1024) {
        params.uclamp_max = max as u16;
    }
    if let Some(weight) = in_range(&def.weight, "weight", 1, 10_000) {
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
