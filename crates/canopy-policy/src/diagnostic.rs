//! Diagnostics: every problem the compiler finds, as a typed `Problem` (a `thiserror` enum that
//! carries the offending input) at a `file:line:column` location, with an optional hint. Owns the
//! mapping from byte spans to line and column and the one text format all front ends print.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// Index of a source in the slice given to `compile`.
pub type FileId = usize;

/// A byte range in one source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Which source.
    pub file: FileId,
    /// Byte range in that source's text.
    pub range: Range<usize>,
}

impl Span {
    /// A span in `file` covering `range`.
    pub fn new(file: FileId, range: Range<usize>) -> Self {
        Span { file, range }
    }
}

/// One policy source: a display path (used only in messages) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path shown in diagnostics, e.g. `/etc/canopy/policy.d/10-desktop.toml`.
    pub path: String,
    /// The file's text.
    pub text: String,
}

impl Source {
    /// A source named `path` with contents `text`.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }
}

/// Resolves spans to human locations.
pub(crate) struct SourceMap<'a> {
    sources: &'a [Source],
    line_starts: Vec<Vec<usize>>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(sources: &'a [Source]) -> Self {
        let line_starts = sources
            .iter()
            .map(|source| {
                std::iter::once(0)
                    .chain(source.text.match_indices('\n').map(|(i, _)| i + 1))
                    .collect()
            })
            .collect();
        SourceMap {
            sources,
            line_starts,
        }
    }

    pub(crate) fn location(&self, span: &Span) -> Location {
        let source = &self.sources[span.file];
        let starts = &self.line_starts[span.file];
        let offset = span.range.start.min(source.text.len());
        let line_index = starts.partition_point(|&start| start <= offset) - 1;
        let line_start = starts[line_index];
        let column = source.text[line_start..floor_char_boundary(&source.text, offset)]
            .chars()
            .count()
            + 1;
        Location {
            file: source.path.clone(),
            line: line_index + 1,
            column,
        }
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// A human location: `file:line:column`, all 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Display path of the source.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// How bad a diagnostic is: errors reject the policy, warnings don't.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is rejected.
    Error,
    /// The policy compiles, but probably doesn't do what its author meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// Everything the compiler can object to, each carrying the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file is not valid TOML.
    #[error("invalid TOML: {message}")]
    Syntax { message: String },
    /// A top-level key that is not a section of the language.
    #[error("unknown section `{name}`")]
    UnknownSection { name: String },
    /// A field the item's type doesn't have.
    #[error("unknown field `{field}` in {item}")]
    UnknownField { field: String, item: String },
    /// A state overrides a field that is not a group setting.
    #[error("state `{state}` overrides unknown field `{field}`")]
    StateUnknownField { state: String, field: String },
    /// A required field is absent.
    #[error("missing field `{field}` in {item}")]
    MissingField { field: String, item: String },
    /// A value of the wrong type (the message comes from the deserializer).
    #[error("{message} in {item}")]
    WrongType { message: String, item: String },
    /// A class name that is neither built in nor defined.
    #[error("unknown class `{name}`")]
    UnknownClass { name: String },
    /// A number outside its allowed range.
    #[error("{field} = {value} is out of range {min}..={max}")]
    OutOfRange {
        field: String,
        value: i64,
        min: i64,
        max: i64,
    },
    /// A class both allowed and denied.
    #[error("class `{class}` is both allowed and denied in {item}")]
    AllowDenyContradiction { class: String, item: String },
    /// The ceiling is a lower class than the floor.
    #[error("ceiling `{ceiling}` is below floor `{floor}` in {item}")]
    CeilingBelowFloor {
        ceiling: String,
        floor: String,
        item: String,
    },
    /// allow/deny/ceiling/floor leave no class at all.
    #[error("no class is allowed in {item}")]
    NothingAllowed { item: String },
    /// A rule can never match because an earlier, broader rule matches first.
    #[error("rule {rule} is shadowed by rule {by} at {by_location}, which matches every task it matches")]
    ShadowedRule {
        rule: String,
        by: String,
        by_location: String,
    },
    /// Two groups that may match one cgroup with different schedulers.
    #[error("groups `{group}` ({glob}) and `{other}` ({other_glob}, at {other_location}) can match the same cgroup with different schedulers ({scheduler} vs {other_scheduler})")]
    SchedulerConflict {
        group: String,
        glob: String,
        scheduler: String,
        other: String,
        other_glob: String,
        other_scheduler: String,
        other_location: String,
    },
    /// A later group can never own a cgroup because an earlier one matches the same paths.
    #[error("group `{group}` ({glob}) never applies: group `{other}` at {other_location} has the same path")]
    ShadowedGroup {
        group: String,
        glob: String,
        other: String,
        other_location: String,
    },
    /// Child schedulers nested deeper than the kernel allows.
    #[error("group `{group}` nests schedulers {depth} levels below the root ({chain}); the kernel allows the root plus {max} levels")]
    NestingTooDeep {
        group: String,
        depth: usize,
        max: usize,
        chain: String,
    },
    /// A regular expression that doesn't compile.
    #[error("invalid regex `{pattern}`: {reason}")]
    InvalidRegex { pattern: String, reason: String },
    /// A glob that doesn't compile.
    #[error("invalid glob `{pattern}`: {reason}")]
    InvalidGlob { pattern: String, reason: String },
    /// `default_state` names a state the group doesn't define.
    #[error("unknown state `{state}` in group `{group}`")]
    UnknownState { state: String, group: String },
    /// Two definitions of one named item that cannot be merged.
    #[error("{what} `{name}` is redefined incompatibly: {detail} (first defined at {first})")]
    Redefinition {
        what: String,
        name: String,
        detail: String,
        first: String,
    },
    /// A built-in class given an `after`.
    #[error("built-in class `{class}` cannot be moved with `after`")]
    BuiltinClassMoved { class: String },
    /// A custom class without `after`.
    #[error("custom class `{class}` needs `after` to place it in the class order")]
    CustomClassUnplaced { class: String },
    /// `after` chains that loop.
    #[error("custom class `{class}` is placed after itself through `after`")]
    ClassOrderCycle { class: String },
    /// More classes than the BPF class table holds.
    #[error("{count} classes defined; at most {max} are supported")]
    TooManyClasses { count: usize, max: usize },
    /// A rule without any condition.
    #[error("rule {rule} has no condition and would match every task")]
    EmptyRule { rule: String },
    /// A rule that sets neither a class nor thread rules.
    #[error("rule {rule} sets neither `class` nor `threads`")]
    RuleWithoutEffect { rule: String },
    /// Two rules with one name in one file.
    #[error("rule name `{name}` is used twice in one file (first at {first})")]
    DuplicateRuleName { name: String, first: String },
    /// An empty pattern.
    #[error("empty {field} pattern")]
    EmptyPattern { field: String },
    /// `external` without admitted ops or ops without `external`.
    #[error("{message} in group `{group}`")]
    SchedulerSettings { message: String, group: String },
    /// Two ways of capping at once, or a guarantee above the cap.
    #[error("{message} in {item}")]
    ShareSettings { message: String, item: String },
    /// uclamp_min above uclamp_max.
    #[error("uclamp_min {min} is above uclamp_max {max} in class `{class}`")]
    UclampInverted { class: String, min: i64, max: i64 },
    /// A setting that is valid but can have no effect as written.
    #[error("{message}")]
    IneffectiveSetting { message: String },
    /// A quadratic analysis stopped early on a huge policy.
    #[error("{analysis} analysis stopped at {item}: work limit reached")]
    AnalysisLimit { analysis: String, item: String },
    /// More rules or groups than a plan may hold.
    #[error("{count} {what} defined; at most {max} are supported")]
    TooMany {
        what: String,
        count: usize,
        max: usize,
    },
    /// A group path that is absolute or otherwise malformed.
    #[error("group path `{path}` {reason}")]
    BadGroupPath { path: String, reason: String },
    /// A class above DEFAULT given on facts any process controls (its name, thread names, exe
    /// basename, cmdline, parent's name): any local user can match it (issue 11, attack 3).
    #[error("rule {rule} gives `{class}`, above DEFAULT, on facts any process controls ({facts}): any user's process can claim it")]
    UnpinnedPromotion {
        rule: String,
        class: String,
        facts: String,
    },
}

impl Problem {
    /// A stable kebab-case code for machine consumers (`--format json`).
    pub fn code(&self) -> &'static str {
        match self {
            Problem::Syntax { .. } => "syntax",
            Problem::UnknownSection { .. } => "unknown-section",
            Problem::UnknownField { .. } => "unknown-field",
            Problem::StateUnknownField { .. } => "state-unknown-field",
            Problem::MissingField { .. } => "missing-field",
            Problem::WrongType { .. } => "wrong-type",
            Problem::UnknownClass { .. } => "unknown-class",
            Problem::OutOfRange { .. } => "out-of-range",
            Problem::AllowDenyContradiction { .. } => "allow-deny-contradiction",
            Problem::CeilingBelowFloor { .. } => "ceiling-below-floor",
            Problem::NothingAllowed { .. } => "nothing-allowed",
            Problem::ShadowedRule { .. } => "shadowed-rule",
            Problem::SchedulerConflict { .. } => "scheduler-conflict",
            Problem::ShadowedGroup { .. } => "shadowed-group",
            Problem::NestingTooDeep { .. } => "nesting-too-deep",
            Problem::InvalidRegex { .. } => "invalid-regex",
            Problem::InvalidGlob { .. } => "invalid-glob",
            Problem::UnknownState { .. } => "unknown-state",
            Problem::Redefinition { .. } => "redefinition",
            Problem::BuiltinClassMoved { .. } => "builtin-class-moved",
            Problem::CustomClassUnplaced { .. } => "custom-class-unplaced",
            Problem::ClassOrderCycle { .. } => "class-order-cycle",
            Problem::TooManyClasses { .. } => "too-many-classes",
            Problem::EmptyRule { .. } => "empty-rule",
            Problem::RuleWithoutEffect { .. } => "rule-without-effect",
            Problem::DuplicateRuleName { .. } => "duplicate-rule-name",
            Problem::EmptyPattern { .. } => "empty-pattern",
            Problem::SchedulerSettings { .. } => "scheduler-settings",
            Problem::ShareSettings { .. } => "share-settings",
            Problem::UclampInverted { .. } => "uclamp-inverted",
            Problem::BadGroupPath { .. } => "bad-group-path",
            Problem::AnalysisLimit { .. } => "analysis-limit",
            Problem::IneffectiveSetting { .. } => "ineffective-setting",
            Problem::TooMany { .. } => "too-many",
            Problem::UnpinnedPromotion { .. } => "unpinned-promotion",
        }
    }
}

/// One finding, located and rendered: `file:line:column: error: message` plus a hint line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where the offending input is.
    pub location: Location,
    /// What is wrong.
    pub problem: Problem,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// Whether this diagnostic rejects the policy.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The JSON form used by `canopy check --format json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "severity": self.severity,
            "file": self.location.file,
            "line": self.location.line,
            "column": self.location.column,
            "code": self.problem.code(),
            "message": self.problem.to_string(),
            "hint": self.hint,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.severity, self.problem)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics while compiling; resolves spans once.
pub(crate) struct Reporter<'a> {
    map: SourceMap<'a>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(sources: &'a [Source]) -> Self {
        Reporter {
            map: SourceMap::new(sources),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn location(&self, span: &Span) -> Location {
        self.map.location(span)
    }

    pub(crate) fn error(&mut self, span: &Span, problem: Problem, hint: Option<String>) {
        self.push(Severity::Error, span, problem, hint);
    }

    pub(crate) fn warning(&mut self, span: &Span, problem: Problem, hint: Option<String>) {
        self.push(Severity::Warning, span, problem, hint);
    }

    fn push(&mut self, severity: Severity, span: &Span, problem: Problem, hint: Option<String>) {
        let location = self.map.location(span);
        self.diagnostics.push(Diagnostic {
            severity,
            location,
            problem,
            hint,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// `did you mean ...?` for a misspelt name, using edit distance over the candidates.
pub(crate) fn did_you_mean<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|candidate| {
            (
                strsim::jaro_winkler(&name.to_lowercase(), &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| format!("did you mean `{candidate}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_is_one_based_line_and_character_column() {
        let sources = [Source::new("a.toml", "x = 1\nyé = 2\n")];
        let map = SourceMap::new(&sources);
        let location = map.location(&Span::new(0, 10..11));
        assert_eq!(location.to_string(), "a.toml:2:4");
        assert_eq!(map.location(&Span::new(0, 0..1)).to_string(), "a.toml:1:1");
    }

    #[test]
    fn did_you_mean_finds_close_names() {
        assert_eq!(
            did_you_mean("BACKGRUND", ["BACKGROUND", "UTILITY"]).as_deref(),
            Some("did you mean `BACKGROUND`?")
        );
        assert_eq!(did_you_mean("zzz", ["BACKGROUND"]), None);
    }
}
