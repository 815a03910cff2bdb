// SPDX-License-Identifier: GPL-2.0-only
//! Compiler stage 3, rules: each merged rule's conditions and classes resolved, and the warnings
//! about rules an earlier, broader rule always matches first (shadowing analysis).
use std::collections::HashMap;

use toml::Spanned;

use super::classes::ClassTable;
use super::merge::spanned_span;
use super::merge::MergedRule;
use crate::class::ClassId;
use crate::diagnostic::FileId;
use crate::diagnostic::Problem;
use crate::diagnostic::Reporter;
use crate::glob;
use crate::matcher::REGEX_SIZE_LIMIT;
use crate::rule::Conditions;
use crate::rule::Rule;
use crate::rule::ThreadRule;

pub(super) fn resolve_rule(
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
    let mut pattern = |value: &Option<Spanned<String>>, field: &str, path: bool| {
        checked_pattern(value.as_ref()?, field, path, file, reporter)
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
            let name = checked_pattern(&thread.name, "thread name", false, file, reporter);
            let class = table.resolve(&thread.class, file, reporter);
            Some(ThreadRule {
                name: name?,
                class: class?,
            })
        })
        .collect();
    if !merged.damaged {
        warn_unpinned_promotions(&label, merged, table, reporter);
    }
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

/// Warns about each class above DEFAULT that `merged` (rule `label`) gives while resting only on
/// facts the task itself controls: its comm and thread names (`prctl(PR_SET_NAME)`), its exe
/// basename and cmdline (any copy of a binary, any argv), its parent's comm. A rule is pinned
/// by `uid`, `user`, `cgroup` (where a process may move itself is the cgroup owner's decision)
/// or a full `exe` path (`/usr/bin/pipewire`: a root-owned directory, without `**`).
fn warn_unpinned_promotions(
    label: &str,
    merged: &MergedRule,
    table: &ClassTable,
    reporter: &mut Reporter<'_>,
) {
    let def = &merged.def;
    let full_exe_path = def.exe.as_ref().is_some_and(|exe| {
        let text = exe.get_ref();
        text.starts_with('/') && !text.contains("**")
    });
    if def.uid.is_some() || def.user.is_some() || def.cgroup.is_some() || full_exe_path {
        return;
    }
    let Some(&default) = table.by_name.get("DEFAULT") else {
        return;
    };
    let facts: Vec<&str> = [
        (def.comm.is_some(), "comm"),
        (def.exe.is_some(), "exe basename"),
        (def.cmdline.is_some(), "cmdline"),
        (def.parent_comm.is_some(), "parent_comm"),
    ]
    .into_iter()
    .filter_map(|(present, fact)| present.then_some(fact))
    .collect();
    let file = merged.file;
    let mut check = |class: &Spanned<String>, facts: String| {
        let Some(&id) = table.by_name.get(class.get_ref()) else {
            return; // unknown: reported by resolve
        };
        if id < default {
            reporter.warning(
                &spanned_span(file, class),
                Problem::UnpinnedPromotion {
                    rule: label.to_string(),
                    class: class.get_ref().clone(),
                    facts,
                },
                Some("add `uid = ...` or `user = \"...\"`, or match the full `exe` path (e.g. `/usr/bin/NAME`), so that another user's process cannot rename itself into this class".into()),
            );
        }
    };
    if let Some(class) = &def.class {
        check(class, facts.join(", "));
    }
    for thread in &def.threads {
        let mut thread_facts = facts.clone();
        thread_facts.push("thread name");
        check(&thread.class, thread_facts.join(", "));
    }
}

/// The pattern written at `value` for `field` (a path glob when `path`), or None after
/// reporting it empty or not a valid glob.
fn checked_pattern(
    value: &Spanned<String>,
    field: &str,
    path: bool,
    file: FileId,
    reporter: &mut Reporter<'_>,
) -> Option<String> {
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
}

/// Literal-valued conditions of a rule, for the hashed shadowing check.
pub(super) fn literal_signature(c: &Conditions) -> Option<Vec<(u8, String)>> {
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
pub(super) struct GlobCache {
    pub(super) matchers: HashMap<(String, bool), Option<globset::GlobMatcher>>,
}

impl GlobCache {
    /// Same contract as `glob::covers`, with compiled globs reused.
    pub(super) fn covers(&mut self, broad: &str, narrow: &str, path: bool) -> bool {
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
    pub(super) fn rule_covers(&mut self, earlier: &Conditions, later: &Conditions) -> bool {
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

pub(super) fn has_any_condition(c: &Conditions) -> bool {
    c.comm.is_some()
        || c.exe.is_some()
        || c.cmdline.is_some()
        || c.cgroup.is_some()
        || c.uid.is_some()
        || c.user.is_some()
        || c.parent_comm.is_some()
}

/// The string conditions of a rule as (field tag, pattern, is a path glob).
pub(super) fn string_fields(c: &Conditions) -> Vec<(u8, &str, bool)> {
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
pub(super) struct WildIndex {
    pub(super) key_globs: [glob::GlobIndex; 5],
    pub(super) key_rules: [Vec<usize>; 5],
    pub(super) identity: HashMap<(u8, String), Vec<usize>>,
    pub(super) star: [Vec<usize>; 5],
}

impl WildIndex {
    pub(super) fn add(&mut self, index: usize, c: &Conditions) {
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
    pub(super) fn candidates(&self, c: &Conditions, work: &mut usize) -> Vec<usize> {
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
pub(super) const SHADOW_ANALYSIS_BUDGET: usize = 20_000_000;

/// Warns about rules an earlier, broader rule always matches first. Literal-only earlier rules
/// are found by hashing (every subset of the later rule's literal conditions); rules with globs
/// or regexes through `WildIndex`.
pub(super) fn check_shadowed_rules(
    rules: &[Rule],
    merged: &[MergedRule],
    reporter: &mut Reporter<'_>,
) {
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
