//! The daemon's task-event turns: the proc connector's socket (renames only while the BPF task
//! watcher loads; every kind otherwise) and the watcher's two rings (cgroup moves, handled as
//! read; forks, execs and exits, held until they can be merged with the socket's renames by
//! timestamp). A turn reads the rings first, then the socket up to its budget, merges, and
//! handles at most [`PROC_EVENTS_PER_TURN`] events in order; the rest wait for the next turn,
//! which comes at once. See `bpf/canopy_moves.bpf.c` for when the rings wake the daemon.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::sources::{
    translate, LostRecords, MoveRecord, TaskRecord, TaskRecordKind, TaskWatchSource,
};
use super::DaemonController;
use crate::event::Event;

/// Task events (the proc connector's, after coalescing each thread's renames to its last, and
/// the watcher's forks, execs and exits) one turn of the main loop reads from the socket, and
/// handles, at most: four batches of 64 datagrams, about 2 ms of work.
const PROC_EVENTS_PER_TURN: usize = 4 * canopy_sys::proc_events::MAX_BATCH;

/// Task events read but not yet handled (a fork storm's records arrive faster than a turn's
/// budget) at most; beyond that they are dropped and the daemon rescans, as for a full ring.
const MAX_QUEUED_TASK_EVENTS: usize = 65_536;

/// The BPF task watcher's records between reads: moves are handled as soon as they are read;
/// forks, execs and exits wait in `tasks` until they are handled in timestamp order with the
/// proc connector's renames ([`ProcTurns::socket_then_tasks`]).
pub(super) struct WatchRecords {
    source: Option<Box<dyn TaskWatchSource>>,
    moves: Vec<MoveRecord>,
    tasks: Vec<TaskRecord>,
    lost_seen: LostRecords,
    /// When to read the task ring again without a wakeup (armed while records flow): the
    /// watcher's fork/exec gap after a read that found forks or execs, its exit gap after one
    /// that found exits alone ([`TaskWatchSource::fork_exec_wakeup_gap`]), so the last
    /// records of a burst are read that long after it at most.
    pub(super) read_at: Option<Instant>,
    /// The watcher's (fork or exec, exit) wakeup gaps.
    read_again_after: (Duration, Duration),
}

impl WatchRecords {
    fn new(source: Option<Box<dyn TaskWatchSource>>) -> Self {
        let read_again_after = source
            .as_ref()
            .map_or((Duration::ZERO, Duration::ZERO), |s| {
                (s.fork_exec_wakeup_gap(), s.exit_wakeup_gap())
            });
        WatchRecords {
            source,
            moves: Vec::with_capacity(64),
            tasks: Vec::new(),
            lost_seen: LostRecords::default(),
            read_at: None,
            read_again_after,
        }
    }

    /// Reads both rings: handles the moves, keeps the task records; a lost record of either
    /// kind rescans, as a proc connector overrun does.
    fn read(&mut self, ctl: &mut DaemonController) {
        let Some(source) = self.source.as_mut() else {
            return;
        };
        let lost = source.drain(&mut self.moves, &mut self.tasks);
        let now = Instant::now();
        for m in self.moves.drain(..) {
            ctl.handle(
                Event::TaskMoved {
                    tid: m.tid,
                    threadgroup: m.threadgroup,
                    timestamp_ns: Some(m.timestamp_ns),
                },
                now,
            );
        }
        let (new_moves, new_tasks) = (
            lost.moves.saturating_sub(self.lost_seen.moves),
            lost.tasks.saturating_sub(self.lost_seen.tasks),
        );
        if new_moves > 0 {
            tracing::warn!(
                count = new_moves,
                "cgroup move events lost (ring buffer full): rescanning"
            );
            ctl.stats.counters.moves_lost += new_moves;
        }
        if new_tasks > 0 {
            tracing::warn!(
                count = new_tasks,
                "fork, exec and exit records lost (ring buffer full): rescanning"
            );
            ctl.stats.counters.task_records_lost += new_tasks;
        }
        self.lost_seen = lost;
        if new_moves + new_tasks > 0 {
            ctl.handle(Event::Overrun, now);
        }
    }

    /// Takes the task records written no later than `until_ns` (all of them for `None`), in
    /// ring order, counts them and arms the next read (`read_at`).
    fn take_tasks(&mut self, ctl: &mut DaemonController, until_ns: Option<u64>) -> Vec<Event> {
        let end = written_until(&self.tasks, until_ns);
        if end == 0 {
            return Vec::new();
        }
        let taken: Vec<TaskRecord> = self.tasks.drain(..end).collect();
        let exits = taken
            .iter()
            .filter(|record| record.kind == TaskRecordKind::Exit)
            .count();
        ctl.stats.counters.exits_ring_buffer += exits as u64;
        ctl.stats.counters.forks_execs_ring_buffer += (taken.len() - exits) as u64;
        let (fork_exec_gap, exit_gap) = self.read_again_after;
        let again = Instant::now()
            + if exits < taken.len() {
                fork_exec_gap
            } else {
                exit_gap
            };
        self.read_at = Some(self.read_at.map_or(again, |at| at.min(again)));
        taken.iter().map(TaskRecord::event).collect()
    }
}

/// The proc connector's socket, its batch buffer and the BPF task watcher's records: the
/// sources of task events, read in turns that keep a thread's events in order.
pub(super) struct ProcTurns {
    pub(super) events: canopy_sys::proc_events::ProcEvents,
    pub(super) batch: Vec<canopy_sys::proc_events::ProcEvent>,
    pub(super) watch: WatchRecords,
    /// Events in timestamp order, read but beyond the last turn's budget.
    queue: VecDeque<Event>,
}

impl ProcTurns {
    /// The turns of `events` and, when it loaded, the BPF task watcher `watcher`.
    pub(super) fn new(
        events: canopy_sys::proc_events::ProcEvents,
        watcher: Option<Box<dyn TaskWatchSource>>,
    ) -> Self {
        ProcTurns {
            events,
            batch: Vec::with_capacity(64),
            watch: WatchRecords::new(watcher),
            queue: VecDeque::new(),
        }
    }

    /// One turn of proc connector events once the first batch is in `batch`: reads the
    /// watcher's rings, then [`ProcTurns::socket_then_tasks`].
    pub(super) fn turn(&mut self, ctl: &mut DaemonController) {
        self.watch.read(ctl);
        self.socket_then_tasks(ctl);
    }

    /// A turn that starts at the watcher (its fd was readable, or a read is due): reads the
    /// rings, and if they held task records, the proc connector's socket without waiting, then
    /// [`ProcTurns::socket_then_tasks`].
    pub(super) fn turn_after_watch(&mut self, ctl: &mut DaemonController) {
        self.watch.read(ctl);
        if self.watch.tasks.is_empty() && self.queue.is_empty() {
            return;
        }
        // At least one receive: `drained()` may be left over from an earlier turn.
        if self.events.try_recv_batch(&mut self.batch).is_err() {
            return;
        }
        self.socket_then_tasks(ctl);
    }

    /// Reads whatever else the socket holds up to the turn's budget (so that a storm's renames
    /// of one thread coalesce into its last name), and handles those events and the task
    /// records in the order of their timestamps (both CLOCK_MONOTONIC). The rings were read
    /// first, so a rename queued before a record was written is in the socket by now. A turn
    /// that stops at its budget keeps the records written after its last socket event for
    /// the next one: every event of a thread is handled before its exit. At most
    /// [`PROC_EVENTS_PER_TURN`] of the merged events are handled; the rest wait, in order, for
    /// the next turn, which comes at once ([`MAX_QUEUED_TASK_EVENTS`] bounds them).
    fn socket_then_tasks(&mut self, ctl: &mut DaemonController) {
        while !self.events.drained()
            && self.batch.len() < PROC_EVENTS_PER_TURN
            && matches!(self.events.try_recv_batch(&mut self.batch), Ok(n) if n > 0)
        {}
        let coalesced = canopy_sys::proc_events::coalesce_renames(&mut self.batch);
        ctl.stats.counters.renames_coalesced += coalesced as u64;
        let until_ns = match self.batch.last() {
            Some(last) if !self.events.drained() => Some(last.timestamp_ns),
            _ => None,
        };
        let records = self.watch.take_tasks(ctl, until_ns);
        let socket: Vec<Event> = self
            .batch
            .drain(..)
            .filter_map(|ev| translate(&ev))
            .collect();
        // Later than everything queued: the queue holds events up to an earlier turn's end.
        self.queue.extend(merge_by_timestamp(socket, records));
        let now = Instant::now();
        if self.queue.len() > MAX_QUEUED_TASK_EVENTS {
            tracing::warn!(
                count = self.queue.len(),
                "task events arrive faster than they are handled: dropped, rescanning"
            );
            ctl.stats.counters.task_records_lost += self.queue.len() as u64;
            self.queue.clear();
            ctl.handle(Event::Overrun, now);
            return;
        }
        let handled = self.queue.len().min(PROC_EVENTS_PER_TURN);
        for event in self.queue.drain(..handled) {
            ctl.handle(event, now);
        }
        // The rest in the next turn, at once (the timer branch reads the rings, then this).
        if !self.queue.is_empty() {
            self.watch.read_at = Some(now);
        }
    }
}

/// How many of `records` (in ring order) come before the first written after `until_ns`: all
/// of them for `None`.
fn written_until(records: &[TaskRecord], until_ns: Option<u64>) -> usize {
    until_ns.map_or(records.len(), |until| {
        records
            .iter()
            .position(|record| record.timestamp_ns > until)
            .unwrap_or(records.len())
    })
}

/// Merges two event sequences, each in its source's order, into one by timestamp (an event
/// without one, an overrun, goes first); ties keep `first`'s event first.
fn merge_by_timestamp(first: Vec<Event>, second: Vec<Event>) -> Vec<Event> {
    if second.is_empty() {
        return first;
    }
    if first.is_empty() {
        return second;
    }
    let mut merged = Vec::with_capacity(first.len() + second.len());
    let mut first = first.into_iter().peekable();
    let mut second = second.into_iter().peekable();
    loop {
        let take_first = match (first.peek(), second.peek()) {
            (Some(a), Some(b)) => a.timestamp_ns().unwrap_or(0) <= b.timestamp_ns().unwrap_or(0),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.extend(if take_first {
            first.next()
        } else {
            second.next()
        });
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(tid: u32, at_ns: u64) -> Event {
        Event::Comm {
            tid,
            tgid: tid,
            comm: Some(format!("name-{at_ns}")),
            timestamp_ns: Some(at_ns),
        }
    }

    fn record(kind: TaskRecordKind, tid: u32, at_ns: u64) -> TaskRecord {
        TaskRecord {
            kind,
            tid,
            tgid: tid,
            timestamp_ns: at_ns,
        }
    }

    #[test]
    fn renames_and_ring_records_are_handled_in_timestamp_order() {
        // A process forks a child (10), the child renames itself (20), execs (30), renames
        // again (40) and exits (50): the socket held the renames, the ring the rest.
        let fork = TaskRecordKind::Fork {
            parent_tid: 1,
            parent_tgid: 1,
        };
        let ring = vec![
            record(fork, 7, 10).event(),
            record(TaskRecordKind::Exec, 7, 30).event(),
            record(TaskRecordKind::Exit, 7, 50).event(),
        ];
        let merged = merge_by_timestamp(vec![rename(7, 20), rename(7, 40)], ring);
        let order: Vec<u64> = merged.iter().filter_map(Event::timestamp_ns).collect();
        assert_eq!(order, [10, 20, 30, 40, 50], "{merged:?}");
        assert!(matches!(merged[4], Event::Exit { tid: 7, .. }));
        // An overrun (no timestamp) goes first; one source alone comes back as it was.
        let merged = merge_by_timestamp(vec![Event::Overrun], vec![rename(3, 5)]);
        assert_eq!(merged[0], Event::Overrun);
        assert_eq!(merge_by_timestamp(Vec::new(), vec![rename(3, 5)]).len(), 1);
    }

    #[test]
    fn a_turn_that_stops_at_its_budget_keeps_later_records_for_the_next() {
        let records = [
            record(TaskRecordKind::Exec, 7, 30),
            record(TaskRecordKind::Exit, 8, 45),
            record(TaskRecordKind::Exit, 7, 50),
        ];
        assert_eq!(written_until(&records, None), 3, "the socket was emptied");
        assert_eq!(written_until(&records, Some(45)), 2);
        assert_eq!(written_until(&records, Some(29)), 0);
    }
}
