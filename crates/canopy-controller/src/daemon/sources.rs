//! The daemon's event sources, turned into controller inputs: the proc connector (subscribed
//! through canopy-sys, translated into [`Event`]s), the BPF cgroup move watcher's types (the
//! loader in the root package provides it), and canopy-sys's inotify [`Watcher`]s on a task of
//! their own: one instance on the cgroup subtree (cgroups created and removed, focus xattrs,
//! membership unless the BPF watcher sees moves) and another on the policy files, so that an
//! overflow users can cause on the cgroup instance re-lists cgroups and re-reads memberships
//! and focus xattrs, and never reloads the policy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use canopy_sys::cgroup::{Cgroup, CgroupHierarchy, Focus};
use canopy_sys::watch::{WatchEvent, Watcher};
use tokio::sync::mpsc;

use super::DaemonError;
use crate::event::Event;

/// One cgroup move the BPF watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveRecord {
    /// The moved thread (the leader when the whole process moved).
    pub tid: u32,
    /// Whether the whole process moved.
    pub threadgroup: bool,
    /// CLOCK_MONOTONIC at the attach.
    pub timestamp_ns: u64,
}

/// One fork, exec or thread exit the BPF watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRecord {
    /// What happened.
    pub kind: TaskRecordKind,
    /// The thread (the child for a fork; for an exec the thread that exec'd, now the leader).
    pub tid: u32,
    /// Its process.
    pub tgid: u32,
    /// CLOCK_MONOTONIC at the event.
    pub timestamp_ns: u64,
}

/// What a [`TaskRecord`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRecordKind {
    /// A new thread or process, created by thread `parent_tid` of process `parent_tgid`.
    Fork {
        /// The creating thread.
        parent_tid: u32,
        /// Its process.
        parent_tgid: u32,
    },
    /// The process exec'd.
    Exec,
    /// The thread exited.
    Exit,
}

impl TaskRecord {
    /// The controller's event for this record.
    pub fn event(&self) -> Event {
        let timestamp_ns = Some(self.timestamp_ns);
        match self.kind {
            TaskRecordKind::Fork {
                parent_tid,
                parent_tgid,
            } => Event::Fork {
                parent_tid,
                parent_tgid,
                child_tid: self.tid,
                child_tgid: self.tgid,
                timestamp_ns,
            },
            TaskRecordKind::Exec => Event::Exec {
                tid: self.tid,
                tgid: self.tgid,
                timestamp_ns,
            },
            TaskRecordKind::Exit => Event::Exit {
                tid: self.tid,
                tgid: self.tgid,
                timestamp_ns,
            },
        }
    }
}

/// Records the BPF watcher's ring buffers dropped (full) since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostRecords {
    /// Cgroup moves.
    pub moves: u64,
    /// Forks, execs and thread exits.
    pub tasks: u64,
}

/// The BPF task watcher (cgroup moves; forks, execs and thread exits) as the daemon polls it,
/// on its own task: an fd that turns readable when records wait (every move; a fork or exec
/// after a quiet 50 ms, an exit after a quiet second, any record when its ring is half full),
/// and a non-blocking drain. While it is loaded the daemon takes forks, execs and exits from
/// it and subscribes to the proc connector for renames only. Dropping it detaches the
/// programs.
pub trait TaskWatchSource: Send {
    /// A pollable fd (the ring buffers' epoll fd).
    fn fd(&self) -> std::os::fd::RawFd;
    /// Appends every waiting record to `moves` and `tasks`, each in the order the kernel wrote
    /// them; returns the records lost (a ring buffer full) so far.
    fn drain(&mut self, moves: &mut Vec<MoveRecord>, tasks: &mut Vec<TaskRecord>) -> LostRecords;
    /// How long after one fork or exec record woke the daemon the next ones are written without
    /// a wakeup (`CANOPY_FORK_EXEC_WAKEUP_EVERY_NS`); the daemon reads again this long after a
    /// read that found any, so none waits much longer.
    fn fork_exec_wakeup_gap(&self) -> std::time::Duration;
    /// The same for exit records (`CANOPY_EXIT_WAKEUP_EVERY_NS`).
    fn exit_wakeup_gap(&self) -> std::time::Duration;
    /// Whether the watcher shares the schedulers' `task_classes` (the root's pinned map: scx
    /// mode): its exit program deletes each exited thread's entry itself, and its fork program
    /// copies a parent's entry to each new child process.
    fn clears_class_entries(&self) -> bool;
}

/// Loads the BPF task watcher (provided by the root package, which has the BPF skeletons). An
/// error means the kernel refused it; the daemon then keeps inotify on cgroup.procs plus the
/// periodic reconcile, and the proc connector's forks, execs and exits.
pub type TaskWatcherFactory = Box<dyn FnOnce() -> Result<Box<dyn TaskWatchSource>, String> + Send>;

/// An fd the runtime polls for readiness (owned by the `TaskWatchSource`, not closed here).
pub(super) struct BorrowedRawFd(pub(super) std::os::fd::RawFd);

impl std::os::fd::AsRawFd for BorrowedRawFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// What the event threads send to the controller loop.
#[derive(Debug)]
pub(super) enum Input {
    Event(Event),
    PolicyChanged,
    /// The cgroup watch lost events (its tree was re-listed): re-read memberships.
    CgroupsOverflowed,
}

/// Subscribes to the proc connector (canopy-sys: filtered where the kernel can, batched,
/// overruns surfaced as an event), for renames only when the BPF watcher reports forks, execs
/// and exits.
pub(super) fn subscribe_proc_events(
    rcvbuf: Option<usize>,
    tasks_from_watcher: bool,
) -> Result<canopy_sys::proc_events::ProcEvents, DaemonError> {
    use canopy_sys::proc_events::event_bits;
    let mut config = canopy_sys::proc_events::ProcEventsConfig::default();
    if rcvbuf.is_some() {
        config.receive_buffer_bytes = rcvbuf;
    }
    if tasks_from_watcher {
        config.event_mask &= !(event_bits::FORK | event_bits::EXEC | event_bits::EXIT);
    }
    canopy_sys::proc_events::ProcEvents::subscribe(config)
        .map_err(|e| DaemonError::ProcConnector(e.to_string()))
}

/// Translates a canopy-sys proc event into the controller's vocabulary.
pub(super) fn translate(ev: &canopy_sys::proc_events::ProcEvent) -> Option<Event> {
    use canopy_sys::proc_events::EventKind as K;
    let ts = Some(ev.timestamp_ns);
    Some(match ev.kind {
        K::Fork {
            parent_tid,
            parent_pid,
            child_tid,
            child_pid,
        } => Event::Fork {
            parent_tid: parent_tid as u32,
            parent_tgid: parent_pid as u32,
            child_tid: child_tid as u32,
            child_tgid: child_pid as u32,
            timestamp_ns: ts,
        },
        K::Exec { tid, pid } => Event::Exec {
            tid: tid as u32,
            tgid: pid as u32,
            timestamp_ns: ts,
        },
        K::Comm { tid, pid, comm } => Event::Comm {
            tid: tid as u32,
            tgid: pid as u32,
            comm: Some(comm.to_string_lossy()),
            timestamp_ns: ts,
        },
        K::Exit { tid, pid, .. } => Event::Exit {
            tid: tid as u32,
            tgid: pid as u32,
            timestamp_ns: ts,
        },
        K::Overrun => {
            tracing::warn!("proc connector overrun: events lost, rescanning");
            Event::Overrun
        }
        K::Other { .. } => return None,
    })
}

/// The focus xattr of a cgroup directory (canopy-sys parses it). An unreadable or malformed
/// value is logged and reported as `None`: no focus change is derived from it.
fn read_focus(dir: &Path) -> Option<Focus> {
    match Cgroup::from_dir(dir).focus() {
        Ok(focus) => Some(focus),
        Err(error) => {
            tracing::warn!(%error, "focus xattr ignored");
            None
        }
    }
}

/// The cgroup and policy watches on a task of their own: two canopy-sys [`Watcher`]s (cgroups
/// created and removed under `watch_root`, focus xattrs, writes to cgroup.procs/cgroup.threads
/// when `watch_members`; the policy's files and `policy.d` drop-ins by the discovery rules of
/// `canopy_sys::policy_files`), translated into controller inputs. `None` without inotify.
pub(super) fn start_watcher(
    tx: mpsc::Sender<Input>,
    cgroup_root: PathBuf,
    watch_root: &Path,
    policy_paths: &[PathBuf],
    watch_members: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    let (mut cgroups, mut policy) = match (Watcher::new(), Watcher::new()) {
        (Ok(cgroups), Ok(policy)) => (cgroups, policy),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "no cgroup or policy watching");
            return None;
        }
    };
    cgroups.set_membership_events(watch_members);
    match cgroups.watch_cgroup_tree(watch_root) {
        Ok(dirs) => tracing::info!(cgroups = dirs.len(), "watching cgroups"),
        Err(error) => tracing::warn!(%error, "cgroups created or removed are not watched"),
    }
    for path in policy_paths {
        if let Err(error) = policy.watch_policy(path) {
            tracing::warn!(%error, policy = %path.display(), "policy changes there reload only on SIGHUP or `ctl reload`");
        }
    }
    Some(tokio::spawn(forward_watch_events(
        cgroups,
        policy,
        tx,
        cgroup_root,
    )))
}

/// Turns watch events into controller inputs until the controller loop is gone. A failing
/// instance is reported once and the other one keeps going.
async fn forward_watch_events(
    mut cgroups: Watcher,
    mut policy: Watcher,
    tx: mpsc::Sender<Input>,
    cgroup_root: PathBuf,
) {
    // The focus value last reported per cgroup.
    let mut last_focus: HashMap<String, Focus> = HashMap::new();
    let relative = |dir: &Path| {
        dir.strip_prefix(&cgroup_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (mut cgroups_live, mut policy_live) = (true, true);
    while cgroups_live || policy_live {
        let (event, from_cgroups) = tokio::select! {
            event = cgroups.next_event(), if cgroups_live => (event, true),
            event = policy.next_event(), if policy_live => (event, false),
        };
        let event = match event {
            Ok(event) => event,
            Err(error) if from_cgroups => {
                tracing::warn!(%error, "inotify failed: cgroups created or removed and focus xattrs are no longer watched (the periodic reconcile still sees moves)");
                cgroups_live = false;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "inotify failed: policy changes reload only on SIGHUP or `ctl reload`");
                policy_live = false;
                continue;
            }
        };
        let inputs: Vec<Input> = match event {
            WatchEvent::CgroupCreated { dir } => {
                let cgroup = relative(&dir);
                // Tasks moved in before the watch on its cgroup.procs existed are picked up,
                // and so is a focus xattr set before the watch on the directory.
                let focus = read_focus(&dir)
                    .filter(|focus| *focus != Focus::NotSet)
                    .and_then(|focus| focus_change(&mut last_focus, &cgroup, focus));
                [
                    Input::Event(Event::CgroupCreated {
                        cgroup: cgroup.clone(),
                    }),
                    Input::Event(Event::CgroupMembershipChanged { cgroup }),
                ]
                .into_iter()
                .chain(focus)
                .collect()
            }
            WatchEvent::CgroupRemoved { dir } => {
                let cgroup = relative(&dir);
                last_focus.remove(&cgroup);
                vec![Input::Event(Event::CgroupRemoved { cgroup })]
            }
            WatchEvent::CgroupAttributesChanged { dir } => read_focus(&dir)
                .and_then(|focus| focus_change(&mut last_focus, &relative(&dir), focus))
                .into_iter()
                .collect(),
            WatchEvent::CgroupMembershipChanged { dir } => {
                vec![Input::Event(Event::CgroupMembershipChanged {
                    cgroup: relative(&dir),
                })]
            }
            WatchEvent::PolicyChanged { .. } => vec![Input::PolicyChanged],
            // Lost policy events: reload (only root writes there).
            WatchEvent::Overflow if !from_cgroups => vec![Input::PolicyChanged],
            // Lost cgroup events: the watcher re-listed the tree (creations and removals came
            // before this); memberships and focus xattrs are re-read.
            WatchEvent::Overflow => {
                tracing::warn!(
                    "cgroup watch overflowed: re-reading cgroups, memberships and focus xattrs"
                );
                // The watcher holds the tree it just re-listed: no second walk of cgroupfs.
                let mut inputs = vec![Input::CgroupsOverflowed];
                for dir in cgroups.cgroups() {
                    if let Some(focus) = read_focus(dir) {
                        inputs.extend(focus_change(&mut last_focus, &relative(dir), focus));
                    }
                }
                inputs
            }
            WatchEvent::Polling { dir } => {
                tracing::warn!(cgroup = %relative(&dir), every_s = canopy_sys::watch::POLL_EVERY.as_secs(), "inotify refused a watch (ENOSPC: fs.inotify.max_user_watches reached); polling the cgroups it could not watch");
                Vec::new()
            }
        };
        for input in inputs {
            if tx.send(input).await.is_err() {
                return;
            }
        }
    }
}

/// A focus change to report, unless `value` is what was last reported for `cgroup` (IN_ATTRIB
/// fires for any attribute change, not only the focus xattr).
fn focus_change(
    last_focus: &mut HashMap<String, Focus>,
    cgroup: &str,
    focus: Focus,
) -> Option<Input> {
    // Never reported and still unset: nothing changed (an IN_ATTRIB or a poll for another
    // attribute must not reset a state set through the socket).
    let last = last_focus.get(cgroup).copied().unwrap_or(Focus::NotSet);
    if last == focus {
        return None;
    }
    last_focus.insert(cgroup.to_string(), focus);
    Some(Input::Event(Event::FocusChanged {
        cgroup: cgroup.to_string(),
        focus,
    }))
}

/// Every cgroup under the root (or scope) that already carries a focus xattr.
pub(super) fn read_focus_xattrs(cgroup_root: &Path, scope: Option<&str>) -> Vec<(String, Focus)> {
    let hierarchy = CgroupHierarchy::at(cgroup_root);
    let top = Cgroup::from_dir(hierarchy.resolve(Path::new(scope.unwrap_or(""))));
    let Ok(cgroups) = hierarchy.walk(&top) else {
        return Vec::new();
    };
    cgroups
        .into_iter()
        .filter_map(|entry| {
            let focus = read_focus(&entry.dir).filter(|focus| *focus != Focus::NotSet)?;
            Some((entry.relative.trim_start_matches('/').to_string(), focus))
        })
        .collect()
}
