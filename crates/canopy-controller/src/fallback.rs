//! The fallback backend for kernels without sched_ext: a class becomes `sched_setattr` on the
//! thread (policy, nice, custom slice via sched_runtime, uclamp when the kernel has UCLAMP_TASK)
//! and a group state becomes cgroup v2 knobs (cpu.weight, cpu.idle, cpu.uclamp.min/max, cpu.max).
//! It remembers every original value it overwrote and puts them back on `restore_all`. With a
//! state file ([`crate::state_file`]) those originals also survive a SIGKILL: the next daemon
//! re-adopts the ones it takes over and restores the others once its first scan is done.
//!
//! Each original is kept with its thread's start time (learned off the hot path: at the next
//! rescan, which reads every thread's `stat` anyway, or at the crash record's next flush, at
//! most [`crate::state_file::FLUSH_EVERY`] later), so the record tells a reused tid apart, and
//! a rescan that finds a tracked tid started at another time
//! ([`Backend::thread_seen`]: its thread exited unseen and the kernel reused the id) drops the
//! dead thread's original instead of putting it on the new thread at stop. Example: tid 4242's
//! original nice 0 was taken from a thread started at tick 1000; after lost exit events a
//! rescan finds 4242 started at tick 5000: the original goes, and the controller applies the
//! new thread's class afresh, taking its own attributes as the original.
//!
//! Real-time and deadline threads are changed only when the policy manages them
//! (`leave_realtime = false`, passed in through `set_manage_realtime`); their original RT/DL
//! policy and priority go back on stop like any other original.
//!
//! sched_setattr and its kernel-capability detection come from canopy-sys (`SchedApplier`); the
//! five cgroup knob files are formatted by canopy-sys's typed knobs and read and written through
//! its `Cgroup`.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use canopy_sys::cgroup::{Cgroup, CgroupError, CpuMax, CpuWeight, UclampPercent};
use canopy_sys::sched::{Applied, SchedApplier, SchedRequest};
use canopy_sys::Outcome;

use crate::backend::{ApplyError, Backend, Gone, Mode, RestoreReport};
use crate::policy_port::{ClassId, ClassParams, FairPolicy, GroupKnobs, ScxGroupPolicy};
use crate::state_file::{thread_start_time, AdoptRules, Adopted, StateFile};

pub use canopy_sys::sched::SchedAttr;

/// Reads a thread's attributes (tests and benchmarks check what was applied).
pub fn sched_getattr(tid: u32) -> io::Result<SchedAttr> {
    match canopy_sys::sched::get_attributes(tid as i32) {
        Ok(Outcome::Done(a)) => Ok(a),
        Ok(Outcome::Gone) => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// Fallback backend state: originals to restore and what the kernel turned out to support
/// (canopy-sys's `SchedApplier` finds out about uclamp and custom slices).
#[derive(Debug)]
pub struct FallbackBackend {
    cgroup_root: PathBuf,
    applier: SchedApplier,
    originals: HashMap<u32, SchedAttr>,
    /// The start time of the thread each original belongs to, once learned (at the next rescan
    /// or crash-record flush after the original was taken).
    starts: HashMap<u32, u64>,
    group_originals: HashMap<String, Vec<(&'static str, String)>>,
    missing_knobs_noted: bool,
    notes: Vec<String>,
    /// Whether the policy manages RT/DL threads (otherwise a thread found RT/DL is left alone).
    manage_realtime: bool,
    /// The crash record, when kept.
    state: Option<StateFile>,
    /// What a crashed predecessor recorded and this daemon has not taken over yet.
    adopted: Adopted,
}

impl FallbackBackend {
    /// A backend writing cgroup knobs under `cgroup_root` (the cgroup2 mount).
    pub fn new(cgroup_root: PathBuf) -> Self {
        FallbackBackend {
            cgroup_root,
            applier: SchedApplier::new(),
            originals: HashMap::new(),
            starts: HashMap::new(),
            group_originals: HashMap::new(),
            missing_knobs_noted: false,
            notes: Vec::new(),
            manage_realtime: false,
            state: None,
            adopted: Adopted::default(),
        }
    }

    /// Keeps the originals in a state file at `path` as well, and adopts what a crashed
    /// predecessor left there and the crash record's rules allow: cgroups beneath this
    /// backend's cgroup root, RT/DL originals only when `realtime_managed` (the policy's
    /// `leave_realtime = false`). What it refused becomes a status note.
    pub fn with_state_file(mut self, path: PathBuf, realtime_managed: bool) -> Self {
        let mut state = StateFile::new(path);
        self.adopted = state.adopt(&AdoptRules {
            cgroup_root: &self.cgroup_root,
            realtime_managed,
        });
        self.notes.append(&mut self.adopted.refused);
        if !self.adopted.tasks.is_empty() || !self.adopted.groups.is_empty() {
            tracing::info!(
                path = %state.path().display(),
                tasks = self.adopted.tasks.len(),
                groups = self.adopted.groups.len(),
                "adopting the originals a previous daemon recorded"
            );
        }
        self.state = Some(state);
        self
    }

    fn changed(&mut self) {
        if let Some(state) = &mut self.state {
            state.mark_dirty();
        }
    }

    /// Takes over a predecessor's record of `tid`'s original, if there is one.
    fn claim_adopted(&mut self, tid: u32) {
        if let Some(original) = self.adopted.tasks.remove(&tid) {
            if let std::collections::hash_map::Entry::Vacant(v) = self.originals.entry(tid) {
                v.insert(original);
                if let Some(start) = self.adopted.starts.remove(&tid) {
                    self.starts.insert(tid, start);
                }
            }
        }
    }

    /// Drops the original held for `tid` (and its start time); whether there was one.
    fn drop_original(&mut self, tid: u32) -> Option<SchedAttr> {
        self.starts.remove(&tid);
        self.originals.remove(&tid)
    }

    /// The start time of the thread `tid`'s original belongs to, read now if not known yet;
    /// `None` once the thread is gone.
    fn start_of(&mut self, tid: u32) -> Option<u64> {
        if let Some(&start) = self.starts.get(&tid) {
            return Some(start);
        }
        let start = thread_start_time(tid)?;
        self.starts.insert(tid, start);
        Some(start)
    }

    /// The saved original attributes of a thread (tests check restore).
    pub fn original(&self, tid: u32) -> Option<&SchedAttr> {
        self.originals.get(&tid)
    }

    fn request_for(params: &ClassParams, override_realtime: bool) -> SchedRequest {
        SchedRequest {
            policy: match params.policy {
                FairPolicy::Normal => canopy_sys::sched::FairPolicy::Other,
                FairPolicy::Batch => canopy_sys::sched::FairPolicy::Batch,
                FairPolicy::Idle => canopy_sys::sched::FairPolicy::Idle,
            },
            nice: params.nice.clamp(-20, 19),
            slice: (params.slice_ns > 0).then(|| Duration::from_nanos(params.slice_ns)),
            uclamp_min: Some(params.uclamp_min.min(1024)),
            uclamp_max: Some(params.uclamp_max.min(1024)),
            reset_on_fork: false,
            // The policy's `leave_realtime`: when RT/DL tasks are left alone, one that turned
            // RT/DL after the controller first saw it is left alone by the applier too.
            override_realtime,
        }
    }

    fn note_once(&mut self, note: String) {
        if !self.notes.contains(&note) {
            tracing::warn!("{note}");
            self.notes.push(note);
        }
    }

    /// The cgroup at `cgroup` (relative to the cgroup2 mount).
    fn cgroup(&self, cgroup: &str) -> Cgroup {
        Cgroup::from_dir(self.cgroup_root.join(cgroup))
    }

    /// Writes back an original knob value; failures are ignored (the cgroup may be gone).
    fn put_back(&self, cgroup: &str, file: &str, original: &str) {
        let _ = self.cgroup(cgroup).write_knob(file, original);
    }
}

/// The OS error under a cgroupfs failure (its kind tells a missing knob file apart).
fn into_io(error: CgroupError) -> io::Error {
    match error {
        CgroupError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// The knob files a group state sets, each value formatted by canopy-sys's typed knob (out of
/// range values are clamped to the kernel's range first).
fn knob_values(knobs: &GroupKnobs) -> Vec<(&'static str, String)> {
    let uclamp = |percent: f64| {
        let hundredths = (percent.clamp(0.0, 100.0) * 100.0).round() as u32;
        UclampPercent::from_hundredths(hundredths)
            .expect("clamped to 0..=100 percent")
            .to_string()
    };
    let mut v = Vec::new();
    if let Some(w) = knobs.weight {
        let weight = CpuWeight::new(w.clamp(1, 10_000)).expect("clamped to 1..=10000");
        v.push(("cpu.weight", weight.to_string()));
    }
    if let Some(i) = knobs.idle {
        v.push(("cpu.idle", u8::from(i).to_string()));
    }
    if let Some(m) = knobs.uclamp_min_pct {
        v.push(("cpu.uclamp.min", uclamp(m)));
    }
    if let Some(m) = knobs.uclamp_max_pct {
        v.push(("cpu.uclamp.max", uclamp(m)));
    }
    if let Some((quota_us, period_us)) = knobs.max {
        let limit = CpuMax {
            quota_us,
            period_us,
        };
        v.push(("cpu.max", limit.to_string()));
    }
    v
}

impl Backend for FallbackBackend {
    fn mode(&self) -> Mode {
        Mode::Fallback
    }

    fn apply_task(
        &mut self,
        tid: u32,
        _class: ClassId,
        params: &ClassParams,
    ) -> Result<(), ApplyError> {
        self.claim_adopted(tid);
        let request = Self::request_for(params, self.manage_realtime);
        match self.applier.apply(tid as i32, &request) {
            Ok(Outcome::Gone) => Err(Gone(tid).into()),
            Ok(Outcome::Done(Applied::Changed {
                previous,
                newly_unsupported,
                ..
            })) => {
                if let std::collections::hash_map::Entry::Vacant(v) = self.originals.entry(tid) {
                    v.insert(previous);
                    self.changed();
                }
                if newly_unsupported.uclamp {
                    self.note_once("uclamp unsupported by this kernel (no UCLAMP_TASK); classes apply policy, nice and slice only".into());
                }
                if newly_unsupported.custom_slice {
                    self.note_once("custom slices unsupported by this kernel (< 6.12); classes apply policy, nice and uclamp only".into());
                }
                Ok(())
            }
            Ok(Outcome::Done(Applied::LeftRealtimeAlone { .. })) => {
                // Whoever made it RT/DL owns its attributes now: an original held from before
                // must not overwrite theirs on stop.
                if self.drop_original(tid).is_some() {
                    self.changed();
                }
                Err(ApplyError::Realtime(tid))
            }
            Err(e) => Err(ApplyError::Refused {
                what: format!("class {}", params.name),
                target: format!("tid {tid}"),
                source: io::Error::other(e.to_string()),
            }),
        }
    }

    fn inherit_original(&mut self, child: u32, parent: u32) {
        self.claim_adopted(parent);
        if let Some(orig) = self.originals.get(&parent).copied() {
            if let std::collections::hash_map::Entry::Vacant(v) = self.originals.entry(child) {
                v.insert(orig);
                self.changed();
            }
        }
    }

    fn release_task(&mut self, tid: u32) {
        self.claim_adopted(tid);
        if let Some(orig) = self.drop_original(tid) {
            let _ = self.applier.restore(tid as i32, &orig);
            self.changed();
        }
    }

    fn forget_task(&mut self, tid: u32) {
        self.adopted.tasks.remove(&tid);
        if self.drop_original(tid).is_some() {
            self.changed();
        }
    }

    fn thread_seen(&mut self, tid: u32, start_ticks: u64) -> bool {
        if !self.originals.contains_key(&tid) {
            return false;
        }
        match self.starts.get(&tid) {
            Some(&known) if known != start_ticks => {
                self.drop_original(tid);
                self.changed();
                true
            }
            Some(_) => false,
            // An original whose start was not learned yet: this thread's. (A thread that exits
            // unseen and whose tid is reused before either learns it is not told apart: a
            // window of at most one flush interval with a crash record.)
            None => {
                self.starts.insert(tid, start_ticks);
                false
            }
        }
    }

    fn apply_group(
        &mut self,
        cgroup: &str,
        knobs: &GroupKnobs,
        _scx: &ScxGroupPolicy,
    ) -> Result<(), ApplyError> {
        let values = knob_values(knobs);
        if let Some(recorded) = self.adopted.groups.remove(cgroup) {
            self.group_originals.insert(cgroup.to_string(), recorded);
        }
        // Restore knobs the new state no longer sets, then write the new values.
        let saved = self
            .group_originals
            .entry(cgroup.to_string())
            .or_default()
            .clone();
        for (file, orig) in &saved {
            if !values.iter().any(|(f, _)| f == file) {
                self.put_back(cgroup, file, orig);
            }
        }
        let mut missing = Vec::new();
        let dir = self.cgroup(cgroup);
        for (file, value) in values {
            let entry = self
                .group_originals
                .get(cgroup)
                .map(|v| v.iter().any(|(f, _)| *f == file));
            if entry != Some(true) {
                match dir.read_knob(file).map_err(into_io) {
                    Ok(orig) => {
                        self.group_originals
                            .entry(cgroup.to_string())
                            .or_default()
                            .push((file, orig.trim().to_string()));
                        self.changed();
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if !dir.exists() {
                            return Err(Gone(0).into());
                        }
                        missing.push(file);
                        continue;
                    }
                    Err(e) => {
                        return Err(ApplyError::Refused {
                            what: format!("reading {file}"),
                            target: cgroup.into(),
                            source: e,
                        })
                    }
                }
            }
            if let Err(e) = dir.write_knob(file, &value) {
                return Err(ApplyError::Refused {
                    what: format!("{file}={value}"),
                    target: cgroup.into(),
                    source: into_io(e),
                });
            }
        }
        if !missing.is_empty() && !self.missing_knobs_noted {
            self.missing_knobs_noted = true;
            self.note_once(format!(
                "cgroup knobs {} absent (cpu controller not enabled on cgroup2?); groups are enforced per task only",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    fn release_group(&mut self, cgroup: &str) {
        if let Some(recorded) = self.adopted.groups.remove(cgroup) {
            self.group_originals
                .entry(cgroup.to_string())
                .or_insert(recorded);
        }
        if let Some(saved) = self.group_originals.remove(cgroup) {
            for (file, orig) in saved.iter().rev() {
                self.put_back(cgroup, file, orig);
            }
            self.changed();
        }
    }

    fn restore_all(&mut self) -> RestoreReport {
        let mut report = RestoreReport::default();
        // Whatever a predecessor recorded and nobody took over goes back too.
        let adopted: Vec<u32> = self.adopted.tasks.keys().copied().collect();
        for tid in adopted {
            self.claim_adopted(tid);
        }
        self.starts.clear();
        for (cgroup, knobs) in std::mem::take(&mut self.adopted.groups) {
            self.group_originals.entry(cgroup).or_insert(knobs);
        }
        for (tid, orig) in std::mem::take(&mut self.originals) {
            match self.applier.restore(tid as i32, &orig) {
                Ok(Outcome::Done(())) => report.tasks_restored += 1,
                Ok(Outcome::Gone) => report.tasks_gone += 1,
                Err(e) => report.failures.push(format!("tid {tid}: {e}")),
            }
        }
        let cgroups: Vec<String> = self.group_originals.keys().cloned().collect();
        for c in cgroups {
            self.release_group(&c);
            report.groups_restored += 1;
        }
        if report.failures.is_empty() {
            if let Some(state) = &mut self.state {
                state.remove();
            }
        } else {
            self.persist(true);
        }
        report
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn set_manage_realtime(&mut self, manage: bool) {
        self.manage_realtime = manage;
    }

    fn persist(&mut self, force: bool) {
        if !self.state.as_ref().is_some_and(StateFile::is_dirty) {
            return;
        }
        // Unclaimed adopted entries stay on record until they are restored or taken over. A
        // task whose thread exited before its first write is left out.
        let mut tasks = Vec::with_capacity(self.originals.len() + self.adopted.tasks.len());
        let tids: Vec<u32> = self.originals.keys().copied().collect();
        for tid in tids {
            if let (Some(start), Some(attr)) = (self.start_of(tid), self.originals.get(&tid)) {
                tasks.push((tid, start, *attr));
            }
        }
        for (tid, attr) in &self.adopted.tasks {
            if let Some(&start) = self.adopted.starts.get(tid) {
                tasks.push((*tid, start, *attr));
            }
        }
        let Some(state) = &mut self.state else {
            return;
        };
        let mut groups = self.group_originals.clone();
        for (cgroup, knobs) in &self.adopted.groups {
            groups
                .entry(cgroup.clone())
                .or_insert_with(|| knobs.clone());
        }
        let tasks = tasks.iter().map(|(tid, start, attr)| (*tid, *start, attr));
        if let Err(error) = state.flush(tasks, &groups, force) {
            let note = format!("{error}; originals are kept in memory only");
            self.note_once(note);
        }
    }

    fn settle_adopted(&mut self) {
        let tasks = std::mem::take(&mut self.adopted.tasks);
        self.adopted.starts.clear();
        let groups = std::mem::take(&mut self.adopted.groups);
        if tasks.is_empty() && groups.is_empty() {
            return;
        }
        let (mut restored, mut gone) = (0u64, 0u64);
        for (tid, orig) in tasks {
            match self.applier.restore(tid as i32, &orig) {
                Ok(Outcome::Done(())) => restored += 1,
                Ok(Outcome::Gone) => gone += 1,
                Err(error) => tracing::warn!(tid, %error, "restoring a recorded original failed"),
            }
        }
        for (cgroup, knobs) in &groups {
            for (file, orig) in knobs.iter().rev() {
                self.put_back(cgroup, file, orig);
            }
        }
        tracing::info!(
            restored,
            gone,
            groups = groups.len(),
            "restored originals a previous daemon recorded for tasks and groups no longer managed"
        );
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_task_inherits_its_parents_original_attributes() {
        let mut b = FallbackBackend::new(PathBuf::from("/nonexistent"));
        let orig = SchedAttr {
            size: 56,
            sched_nice: 3,
            ..Default::default()
        };
        b.originals.insert(10, orig);
        b.inherit_original(11, 10);
        b.inherit_original(12, 99);
        assert_eq!(b.original(11), Some(&orig));
        assert_eq!(b.original(12), None);
    }

    /// A real SCHED_FIFO thread (needs root; skipped otherwise): left alone, and reported so,
    /// unless the policy manages RT/DL tasks; when managed, its FIFO policy and priority are
    /// what `restore_all` puts back.
    #[test]
    fn a_realtime_thread_is_changed_only_when_the_policy_manages_realtime_tasks() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let parked = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            let param = libc::sched_param { sched_priority: 7 };
            // SAFETY: sched_setscheduler on the calling thread with a valid param.
            let fifo = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
            tid_tx.send((tid, fifo)).unwrap();
            let _ = done_rx.recv();
        });
        let (tid, fifo) = tid_rx.recv().unwrap();
        if !fifo {
            eprintln!("skipped: SCHED_FIFO refused (needs root)");
            drop(done_tx);
            parked.join().unwrap();
            return;
        }
        let params = ClassParams {
            name: "BACKGROUND".into(),
            scx_id: 0,
            policy: FairPolicy::Batch,
            nice: 4,
            slice_ns: 0,
            uclamp_min: 0,
            uclamp_max: 1024,
        };
        let mut backend = FallbackBackend::new(PathBuf::from("/nonexistent"));
        assert!(matches!(
            backend.apply_task(tid, ClassId(0), &params),
            Err(ApplyError::Realtime(t)) if t == tid
        ));
        let attr = sched_getattr(tid).unwrap();
        assert_eq!(
            (attr.sched_policy, attr.sched_priority),
            (libc::SCHED_FIFO as u32, 7)
        );
        assert_eq!(
            backend.original(tid),
            None,
            "nothing held for a task left alone"
        );

        backend.set_manage_realtime(true);
        backend.apply_task(tid, ClassId(0), &params).unwrap();
        let attr = sched_getattr(tid).unwrap();
        assert_eq!(
            (attr.sched_policy, attr.sched_nice),
            (libc::SCHED_BATCH as u32, 4)
        );
        assert_eq!(
            backend
                .original(tid)
                .map(|o| (o.sched_policy, o.sched_priority)),
            Some((libc::SCHED_FIFO as u32, 7))
        );
        let report = backend.restore_all();
        assert_eq!(report.tasks_restored, 1, "{report:?}");
        let attr = sched_getattr(tid).unwrap();
        assert_eq!(
            (attr.sched_policy, attr.sched_priority),
            (libc::SCHED_FIFO as u32, 7)
        );
        drop(done_tx);
        parked.join().unwrap();
    }

    /// A rescan that finds a tid started at another time than the thread its original was
    /// taken from drops that original (the tid was reused); the same thread keeps it, and a
    /// start not known yet is learned.
    #[test]
    fn a_rescan_drops_the_original_of_a_reused_tid() {
        let mut b = FallbackBackend::new(PathBuf::from("/nonexistent"));
        let orig = SchedAttr {
            size: 56,
            sched_nice: 3,
            ..Default::default()
        };
        let me = std::process::id();
        let start = thread_start_time(me).unwrap();
        b.originals.insert(me, orig);
        b.starts.insert(me, start);
        assert!(!b.thread_seen(me, start), "the same thread");
        assert_eq!(b.original(me), Some(&orig));
        assert!(
            b.thread_seen(me, start + 1),
            "another thread under the same tid"
        );
        assert_eq!(b.original(me), None, "a reused tid's original was kept");
        // An inherited original whose start is not known yet: the thread seen now owns it.
        b.originals.insert(7, orig);
        assert!(!b.thread_seen(7, 500));
        assert_eq!(b.starts.get(&7), Some(&500));
        assert!(b.thread_seen(7, 501));
        // No original, nothing to drop.
        assert!(!b.thread_seen(8, 1));
    }

    #[test]
    fn knob_rendering() {
        let k = GroupKnobs {
            weight: Some(20000),
            idle: Some(true),
            uclamp_min_pct: None,
            uclamp_max_pct: Some(100.0),
            max: Some((Some(50000), 100000)),
        };
        assert_eq!(
            knob_values(&k),
            vec![
                ("cpu.weight", "10000".to_string()),
                ("cpu.idle", "1".to_string()),
                ("cpu.uclamp.max", "max".to_string()),
                ("cpu.max", "50000 100000".to_string())
            ]
        );
    }
}
