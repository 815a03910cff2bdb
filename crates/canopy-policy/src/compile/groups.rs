// SPDX-License-Identifier: GPL-2.0-only
//! Compiler stage 4b, groups: each merged group resolved (path glob, scheduler, settings,
//! states) and the checks across groups (scheduler conflicts, shadowed groups, nesting depth).
use std::collections::HashMap;

use super::classes::ClassTable;
use super::merge::spanned_span;
use super::merge::MergedGroup;
use super::rules::GlobCache;
use super::settings::apply_overrides;
use super::settings::finish_settings;
use super::settings::resolve_overrides;
use super::settings::FieldSpans;
use crate::class::ClassMask;
use crate::diagnostic::did_you_mean;
use crate::diagnostic::Diagnostic;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::glob;
use crate::model::SchedulerKind;
use crate::plan::Group;
use crate::plan::GroupSettings;
use crate::plan::GroupState;
use crate::plan::Scheduler;

/// Deepest nesting of child schedulers below the root scheduler the kernel allows.
pub const MAX_SCHEDULER_DEPTH: usize = 3;

pub(super) fn resolve_group(
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
    let overrides = resolve_overrides(&def.settings(), &file_of, table, reporter);
    let empty = GroupSettings {
        weight: None,
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
        &FieldSpans::of(&def.settings(), &file_of),
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
        let overrides = resolve_overrides(&state.settings(), &state_file_of, table, reporter);
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
            &FieldSpans::of(&state.settings(), &state_file_of),
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
pub(super) fn check_group_overlaps(groups: &[Group], reporter: &mut Reporter<'_>) {
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
pub(super) fn push_at(
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
