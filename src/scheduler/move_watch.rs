// SPDX-License-Identifier: GPL-2.0-only
//! The BPF task watcher's loader (`bpf/canopy_moves.bpf.c`): loads and attaches the
//! `cgroup_attach_task`, `sched_process_fork`, `sched_process_exec` and `sched_process_exit`
//! tracepoint programs (the fork program also copies a parent's class entry to its new child
//! process in scx mode) and hands the daemon a [`TaskWatchSource`]: the two ring buffers' epoll
//! fd, which the daemon polls on its own task (no thread hop between the kernel's wakeup and
//! the controller), and a drain that turns every `struct canopy_move_event` into a move record
//! and every `struct canopy_task_event` into a fork, exec or exit record (scx and fallback
//! modes alike), and reports lost records (a full ring buffer) so the daemon rescans. When the
//! kernel refuses any program (no BTF, no tracepoint, no permission) the factory returns the
//! reason and the daemon keeps its inotify fallback and the proc connector's forks, execs and
//! exits.
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::Mutex;

use canopy_controller::daemon::LostRecords;
use canopy_controller::daemon::MoveRecord;
use canopy_controller::daemon::TaskRecord;
use canopy_controller::daemon::TaskRecordKind;
use canopy_controller::daemon::TaskWatchSource;
use canopy_controller::daemon::TaskWatcherFactory;
use canopy_sys::monotonic_now_ns;
use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::RingBuffer;
use libbpf_rs::RingBufferBuilder;

use super::bpf_bytes::from_bytes;
use super::bpf_intf;
use super::skel::moves::CanopyMovesSkel;
use super::skel::moves::CanopyMovesSkelBuilder;

/// The daemon's hook: loads the watcher when called.
pub fn factory() -> TaskWatcherFactory {
    Box::new(|| TaskWatcher::load().map(|watcher| Box::new(watcher) as Box<dyn TaskWatchSource>))
}

/// What the ring buffer callbacks collected since the last drain, and the moves' delivery
/// delays.
#[derive(Default)]
struct Collected {
    records: Vec<MoveRecord>,
    tasks: Vec<TaskRecord>,
    /// Kernel attach → record read, µs (logged when the watcher is dropped).
    delivery_us: Vec<u64>,
}

/// The attached programs and their ring buffers. Dropping it detaches the programs.
struct TaskWatcher {
    ring: RingBuffer<'static>,
    skel: CanopyMovesSkel<'static>,
    collected: Arc<Mutex<Collected>>,
    clears_class_entries: bool,
}

impl TaskWatcher {
    fn load() -> Result<Self, String> {
        // One leaked OpenObject per load: the skeleton borrows it for its whole life.
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = CanopyMovesSkelBuilder::default()
            .open(storage)
            .map_err(|e| format!("opening canopy_moves: {e}"))?;
        // scx mode: the root has pinned its `task_classes` (the daemon starts the watcher after
        // the root is enabled); the exit program deletes exited threads' entries from it and
        // the fork program copies a parent's entry to its new child process.
        // Fallback mode: a one-entry map of the watcher's own, never written.
        let pinned = canopy_sys::sched_ext::pinned_map("task_classes");
        let clears_class_entries = pinned.exists()
            && match open.maps.task_classes.reuse_pinned_map(&pinned) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, map = %pinned.display(), "the exit watcher does not share the schedulers' task_classes; the daemon deletes exited threads' entries");
                    false
                }
            };
        if !clears_class_entries {
            open.maps
                .task_classes
                .set_max_entries(1)
                .map_err(|e| format!("sizing canopy_moves' task_classes: {e}"))?;
        }
        let mut skel = open.load().map_err(|e| {
            format!(
                "loading canopy_moves (tp_btf/cgroup_attach_task, sched_process_fork, sched_process_exec, sched_process_exit): {e}"
            )
        })?;
        skel.attach().map_err(|e| {
            format!("attaching to cgroup:cgroup_attach_task and sched:sched_process_fork, _exec and _exit: {e}")
        })?;
        let collected = Arc::new(Mutex::new(Collected::default()));
        let sink = Arc::clone(&collected);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.move_events, move |bytes: &[u8]| {
                if bytes.len() < std::mem::size_of::<bpf_intf::canopy_move_event>() {
                    return 0;
                }
                let event: bpf_intf::canopy_move_event = from_bytes(bytes);
                let read_ns = monotonic_now_ns();
                if let Ok(mut collected) = sink.lock() {
                    collected.records.push(MoveRecord {
                        tid: event.tid,
                        threadgroup: event.threadgroup != 0,
                        timestamp_ns: event.timestamp_ns,
                    });
                    if collected.delivery_us.len() < 65536 {
                        collected
                            .delivery_us
                            .push(read_ns.saturating_sub(event.timestamp_ns) / 1000);
                    }
                }
                0
            })
            .map_err(|e| format!("opening the move_events ring buffer: {e}"))?;
        let sink = Arc::clone(&collected);
        builder
            .add(&skel.maps.task_events, move |bytes: &[u8]| {
                if bytes.len() < std::mem::size_of::<bpf_intf::canopy_task_event>() {
                    return 0;
                }
                let event: bpf_intf::canopy_task_event = from_bytes(bytes);
                let kind = match event.kind {
                    bpf_intf::CANOPY_TASK_FORK => TaskRecordKind::Fork {
                        parent_tid: event.parent_tid,
                        parent_tgid: event.parent_pid,
                    },
                    bpf_intf::CANOPY_TASK_EXEC => TaskRecordKind::Exec,
                    bpf_intf::CANOPY_TASK_EXIT => TaskRecordKind::Exit,
                    _ => return 0,
                };
                if let Ok(mut collected) = sink.lock() {
                    collected.tasks.push(TaskRecord {
                        kind,
                        tid: event.tid,
                        tgid: event.pid,
                        timestamp_ns: event.timestamp_ns,
                    });
                }
                0
            })
            .map_err(|e| format!("opening the task_events ring buffer: {e}"))?;
        let ring = builder
            .build()
            .map_err(|e| format!("opening the watcher's ring buffers: {e}"))?;
        tracing::info!(
            "BPF task watcher attached to cgroup:cgroup_attach_task and sched:sched_process_fork, _exec and _exit"
        );
        Ok(TaskWatcher {
            ring,
            skel,
            collected,
            clears_class_entries,
        })
    }
}

impl TaskWatchSource for TaskWatcher {
    fn fd(&self) -> std::os::fd::RawFd {
        self.ring.epoll_fd()
    }

    fn clears_class_entries(&self) -> bool {
        self.clears_class_entries
    }

    fn fork_exec_wakeup_gap(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(bpf_intf::CANOPY_FORK_EXEC_WAKEUP_EVERY_NS.into())
    }

    fn exit_wakeup_gap(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(bpf_intf::CANOPY_EXIT_WAKEUP_EVERY_NS.into())
    }

    fn drain(&mut self, moves: &mut Vec<MoveRecord>, tasks: &mut Vec<TaskRecord>) -> LostRecords {
        let _ = self.ring.consume();
        if let Ok(mut collected) = self.collected.lock() {
            moves.append(&mut collected.records);
            tasks.append(&mut collected.tasks);
        }
        self.skel
            .maps
            .bss_data
            .as_deref()
            // SAFETY: plain reads of counters the BPF programs increment atomically in the
            // mmap'd .bss; a stale read only delays the report to the next drain.
            .map(|bss| unsafe {
                LostRecords {
                    moves: std::ptr::read_volatile(&bss.moves_lost),
                    tasks: std::ptr::read_volatile(&bss.task_records_lost),
                }
            })
            .unwrap_or_default()
    }
}

impl Drop for TaskWatcher {
    fn drop(&mut self) {
        let mut samples = self
            .collected
            .lock()
            .map(|c| c.delivery_us.clone())
            .unwrap_or_default();
        if samples.is_empty() {
            return;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        tracing::info!(
            moves = samples.len(),
            p50_us = at(0.5),
            p99_us = at(0.99),
            max_us = at(1.0),
            "move watcher: kernel attach → ring buffer record read"
        );
    }
}
