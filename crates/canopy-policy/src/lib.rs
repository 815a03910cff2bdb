//! canopy-policy: the policy language (TOML), its validation with `file:line:column`
//! diagnostics, and the immutable compiled [`Plan`] with its indexed matcher. Pure: no syscalls,
//! no file reading, no async runtime. Callers hand in sources as `(display path, text)` pairs
//! ([`Source`]); the `canopy` binary discovers and reads the files.
//!
//! # Layout
//! - `model`: the serde types of one policy file; their docs are the manual (`docs`).
//! - `parse`: TOML text → typed items, every bad field reported.
//! - `compile`: drop-in merging, validation, and building the [`Plan`].
//! - `plan`: the Plan, its API for the daemon, and the decision function.
//! - `share`: a group's share terms (weight, guarantee, cap as percent and as quota) for both
//!   backends.
//! - `rule`: a compiled rule, the task facts it matches on, and a match's outcome.
//! - `matcher`, `glob`: the indexed matcher and glob analysis.
//! - `class`: built-in classes, [`ClassId`], [`ClassMask`].
//! - `print`, `diff`: a plan back to canonical TOML, and the semantic difference of two plans.
//! - `schedqos`: conversion of schedqos configuration.
//! - `docs`: JSON Schema and `docs/policy.md`, generated from `model`.
//!
//! # For the daemon
//! ```
//! use canopy_policy::{compile, Source, TaskFacts};
//! let compiled = compile(&[Source::new("policy.toml", r#"
//!     [[rules]]
//!     comm = "make"
//!     class = "BACKGROUND"
//!     inherit = true
//!     [groups.apps]
//!     path = "user.slice/*/app.slice/*"
//!     ceiling = "USER_INITIATED"
//!     [groups.apps.states.unfocused]
//!     after_s = 30
//!     ceiling = "BACKGROUND"
//! "#)]).expect("valid policy");
//! let plan = compiled.plan;                         // immutable; share it in an Arc
//! let task = TaskFacts { comm: "make", thread_name: "make", cgroup: "user.slice/u/app.slice/x", ..Default::default() };
//! let matched = plan.match_task(&task).expect("rule 0 matches");
//! let group = plan.group_for_cgroup(task.cgroup);
//! let decision = plan.effective_class(matched.requested_class(), group, Some("unfocused"));
//! assert_eq!(plan.class(decision.class).name, "BACKGROUND");
//! let params = plan.class_params(decision.class); // nice, policy, slice_us, uclamp, weight, preempt
//! assert_eq!(params.nice, 4);
//! println!("plan {}", plan.hash_hex());
//! ```
//! - [`Plan::match_task`]`(&TaskFacts) -> Option<RuleMatch>`: first matching rule (index, class,
//!   per-thread class, inherit flag).
//! - [`Plan::group_for_cgroup`]`(&str) -> Option<GroupRef>`, [`Plan::group`]`(GroupRef) -> &Group`
//!   (weight, guarantee, cap, scheduler, states via [`Group::settings`]).
//! - [`Plan::effective_class`]`(ClassId, Option<GroupRef>, Option<&str>) -> Decision`: THE clamp
//!   both backends call.
//! - [`Plan::classes`], [`Plan::class_params`], [`Plan::defaults`], [`Plan::daemon`],
//!   [`Plan::hash`].

mod class;
mod compile;
pub mod diagnostic;
mod diff;
pub mod docs;
mod glob;
mod matcher;
pub mod model;
mod parse;
mod plan;
mod print;
mod rule;
pub mod schedqos;
mod share;

pub use class::builtin_class_names;
pub use class::Class;
pub use class::ClassId;
pub use class::ClassMask;
pub use class::ClassParams;
pub use class::MAX_CLASSES;
pub use compile::compile_str;
pub use compile::CompileError;
pub use compile::Compiled;
pub use compile::MAX_GROUPS;
pub use compile::MAX_RULES;
pub use compile::MAX_SCHEDULER_DEPTH;
pub use diagnostic::Diagnostic;
pub use diagnostic::Location;
pub use diagnostic::Problem;
pub use diagnostic::Severity;
pub use diagnostic::Source;
pub use diff::diff;
pub use diff::Change;
pub use model::DaemonMode;
pub use model::SchedPolicy;
pub use plan::Cap;
pub use plan::DaemonSettings;
pub use plan::Decision;
pub use plan::Defaults;
pub use plan::Group;
pub use plan::GroupRef;
pub use plan::GroupSettings;
pub use plan::GroupState;
pub use plan::Plan;
pub use plan::Reason;
pub use plan::Scheduler;
pub use plan::SettingsOverrides;
pub use print::to_toml;
pub use rule::Conditions;
pub use rule::Rule;
pub use rule::RuleMatch;
pub use rule::TaskFacts;
pub use rule::ThreadRule;
pub use share::CpuQuota;
pub use share::ShareTerms;
pub use share::CAP_PERIOD_US;

/// Policies compiled by [`compile`] in this process so far.
static COMPILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Compiles policy sources (drop-ins merged in order) into an immutable [`Plan`], or every
/// problem found. The one entry point: each call is counted ([`compiles_so_far`]), so the
/// daemon can show that a start or a reload compiled the policy once.
pub fn compile(sources: &[Source]) -> Result<Compiled, CompileError> {
    COMPILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    compile::compile(sources)
}

/// How many times [`compile`] ran in this process (a counter, no syscall).
pub fn compiles_so_far() -> u64 {
    COMPILES.load(std::sync::atomic::Ordering::Relaxed)
}
