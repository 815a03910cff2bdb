//! New processes whose handling waits (`ControllerConfig::newborn_wait`): a process forked from
//! one the controller tracks, and inheriting no rule from it, is not handled (facts read, rules
//! matched, class applied) until it has lived that long (one that inherits is handled at once:
//! the inheritance is read from its parent, which may be gone when a wait ends). Its exec and renames in that time wait with it (applied in order when
//! it ends), and the exit of its only thread drops it unhandled. Most of a build's processes (a shell's utilities, a compiler driver's
//! helpers, `sh -c` one-liners) live less than that: each then costs the daemon a queue entry
//! instead of a /proc read at its fork, three at its exec and two class writes. Meanwhile the
//! process runs as its parent does: in fallback mode the kernel copied the parent's attributes
//! at fork; in scx mode the task watcher copied the parent's `task_classes` entry
//! (`bpf/canopy_moves.bpf.c`), and the daemon sets the wait only where that holds. Anything
//! else that concerns a waiting process ends its wait at once, and its events are handled, in
//! order, before that one: a thread of it (the kernel names a thread's process's parent as the
//! thread's parent, so a thread is told by its id), a move, a child process of it (which
//! inherits its rule), a control request naming it; a rescan reads waiting processes anew.
//!
//! Worked example (the frame benchmark's build, 2 vCPUs under TCG, about 60 one-process jobs a
//! second, each living some 50 ms): with a 100 ms wait, a job's fork and exec are queued and its
//! exit, read with them from the watcher's task ring, drops both; before, each job cost the
//! daemon about 1.7 ms of CPU in handling alone (four /proc reads, two map writes). The wait
//! counts from the fork's timestamp, not from when the ring was read (up to 50 ms later).

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use crate::event::Event;

/// At most this many processes wait at once; a fork storm beyond it is handled as it comes.
pub(super) const MAX_WAITING: usize = 16_384;

/// A waiting process queues at most this many events; one more ends its wait (a process that
/// execs this often in its first moments is no short job). A rename that follows a rename of the
/// same thread replaces it (its last name is the one that counts), so renames alone never fill
/// the queue: the events a process can queue are bounded by count, not only by its wait.
pub(super) const MAX_EVENTS_PER_PROCESS: usize = 64;

/// The waiting processes, by process id, each with its due time and events in arrival order.
#[derive(Debug, Default)]
pub(super) struct Newborns {
    waiting: HashMap<u32, Waiting>,
    /// Due times in arrival order (one wait for all, so also in due order); an entry whose
    /// process stopped waiting, or waits again under a reused id, is skipped.
    due: VecDeque<(Instant, u32)>,
}

#[derive(Debug)]
struct Waiting {
    due: Instant,
    events: Vec<Event>,
}

impl Newborns {
    /// Whether process `tgid` waits.
    pub(super) fn is_waiting(&self, tgid: u32) -> bool {
        self.waiting.contains_key(&tgid)
    }

    /// Process `tgid` starts waiting with its fork, until `due`; the fork comes back when it
    /// already waits or [`MAX_WAITING`] do.
    pub(super) fn wait(&mut self, tgid: u32, fork: Event, due: Instant) -> Result<(), Event> {
        if self.waiting.len() >= MAX_WAITING || self.waiting.contains_key(&tgid) {
            return Err(fork);
        }
        self.waiting.insert(
            tgid,
            Waiting {
                due,
                events: vec![fork],
            },
        );
        self.due.push_back((due, tgid));
        Ok(())
    }

    /// Adds `event` to waiting process `tgid`'s: `Ok(true)` when it replaced the same thread's
    /// rename just before it, `Ok(false)` when queued; the event comes back when the process
    /// does not wait or already holds [`MAX_EVENTS_PER_PROCESS`].
    pub(super) fn push(&mut self, tgid: u32, event: Event) -> Result<bool, Event> {
        let Some(waiting) = self.waiting.get_mut(&tgid) else {
            return Err(event);
        };
        if let (Event::Comm { tid, .. }, Some(Event::Comm { tid: last_tid, .. })) =
            (&event, waiting.events.last())
        {
            if tid == last_tid {
                *waiting.events.last_mut().expect("checked above") = event;
                return Ok(true);
            }
        }
        if waiting.events.len() >= MAX_EVENTS_PER_PROCESS {
            return Err(event);
        }
        waiting.events.push(event);
        Ok(false)
    }

    /// Ends process `tgid`'s wait: its events, oldest first.
    pub(super) fn take(&mut self, tgid: u32) -> Option<Vec<Event>> {
        let taken = self.waiting.remove(&tgid).map(|waiting| waiting.events);
        self.drop_stale_front();
        taken
    }

    /// The earliest due time of a process still waiting.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due
            .iter()
            .find(|(at, tgid)| self.is_current(*at, *tgid))
            .map(|(at, _)| *at)
    }

    /// The next process whose wait is over at `now`, with its events.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(u32, Vec<Event>)> {
        self.drop_stale_front();
        let &(at, tgid) = self.due.front()?;
        if at > now {
            return None;
        }
        self.due.pop_front();
        let events = self.waiting.remove(&tgid).map(|waiting| waiting.events)?;
        self.drop_stale_front();
        Some((tgid, events))
    }

    /// Forgets every waiting process (a rescan reads them anew); returns how many waited.
    pub(super) fn clear(&mut self) -> usize {
        let count = self.waiting.len();
        self.waiting.clear();
        self.due.clear();
        count
    }

    /// How many processes wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn is_current(&self, at: Instant, tgid: u32) -> bool {
        self.waiting
            .get(&tgid)
            .is_some_and(|waiting| waiting.due == at)
    }

    fn drop_stale_front(&mut self) {
        while let Some(&(at, tgid)) = self.due.front() {
            if self.is_current(at, tgid) {
                break;
            }
            self.due.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn exec(tgid: u32) -> Event {
        Event::Exec {
            tid: tgid,
            tgid,
            timestamp_ns: None,
        }
    }

    #[test]
    fn processes_come_due_in_arrival_order_and_a_taken_one_is_skipped() {
        let start = Instant::now();
        let mut newborns = Newborns::default();
        let wait = Duration::from_millis(100);
        assert!(newborns.wait(10, exec(10), start + wait).is_ok());
        assert!(newborns
            .wait(11, exec(11), start + wait + Duration::from_millis(5))
            .is_ok());
        assert!(newborns
            .wait(12, exec(12), start + wait + Duration::from_millis(9))
            .is_ok());
        assert!(
            newborns.wait(11, exec(11), start + wait).is_err(),
            "already waits"
        );
        assert_eq!(newborns.push(12, exec(12)), Ok(false));
        assert!(newborns.push(13, exec(13)).is_err(), "13 does not wait");
        assert_eq!(newborns.take(10).map(|events| events.len()), Some(1));
        assert_eq!(
            newborns.next_due(),
            Some(start + wait + Duration::from_millis(5))
        );
        assert!(newborns.pop_due(start + wait).is_none(), "not yet due");
        let (tgid, events) = newborns
            .pop_due(start + wait + Duration::from_millis(9))
            .expect("11 is due");
        assert_eq!((tgid, events.len()), (11, 1));
        let (tgid, events) = newborns.pop_due(start + wait * 2).expect("12 is due");
        assert_eq!((tgid, events.len()), (12, 2));
        assert!(newborns.next_due().is_none());
        assert_eq!(newborns.len(), 0);
    }

    fn rename(tid: u32, tgid: u32, name: &str) -> Event {
        Event::Comm {
            tid,
            tgid,
            comm: Some(name.into()),
            timestamp_ns: None,
        }
    }

    #[test]
    fn renames_coalesce_and_a_full_queue_gives_the_event_back() {
        let start = Instant::now();
        let mut newborns = Newborns::default();
        assert!(newborns.wait(20, exec(20), start).is_ok());
        for round in 0..10_000 {
            assert_eq!(
                newborns.push(20, rename(20, 20, &format!("name-{round}"))),
                Ok(round > 0)
            );
        }
        assert_eq!(newborns.push(20, exec(20)), Ok(false));
        assert_eq!(newborns.push(20, rename(20, 20, "after")), Ok(false));
        let mut queued = 4;
        while newborns.push(20, exec(20)).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, MAX_EVENTS_PER_PROCESS);
        let events = newborns.take(20).expect("20 waits");
        assert_eq!(events.len(), MAX_EVENTS_PER_PROCESS);
        assert!(
            matches!(&events[1], Event::Comm { comm: Some(name), .. } if name == "name-9999"),
            "{events:?}"
        );
    }

    #[test]
    fn a_reused_id_waits_until_its_own_due_time() {
        let start = Instant::now();
        let mut newborns = Newborns::default();
        assert!(newborns
            .wait(7, exec(7), start + Duration::from_millis(100))
            .is_ok());
        newborns.take(7);
        assert!(newborns
            .wait(8, exec(8), start + Duration::from_millis(150))
            .is_ok());
        assert!(newborns
            .wait(7, exec(7), start + Duration::from_millis(200))
            .is_ok());
        assert!(newborns
            .pop_due(start + Duration::from_millis(120))
            .is_none());
        assert_eq!(
            newborns
                .pop_due(start + Duration::from_millis(160))
                .map(|(tgid, _)| tgid),
            Some(8)
        );
        assert_eq!(
            newborns.next_due(),
            Some(start + Duration::from_millis(200))
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let due = Instant::now();
        let mut newborns = Newborns::default();
        for tgid in 0..MAX_WAITING as u32 {
            assert!(newborns.wait(tgid, exec(tgid), due).is_ok());
        }
        assert!(newborns.wait(u32::MAX, exec(u32::MAX), due).is_err());
        assert_eq!(newborns.clear(), MAX_WAITING);
        assert!(newborns.next_due().is_none());
    }
}
