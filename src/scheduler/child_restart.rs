// SPDX-License-Identifier: GPL-2.0-only
//! When the supervisor loads a canopy child again after it exited with the kernel's restart
//! action (exit code bits [63:48], see `exit.rs`): the bookkeeping per cgroup, kept pure so the
//! bound is unit-tested. A child that asks is loaded again after a backoff that doubles with
//! every restart in a row (200 ms, 400 ms, ... 3.2 s); after `RESTART_LIMIT` restarts in a row
//! the supervisor gives up and the cgroup's tasks stay with the root. A child that ran for
//! `STABLE_AFTER` before asking starts a new row. A failed re-attach counts as one more restart
//! in the row. The `canopy_child_restarts` record of each cgroup goes into the root's
//! `child_restarts` map for `canopy status`.
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use super::bpf_intf;

/// Restarts in a row after which the supervisor stops loading a child again.
pub const RESTART_LIMIT: u32 = 5;
/// The wait before the first restart of a row; each further one waits twice as long.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A child that ran this long before asking again starts a new row.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What to do about a child that asked for a restart (or whose re-attach failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Load it again `after` from now, at `at`; `in_a_row` is this restart's number in the row.
    RetryAt {
        at: Instant,
        after: Duration,
        in_a_row: u32,
    },
    /// It asked `RESTART_LIMIT` times in a row already: leave the cgroup to the root.
    GiveUp { in_a_row: u32 },
}

#[derive(Debug, Default, Clone)]
struct CgroupRecord {
    restarts: u32,
    in_a_row: u32,
    gave_up: bool,
    last_exit_code: i64,
    due: Option<Instant>,
    attached_at: Option<Instant>,
}

impl CgroupRecord {
    fn decide(&mut self, now: Instant) -> Decision {
        if self.in_a_row >= RESTART_LIMIT {
            self.gave_up = true;
            self.due = None;
            return Decision::GiveUp {
                in_a_row: self.in_a_row,
            };
        }
        self.in_a_row += 1;
        let after = FIRST_BACKOFF * 2u32.pow(self.in_a_row - 1);
        let at = now + after;
        self.due = Some(at);
        Decision::RetryAt {
            at,
            after,
            in_a_row: self.in_a_row,
        }
    }
}

/// Per cgroup (the absolute path a child is attached to): restarts so far and what is pending.
#[derive(Debug, Default)]
pub struct ChildRestarts {
    records: HashMap<PathBuf, CgroupRecord>,
}

impl ChildRestarts {
    /// The child on `cgroup` exited at `now` with `exit_code`, asking for a restart.
    pub fn exited(&mut self, cgroup: &Path, exit_code: i64, now: Instant) -> Decision {
        let record = self.records.entry(cgroup.to_path_buf()).or_default();
        record.last_exit_code = exit_code;
        if record
            .attached_at
            .is_some_and(|at| now.saturating_duration_since(at) >= STABLE_AFTER)
        {
            record.in_a_row = 0;
        }
        record.attached_at = None;
        record.decide(now)
    }

    /// Loading the child on `cgroup` again failed at `now`: one more restart in the row.
    pub fn attach_failed(&mut self, cgroup: &Path, now: Instant) -> Decision {
        self.records
            .entry(cgroup.to_path_buf())
            .or_default()
            .decide(now)
    }

    /// The child on `cgroup` was loaded and attached again at `now`.
    pub fn attached(&mut self, cgroup: &Path, now: Instant) {
        let record = self.records.entry(cgroup.to_path_buf()).or_default();
        record.restarts += 1;
        record.attached_at = Some(now);
    }

    /// No restart is pending on `cgroup` any more (a reload re-attached or removed its child).
    pub fn cancel(&mut self, cgroup: &Path) {
        if let Some(record) = self.records.get_mut(cgroup) {
            record.due = None;
        }
    }

    /// The cgroups whose restart is due at `now`; they are no longer pending.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due: Vec<PathBuf> = self
            .records
            .iter_mut()
            .filter(|(_, record)| record.due.is_some_and(|at| at <= now))
            .map(|(cgroup, record)| {
                record.due = None;
                cgroup.clone()
            })
            .collect();
        due.sort();
        due
    }

    /// When the earliest pending restart is due (None: none is pending).
    pub fn next_due(&self) -> Option<Instant> {
        self.records.values().filter_map(|record| record.due).min()
    }

    /// The record of `cgroup` as the root's `child_restarts` map holds it.
    pub fn record(&self, cgroup: &Path) -> bpf_intf::canopy_child_restarts {
        let record = self.records.get(cgroup).cloned().unwrap_or_default();
        bpf_intf::canopy_child_restarts {
            restarts: record.restarts,
            gave_up: record.gave_up as u32,
            in_a_row: record.in_a_row,
            last_exit_code: record.last_exit_code,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESTART: i64 = 1 << 48;

    #[test]
    fn a_child_asking_again_and_again_is_given_up_after_the_limit_with_doubling_waits() {
        let cgroup = Path::new("/sys/fs/cgroup/tenant");
        let mut restarts = ChildRestarts::default();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        loop {
            match restarts.exited(cgroup, RESTART, now) {
                Decision::RetryAt {
                    at,
                    after,
                    in_a_row,
                } => {
                    assert_eq!(at - now, after);
                    assert_eq!(restarts.next_due(), Some(at), "the supervisor wakes for it");
                    waits.push(after.as_millis());
                    assert!(restarts.take_due(at - Duration::from_millis(1)).is_empty());
                    assert_eq!(restarts.take_due(at), vec![cgroup.to_path_buf()]);
                    assert!(restarts.take_due(at).is_empty(), "taken once");
                    assert_eq!(restarts.next_due(), None);
                    restarts.attached(cgroup, at);
                    assert_eq!(restarts.record(cgroup).in_a_row, in_a_row);
                    now = at + Duration::from_millis(300);
                }
                Decision::GiveUp { in_a_row } => {
                    assert_eq!(in_a_row, RESTART_LIMIT);
                    break;
                }
            }
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200]);
        let record = restarts.record(cgroup);
        assert_eq!(record.restarts, RESTART_LIMIT);
        assert_eq!(record.gave_up, 1);
        assert_eq!(record.last_exit_code, RESTART);
        assert!(restarts
            .take_due(now + Duration::from_secs(3600))
            .is_empty());
    }

    #[test]
    fn a_child_that_ran_long_enough_starts_a_new_row() {
        let cgroup = Path::new("/sys/fs/cgroup/tenant");
        let mut restarts = ChildRestarts::default();
        let start = Instant::now();
        let Decision::RetryAt { at, .. } = restarts.exited(cgroup, RESTART, start) else {
            panic!("first restart refused");
        };
        restarts.attached(cgroup, at);
        let later = at + STABLE_AFTER;
        assert_eq!(
            restarts.exited(cgroup, RESTART, later),
            Decision::RetryAt {
                at: later + FIRST_BACKOFF,
                after: FIRST_BACKOFF,
                in_a_row: 1
            }
        );
        assert_eq!(restarts.record(cgroup).restarts, 1);
    }

    #[test]
    fn failed_reattaches_count_toward_the_limit_and_cancel_drops_a_pending_restart() {
        let cgroup = Path::new("/sys/fs/cgroup/tenant");
        let other = Path::new("/sys/fs/cgroup/other");
        let mut restarts = ChildRestarts::default();
        let now = Instant::now();
        restarts.exited(cgroup, RESTART, now);
        for _ in 1..RESTART_LIMIT {
            assert!(matches!(
                restarts.attach_failed(cgroup, now),
                Decision::RetryAt { .. }
            ));
        }
        assert_eq!(
            restarts.attach_failed(cgroup, now),
            Decision::GiveUp {
                in_a_row: RESTART_LIMIT
            }
        );
        assert_eq!(restarts.record(cgroup).restarts, 0);

        restarts.exited(other, RESTART, now);
        restarts.cancel(other);
        assert!(restarts.take_due(now + Duration::from_secs(10)).is_empty());
        assert_eq!(restarts.record(other).gave_up, 0);
    }
}
