// SPDX-License-Identifier: GPL-2.0-only
//! Compiler stage 4a, group settings: the settings a group or one of its states writes (weight,
//! allow/deny, ceiling/floor, guarantee, cap) resolved, applied over the base, and checked for
//! contradictions.
use toml::Spanned;

use super::classes::check_range;
use super::classes::ClassTable;
use crate::class::ClassId;
use crate::class::ClassMask;
use crate::diagnostic::FileId;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::diagnostic::Span;
use crate::model::SettingsFields;
use crate::plan::Cap;
use crate::plan::GroupSettings;
use crate::plan::SettingsOverrides;

/// Resolves the overrides written in `input` (for the base settings: everything written).
pub(super) fn resolve_overrides(
    input: &SettingsFields<'_>,
    file_of: &dyn Fn(&str) -> FileId,
    table: &ClassTable,
    reporter: &mut Reporter<'_>,
) -> SettingsOverrides {
    let flat = |o: &Option<Spanned<i64>>| o.clone();
    let weight = check_range(
        &flat(input.weight),
        "weight",
        1,
        10_000,
        file_of("weight"),
        reporter,
    )
    .map(|w| w as u32);
    let mut list =
        |value: &Option<Spanned<Vec<Spanned<String>>>>, file: FileId| -> Option<Vec<ClassId>> {
            let value = value.as_ref()?;
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
        .as_ref()
        .and_then(|c| table.resolve(c, file_of("ceiling"), reporter));
    let floor = input
        .floor
        .as_ref()
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

pub(super) fn apply_overrides(
    base: &GroupSettings,
    overrides: &SettingsOverrides,
) -> GroupSettings {
    let mut settings = base.clone();
    if overrides.weight.is_some() {
        settings.weight = overrides.weight;
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
pub(super) struct FieldSpans {
    pub(super) deny: Option<Span>,
    pub(super) ceiling: Option<Span>,
    pub(super) guarantee: Option<Span>,
}

impl FieldSpans {
    pub(super) fn of(input: &SettingsFields<'_>, file_of: &dyn Fn(&str) -> FileId) -> Self {
        let at = |field: &str, range: Option<std::ops::Range<usize>>| {
            range.map(|range| Span::new(file_of(field), range))
        };
        FieldSpans {
            deny: at("deny", input.deny.as_ref().map(|d| d.span())),
            ceiling: at("ceiling", input.ceiling.as_ref().map(|c| c.span())),
            guarantee: at(
                "guarantee_percent",
                input.guarantee_percent.as_ref().map(|g| g.span()),
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn finish_settings(
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
