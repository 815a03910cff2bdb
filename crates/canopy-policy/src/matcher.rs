//! The indexed rule matcher. Each string fact (comm, exe basename, exe path, cgroup, parent comm)
//! has an index: literal patterns in a hash map, glob patterns in one `GlobSet`; cmdline regexes
//! are in one `RegexSet`. Matching a task looks each fact up once, unions the rules found into
//! candidates, and verifies candidates in rule order against the already computed per-fact
//! results, so the cost grows with the number of *matching* rules, not with the rule count.

use std::collections::HashMap;

use regex::RegexSet;

use crate::class::ClassId;
use crate::glob::is_literal;
use crate::glob::name_glob;
use crate::glob::path_glob;
use crate::glob::FastGlob;
use crate::glob::GlobIndex;
use crate::rule::Rule;
use crate::rule::TaskFacts;

/// How one condition of a rule is checked.
#[derive(Debug, Clone)]
enum Check {
    /// Equal to this string.
    Literal(Box<str>),
    /// The glob with this index in the fact's `GlobSet` matched.
    Glob(usize),
}

/// The index of one string fact.
#[derive(Default)]
struct FactIndex {
    exact: HashMap<Box<str>, Vec<u32>>,
    glob_rules: Vec<u32>,
    globs: GlobIndex,
}

impl FactIndex {
    fn add(&mut self, rule: u32, pattern: &str, path: bool) -> Result<Check, globset::Error> {
        if is_literal(pattern) {
            self.exact.entry(pattern.into()).or_default().push(rule);
            return Ok(Check::Literal(pattern.into()));
        }
        let glob = if path {
            path_glob(pattern)?
        } else {
            name_glob(pattern)?
        };
        self.glob_rules.push(rule);
        Ok(Check::Glob(self.globs.add(pattern, &glob, path)))
    }

    /// Adds the rules this fact's value selects to `candidates`; returns the matched globs.
    fn lookup(&self, value: Option<&str>, candidates: &mut Vec<u32>) -> Vec<usize> {
        let Some(value) = value else {
            return Vec::new();
        };
        if let Some(rules) = self.exact.get(value) {
            candidates.extend_from_slice(rules);
        }
        if self.globs.is_empty() {
            return Vec::new();
        }
        let mut matched = Vec::new();
        self.globs.matches_into(value, &mut matched);
        candidates.extend(matched.iter().map(|&index| self.glob_rules[index]));
        matched
    }
}

fn check(check: &Option<Check>, value: Option<&str>, matched_globs: &[usize]) -> bool {
    match check {
        None => true,
        Some(Check::Literal(literal)) => value == Some(&**literal),
        Some(Check::Glob(index)) => matched_globs.binary_search(index).is_ok(),
    }
}

/// One rule's conditions, compiled.
struct CompiledRule {
    comm: Option<Check>,
    exe_base: Option<Check>,
    exe_path: Option<Check>,
    cgroup: Option<Check>,
    parent: Option<Check>,
    cmdline: Option<usize>,
    uid: Option<u32>,
    user: Option<Box<str>>,
    threads: Vec<(FastGlob, ClassId)>,
}

/// All rules, indexed.
pub(crate) struct RuleMatcher {
    rules: Vec<CompiledRule>,
    comm: FactIndex,
    exe_base: FactIndex,
    exe_path: FactIndex,
    cgroup: FactIndex,
    parent: FactIndex,
    cmdline: RegexSet,
    cmdline_rules: Vec<u32>,
    /// Rules with only uid/user conditions: always candidates.
    unindexed: Vec<u32>,
}

/// A pattern that failed to compile while building the matcher (validation normally catches
/// these first).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MatcherError {
    #[error("glob: {0}")]
    Glob(#[from] globset::Error),
    #[error("regex: {0}")]
    Regex(#[from] regex::Error),
}

/// Size limit of one compiled regex, so a hostile pattern can't take the daemon's memory.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl RuleMatcher {
    pub(crate) fn build(rules: &[Rule]) -> Result<Self, MatcherError> {
        let mut comm = FactIndex::default();
        let mut exe_base = FactIndex::default();
        let mut exe_path = FactIndex::default();
        let mut cgroup = FactIndex::default();
        let mut parent = FactIndex::default();
        let mut regexes = Vec::new();
        let mut cmdline_rules = Vec::new();
        let mut unindexed = Vec::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let id = index as u32;
            let c = &rule.conditions;
            let comm_check = match &c.comm {
                Some(p) => Some(comm.add(id, p, false)?),
                None => None,
            };
            let (mut base_check, mut path_check) = (None, None);
            if let Some(p) = &c.exe {
                if p.contains('/') {
                    path_check = Some(exe_path.add(id, p, true)?);
                } else {
                    base_check = Some(exe_base.add(id, p, false)?);
                }
            }
            let cgroup_check = match &c.cgroup {
                Some(p) => Some(cgroup.add(id, p, true)?),
                None => None,
            };
            let parent_check = match &c.parent_comm {
                Some(p) => Some(parent.add(id, p, false)?),
                None => None,
            };
            let cmdline_check = c.cmdline.as_ref().map(|pattern| {
                regexes.push(pattern.clone());
                cmdline_rules.push(id);
                regexes.len() - 1
            });
            let has_string_condition = c.comm.is_some()
                || c.exe.is_some()
                || c.cgroup.is_some()
                || c.parent_comm.is_some()
                || c.cmdline.is_some();
            if !has_string_condition {
                unindexed.push(id);
            }
            let threads = rule
                .threads
                .iter()
                .map(|thread| {
                    Ok((
                        FastGlob::new(&thread.name, &name_glob(&thread.name)?, false),
                        thread.class,
                    ))
                })
                .collect::<Result<_, globset::Error>>()?;
            compiled.push(CompiledRule {
                comm: comm_check,
                exe_base: base_check,
                exe_path: path_check,
                cgroup: cgroup_check,
                parent: parent_check,
                cmdline: cmdline_check,
                uid: c.uid,
                user: c.user.as_deref().map(Into::into),
                threads,
            });
        }
        let cmdline = regex::RegexSetBuilder::new(&regexes)
            .size_limit(REGEX_SIZE_LIMIT.saturating_mul(regexes.len().max(1)))
            .build()?;
        Ok(RuleMatcher {
            rules: compiled,
            comm,
            exe_base,
            exe_path,
            cgroup,
            parent,
            cmdline,
            cmdline_rules,
            unindexed,
        })
    }

    /// Index of the first rule all of whose conditions hold for `task`.
    pub(crate) fn first_match(&self, task: &TaskFacts<'_>) -> Option<usize> {
        let mut candidates: Vec<u32> = self.unindexed.clone();
        let exe_base = task.exe.map(|exe| exe.rsplit('/').next().unwrap_or(exe));
        let comm_globs = self.comm.lookup(Some(task.comm), &mut candidates);
        let base_globs = self.exe_base.lookup(exe_base, &mut candidates);
        let path_globs = self.exe_path.lookup(task.exe, &mut candidates);
        let cgroup = task.cgroup.trim_start_matches('/');
        let cgroup_globs = self.cgroup.lookup(Some(cgroup), &mut candidates);
        let parent_globs = self.parent.lookup(task.parent_comm, &mut candidates);
        let cmdline_matches = match task.cmdline {
            Some(cmdline) if !self.cmdline.is_empty() => {
                let matches = self.cmdline.matches(cmdline);
                candidates.extend(matches.iter().map(|index| self.cmdline_rules[index]));
                Some(matches)
            }
            _ => None,
        };
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().map(|id| id as usize).find(|&id| {
            let rule = &self.rules[id];
            check(&rule.comm, Some(task.comm), &comm_globs)
                && check(&rule.exe_base, exe_base, &base_globs)
                && check(&rule.exe_path, task.exe, &path_globs)
                && check(&rule.cgroup, Some(cgroup), &cgroup_globs)
                && check(&rule.parent, task.parent_comm, &parent_globs)
                && rule.cmdline.is_none_or(|index| {
                    cmdline_matches
                        .as_ref()
                        .is_some_and(|matches| matches.matched(index))
                })
                && rule.uid.is_none_or(|uid| uid == task.uid)
                && rule
                    .user
                    .as_deref()
                    .is_none_or(|user| task.user == Some(user))
        })
    }

    /// The first thread rule of rule `rule` matching `thread_name`: its index in the rule's
    /// `threads` and its class.
    pub(crate) fn thread_rule(&self, rule: usize, thread_name: &str) -> Option<(usize, ClassId)> {
        self.rules[rule]
            .threads
            .iter()
            .enumerate()
            .find(|(_, (glob, _))| glob.is_match(thread_name))
            .map(|(index, (_, class))| (index, *class))
    }
}
