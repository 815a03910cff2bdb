// SPDX-License-Identifier: GPL-2.0-only
//! Every userspace write to the root's `group_policy` map and its `group_policy_version` bump.
//!
//! Two threads of one process write that map: the supervisor (through the root's skeleton)
//! owns a group's admission list, and the daemon (through the pinned map, opened by path) owns
//! the allowed classes of the group's current state (ceiling, floor); both write the share terms.
//! Each keeps the other's fields by reading the entry, editing it and writing it back. Without
//! a lock, the supervisor could read an entry, the daemon write its new ceiling, and the
//! supervisor write back the old ceiling: the daemon's change would be lost until it wrote again.
//! So every read-edit-write and every version bump here runs under one process-wide mutex
//! (`GROUP_POLICY_LOCK`, a static: the two writers hold different map handles).
//!
//! The version bump tells the root to re-read the share terms (BPF compares the version for
//! inequality, bpf/cpu_tree.bpf.h tree_node_follow_policy), so a batch of writes needs one bump
//! after its last write: `GroupPolicyBatch` bumps on `flush`/`finish` when something changed.
//! Example: a reconcile writing 3 groups bumps the version from 7 to 8, not to 10.
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;

use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;

use super::bpf_bytes::as_bytes;
use super::bpf_bytes::from_bytes;
use super::bpf_intf::canopy_group_policy;

/// Held across each read-edit-write of a `group_policy` entry and each version bump.
static GROUP_POLICY_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    // A panic while holding it leaves no half-written state in Rust (the map write is one
    // syscall), so a poisoned lock is still good.
    GROUP_POLICY_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// What an edit does to one entry.
#[derive(Debug, Clone, Copy)]
pub enum EntryEdit {
    /// Leave the entry as it is (absent stays absent).
    Keep,
    /// Write this entry.
    Write(canopy_group_policy),
    /// Delete the entry (absent already is fine).
    Remove,
}

/// The supervisor's entry for a configured group: its share terms and admission list from
/// `wanted`, the daemon's ceiling and floor from `current`.
pub fn supervisor_edit(
    current: Option<&canopy_group_policy>,
    wanted: &canopy_group_policy,
) -> EntryEdit {
    let mut entry = *wanted;
    if let Some(current) = current {
        entry.ceiling_plus_one = current.ceiling_plus_one;
        entry.floor_plus_one = current.floor_plus_one;
    }
    EntryEdit::Write(entry)
}

/// The daemon's share terms and allowed classes of a group's current state (the BPF clamp at
/// enqueue, canopy.bpf.h task_class: `*_plus_one` 0 = no limit, else class id + 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonTerms {
    pub weight: u32,
    pub guarantee_pct: u32,
    pub cap_pct: u32,
    pub ceiling_plus_one: u32,
    pub floor_plus_one: u32,
}

/// The daemon's entry for a group: `terms`, with the supervisor's admission list from `current`.
pub fn daemon_edit(current: Option<&canopy_group_policy>, terms: &DaemonTerms) -> EntryEdit {
    let mut entry = current.copied().unwrap_or_default();
    entry.weight = terms.weight;
    entry.guarantee_pct = terms.guarantee_pct;
    entry.cap_pct = terms.cap_pct;
    entry.ceiling_plus_one = terms.ceiling_plus_one;
    entry.floor_plus_one = terms.floor_plus_one;
    EntryEdit::Write(entry)
}

/// The daemon forgetting a group's cgroup: the entry goes, unless it admits sub-schedulers
/// (then it belongs to the supervisor's configured group, which removes it with the group).
pub fn daemon_forget_edit(current: Option<&canopy_group_policy>) -> EntryEdit {
    match current {
        Some(entry) if entry.nr_admitted == 0 => EntryEdit::Remove,
        _ => EntryEdit::Keep,
    }
}

/// Writes to `group_policy` that end with one `group_policy_version` bump. Each `edit` holds
/// the lock only for its own read-edit-write, so the other writer waits for one entry, not for
/// the whole batch (the supervisor attaches children between its writes).
pub struct GroupPolicyBatch<'maps, P: MapCore, V: MapCore> {
    policy: &'maps P,
    version: &'maps V,
    /// An entry changed since the last bump.
    unannounced: bool,
}

impl<'maps, P: MapCore, V: MapCore> GroupPolicyBatch<'maps, P, V> {
    /// A batch on `policy` (`group_policy`) and `version` (`group_policy_version`).
    pub fn new(policy: &'maps P, version: &'maps V) -> Self {
        GroupPolicyBatch {
            policy,
            version,
            unannounced: false,
        }
    }

    /// Reads the entry of `cgroup_id` (None: absent), applies `edit` and writes the result,
    /// all under the lock.
    pub fn edit(
        &mut self,
        cgroup_id: u64,
        edit: impl FnOnce(Option<&canopy_group_policy>) -> EntryEdit,
    ) -> libbpf_rs::Result<()> {
        let key = cgroup_id.to_ne_bytes();
        let _guard = lock();
        let current: Option<canopy_group_policy> = self
            .policy
            .lookup(&key, MapFlags::ANY)?
            .map(|bytes| from_bytes(&bytes));
        match edit(current.as_ref()) {
            EntryEdit::Keep => Ok(()),
            EntryEdit::Write(entry) => {
                self.policy.update(&key, as_bytes(&entry), MapFlags::ANY)?;
                self.unannounced = true;
                Ok(())
            }
            EntryEdit::Remove => match self.policy.delete(&key) {
                Ok(()) => {
                    self.unannounced = true;
                    Ok(())
                }
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// Bumps the version once if an entry changed since the last bump, so the root follows the
    /// writes so far (the supervisor flushes before it attaches a child).
    pub fn flush(&mut self) -> libbpf_rs::Result<()> {
        if !self.unannounced {
            return Ok(());
        }
        let key = 0u32.to_ne_bytes();
        let _guard = lock();
        let version = self
            .version
            .lookup(&key, MapFlags::ANY)?
            .map_or(0, |bytes| from_bytes::<u64>(&bytes));
        self.version
            .update(&key, &version.wrapping_add(1).to_ne_bytes(), MapFlags::ANY)?;
        self.unannounced = false;
        Ok(())
    }

    /// Ends the batch with its bump (none when nothing changed).
    pub fn finish(mut self) -> libbpf_rs::Result<()> {
        self.flush()
    }
}

impl<P: MapCore, V: MapCore> Drop for GroupPolicyBatch<'_, P, V> {
    /// A batch left early (an error, `?`) still announces what it wrote.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitting(names: u32) -> canopy_group_policy {
        canopy_group_policy {
            weight: 200,
            guarantee_pct: 10,
            cap_pct: 50,
            nr_admitted: names,
            ..Default::default()
        }
    }

    fn written(edit: EntryEdit) -> canopy_group_policy {
        match edit {
            EntryEdit::Write(entry) => entry,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn supervisor_keeps_the_daemons_ceiling_and_floor() {
        let mut current = admitting(0);
        current.ceiling_plus_one = 3;
        current.floor_plus_one = 1;
        let mut wanted = admitting(1);
        wanted.weight = 400;
        wanted.admitted[0][0] = b'x' as std::os::raw::c_char;
        let entry = written(supervisor_edit(Some(&current), &wanted));
        assert_eq!(entry.weight, 400);
        assert_eq!(entry.nr_admitted, 1);
        assert_eq!(entry.admitted[0][0], b'x' as std::os::raw::c_char);
        assert_eq!((entry.ceiling_plus_one, entry.floor_plus_one), (3, 1));
    }

    #[test]
    fn supervisor_on_an_absent_entry_writes_no_class_limits() {
        let entry = written(supervisor_edit(None, &admitting(1)));
        assert_eq!((entry.ceiling_plus_one, entry.floor_plus_one), (0, 0));
        assert_eq!(entry.nr_admitted, 1);
    }

    #[test]
    fn daemon_keeps_the_supervisors_admission() {
        let mut current = admitting(2);
        current.admitted[1][0] = b'y' as std::os::raw::c_char;
        current.ceiling_plus_one = 5;
        let terms = DaemonTerms {
            weight: 50,
            guarantee_pct: 0,
            cap_pct: 20,
            ceiling_plus_one: 2,
            floor_plus_one: 0,
        };
        let entry = written(daemon_edit(Some(&current), &terms));
        assert_eq!(entry.nr_admitted, 2);
        assert_eq!(entry.admitted[1][0], b'y' as std::os::raw::c_char);
        assert_eq!(
            (entry.weight, entry.guarantee_pct, entry.cap_pct),
            (50, 0, 20)
        );
        assert_eq!((entry.ceiling_plus_one, entry.floor_plus_one), (2, 0));
    }

    #[test]
    fn daemon_on_an_absent_entry_admits_nothing() {
        let entry = written(daemon_edit(None, &DaemonTerms::default()));
        assert_eq!(entry.nr_admitted, 0);
    }

    /// The interleaving the lock rules out, replayed in order: whichever writer goes second
    /// reads the first one's entry, so both sides' fields survive.
    #[test]
    fn either_order_keeps_both_writers_fields() {
        let terms = DaemonTerms {
            weight: 300,
            ceiling_plus_one: 4,
            floor_plus_one: 2,
            ..Default::default()
        };
        let wanted = admitting(1);
        let daemon_then_supervisor = written(supervisor_edit(
            Some(&written(daemon_edit(None, &terms))),
            &wanted,
        ));
        let supervisor_then_daemon = written(daemon_edit(
            Some(&written(supervisor_edit(None, &wanted))),
            &terms,
        ));
        for entry in [daemon_then_supervisor, supervisor_then_daemon] {
            assert_eq!(entry.nr_admitted, 1);
            assert_eq!((entry.ceiling_plus_one, entry.floor_plus_one), (4, 2));
        }
    }

    #[test]
    fn daemon_forgets_only_entries_that_admit_nothing() {
        assert!(matches!(daemon_forget_edit(None), EntryEdit::Keep));
        assert!(matches!(
            daemon_forget_edit(Some(&admitting(0))),
            EntryEdit::Remove
        ));
        assert!(matches!(
            daemon_forget_edit(Some(&admitting(1))),
            EntryEdit::Keep
        ));
    }
}
