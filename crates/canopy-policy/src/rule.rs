//! What a rule is once compiled: its conditions, its per-thread rules, the facts about a task it
//! is matched against ([`TaskFacts`]) and the outcome of a match ([`RuleMatch`]). The indexed
//! matcher that evaluates them is `matcher.rs`; the [`crate::Plan`] holds the rules and asks it.

use serde::Serialize;

use crate::class::ClassId;
use crate::diagnostic::Location;

/// What the daemon knows about one task when it asks which rule applies.
/// `None` means "unknown" (kernel threads have no exe or cmdline); a condition on an unknown
/// fact never matches.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskFacts<'a> {
    /// `comm` of the thread-group leader (the process name).
    pub comm: &'a str,
    /// `comm` of the thread itself.
    pub thread_name: &'a str,
    /// Full path of the executable (`/proc/<pid>/exe`).
    pub exe: Option<&'a str>,
    /// Command line, arguments joined by single spaces.
    pub cmdline: Option<&'a str>,
    /// cgroup path relative to the cgroup2 root, without a leading `/`.
    pub cgroup: &'a str,
    /// Real uid.
    pub uid: u32,
    /// User name of `uid`, when the daemon resolved it.
    pub user: Option<&'a str>,
    /// `comm` of the parent process.
    pub parent_comm: Option<&'a str>,
}

/// The outcome of matching a task against the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch {
    /// Index of the rule in `Plan::rules()` (evaluation order).
    pub rule: usize,
    /// The class the rule gives the process.
    pub class: ClassId,
    /// The class of a matching per-thread rule, if any.
    pub thread_class: Option<ClassId>,
    /// The matching per-thread rule, if any: its index in the rule's [`Rule::threads`].
    pub thread_rule: Option<usize>,
    /// Whether forked children inherit the class.
    pub inherit: bool,
}

impl RuleMatch {
    /// The class requested for this thread: the thread rule's, else the process rule's.
    pub fn requested_class(&self) -> ClassId {
        self.thread_class.unwrap_or(self.class)
    }
}

/// The conditions of a rule as written (None: no condition on that fact).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Conditions {
    /// Glob on the process comm.
    pub comm: Option<String>,
    /// Glob on the exe basename, or the full path when it contains `/`.
    pub exe: Option<String>,
    /// Regex searched in the cmdline.
    pub cmdline: Option<String>,
    /// Glob on the cgroup path.
    pub cgroup: Option<String>,
    /// uid.
    pub uid: Option<u32>,
    /// User name.
    pub user: Option<String>,
    /// Glob on the parent comm.
    pub parent_comm: Option<String>,
}

impl Conditions {
    /// The conditions as `field="pattern"` pairs separated by spaces, e.g. `comm="make" uid=1000`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let fields = [
            ("comm", &self.comm),
            ("exe", &self.exe),
            ("cmdline", &self.cmdline),
            ("cgroup", &self.cgroup),
            ("user", &self.user),
            ("parent_comm", &self.parent_comm),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                parts.push(format!("{field}={value:?}"));
            }
        }
        if let Some(uid) = self.uid {
            parts.push(format!("uid={uid}"));
        }
        parts.join(" ")
    }
}

/// A per-thread rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadRule {
    /// Glob on the thread name.
    pub name: String,
    /// Class of matching threads.
    pub class: ClassId,
}

/// One process rule of a compiled plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Optional name.
    pub name: Option<String>,
    /// What must match.
    pub conditions: Conditions,
    /// Process class (the default class when the rule only has thread rules).
    pub class: ClassId,
    /// Whether `class` was written in the rule (false: it is the default class).
    pub class_explicit: bool,
    /// Whether forked children inherit the class.
    pub inherit: bool,
    /// Per-thread rules, first match wins.
    pub threads: Vec<ThreadRule>,
    /// Where the rule is defined.
    #[serde(skip)]
    pub defined_at: Option<Location>,
}

impl Rule {
    /// `name` or `#index` for messages.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(name) => format!("`{name}`"),
            None => format!("#{}", index + 1),
        }
    }
}
