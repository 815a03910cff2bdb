// SPDX-License-Identifier: GPL-2.0-only
//! The scheduler supervisor: loads canopy_root, attaches canopy_child where the config asks,
//! keeps the groups in line with the config (new and removed cgroups through inotify, a reload
//! on request), logs admission decisions, loads the root again on the kernel's restart action
//! and a child with a bounded backoff (`child_restart.rs`), and unloads on a stop request.
//! `canopy run` (scx mode, through `daemon_link.rs`), `canopy run-schedulers` and the debug
//! command `canopy scheduler run` (`debug_cli.rs`) all run it.
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use libbpf_rs::MapHandle;
use libbpf_rs::RingBufferBuilder;

use super::attach::describe_exit;
use super::attach::Registered;
use super::attach::SchedulerSkel;
use super::bpf_bytes::c_string;
use super::bpf_bytes::from_bytes;
use super::bpf_intf;
use super::cgroup_watch::CgroupWatch;
use super::child::attach_child;
use super::child::ChildOptions;
use super::child::ChildScheduler;
use super::child_restart::ChildRestarts;
use super::child_restart::Decision;
use super::child_restart::RESTART_LIMIT;
use super::config::GroupConfig;
use super::config::SchedulerConfig;
use super::exit::ExitReport;
use super::group_policy_map::disown_edit;
use super::group_policy_map::is_gone;
use super::group_policy_map::supervisor_edit;
use super::kernel;
use super::root::group_policy_error;
use super::root::RootScheduler;
use super::SchedulerError;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(super) fn install_stop_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }
}

pub(super) fn deadline(seconds: f64) -> Option<Instant> {
    (seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(seconds))
}

pub(super) fn should_stop(deadline: Option<Instant>) -> bool {
    STOP.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d)
}
fn log_admission(bytes: &[u8]) -> i32 {
    let event: bpf_intf::canopy_admission_event = from_bytes(bytes);
    let (name, path) = (c_string(&event.ops_name), c_string(&event.cgroup_path));
    if event.verdict == 0 {
        println!(
            "canopy: admitted sub-scheduler {name} on {path} (cgroup id {}, slot {})",
            event.cgroup_id, event.slot
        );
    } else {
        let why = match -event.verdict {
            libc::EPERM => "the policy does not admit it there".to_string(),
            libc::ENOSPC => format!(
                "no free member slot: the root holds at most {} children",
                bpf_intf::CANOPY_MAX_MEMBERS - 1
            ),
            _ => "the time-share grant of the cids failed".to_string(),
        };
        println!(
            "canopy: refused sub-scheduler {name} on {path} (cgroup id {}): errno {} ({why})",
            event.cgroup_id, -event.verdict,
        );
    }
    0
}

/// Rebuilds the config from the policy and the cgroups that exist now (for rescans).
pub type Refresh<'a> = &'a dyn Fn() -> SchedulerConfig;

/// How often the supervisor reconciles with cgroupfs although inotify reported nothing (a safety
/// net for a lost event); inotify wakes it as soon as a cgroup is created or removed.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);

/// How often it rescans cgroupfs when inotify cannot be used (no watches left, say).
const POLL_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How often the supervisor looks at exit records, admission events and `stop` when nothing
/// wakes it and `stop` is a flag set from a signal handler (`canopy scheduler run`,
/// `canopy run-schedulers`): an interrupted wait does not end early there.
pub(super) const TICK: Duration = Duration::from_millis(50);

/// The same when the caller wakes the supervisor for each stop and reload request (the
/// daemon, [`supervise`]'s `wake`): only exit records and admission events wait for it. An
/// ejected root reaches the daemon (fallback mode) within this, the kernel having handed every
/// task back to the fair scheduler already; `tests/vm/scx_faults.rs` holds the daemon to 1 s
/// from SysRq-S to fallback mode (0.11-0.26 s at TICK). At TICK the supervisor woke 20 times a
/// second on an idle machine (0.50 s of CPU in 33 s of the frame benchmark under TCG,
/// 2026-12-07); at this, 4.
const WOKEN_TICK: Duration = Duration::from_millis(250);

/// The supervisor without rescans (the config is fixed).
pub fn run(config: &SchedulerConfig, seconds: f64) -> anyhow::Result<()> {
    run_with_refresh(config, seconds, None)
}

/// A group as the supervisor last applied it: its config and cgroup id.
struct AppliedGroup {
    config: GroupConfig,
    cgroup_id: u64,
}

/// A request to follow a new policy now: the supervisor re-reads its `refresh` (which already
/// sees the new plan), reconciles every group and answers on `done`.
pub struct ReloadRequest {
    pub done: std::sync::mpsc::Sender<Result<(), String>>,
}

/// Attaches canopy_child on `group`'s cgroup and logs the outcome and how long the load took.
fn attach_child_logged(group: &GroupConfig) -> Option<ChildScheduler> {
    let options = ChildOptions::default();
    let started_at_uptime = canopy_sys::procfs::uptime_s().unwrap_or(f64::NAN);
    let started = Instant::now();
    match attach_child(&group.cgroup, &options) {
        Ok(child) => {
            println!(
                "canopy: child scheduler canopy_child enabled on {} (cgroup id {}; load started at uptime {started_at_uptime:.2} s, took {} ms)",
                child.cgroup().display(),
                child.cgroup_id(),
                started.elapsed().as_millis()
            );
            Some(child)
        }
        Err(e) => {
            println!(
                "canopy: child scheduler on {} not attached: {e}",
                kernel::cgroup_path(&group.cgroup).display()
            );
            None
        }
    }
}

/// Detaches the children on `cgroup`, logging why.
fn detach_child_of(cgroup: &Path, children: &mut Vec<ChildScheduler>, why: &str) {
    let path = kernel::cgroup_path(cgroup);
    let (gone, kept): (Vec<_>, Vec<_>) = children
        .drain(..)
        .partition(|child| child.cgroup() == path.as_path());
    *children = kept;
    for child in gone {
        detach_and_log(&format!("child scheduler ({why})"), child);
    }
}

/// Brings the schedulers in line with `config`: a group seen for the first time gets its policy
/// entry and, where it asks for one, a canopy child; a group whose settings changed (a reload)
/// gets its entry rewritten and its child detached, re-attached (the root reads a child's
/// share terms when it attaches) or attached; a group the config no longer has (a reload
/// removed it, or its cgroup no longer matches) loses its child and its entry is disowned.
/// Groups whose cgroup is gone (or was re-created, with a new id) are forgotten (canopy_root
/// deleted the entry at rmdir, the kernel already detached their child when it went offline;
/// a re-created cgroup is applied again). A write for a cgroup removed meanwhile (ENOENT) is
/// normal flow. Any other failed write affects that group only: it is logged, left unapplied
/// (the next reconcile tries again) and the others go on; the first failure is returned at
/// the end.
fn reconcile_groups(
    root: &RootScheduler,
    config: &SchedulerConfig,
    applied: &mut std::collections::HashMap<PathBuf, AppliedGroup>,
    children: &mut Vec<ChildScheduler>,
) -> anyhow::Result<()> {
    let mut first_failure: Option<anyhow::Error> = None;
    let mut failed = |cgroup: &Path, error: SchedulerError| {
        println!("canopy: policy group {}: {error}", cgroup.display());
        if first_failure.is_none() {
            first_failure = Some(anyhow::Error::from(error).context(cgroup.display().to_string()));
        }
    };
    let gone: Vec<PathBuf> = applied
        .iter()
        .filter(|(cgroup, group)| {
            kernel::cgroup_id(&kernel::cgroup_path(cgroup)).ok() != Some(group.cgroup_id)
        })
        .map(|(cgroup, _)| cgroup.clone())
        .collect();
    // One version bump for all of this pass's writes (before each child attach, and at the end).
    let mut batch = root.group_policy_batch();
    for cgroup in gone {
        let old = applied.remove(&cgroup).expect("listed");
        // Removed: canopy_root deleted its entry at rmdir (ENOENT here). Renamed (its id
        // still lives under another path): disowned, the group no longer names it.
        match batch.edit(old.cgroup_id, disown_edit) {
            Err(e) if !is_gone(&e) => failed(&cgroup, group_policy_error(e)),
            _ => {}
        }
    }
    let wanted: std::collections::HashSet<&PathBuf> =
        config.groups.iter().map(|g| &g.cgroup).collect();
    let dropped: Vec<PathBuf> = applied
        .keys()
        .filter(|cgroup| !wanted.contains(cgroup))
        .cloned()
        .collect();
    for cgroup in dropped {
        let old = applied.remove(&cgroup).expect("listed");
        if old.config.attach_canopy_child {
            detach_child_of(&cgroup, children, "the policy no longer has this group");
        }
        match batch.edit(old.cgroup_id, disown_edit) {
            Ok(()) => println!("canopy: policy group {} removed", cgroup.display()),
            Err(e) if is_gone(&e) => {}
            Err(e) => failed(&cgroup, group_policy_error(e)),
        }
    }
    for group in &config.groups {
        let previous = applied.get(&group.cgroup);
        if previous.is_some_and(|p| p.config == *group) {
            continue;
        }
        let path = kernel::cgroup_path(&group.cgroup);
        let Ok(cgroup_id) = kernel::cgroup_id(&path) else {
            continue;
        };
        if previous.is_some_and(|p| p.config.attach_canopy_child) {
            // Detach before the admission list changes: the child's terms are read at attach.
            detach_child_of(&group.cgroup, children, "its group changed");
        }
        let wanted = group.to_policy();
        match batch.edit(cgroup_id, |current| supervisor_edit(current, &wanted)) {
            Ok(()) => {}
            // Removed since its id was read: nothing to apply (a new cgroup at the same path
            // is applied when the next reconcile sees it).
            Err(e) if is_gone(&e) => continue,
            Err(e) => {
                failed(&group.cgroup, group_policy_error(e));
                continue;
            }
        }
        if previous.is_some() {
            println!(
                "canopy: policy group {} updated (weight {:?}, guarantee {} %, cap {} %, canopy child {})",
                path.display(),
                group.weight,
                group.guarantee_pct,
                group.cap_pct,
                if group.attach_canopy_child { "yes" } else { "no" }
            );
        }
        applied.insert(
            group.cgroup.clone(),
            AppliedGroup {
                config: group.clone(),
                cgroup_id,
            },
        );
        if group.attach_canopy_child {
            // The root follows this pass's terms before a (slow) child load, not after it.
            if let Err(e) = batch.flush() {
                failed(&group.cgroup, group_policy_error(e));
            }
            if let Some(child) = attach_child_logged(group) {
                children.push(child);
            }
        }
    }
    if let Err(e) = batch.finish() {
        let error = group_policy_error(e);
        println!("canopy: announcing the policy groups' new terms: {error}");
        first_failure.get_or_insert(anyhow::Error::from(error));
    }
    first_failure.map_or(Ok(()), Err)
}

/// The supervisor: load, attach children, watch (rescanning with `refresh` when given),
/// restart on request, unload on a signal.
pub fn run_with_refresh(
    config: &SchedulerConfig,
    seconds: f64,
    refresh: Option<Refresh<'_>>,
) -> anyhow::Result<()> {
    install_stop_handlers();
    let stop_at = deadline(seconds);
    supervise(
        config,
        refresh,
        None,
        None,
        &|| should_stop(stop_at),
        &mut || {},
        &mut |_| {},
    )
}

/// The supervisor: loads the root, attaches children where `config` asks, applies cgroups that
/// appear later (through `refresh`, woken by inotify on cgroupfs, with a reconcile every
/// RECONCILE_INTERVAL), follows a new policy when asked on `reloads` (refresh then sees it),
/// logs admission decisions, reloads the root on the kernel's restart action, loads a child
/// that exited with it again (bounded backoff, see `child_restart.rs`; recorded in the root's
/// `child_restarts` map), and unloads when `stop` says so (polled every TICK; with `wake`, the
/// caller notifies it after each stop and reload request and it polls every WOKEN_TICK).
/// `on_enabled` runs after each successful load, once the root's maps are pinned and the
/// children of the cgroups that exist now are attached; `on_ejected` runs with the exit
/// report as soon as the root has stopped for good on its own (no restart action, no stop
/// request), before the children and the root are cleaned up.
pub fn supervise(
    config: &SchedulerConfig,
    refresh: Option<Refresh<'_>>,
    reloads: Option<&std::sync::mpsc::Receiver<ReloadRequest>>,
    wake: Option<&tokio::sync::Notify>,
    stop: &dyn Fn() -> bool,
    on_enabled: &mut dyn FnMut(),
    on_ejected: &mut dyn FnMut(&ExitReport),
) -> anyhow::Result<()> {
    let mut watch = refresh.and_then(|_| watch_cgroups());
    let mut config = config.clone();
    // Each attached scheduler holds about 33 descriptors: 64 children need more than 1,024.
    match canopy_sys::limits::raise_open_file_limit() {
        Ok(limit) if limit.after != limit.before => println!(
            "canopy: open-file limit raised from {} to {} (each attached scheduler holds about 33)",
            limit.before, limit.after
        ),
        Ok(_) => {}
        Err(error) => println!("canopy: open-file limit not raised: {error}"),
    }
    loop {
        let root = RootScheduler::load(&config).context("starting the root scheduler")?;
        println!(
            "canopy: root scheduler enabled (sched_ext state {}, root ops {})",
            canopy_sys::sched_ext::state().unwrap_or_default(),
            canopy_sys::sched_ext::root_ops().unwrap_or_default()
        );
        let events_map =
            MapHandle::from_pinned_path(canopy_sys::sched_ext::pinned_map("admission_events"))
                .context("opening admission_events")?;
        let mut events = RingBufferBuilder::new();
        events.add(&events_map, log_admission)?;
        let events = events.build()?;

        let mut children = Vec::new();
        let mut applied = std::collections::HashMap::new();
        let mut restarts = ChildRestarts::default();
        // a group whose entry could not be written is logged and retried at the next reconcile
        let _ = reconcile_groups(&root, &config, &mut applied, &mut children);
        on_enabled();
        let mut last_scan = Instant::now();
        let mut cgroups_changed = false;

        let report = loop {
            if let Some(refresh) = refresh {
                let rescan_interval = match watch {
                    Some(_) => RECONCILE_INTERVAL,
                    None => POLL_RESCAN_INTERVAL,
                };
                if cgroups_changed || last_scan.elapsed() >= rescan_interval {
                    last_scan = Instant::now();
                    let current = refresh();
                    if let Err(e) = current
                        .validate()
                        .map_err(anyhow::Error::from)
                        .and_then(|()| {
                            reconcile_groups(&root, &current, &mut applied, &mut children)
                        })
                    {
                        println!("canopy: rescan failed: {e:#}");
                    }
                }
            }
            if let (Some(reloads), Some(refresh)) = (reloads, refresh) {
                while let Ok(request) = reloads.try_recv() {
                    let current = refresh();
                    let result = current
                        .validate()
                        .map_err(anyhow::Error::from)
                        .and_then(|()| Ok(root.write_classes(&current)?))
                        .and_then(|()| {
                            reconcile_groups(&root, &current, &mut applied, &mut children)
                        })
                        .map_err(|e| format!("{e:#}"));
                    match &result {
                        Ok(()) => println!("canopy: schedulers follow the reloaded policy"),
                        Err(e) => {
                            println!("canopy: schedulers could not follow the reloaded policy: {e}")
                        }
                    }
                    if result.is_ok() {
                        // A restart (the kernel's restart action) loads what is in force now.
                        config = current;
                    }
                    let _ = request.done.send(result);
                    last_scan = Instant::now();
                }
            }
            let _ = events.consume();
            if let Some(report) = root.exit_report() {
                break Some(report);
            }
            let mut exited = Vec::new();
            children.retain(|child| match child.exit_report() {
                Some(report) => {
                    println!(
                        "canopy: child scheduler on {} exited: {report}",
                        child.cgroup().display()
                    );
                    exited.push((child.cgroup().to_path_buf(), child.cgroup_id(), report));
                    false
                }
                None => true,
            });
            if stop() {
                break None;
            }
            for (cgroup, cgroup_id, report) in exited {
                if report.should_restart() {
                    let decision = restarts.exited(&cgroup, report.exit_code, Instant::now());
                    log_restart_decision(&cgroup, decision);
                    record_restarts(&root, &restarts, &cgroup, cgroup_id);
                }
            }
            for cgroup in restarts.take_due(Instant::now()) {
                restart_child(&root, &applied, &mut children, &mut restarts, &cgroup);
            }
            let now = Instant::now();
            let wait = restarts
                .next_due()
                .map_or(Duration::MAX, |due| due.saturating_duration_since(now))
                .min(if wake.is_some() { WOKEN_TICK } else { TICK });
            cgroups_changed = match &mut watch {
                Some(cgroup_watch) => cgroup_watch.wait(wait, wake).unwrap_or_else(|e| {
                    println!(
                        "canopy: inotify on cgroupfs failed ({e:#}); rescanning every {POLL_RESCAN_INTERVAL:?}"
                    );
                    watch = None;
                    true
                }),
                None => {
                    std::thread::sleep(TICK);
                    false
                }
            };
        };
        let _ = events.consume();
        if let Some(report) = &report {
            if !report.should_restart() || stop() {
                on_ejected(report);
            }
        }

        for child in children.drain(..) {
            detach_and_log("child scheduler", child);
        }
        let final_report = match report {
            Some(report) => report,
            None => {
                let report = root.detach();
                println!(
                    "canopy: root scheduler unloaded: {} (sched_ext state {})",
                    describe_exit(report),
                    canopy_sys::sched_ext::state().unwrap_or_default()
                );
                return Ok(());
            }
        };
        drop(root);
        after_root_exit(final_report, stop())?;
    }
}

/// Logs what the supervisor does about a child on `cgroup` that asked for a restart.
fn log_restart_decision(cgroup: &Path, decision: Decision) {
    match decision {
        Decision::RetryAt {
            after, in_a_row, ..
        } => println!(
            "canopy: child scheduler on {} asked for a restart; loading it again in {} ms (restart {in_a_row} in a row, at most {RESTART_LIMIT})",
            cgroup.display(),
            after.as_millis()
        ),
        Decision::GiveUp { in_a_row } => println!(
            "canopy: child scheduler on {} still asks for a restart after {in_a_row} restarts in a row; giving up (its tasks stay with the root)",
            cgroup.display()
        ),
    }
}

/// Writes the restart record of `cgroup` into the root's `child_restarts` map.
fn record_restarts(root: &RootScheduler, restarts: &ChildRestarts, cgroup: &Path, cgroup_id: u64) {
    if let Err(e) = root.record_child_restarts(cgroup_id, &restarts.record(cgroup)) {
        println!(
            "canopy: could not record the restarts on {}: {e}",
            cgroup.display()
        );
    }
}

/// Loads and attaches canopy_child again on `cgroup` (absolute), whose child asked for a
/// restart, if its group still wants one and no child is there (a reload may have re-attached
/// or removed it meanwhile); a failed attach is one more restart in the row.
fn restart_child(
    root: &RootScheduler,
    applied: &std::collections::HashMap<PathBuf, AppliedGroup>,
    children: &mut Vec<ChildScheduler>,
    restarts: &mut ChildRestarts,
    cgroup: &Path,
) {
    let group = applied
        .iter()
        .find(|(key, group)| kernel::cgroup_path(key) == cgroup && group.config.attach_canopy_child)
        .map(|(_, group)| group);
    let Some(group) = group else {
        println!(
            "canopy: child scheduler on {}: no restart (the policy no longer asks for one there)",
            cgroup.display()
        );
        restarts.cancel(cgroup);
        return;
    };
    if children.iter().any(|child| child.cgroup() == cgroup) {
        restarts.cancel(cgroup);
        return;
    }
    match attach_child_logged(&group.config) {
        Some(child) => {
            restarts.attached(cgroup, Instant::now());
            println!(
                "canopy: child scheduler on {} re-attached after a restart request ({} so far)",
                cgroup.display(),
                restarts.record(cgroup).restarts
            );
            children.push(child);
        }
        None => log_restart_decision(cgroup, restarts.attach_failed(cgroup, Instant::now())),
    }
    record_restarts(root, restarts, cgroup, group.cgroup_id);
}

/// After the root scheduler exited on its own: logs why, and returns Ok when it should be
/// loaded again (the exit code's action asks for a restart and no stop was requested), else
/// the exit as an error.
pub(super) fn after_root_exit(report: ExitReport, stopping: bool) -> anyhow::Result<()> {
    println!("canopy: root scheduler exited: {report}");
    if !report.dump.is_empty() {
        println!("canopy: scheduler dump:\n{}", report.dump);
    }
    if report.should_restart() && !stopping {
        println!("canopy: the exit code asks for a restart; loading again");
        return Ok(());
    }
    anyhow::bail!("the root scheduler exited: {report}")
}

/// inotify on the whole cgroup2 tree, or None (and a note) where it cannot be set up.
fn watch_cgroups() -> Option<CgroupWatch> {
    match CgroupWatch::new(canopy_sys::cgroup::CgroupHierarchy::system().mount_point()) {
        Ok(cgroup_watch) => {
            println!(
                "canopy: watching {} cgroups for new and removed ones (inotify)",
                cgroup_watch.watch_count()
            );
            Some(cgroup_watch)
        }
        Err(e) => {
            println!(
                "canopy: no inotify on cgroupfs ({e:#}); rescanning every {POLL_RESCAN_INTERVAL:?}"
            );
            None
        }
    }
}

/// Unregisters a scheduler registered on a cgroup and logs how it ended.
pub(super) fn detach_and_log<S: SchedulerSkel>(label: &str, scheduler: Registered<S>) {
    let path = scheduler.cgroup().to_path_buf();
    let report = scheduler.detach();
    println!(
        "canopy: {label} on {} detached: {}",
        path.display(),
        describe_exit(report)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(exit_code: i64) -> ExitReport {
        ExitReport {
            kind: 66,
            kind_name: "SCX_EXIT_UNREG_KERN".into(),
            exit_code,
            exit_cpu: 0,
            reason: String::new(),
            msg: String::new(),
            dump: String::new(),
        }
    }

    #[test]
    fn the_root_is_loaded_again_only_on_the_restart_action() {
        let restart = (1 << 48) | (1 << 32);
        assert!(after_root_exit(exit(restart), false).is_ok());
        // a stop requested meanwhile wins over the restart
        assert!(after_root_exit(exit(restart), true).is_err());
        let error = after_root_exit(exit(1 << 32), false).unwrap_err();
        assert!(
            error.to_string().contains("[reason: cpu hotplug]"),
            "{error}"
        );
    }
}
