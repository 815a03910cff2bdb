//! The policy file format: the serde types one TOML file deserializes into. Their `///` docs are
//! the user manual: `docs/policy.md` and `docs/policy.schema.json` are generated from them (see
//! `docs.rs`), and a test fails when the committed copies drift. Fields carry their unit in the
//! name (`slice_us`, `after_s`). Values that diagnostics must point at are `Spanned`.
//!
//! These types only describe *one* file. Merging drop-ins, resolving class names and checking
//! ranges happen in `compile/`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use toml::Spanned;

/// One canopy policy file: `/etc/canopy/policy.toml` or a drop-in under
/// `/etc/canopy/policy.d/*.toml`. Every section is optional; drop-ins are merged in lexical order.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// What happens to tasks no rule matches, and which tasks canopy never touches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<DefaultsDef>,
    /// Settings of the `canopy run` daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonDef>,
    /// QoS classes, keyed by name. The five built-in classes (USER_INTERACTIVE, USER_INITIATED,
    /// DEFAULT, UTILITY, BACKGROUND, in that order, highest first) always exist; a table here
    /// overrides their parameters. Any other name defines a custom class, which must say where it
    /// sits in the order with `after`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub classes: IndexMap<String, ClassDef>,
    /// Process rules, evaluated in order (files in lexical order, rules in file order); the first
    /// rule whose every condition matches decides the task's class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleDef>,
    /// Groups of cgroups, keyed by name: which classes their tasks may use, their CPU share, and
    /// which child scheduler runs them.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub groups: IndexMap<String, GroupDef>,
}

/// Defaults for tasks that no rule matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsDef {
    /// Class of tasks that no rule matches. Default: `DEFAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub class: Option<Spanned<String>>,
    /// Leave kernel threads alone (never change their scheduling attributes). Default: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_kernel_threads: Option<bool>,
    /// Leave real-time and deadline tasks (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE) alone.
    /// Default: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave_realtime: Option<bool>,
}

/// How the daemon enforces the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DaemonMode {
    /// Use sched_ext when the kernel supports it, otherwise fall back.
    Auto,
    /// Require sched_ext; fail to start without it.
    Scx,
    /// Never load BPF; apply classes with sched_setattr and cgroup files only.
    Fallback,
}

impl std::str::FromStr for DaemonMode {
    type Err = String;
    /// `auto`, `scx` or `fallback`, as in the policy (`canopy run --mode` parses with this).
    fn from_str(text: &str) -> Result<DaemonMode, String> {
        match text {
            "auto" => Ok(DaemonMode::Auto),
            "scx" => Ok(DaemonMode::Scx),
            "fallback" => Ok(DaemonMode::Fallback),
            other => Err(format!("unknown mode {other:?} (auto, scx, fallback)")),
        }
    }
}

/// Settings of the `canopy run` daemon.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DaemonDef {
    /// Path of the control socket (Unix stream socket). Default: `/run/canopy/control.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// Address (`host:port`) where metrics are served; absent means no metrics endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// Enforcement mode: `auto`, `scx` or `fallback`. Default: `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DaemonMode>,
}

/// Linux scheduling policy a class applies to fair tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SchedPolicy {
    /// SCHED_NORMAL (SCHED_OTHER).
    Normal,
    /// SCHED_BATCH: never preempts on wakeup.
    Batch,
    /// SCHED_IDLE: runs only when nothing else wants the CPU.
    Idle,
}

/// Parameters of one QoS class. Every field is optional: a built-in class keeps its default for
/// fields left out, a custom class starts from the class named in `after`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    /// Custom classes only: the class this one sits directly below in the order (ceilings and
    /// floors compare by that order). Its parameters are the starting point of this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub after: Option<Spanned<String>>,
    /// One line on what the class is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Scheduling policy: `normal`, `batch` or `idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SchedPolicy>,
    /// Nice value, -20..=19 (bandwidth between tasks of one cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub nice: Option<Spanned<i64>>,
    /// Time slice (EEVDF custom slice / sched_ext slice) in microseconds, 100..=100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub slice_us: Option<Spanned<i64>>,
    /// Minimum utilization clamp, 0..=1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub uclamp_min: Option<Spanned<i64>>,
    /// Maximum utilization clamp, 0..=1024; not below `uclamp_min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub uclamp_max: Option<Spanned<i64>>,
    /// Relative weight of the class in canopy's BPF schedulers, 1..=10000, on the kernel's
    /// task scale (1024 = a nice-0 task): in scx mode a cgroup at `cpu.weight` w weighs
    /// w * 1024 / 100 against it, as the fair scheduler converts `cpu.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i64>")]
    pub weight: Option<Spanned<i64>>,
    /// Whether a waking task of this class may preempt a running task of a lower class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt: Option<bool>,
}

/// One process rule. All conditions given must match (an AND); at least one condition is needed.
/// Globs use `*`, `?`, `[...]` and `{a,b}`; in `cgroup` and in an `exe` with a `/`, `*` does not
/// cross `/` (use `**` for that).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Name of the rule. A later file's rule with the same name replaces this one in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Glob on the process name (`comm` of the thread-group leader, at most 15 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub comm: Option<Spanned<String>>,
    /// Glob on the executable: on its basename, or on the full path when the pattern has a `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub exe: Option<Spanned<String>>,
    /// Regular expression (Rust `regex` syntax) searched in the command line, arguments joined
    /// by single spaces. Anchor it with `^`/`$` to match the whole line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub cmdline: Option<Spanned<String>>,
    /// Glob on the task's cgroup path, relative to the cgroup2 root (no leading `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub cgroup: Option<Spanned<String>>,
    /// Numeric user id (real uid) of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// User name of the process owner (resolved by the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub user: Option<Spanned<String>>,
    /// Glob on the parent process's `comm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub parent_comm: Option<Spanned<String>>,
    /// Class of every thread of a matching process. Optional when `threads` is given: threads no
    /// thread rule matches then take the default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub class: Option<Spanned<String>>,
    /// Whether children forked by a matching process keep its class (unless a rule matches them
    /// after their own exec). Default: `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherit: Option<bool>,
    /// Per-thread rules, first match wins: a thread whose name matches takes that class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadRuleDef>,
}

/// A per-thread rule inside a process rule.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreadRuleDef {
    /// Glob on the thread name (`/proc/<pid>/task/<tid>/comm`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Class of matching threads.
    #[schemars(with = "String")]
    pub class: Spanned<String>,
}

/// Which scheduler runs the tasks of a group's cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// canopy's own child scheduler (class-aware).
    Canopy,
    /// A foreign sched_ext scheduler, admitted by ops name in `external_ops`.
    External,
    /// No child scheduler: the root scheduler runs the tasks directly.
    None,
}

/// Declares a policy table that carries a group's settings: its own fields, then the nine
/// settings fields where `..group_settings..` stands (`weight` to `cap_period_us`, written once
/// here for [`GroupDef`] and [`StateDef`]), then the rest; and a `settings()` view of them.
/// serde's `flatten` cannot share the fields (it turns off `deny_unknown_fields`), and the
/// docs are generated from these fields' comments in this order.
macro_rules! with_group_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$before_meta:meta])* pub $before:ident: $before_ty:ty, )*
            ..group_settings..
            $( $(#[$after_meta:meta])* pub $after:ident: $after_ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$before_meta])* pub $before: $before_ty, )*
            /// CPU weight, 1..=10000 (as cgroup `cpu.weight`). Default: none, each cgroup keeps its own
            /// `cpu.weight` (see "Precedence" in docs/policy.md).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<i64>")]
            pub weight: Option<Spanned<i64>>,
            /// Only these classes may run here; any other requested class is clamped to the nearest
            /// allowed one.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<Vec<String>>")]
            pub allow: Option<Spanned<Vec<Spanned<String>>>>,
            /// These classes may not run here.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<Vec<String>>")]
            pub deny: Option<Spanned<Vec<Spanned<String>>>>,
            /// Highest class tasks here may have; higher requests are clamped down to it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<String>")]
            pub ceiling: Option<Spanned<String>>,
            /// Lowest class tasks here may have; lower requests are raised to it.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<String>")]
            pub floor: Option<Spanned<String>>,
            /// Guaranteed minimum share of the machine's CPU time, in percent (1..=100).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<i64>")]
            pub guarantee_percent: Option<Spanned<i64>>,
            /// Maximum share of the machine's CPU time, in percent (1..=100).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<i64>")]
            pub cap_percent: Option<Spanned<i64>>,
            /// Maximum CPU time per period in microseconds, like the first field of `cpu.max`.
            /// Exclusive with `cap_percent`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<i64>")]
            pub cap_quota_us: Option<Spanned<i64>>,
            /// Period of `cap_quota_us` in microseconds (1000..=1000000). Default: 100000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(with = "Option<i64>")]
            pub cap_period_us: Option<Spanned<i64>>,
            $( $(#[$after_meta])* pub $after: $after_ty, )*
        }

        impl $name {
            /// The group settings this table writes.
            pub fn settings(&self) -> SettingsFields<'_> {
                SettingsFields {
                    weight: &self.weight,
                    allow: &self.allow,
                    deny: &self.deny,
                    ceiling: &self.ceiling,
                    floor: &self.floor,
                    guarantee_percent: &self.guarantee_percent,
                    cap_percent: &self.cap_percent,
                    cap_quota_us: &self.cap_quota_us,
                    cap_period_us: &self.cap_period_us,
                }
            }
        }
    };
}

/// The group settings a [`GroupDef`] or a [`StateDef`] writes, borrowed (see their fields).
#[derive(Debug, Clone, Copy)]
pub struct SettingsFields<'d> {
    pub weight: &'d Option<Spanned<i64>>,
    pub allow: &'d Option<Spanned<Vec<Spanned<String>>>>,
    pub deny: &'d Option<Spanned<Vec<Spanned<String>>>>,
    pub ceiling: &'d Option<Spanned<String>>,
    pub floor: &'d Option<Spanned<String>>,
    pub guarantee_percent: &'d Option<Spanned<i64>>,
    pub cap_percent: &'d Option<Spanned<i64>>,
    pub cap_quota_us: &'d Option<Spanned<i64>>,
    pub cap_period_us: &'d Option<Spanned<i64>>,
}

with_group_settings! {
    /// A group: the cgroups matched by a path glob, what their tasks may do, and their CPU share.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct GroupDef {
        /// Glob on cgroup paths relative to the cgroup2 root, e.g. `system.slice/*.service` or
        /// `user.slice/user-*.slice/user@*.service/app.slice/app-*.scope`. `*` does not cross `/`.
        /// The first group (in file order) whose glob matches a cgroup owns it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<String>")]
        pub path: Option<Spanned<String>>,
        /// Child scheduler: `canopy`, `external` or `none`. Default: `canopy`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<SchedulerKind>")]
        pub scheduler: Option<Spanned<SchedulerKind>>,
        /// With `scheduler = "external"`: the sched_ext ops names admitted to run this group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<Vec<String>>")]
        pub external_ops: Option<Spanned<Vec<String>>>,
        /// Name of the state a group starts in; absent means the base settings apply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<String>")]
        pub default_state: Option<Spanned<String>>,
        ..group_settings..
        /// Named states (e.g. `focused`, `unfocused`, `minimized`) whose settings replace the
        /// group's while the daemon or the control API has the group in that state.
        #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
        pub states: IndexMap<String, StateDef>,
    }
}

with_group_settings! {
    /// A named state of a group: overrides of the group's settings, applied when the group enters it.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StateDef {
        /// Apply the overrides only once the group has been in this state for this many seconds
        /// (e.g. "unfocused for 30 s means ceiling BACKGROUND"). Default: 0 (at once).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub after_s: Option<u32>,
        /// Whether the user owning the cgroup may switch the group into this state through the
        /// control API (otherwise only root and the daemon may). Default: `false`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub user_settable: Option<bool>,
        ..group_settings..
    }
}
