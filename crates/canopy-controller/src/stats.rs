//! The one stats struct: every counter the daemon keeps, each with its description, rendered to
//! the `status` table, JSON and Prometheus text from the same list (no second copy of names).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::event::EventType;

macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $name:ident ),* $(,)?) => {
        /// Monotonic counters. Each field's doc is its description in every rendering.
        #[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
        pub struct Counters {
            $( $(#[doc = $doc])+ pub $name: u64, )*
        }

        impl Counters {
            /// (name, description, value) for every counter, in declaration order.
            pub fn describe(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![ $( (stringify!($name), concat!($($doc),+).trim(), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Class decisions applied to a task by the backend.
    tags_applied,
    /// Tasks lowered to their group's ceiling by a group move or state change.
    demotions_by_ceiling,
    /// Class requests (rule, rename, exec, ctl tag) refused because they exceed the group's ceiling.
    refused_promotions,
    /// Tasks raised to their group's floor.
    raised_by_floor,
    /// Tasks that exited while being handled (ESRCH; normal flow).
    tasks_gone,
    /// Backend failures other than a vanished task or cgroup.
    apply_errors,
    /// Group cgroups removed before their policy was written (the schedulers' entry went with the cgroup; normal flow).
    groups_gone,
    /// Full /proc rescans (start, overrun, reload).
    rescans,
    /// Renames not handled because a later rename of the same thread arrived in the same turn,
    /// or while its new process waited.
    renames_coalesced,
    /// inotify queue overflows on the cgroup watch (each rescans the watched cgroups, not /proc).
    cgroup_watch_overflows,
    /// Focus xattr changes ignored: the state they lead to (or leave) is not user-settable.
    focus_xattrs_refused,
    /// Policy reloads that compiled and were swapped in.
    reloads_ok,
    /// Policy reloads that failed to compile (old policy kept).
    reloads_failed,
    /// Group state changes (API, focus, delayed timers).
    state_changes,
    /// Control API requests served.
    api_requests,
    /// Control API requests answered with an error (malformed, oversized, unknown target).
    api_errors,
    /// Control API requests refused by authorization.
    api_refused,
    /// Processes found in a new cgroup through the BPF move watcher's ring buffer.
    moves_ring_buffer,
    /// Processes found in a new cgroup through inotify on cgroup.procs/cgroup.threads.
    moves_inotify,
    /// Processes found in a new cgroup by the periodic reconcile (no event reported the move).
    moves_reconcile,
    /// Move events the BPF watcher dropped because its ring buffer was full (each forces a rescan).
    moves_lost,
    /// Thread exits read from the BPF watcher's task ring buffer (in batches, without a wakeup each).
    exits_ring_buffer,
    /// Forks and execs read from the BPF watcher's task ring buffer (in batches, a wakeup at most every 50 ms).
    forks_execs_ring_buffer,
    /// Fork, exec and exit records the BPF watcher dropped because its ring buffer was full (each forces a rescan).
    task_records_lost,
    /// Policies compiled in the daemon's process (canopy-policy's count): one per start and one per reload.
    policy_compiles,
    /// New processes whose handling waited (they ran as their parent meanwhile).
    newborns_waited,
    /// Of those, processes that exited while waiting and were never handled.
    newborns_gone,
}

/// Samples of the delay from a kernel event (e.g. a rename) to the class being applied.
#[derive(Debug, Clone, Default)]
pub struct LatencyRing {
    samples_us: Vec<u32>,
    next: usize,
    total: u64,
}

impl LatencyRing {
    const CAPACITY: usize = 8192;

    /// Records one latency in microseconds.
    pub fn record(&mut self, us: u64) {
        let us = us.min(u32::MAX as u64) as u32;
        if self.samples_us.len() < Self::CAPACITY {
            self.samples_us.push(us);
        } else {
            if let Some(oldest) = self.samples_us.get_mut(self.next) {
                *oldest = us;
            }
            self.next = (self.next + 1) % Self::CAPACITY;
        }
        self.total += 1;
    }

    /// The q-quantile (0..=1) over the last samples, in µs.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.samples_us.is_empty() {
            return None;
        }
        let mut v = self.samples_us.clone();
        v.sort_unstable();
        let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(idx.min(v.len() - 1)).map(|&us| us as u64)
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        self.samples_us.clear();
        self.next = 0;
        self.total = 0;
    }

    /// Number of samples ever recorded.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Everything `status`/`metrics` show: counters, events by type, gauges, per-group figures.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Monotonic counters.
    pub counters: Counters,
    /// Events handled, by type.
    pub events: BTreeMap<&'static str, u64>,
    /// Wall time spent handling events, by type, in ns (the controller's part only: receiving
    /// and decoding them is not in it). Where a fork-heavy load's cost goes.
    pub event_handling_ns: BTreeMap<&'static str, u64>,
    /// Rename-to-applied latency samples (kernel event timestamp to the backend call returning).
    pub apply_latency: LatencyRing,
    /// Move-to-re-clamped latency samples (the move watcher's kernel timestamp of the attach to
    /// the moved threads' classes being applied).
    pub move_latency: LatencyRing,
}

impl Stats {
    /// Counts one event.
    pub fn count_event(&mut self, kind: EventType) {
        *self.events.entry(kind.label()).or_default() += 1;
    }

    /// Adds the time one event of `kind` took to handle.
    pub fn add_event_handling(&mut self, kind: EventType, took: std::time::Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let total = self.event_handling_ns.entry(kind.label()).or_default();
        *total = total.saturating_add(ns);
    }
}

/// A point-in-time view assembled by the controller for rendering.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// `scx` or `fallback`.
    pub mode: String,
    /// Why that mode was chosen.
    pub mode_reason: String,
    /// How cgroup moves are noticed (the BPF watcher's ring buffer, or inotify plus reconcile).
    #[serde(default)]
    pub move_watcher: String,
    /// How forks, execs and thread exits are noticed (the BPF watcher's ring buffer, or the proc
    /// connector).
    #[serde(default)]
    pub task_watcher: String,
    /// Hash of the policy in force.
    pub policy_hash: String,
    /// The last reload error, if the last reload failed.
    pub policy_error: Option<String>,
    /// Backend notes (e.g. missing uclamp).
    pub notes: Vec<String>,
    /// Tasks tracked.
    pub tasks_tracked: u64,
    /// Tasks whose class the daemon manages.
    pub tasks_managed: u64,
    /// Managed tasks by the class applied to them (class name → tasks).
    #[serde(default)]
    pub tasks_by_class: BTreeMap<String, u64>,
    /// Counters.
    pub counters: Counters,
    /// Events by type.
    pub events: BTreeMap<String, u64>,
    /// Wall time spent handling events, by type, µs.
    #[serde(default)]
    pub event_handling_us: BTreeMap<String, u64>,
    /// Sub-scheduler attaches refused by the root scheduler.
    pub refused_subsched_attaches: u64,
    /// p50 of rename → applied, µs.
    pub apply_latency_p50_us: Option<u64>,
    /// p99 of rename → applied, µs.
    pub apply_latency_p99_us: Option<u64>,
    /// p50 of cgroup move → re-clamped, µs (moves the BPF watcher timestamps).
    #[serde(default)]
    pub move_latency_p50_us: Option<u64>,
    /// p99 of cgroup move → re-clamped, µs.
    #[serde(default)]
    pub move_latency_p99_us: Option<u64>,
    /// Wakeup counters of the preempting classes (scx mode; none in fallback mode).
    #[serde(default)]
    pub preempting_wakeups: Option<PreemptingWakeups>,
    /// Managed groups.
    pub groups: Vec<GroupSnapshot>,
}

/// One managed cgroup in a snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupSnapshot {
    /// cgroup path relative to the cgroup2 root.
    pub cgroup: String,
    /// The policy group it belongs to.
    pub group: String,
    /// Current state (`base` when none).
    pub state: String,
    /// A state waiting for its delay, and the seconds left.
    pub pending: Option<(String, f64)>,
    /// Tracked tasks in it.
    pub tasks: u64,
    /// CPU time used (cpu.stat usage_usec), when readable.
    pub cpu_usage_usec: Option<u64>,
    /// The policy's CPU weight for the group in its current state.
    #[serde(default)]
    pub weight: Option<u32>,
}

impl Snapshot {
    /// The `canopy status` table.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "mode:            {} ({})", self.mode, self.mode_reason);
        if !self.move_watcher.is_empty() {
            let _ = writeln!(s, "cgroup moves:    {}", self.move_watcher);
        }
        if !self.task_watcher.is_empty() {
            let _ = writeln!(s, "task events:     {}", self.task_watcher);
        }
        let _ = writeln!(s, "policy:          {}", self.policy_hash);
        if let Some(e) = &self.policy_error {
            let _ = writeln!(s, "policy error:    last reload failed, old policy kept:");
            for line in e.lines() {
                let _ = writeln!(s, "                 {line}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note:            {n}");
        }
        let _ = writeln!(
            s,
            "tasks:           {} tracked, {} managed",
            self.tasks_tracked, self.tasks_managed
        );
        if let (Some(p50), Some(p99)) = (self.apply_latency_p50_us, self.apply_latency_p99_us) {
            let _ = writeln!(s, "rename→applied:  p50 {p50} µs, p99 {p99} µs");
        }
        if let (Some(p50), Some(p99)) = (self.move_latency_p50_us, self.move_latency_p99_us) {
            let _ = writeln!(s, "move→re-clamped: p50 {p50} µs, p99 {p99} µs");
        }
        if !self.tasks_by_class.is_empty() {
            let classes: Vec<String> = self
                .tasks_by_class
                .iter()
                .map(|(class, tasks)| format!("{class}={tasks}"))
                .collect();
            let _ = writeln!(s, "classes:         {}", classes.join(" "));
        }
        if let Some(w) = &self.preempting_wakeups {
            let _ = writeln!(
                s,
                "wakeups:         {} of preempting classes, {} over 1 ms late",
                w.total, w.late
            );
        }
        let ev: Vec<String> = self
            .events
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "events:          {}", ev.join(" "));
        if !self.event_handling_us.is_empty() {
            let took: Vec<String> = self
                .event_handling_us
                .iter()
                .map(|(k, us)| format!("{k}={:.1}", *us as f64 / 1000.0))
                .collect();
            let _ = writeln!(s, "handling ms:     {}", took.join(" "));
        }
        let _ = writeln!(s, "\ncounters:");
        for (name, desc, v) in self.counters.describe() {
            let _ = writeln!(s, "  {name:<24} {v:>10}  {desc}");
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>10}  Sub-scheduler attaches refused by the root scheduler.",
            "refused_subsched_attaches", self.refused_subsched_attaches
        );
        if !self.groups.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<50} {:<16} {:<12} {:>6} {:>12}",
                "CGROUP", "GROUP", "STATE", "TASKS", "CPU_USEC"
            );
            for g in &self.groups {
                let state = match &g.pending {
                    Some((p, secs)) => format!("{} (→{p} in {secs:.1}s)", g.state),
                    None => g.state.clone(),
                };
                let cpu = g
                    .cpu_usage_usec
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "{:<50} {:<16} {:<12} {:>6} {:>12}",
                    g.cgroup, g.group, state, g.tasks, cpu
                );
            }
        }
        s
    }

    /// Prometheus text exposition format. Conventions (checked by `promtool check metrics` in
    /// `tests/prometheus.rs`): base units in names (`_seconds`), `_total` on counters, `_info`
    /// gauges carrying text as labels, and every per-group series labelled exactly
    /// `{cgroup, group}` so they join one to one (the state is its own `_info` series, so a state
    /// change does not start new CPU series). Rules over these names: `deploy/prometheus/`.
    pub fn render_prometheus(&self) -> String {
        let mut out = Exposition::default();
        for (name, desc, v) in self.counters.describe() {
            out.family(&format!("canopy_{name}_total"), "counter", desc);
            out.sample(&[], v);
        }
        out.family("canopy_events_total", "counter", "Events handled, by type.");
        for k in EventType::ALL {
            let v = self.events.get(k.label()).copied().unwrap_or(0);
            out.sample(&[("type", k.label())], v);
        }
        out.family(
            "canopy_event_handling_seconds_total",
            "counter",
            "Wall time spent handling events, by type.",
        );
        for k in EventType::ALL {
            let us = self.event_handling_us.get(k.label()).copied().unwrap_or(0);
            out.sample(&[("type", k.label())], seconds_from_us(us));
        }
        out.family(
            "canopy_refused_subsched_attaches_total",
            "counter",
            "Sub-scheduler attaches refused by the root scheduler.",
        );
        out.sample(&[], self.refused_subsched_attaches);
        if let Some(w) = &self.preempting_wakeups {
            out.family(
                "canopy_preempting_wakeups_total",
                "counter",
                "Wakeups of preempting-class tasks (USER_INTERACTIVE by default) the root scheduler placed.",
            );
            out.sample(&[], w.total);
            out.family(
                "canopy_preempting_wakeups_late_total",
                "counter",
                "Of those, wakeups that ran more than 1 ms after waking.",
            );
            out.sample(&[], w.late);
        }
        out.family("canopy_tasks_tracked", "gauge", "Tasks the daemon tracks.");
        out.sample(&[], self.tasks_tracked);
        out.family(
            "canopy_tasks_managed",
            "gauge",
            "Tasks whose class the daemon manages.",
        );
        out.sample(&[], self.tasks_managed);
        out.family(
            "canopy_class_tasks",
            "gauge",
            "Managed tasks by the class applied to them.",
        );
        for (class, tasks) in &self.tasks_by_class {
            out.sample(&[("class", class)], tasks);
        }
        out.family(
            "canopy_mode",
            "gauge",
            "The backend in force: 1 for the running mode, 0 for the other.",
        );
        for mode in ["scx", "fallback"] {
            out.sample(&[("mode", mode)], u8::from(self.mode == mode));
        }
        out.family(
            "canopy_policy_info",
            "gauge",
            "The hash of the policy in force (always 1; compare hash across a fleet).",
        );
        out.sample(&[("hash", &self.policy_hash)], 1);
        out.family(
            "canopy_policy_last_reload_failed",
            "gauge",
            "1 when the last reload failed and the old policy stayed in force.",
        );
        out.sample(&[], u8::from(self.policy_error.is_some()));
        for (name, what, p50, p99) in [
            (
                "canopy_apply_latency_seconds",
                "Thread rename to applied class",
                self.apply_latency_p50_us,
                self.apply_latency_p99_us,
            ),
            (
                "canopy_move_latency_seconds",
                "cgroup move to re-clamped classes",
                self.move_latency_p50_us,
                self.move_latency_p99_us,
            ),
        ] {
            if let (Some(p50), Some(p99)) = (p50, p99) {
                // A summary of quantiles only: the ring keeps the last samples, not a sum.
                out.family(
                    name,
                    "summary",
                    &format!("{what}, seconds, quantiles over the recent samples."),
                );
                out.sample(&[("quantile", "0.5")], seconds_from_us(p50));
                out.sample(&[("quantile", "0.99")], seconds_from_us(p99));
            }
        }
        out.family(
            "canopy_group_state_info",
            "gauge",
            "A managed cgroup's current state (always 1).",
        );
        for g in &self.groups {
            out.sample(
                &[
                    ("cgroup", &g.cgroup),
                    ("group", &g.group),
                    ("state", &g.state),
                ],
                1,
            );
        }
        out.family(
            "canopy_group_tasks",
            "gauge",
            "Tracked tasks in a managed cgroup.",
        );
        for g in &self.groups {
            out.sample(&g.labels(), g.tasks);
        }
        out.family(
            "canopy_group_weight",
            "gauge",
            "The policy's CPU weight of a managed cgroup's group in its current state.",
        );
        for g in &self.groups {
            if let Some(w) = g.weight {
                out.sample(&g.labels(), w);
            }
        }
        out.family(
            "canopy_group_cpu_usage_seconds_total",
            "counter",
            "CPU time used by a managed cgroup (cpu.stat usage_usec).",
        );
        for g in &self.groups {
            if let Some(u) = g.cpu_usage_usec {
                out.sample(&g.labels(), seconds_from_us(u));
            }
        }
        out.text
    }
}

/// Wakeup counters of the preempting classes, summed over CPUs from the root scheduler's stats
/// (scx mode only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreemptingWakeups {
    /// Wakeups of preempting-class tasks the root placed (idle CPU, preemption, or queued).
    pub total: u64,
    /// Of those, wakeups that ran more than 1 ms after waking.
    pub late: u64,
}

impl GroupSnapshot {
    /// The one label set of every per-group series.
    fn labels(&self) -> [(&str, &str); 2] {
        [("cgroup", &self.cgroup), ("group", &self.group)]
    }
}

/// Prometheus text being written: one `# HELP`/`# TYPE` head per family, then its samples.
#[derive(Default)]
struct Exposition {
    text: String,
    family: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self.family = name.to_string();
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.text, "{}", self.family);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Microseconds as seconds (Prometheus' base unit).
fn seconds_from_us(us: u64) -> f64 {
    us as f64 / 1e6
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_description_and_renders_everywhere() {
        let c = Counters {
            tags_applied: 3,
            ..Default::default()
        };
        for (name, desc, _) in c.describe() {
            assert!(!desc.is_empty(), "{name} has no description");
        }
        let snap = Snapshot {
            mode: "fallback".into(),
            mode_reason: "test".into(),
            move_watcher: "test".into(),
            task_watcher: "test".into(),
            policy_hash: "h".into(),
            policy_error: None,
            notes: vec![],
            tasks_tracked: 1,
            tasks_managed: 1,
            tasks_by_class: BTreeMap::from([("BACKGROUND".to_string(), 1)]),
            counters: c,
            events: BTreeMap::new(),
            event_handling_us: BTreeMap::new(),
            refused_subsched_attaches: 0,
            apply_latency_p50_us: None,
            apply_latency_p99_us: None,
            move_latency_p50_us: Some(80),
            move_latency_p99_us: Some(700),
            preempting_wakeups: Some(PreemptingWakeups {
                total: 200,
                late: 3,
            }),
            groups: vec![],
        };
        assert!(snap
            .render_prometheus()
            .contains("canopy_tags_applied_total 3"));
        assert!(snap.render_table().contains("tags_applied"));
        assert!(snap
            .render_table()
            .contains("move→re-clamped: p50 80 µs, p99 700 µs"));
        assert!(snap
            .render_prometheus()
            .contains("canopy_move_latency_seconds{quantile=\"0.99\"} 0.0007"));
        assert!(snap
            .render_table()
            .contains("wakeups:         200 of preempting classes, 3 over 1 ms late"));
        assert!(snap
            .render_prometheus()
            .contains("canopy_preempting_wakeups_late_total 3"));
        assert!(snap
            .render_prometheus()
            .contains("canopy_class_tasks{class=\"BACKGROUND\"} 1"));
        assert!(snap
            .render_table()
            .contains("classes:         BACKGROUND=1"));
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["counters"]["tags_applied"], 3);
    }

    #[test]
    fn latency_quantiles() {
        let mut r = LatencyRing::default();
        for i in 1..=100 {
            r.record(i);
        }
        assert_eq!(r.quantile_us(0.99), Some(99));
        assert_eq!(r.quantile_us(0.0), Some(1));
    }
}
