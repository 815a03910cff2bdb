//! The scx backend: decisions become entries in the BPF schedulers' maps (task tid → class id,
//! group cgroup id → {weight, guarantee, cap, floor, ceiling, state}). The schedulers clamp at
//! enqueue, so a move is enforced before userspace hears of it; the daemon keeps the maps right.
//!
//! Integration point: [`ScxMaps`] is implemented by the scheduler loader in the root package
//! (`src/scheduler/*`, branch `sched`). Until it exists, `canopy run --mode scx` refuses to start
//! and `auto` picks fallback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use canopy_sys::cgroup::Cgroup;

use crate::backend::{ApplyError, Backend, Gone, Mode, RestoreReport};
use crate::policy_port::{ClassId, ClassParams, GroupKnobs, PolicyPlan, ScxGroupPolicy};

/// The map writes the scheduler module provides.
pub trait ScxMaps: Send {
    /// Sets a task's class id in the task-class map.
    fn set_task_class(&mut self, tid: u32, scx_class: u32) -> std::io::Result<()>;
    /// Removes a task from the task-class map (it takes the default class).
    fn clear_task(&mut self, tid: u32);
    /// Writes a group's policy, keyed by cgroup id (the cgroup directory's inode). The
    /// schedulers keep one entry per live cgroup and writes only rewrite it: an error of kind
    /// NotFound means the cgroup is gone (normal flow, `Gone` to the controller).
    fn set_group(&mut self, cgroup_id: u64, policy: &ScxGroupPolicy) -> std::io::Result<()>;
    /// Stops applying a group's policy to the cgroup (its entry says no group owns it).
    fn clear_group(&mut self, cgroup_id: u64);
    /// Sub-scheduler attaches the root refused so far.
    fn refused_attaches(&self) -> u64;
    /// Wakeup counters of the preempting classes, when the root scheduler keeps them.
    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        None
    }
    /// A reload compiled `plan`: the schedulers follow it (group policy entries, admission,
    /// which cgroups have a canopy child) before the daemon re-applies every group's state.
    fn plan_changed(&mut self, _plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        Ok(())
    }
}

/// Backend writing decisions into the schedulers' maps.
pub struct ScxBackend<M: ScxMaps> {
    maps: M,
    cgroup_root: PathBuf,
    /// Threads with a `task_classes` entry the daemon wrote, and when the write returned
    /// (CLOCK_MONOTONIC ns).
    tasks: HashMap<u32, u64>,
    groups: HashMap<String, u64>,
    /// The exit watcher deletes an exited thread's entry itself (see `forget_exited_task`).
    exits_cleared_by_watcher: bool,
}

impl<M: ScxMaps> ScxBackend<M> {
    /// A backend over the loader's maps; cgroup ids are inodes under `cgroup_root`.
    pub fn new(maps: M, cgroup_root: PathBuf) -> Self {
        ScxBackend {
            maps,
            cgroup_root,
            tasks: HashMap::new(),
            groups: HashMap::new(),
            exits_cleared_by_watcher: false,
        }
    }
}

impl<M: ScxMaps> Backend for ScxBackend<M> {
    fn mode(&self) -> Mode {
        Mode::Scx
    }

    fn apply_task(
        &mut self,
        tid: u32,
        _class: ClassId,
        params: &ClassParams,
    ) -> Result<(), ApplyError> {
        self.maps
            .set_task_class(tid, params.scx_id)
            .map_err(|e| ApplyError::Refused {
                what: format!("class {}", params.name),
                target: format!("tid {tid}"),
                source: e,
            })?;
        self.tasks.insert(tid, canopy_sys::monotonic_now_ns());
        Ok(())
    }

    fn release_task(&mut self, tid: u32) {
        if self.tasks.remove(&tid).is_some() {
            self.maps.clear_task(tid);
        }
    }

    fn forget_task(&mut self, tid: u32) {
        self.release_task(tid);
    }

    fn forget_exited_task(&mut self, tid: u32, exited_ns: u64) {
        // The watcher deleted the entry at the exit; only a write that returned after it (the
        // daemon decided for a thread that was already gone) left one behind. A write that
        // returned later but landed before the exit costs one needless delete, never a leak.
        match self.tasks.remove(&tid) {
            Some(written_ns) if self.exits_cleared_by_watcher && written_ns <= exited_ns => {}
            Some(_) => self.maps.clear_task(tid),
            None => {}
        }
    }

    fn exits_cleared_by_watcher(&mut self, cleared: bool) {
        self.exits_cleared_by_watcher = cleared;
    }

    fn apply_group(
        &mut self,
        cgroup: &str,
        _knobs: &GroupKnobs,
        scx: &ScxGroupPolicy,
    ) -> Result<(), ApplyError> {
        let id = match Cgroup::from_dir(self.cgroup_root.join(cgroup)).id() {
            Ok(id) => id,
            Err(_) => return Err(Gone(0).into()),
        };
        self.maps.set_group(id, scx).map_err(|e| {
            // The schedulers delete a cgroup's entry at its rmdir and never let a write make
            // it again: NotFound means the cgroup was removed before this (late) write.
            if e.kind() == std::io::ErrorKind::NotFound {
                ApplyError::from(Gone(0))
            } else {
                ApplyError::Refused {
                    what: "group policy".into(),
                    target: cgroup.into(),
                    source: e,
                }
            }
        })?;
        // The same path may name a newer cgroup than the one written before (removed and made
        // again before the removal event arrived): the older one's entry goes now, or nothing
        // would ever clear it.
        if let Some(older) = self.groups.insert(cgroup.to_string(), id) {
            if older != id {
                self.maps.clear_group(older);
            }
        }
        Ok(())
    }

    fn release_group(&mut self, cgroup: &str) {
        if let Some(id) = self.groups.remove(cgroup) {
            self.maps.clear_group(id);
        }
    }

    fn restore_all(&mut self) -> RestoreReport {
        // Unloading the schedulers hands every task back to the fair class; clearing the maps
        // keeps a still-loaded scheduler from acting on stale entries.
        let mut report = RestoreReport::default();
        for (tid, _) in std::mem::take(&mut self.tasks) {
            self.maps.clear_task(tid);
            report.tasks_restored += 1;
        }
        for (_, id) in std::mem::take(&mut self.groups) {
            self.maps.clear_group(id);
            report.groups_restored += 1;
        }
        report
    }

    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    fn refused_subsched_attaches(&self) -> u64 {
        self.maps.refused_attaches()
    }

    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        self.maps.preempting_wakeups()
    }

    fn plan_changed(&mut self, plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        self.maps.plan_changed(plan)
    }
}

/// Map writers chosen at run time (`Box<dyn ScxMaps>`, from the scheduler loader) are map
/// writers: every method forwards, the defaulted ones included.
impl<M: ScxMaps + ?Sized> ScxMaps for Box<M> {
    fn set_task_class(&mut self, tid: u32, c: u32) -> std::io::Result<()> {
        (**self).set_task_class(tid, c)
    }
    fn clear_task(&mut self, tid: u32) {
        (**self).clear_task(tid)
    }
    fn set_group(&mut self, id: u64, p: &ScxGroupPolicy) -> std::io::Result<()> {
        (**self).set_group(id, p)
    }
    fn clear_group(&mut self, id: u64) {
        (**self).clear_group(id)
    }
    fn refused_attaches(&self) -> u64 {
        (**self).refused_attaches()
    }
    fn preempting_wakeups(&self) -> Option<crate::stats::PreemptingWakeups> {
        (**self).preempting_wakeups()
    }
    fn plan_changed(&mut self, plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        (**self).plan_changed(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Map writes as a set of live group entries.
    #[derive(Default)]
    struct LiveGroups(std::collections::BTreeSet<u64>);

    impl ScxMaps for LiveGroups {
        fn set_task_class(&mut self, _tid: u32, _class: u32) -> std::io::Result<()> {
            Ok(())
        }
        fn clear_task(&mut self, _tid: u32) {}
        fn set_group(&mut self, id: u64, _policy: &ScxGroupPolicy) -> std::io::Result<()> {
            self.0.insert(id);
            Ok(())
        }
        fn clear_group(&mut self, id: u64) {
            self.0.remove(&id);
        }
        fn refused_attaches(&self) -> u64 {
            0
        }
    }

    fn policy() -> ScxGroupPolicy {
        ScxGroupPolicy {
            weight: None,
            guarantee_pct: 0,
            cap_pct: 0,
            floor: None,
            ceiling: None,
            state: 0,
        }
    }

    #[test]
    fn a_path_made_again_leaves_one_entry_and_a_removed_one_none() {
        let root = tempfile::tempdir().unwrap();
        let mut backend = ScxBackend::new(LiveGroups::default(), root.path().to_path_buf());
        let knobs = GroupKnobs::default();
        std::fs::create_dir(root.path().join("app.scope")).unwrap();
        backend.apply_group("app.scope", &knobs, &policy()).unwrap();
        // Removed and made again before the removal was heard (the old directory is kept
        // under another name so the new one cannot reuse its inode).
        std::fs::rename(root.path().join("app.scope"), root.path().join("old")).unwrap();
        std::fs::create_dir(root.path().join("app.scope")).unwrap();
        backend.apply_group("app.scope", &knobs, &policy()).unwrap();
        assert_eq!(backend.maps.0.len(), 1, "{:?}", backend.maps.0);
        backend.release_group("app.scope");
        assert!(backend.maps.0.is_empty(), "{:?}", backend.maps.0);
        // A group whose cgroup is gone is not written.
        assert!(backend
            .apply_group("missing.scope", &knobs, &policy())
            .is_err());
        assert!(backend.maps.0.is_empty());
    }

    /// The schedulers' map refuses writes for a removed cgroup (its entry went at rmdir).
    struct RemovedCgroups;

    impl ScxMaps for RemovedCgroups {
        fn set_task_class(&mut self, _tid: u32, _class: u32) -> std::io::Result<()> {
            Ok(())
        }
        fn clear_task(&mut self, _tid: u32) {}
        fn set_group(&mut self, _id: u64, _policy: &ScxGroupPolicy) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn clear_group(&mut self, _id: u64) {}
        fn refused_attaches(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_write_the_map_refuses_as_not_found_is_a_gone_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let mut backend = ScxBackend::new(RemovedCgroups, root.path().to_path_buf());
        std::fs::create_dir(root.path().join("late.scope")).unwrap();
        let result = backend.apply_group("late.scope", &GroupKnobs::default(), &policy());
        assert!(matches!(result, Err(ApplyError::Gone(_))), "{result:?}");
        assert!(backend.groups.is_empty());
    }

    /// The threads whose entries the daemon deleted.
    #[derive(Default)]
    struct TaskDeletes(Vec<u32>);

    impl ScxMaps for TaskDeletes {
        fn set_task_class(&mut self, _tid: u32, _class: u32) -> std::io::Result<()> {
            Ok(())
        }
        fn clear_task(&mut self, tid: u32) {
            self.0.push(tid);
        }
        fn set_group(&mut self, _id: u64, _policy: &ScxGroupPolicy) -> std::io::Result<()> {
            Ok(())
        }
        fn clear_group(&mut self, _id: u64) {}
        fn refused_attaches(&self) -> u64 {
            0
        }
    }

    fn params() -> ClassParams {
        ClassParams {
            name: "BACKGROUND".into(),
            scx_id: 4,
            policy: crate::policy_port::FairPolicy::Batch,
            nice: 0,
            slice_ns: 0,
            uclamp_min: 0,
            uclamp_max: 1024,
        }
    }

    #[test]
    fn an_exit_the_watcher_cleared_costs_no_delete_unless_written_after_it() {
        let root = tempfile::tempdir().unwrap();
        let mut backend = ScxBackend::new(TaskDeletes::default(), root.path().to_path_buf());
        backend.exits_cleared_by_watcher(true);
        // Written, then exited: the watcher deleted the entry at the exit.
        backend.apply_task(10, ClassId(4), &params()).unwrap();
        backend.forget_exited_task(10, canopy_sys::monotonic_now_ns());
        assert!(backend.maps.0.is_empty(), "{:?}", backend.maps.0);
        // Exited, then written (the daemon had not read the exit yet): the write left an
        // entry behind the watcher's delete, so the daemon deletes it.
        let exited_ns = canopy_sys::monotonic_now_ns();
        backend.apply_task(11, ClassId(4), &params()).unwrap();
        backend.forget_exited_task(11, exited_ns);
        assert_eq!(backend.maps.0, vec![11]);
        // A thread the daemon never wrote has nothing to delete.
        backend.forget_exited_task(12, canopy_sys::monotonic_now_ns());
        assert_eq!(backend.maps.0, vec![11]);
        // Without the watcher's deletes every written entry is deleted by the daemon.
        backend.exits_cleared_by_watcher(false);
        backend.apply_task(13, ClassId(4), &params()).unwrap();
        backend.forget_exited_task(13, canopy_sys::monotonic_now_ns());
        assert_eq!(backend.maps.0, vec![11, 13]);
    }
}
