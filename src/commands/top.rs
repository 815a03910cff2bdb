//! `canopy top`: a live terminal view of what `canopy status` shows, refreshed every interval:
//! the daemon's mode, policy, counters and managed tasks by class, each managed cgroup (group, state, tasks, CPU share
//! against the share its weight implies), and the sched_ext hierarchy (each scheduler member's
//! weight, CPUs used, share against target, the root's preempting-class wakeups and refused
//! attaches). Like `status`, it works without the daemon (the scheduler part alone) and
//! without schedulers (the daemon part alone). `q`, Esc or Ctrl-C quits and restores the
//! terminal (ratatui's init/restore, also on panic).
//!
//! Share of a managed cgroup, worked example: over one 1 s refresh `build` (weight 200) used
//! 1.2 s of CPU and `apps` (weight 100) 0.6 s; shares are 1.2/1.8 = 67% and 33%, targets
//! 200/300 = 67% and 100/300 = 33% (only cgroups that used CPU count toward the targets).

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use ratatui::crossterm::event;
use ratatui::crossterm::event::Event;
use ratatui::crossterm::event::KeyCode;
use ratatui::crossterm::event::KeyEventKind;
use ratatui::crossterm::event::KeyModifiers;
use ratatui::layout::Constraint;
use ratatui::layout::Layout;
use ratatui::style::Modifier;
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::Block;
use ratatui::widgets::Paragraph;
use ratatui::widgets::Row;
use ratatui::widgets::Table;
use ratatui::Frame;

use super::status::SystemStatus;
use canopy_controller::stats::GroupSnapshot;

/// A cgroup that used less CPU than this over an interval (CPU-seconds per second) does not
/// count toward the others' targets: weights divide CPU only among those that want it.
const RUNNING_CPUS: f64 = 0.001;

/// One managed cgroup's CPU over the last interval.
#[derive(Debug, Clone, PartialEq)]
struct GroupRate {
    /// CPUs' worth of time it used.
    cpus: f64,
    /// Its part of what all managed cgroups used.
    share: f64,
    /// The part its weight implies among the managed cgroups that ran.
    target: Option<f64>,
}

/// CPU rates of the managed cgroups between two snapshots `elapsed` apart, by cgroup path.
/// Cgroups without a CPU figure in both are left out.
fn group_rates(
    before: &[GroupSnapshot],
    after: &[GroupSnapshot],
    elapsed: Duration,
) -> HashMap<String, GroupRate> {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return HashMap::new();
    }
    let previous: HashMap<&str, u64> = before
        .iter()
        .filter_map(|g| Some((g.cgroup.as_str(), g.cpu_usage_usec?)))
        .collect();
    let used: Vec<(&GroupSnapshot, f64)> = after
        .iter()
        .filter_map(|g| {
            let delta_us = g
                .cpu_usage_usec?
                .saturating_sub(*previous.get(g.cgroup.as_str())?);
            Some((g, delta_us as f64 / 1e6 / seconds))
        })
        .collect();
    let total: f64 = used.iter().map(|(_, cpus)| cpus).sum();
    let running_weight: f64 = used
        .iter()
        .filter(|(_, cpus)| *cpus > RUNNING_CPUS)
        .filter_map(|(g, _)| g.weight)
        .map(f64::from)
        .sum();
    used.into_iter()
        .map(|(g, cpus)| {
            let target = match g.weight {
                Some(w) if cpus > RUNNING_CPUS && running_weight > 0.0 => {
                    Some(f64::from(w) / running_weight)
                }
                _ => None,
            };
            let share = if total > 0.0 { cpus / total } else { 0.0 };
            (
                g.cgroup.clone(),
                GroupRate {
                    cpus,
                    share,
                    target,
                },
            )
        })
        .collect()
}

/// The latest status and the CPU rates measured since the one before.
struct View {
    status: SystemStatus,
    rates: HashMap<String, GroupRate>,
    socket: PathBuf,
}

fn percent(ratio: f64) -> String {
    format!("{:5.1}%", ratio * 100.0)
}

fn header_lines(view: &View) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    match &view.status.daemon {
        Some(d) => {
            lines.push(Line::from(format!(
                "daemon: {} ({})   policy {}{}",
                d.mode,
                d.mode_reason,
                d.policy_hash,
                if d.policy_error.is_some() {
                    "   LAST RELOAD FAILED (old policy kept)"
                } else {
                    ""
                }
            )));
            let mut figures = format!(
                "tasks {} tracked, {} managed   tags applied {}   refused promotions {}   apply errors {}   refused sub-scheduler attaches {}",
                d.tasks_tracked,
                d.tasks_managed,
                d.counters.tags_applied,
                d.counters.refused_promotions,
                d.counters.apply_errors,
                d.refused_subsched_attaches
            );
            if let (Some(p50), Some(p99)) = (d.apply_latency_p50_us, d.apply_latency_p99_us) {
                figures.push_str(&format!("   rename→applied p50 {p50} µs p99 {p99} µs"));
            }
            lines.push(Line::from(figures));
            let classes: Vec<String> = d
                .tasks_by_class
                .iter()
                .map(|(class, tasks)| format!("{class} {tasks}"))
                .collect();
            lines.push(Line::from(format!(
                "tasks by class: {}",
                classes.join("   ")
            )));
        }
        None => lines.push(Line::from(format!(
            "daemon: not running on {} ({})",
            view.socket.display(),
            view.status.daemon_error.as_deref().unwrap_or("no reply")
        ))),
    }
    let schedulers = match &view.status.hierarchy {
        Some(h) => {
            let s = &h.stats;
            let (wakeups, late) = crate::scheduler::status::preempting_wakeups(s);
            format!(
                "sched_ext: {} (root {})   USER_INTERACTIVE wakeups {wakeups}, {late} over 1 ms late   refused attaches {}",
                h.state,
                h.root_ops.as_deref().unwrap_or("-"),
                s.refused
            )
        }
        None => format!(
            "sched_ext: {} (no scheduler loaded)",
            view.status.sched_ext_state
        ),
    };
    lines.push(Line::from(schedulers));
    lines
}

fn groups_table(view: &View) -> Table<'static> {
    let header = Row::new([
        "CGROUP", "GROUP", "STATE", "TASKS", "WEIGHT", "CPUS", "SHARE", "TARGET",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let groups = view
        .status
        .daemon
        .as_ref()
        .map(|d| d.groups.as_slice())
        .unwrap_or_default();
    let rows = groups.iter().map(|g| {
        let rate = view.rates.get(&g.cgroup);
        let state = match &g.pending {
            Some((next, secs)) => format!("{} (→{next} in {secs:.0}s)", g.state),
            None => g.state.clone(),
        };
        Row::new([
            g.cgroup.clone(),
            g.group.clone(),
            state,
            g.tasks.to_string(),
            g.weight
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into()),
            rate.map(|r| format!("{:.2}", r.cpus))
                .unwrap_or_else(|| "-".into()),
            rate.map(|r| percent(r.share)).unwrap_or_else(|| "-".into()),
            rate.and_then(|r| r.target)
                .map(percent)
                .unwrap_or_else(|| "-".into()),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Fill(3),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(header)
    .block(Block::bordered().title(format!(" managed groups ({}) ", groups.len())))
}

fn schedulers_table(view: &View) -> Table<'static> {
    let header = Row::new([
        "MEMBER", "CGROUP", "WEIGHT", "GUAR%", "CAP%", "CPUS", "SHARE", "TARGET",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let members = view
        .status
        .hierarchy
        .as_ref()
        .map(|h| h.members.as_slice())
        .unwrap_or_default();
    let rows = members.iter().map(|m| {
        Row::new([
            m.name.clone(),
            m.cgroup
                .clone()
                .unwrap_or_else(|| format!("id {}", m.cgroup_id)),
            m.weight.to_string(),
            m.guarantee_pct.to_string(),
            m.cap_pct.to_string(),
            format!("{:.2}", m.cpus_used),
            percent(m.share),
            percent(m.target_share),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Fill(3),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(7),
        ],
    )
    .header(header)
    .block(Block::bordered().title(format!(" sched_ext members ({}) ", members.len())))
}

fn draw(frame: &mut Frame, view: &View) {
    let [header, groups, schedulers, footer] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(view)), header);
    frame.render_widget(groups_table(view), groups);
    frame.render_widget(schedulers_table(view), schedulers);
    frame.render_widget(
        Paragraph::new("q quit   (canopy top: refreshed every interval)"),
        footer,
    );
}

/// Collects a status every `interval` on a thread of its own (a collection takes the whole
/// interval, sampling the schedulers' CPU time) and sends it with the time it was taken.
fn start_collector(
    socket: PathBuf,
    interval: Duration,
) -> mpsc::Receiver<anyhow::Result<(SystemStatus, Instant)>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let status = SystemStatus::collect(&socket, interval).map(|s| (s, Instant::now()));
        if tx.send(status).is_err() {
            return;
        }
    });
    rx
}

fn quit_requested(key: &event::KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
            || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL)))
}

/// Runs `canopy top` until `q`.
pub fn run(socket: &Path, interval: Duration) -> anyhow::Result<std::process::ExitCode> {
    let updates = start_collector(socket.to_path_buf(), interval);
    // The first status before taking over the terminal: a daemon that answers with an error
    // is reported on a normal screen.
    let (status, mut taken) = updates.recv().context("the status collector stopped")??;
    let mut view = View {
        status,
        rates: HashMap::new(),
        socket: socket.to_path_buf(),
    };
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = (|| -> anyhow::Result<()> {
        loop {
            terminal.draw(|frame| draw(frame, &view))?;
            if event::poll(Duration::from_millis(100))? {
                if let Event::Key(key) = event::read()? {
                    if quit_requested(&key) {
                        return Ok(());
                    }
                }
            }
            if let Ok(update) = updates.try_recv() {
                let (status, at) = update?;
                view.rates = match (&view.status.daemon, &status.daemon) {
                    (Some(before), Some(after)) => {
                        group_rates(&before.groups, &after.groups, at - taken)
                    }
                    _ => HashMap::new(),
                };
                view.status = status;
                taken = at;
            }
        }
    })();
    ratatui::try_restore().context("restoring the terminal")?;
    result.map(|()| std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(cgroup: &str, weight: u32, usage_usec: u64) -> GroupSnapshot {
        GroupSnapshot {
            cgroup: cgroup.into(),
            group: cgroup.into(),
            state: "base".into(),
            pending: None,
            tasks: 1,
            cpu_usage_usec: Some(usage_usec),
            weight: Some(weight),
        }
    }

    #[test]
    fn shares_and_targets_follow_the_worked_example() {
        let before = [
            group("build", 200, 0),
            group("apps", 100, 0),
            group("idle", 100, 7),
        ];
        let after = [
            group("build", 200, 1_200_000),
            group("apps", 100, 600_000),
            group("idle", 100, 7),
        ];
        let rates = group_rates(&before, &after, Duration::from_secs(1));
        let build = &rates["build"];
        assert!((build.cpus - 1.2).abs() < 1e-9);
        assert!((build.share - 2.0 / 3.0).abs() < 1e-9);
        assert!((build.target.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((rates["apps"].target.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(rates["idle"].target, None, "an idle group takes no target");
    }

    #[test]
    fn a_group_new_since_the_last_sample_has_no_rate_yet() {
        let rates = group_rates(&[], &[group("new", 100, 5)], Duration::from_secs(1));
        assert!(rates.is_empty());
    }
}
