//! The fallback backend for kernels without sched_ext: a class becomes `sched_setattr` on the
//! thread (policy, nice, custom slice via sched_runtime, uclamp when the kernel has UCLAMP_TASK)
//! and a group state becomes cgroup v2 knobs (cpu.weight, cpu.idle, cpu.uclamp.min/max, cpu.max).
//! It remembers every original value it overwrote and puts them back on `restore_all`.
//!
//! Integration point: canopy-sys owns sched_setattr and cgroupfs writes; when they land, the two
//! syscalls and the knob writes below delegate to it.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use crate::backend::{ApplyError, Backend, Gone, Mode, RestoreReport};
use crate::plan::{ClassId, ClassParams, FairPolicy, GroupKnobs, ScxGroupPolicy};

const SCHED_NORMAL: u32 = 0;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
const SCHED_FLAG_UTIL_CLAMP_MIN: u64 = 0x20;
const SCHED_FLAG_UTIL_CLAMP_MAX: u64 = 0x40;
/// `sched_util_min/max` value that resets a clamp to the system default (Linux ≥ 5.11).
const UCLAMP_RESET: u32 = u32::MAX;

/// The kernel's `struct sched_attr`, SCHED_ATTR_SIZE_VER1 (with the util-clamp fields that
/// libc's copy lacks).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedAttr {
    /// Size of this struct (56).
    pub size: u32,
    /// SCHED_* policy.
    pub sched_policy: u32,
    /// SCHED_FLAG_*.
    pub sched_flags: u64,
    /// Nice (fair policies).
    pub sched_nice: i32,
    /// RT priority.
    pub sched_priority: u32,
    /// DL runtime, or the custom slice of a fair task.
    pub sched_runtime: u64,
    /// DL deadline.
    pub sched_deadline: u64,
    /// DL period.
    pub sched_period: u64,
    /// uclamp min.
    pub sched_util_min: u32,
    /// uclamp max.
    pub sched_util_max: u32,
}

/// Reads a thread's attributes.
pub fn sched_getattr(tid: u32) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr { size: 56, ..Default::default() };
    // SAFETY: the kernel writes at most `size` (56) bytes into our repr(C) struct.
    let r = unsafe {
        libc::syscall(libc::SYS_sched_getattr, tid as libc::pid_t, &mut attr as *mut SchedAttr, 56u32, 0u32)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(attr) }
}

/// Writes a thread's attributes.
pub fn sched_setattr(tid: u32, attr: &SchedAttr) -> io::Result<()> {
    let mut a = *attr;
    a.size = 56;
    // SAFETY: the kernel reads `size` bytes from our repr(C) struct.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid as libc::pid_t, &a as *const SchedAttr, 0u32) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT))
}

/// Fallback backend state: originals to restore and what the kernel turned out to support.
#[derive(Debug)]
pub struct FallbackBackend {
    cgroup_root: PathBuf,
    originals: HashMap<u32, SchedAttr>,
    group_originals: HashMap<String, Vec<(&'static str, String)>>,
    uclamp_supported: Option<bool>,
    missing_knobs_noted: bool,
    notes: Vec<String>,
}

impl FallbackBackend {
    /// A backend writing cgroup knobs under `cgroup_root` (the cgroup2 mount).
    pub fn new(cgroup_root: PathBuf) -> Self {
        FallbackBackend {
            cgroup_root,
            originals: HashMap::new(),
            group_originals: HashMap::new(),
            uclamp_supported: None,
            missing_knobs_noted: false,
            notes: Vec::new(),
        }
    }

    /// The saved original attributes of a thread (tests check restore).
    pub fn original(&self, tid: u32) -> Option<&SchedAttr> {
        self.originals.get(&tid)
    }

    fn attr_for(&self, params: &ClassParams, with_uclamp: bool) -> SchedAttr {
        let policy = match params.policy {
            FairPolicy::Normal => SCHED_NORMAL,
            FairPolicy::Batch => SCHED_BATCH,
            FairPolicy::Idle => SCHED_IDLE,
        };
        let mut attr = SchedAttr {
            size: 56,
            sched_policy: policy,
            sched_nice: params.nice,
            sched_runtime: params.slice_ns,
            ..Default::default()
        };
        if with_uclamp {
            attr.sched_flags |= SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX;
            attr.sched_util_min = params.uclamp_min.min(1024);
            attr.sched_util_max = params.uclamp_max.min(1024);
        }
        attr
    }

    fn note_once(&mut self, note: String) {
        if !self.notes.contains(&note) {
            tracing::warn!("{note}");
            self.notes.push(note);
        }
    }

    fn knob_path(&self, cgroup: &str, file: &str) -> PathBuf {
        self.cgroup_root.join(cgroup).join(file)
    }
}

fn knob_values(knobs: &GroupKnobs) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(w) = knobs.weight {
        v.push(("cpu.weight", w.clamp(1, 10000).to_string()));
    }
    if let Some(i) = knobs.idle {
        v.push(("cpu.idle", u8::from(i).to_string()));
    }
    if let Some(m) = knobs.uclamp_min_pct {
        v.push(("cpu.uclamp.min", format!("{:.2}", m.clamp(0.0, 100.0))));
    }
    if let Some(m) = knobs.uclamp_max_pct {
        v.push(("cpu.uclamp.max", if m >= 100.0 { "max".into() } else { format!("{:.2}", m.max(0.0)) }));
    }
    if let Some((quota, period)) = knobs.max {
        v.push(("cpu.max", match quota {
            Some(q) => format!("{q} {period}"),
            None => format!("max {period}"),
        }));
    }
    v
}

impl Backend for FallbackBackend {
    fn mode(&self) -> Mode {
        Mode::Fallback
    }

    fn apply_task(&mut self, tid: u32, _class: ClassId, params: &ClassParams) -> Result<(), ApplyError> {
        if !self.originals.contains_key(&tid) {
            match sched_getattr(tid) {
                Ok(a) => {
                    self.originals.insert(tid, a);
                }
                Err(e) if is_gone(&e) => return Err(Gone(tid).into()),
                Err(e) => {
                    return Err(ApplyError::Refused { what: "sched_getattr".into(), target: tid.to_string(), source: e })
                }
            }
        }
        let with_uclamp = self.uclamp_supported != Some(false);
        match sched_setattr(tid, &self.attr_for(params, with_uclamp)) {
            Ok(()) => {
                if with_uclamp {
                    self.uclamp_supported = Some(true);
                }
                Ok(())
            }
            Err(e) if is_gone(&e) => Err(Gone(tid).into()),
            Err(e)
                if with_uclamp
                    && self.uclamp_supported.is_none()
                    && matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) =>
            {
                // Retry without uclamp once; if that works, the kernel lacks UCLAMP_TASK.
                match sched_setattr(tid, &self.attr_for(params, false)) {
                    Ok(()) => {
                        self.uclamp_supported = Some(false);
                        self.note_once(format!(
                            "uclamp unsupported by this kernel ({e}); classes apply policy, nice and slice only"
                        ));
                        Ok(())
                    }
                    Err(e2) if is_gone(&e2) => Err(Gone(tid).into()),
                    Err(e2) => Err(ApplyError::Refused {
                        what: format!("class {}", params.name),
                        target: format!("tid {tid}"),
                        source: e2,
                    }),
                }
            }
            Err(e) => Err(ApplyError::Refused {
                what: format!("class {}", params.name),
                target: format!("tid {tid}"),
                source: e,
            }),
        }
    }

    fn inherit_original(&mut self, child: u32, parent: u32) {
        if let Some(orig) = self.originals.get(&parent).copied() {
            self.originals.entry(child).or_insert(orig);
        }
    }

    fn release_task(&mut self, tid: u32) {
        if let Some(orig) = self.originals.remove(&tid) {
            let _ = restore_attr(tid, &orig, self.uclamp_supported == Some(true));
        }
    }

    fn forget_task(&mut self, tid: u32) {
        self.originals.remove(&tid);
    }

    fn apply_group(&mut self, cgroup: &str, knobs: &GroupKnobs, _scx: &ScxGroupPolicy) -> Result<(), ApplyError> {
        let values = knob_values(knobs);
        // Restore knobs the new state no longer sets, then write the new values.
        let saved = self.group_originals.entry(cgroup.to_string()).or_default().clone();
        for (file, orig) in &saved {
            if !values.iter().any(|(f, _)| f == file) {
                let _ = fs::write(self.knob_path(cgroup, file), orig);
            }
        }
        let mut missing = Vec::new();
        for (file, value) in values {
            let path = self.knob_path(cgroup, file);
            let entry = self.group_originals.get(cgroup).map(|v| v.iter().any(|(f, _)| *f == file));
            if entry != Some(true) {
                match fs::read_to_string(&path) {
                    Ok(orig) => self
                        .group_originals
                        .entry(cgroup.to_string())
                        .or_default()
                        .push((file, orig.trim().to_string())),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if !self.cgroup_root.join(cgroup).exists() {
                            return Err(Gone(0).into());
                        }
                        missing.push(file);
                        continue;
                    }
                    Err(e) => {
                        return Err(ApplyError::Refused { what: format!("reading {file}"), target: cgroup.into(), source: e })
                    }
                }
            }
            if let Err(e) = fs::write(&path, &value) {
                return Err(ApplyError::Refused { what: format!("{file}={value}"), target: cgroup.into(), source: e });
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
        if let Some(saved) = self.group_originals.remove(cgroup) {
            for (file, orig) in saved.iter().rev() {
                let _ = fs::write(self.knob_path(cgroup, file), orig);
            }
        }
    }

    fn restore_all(&mut self) -> RestoreReport {
        let mut report = RestoreReport::default();
        let with_uclamp = self.uclamp_supported == Some(true);
        for (tid, orig) in std::mem::take(&mut self.originals) {
            match restore_attr(tid, &orig, with_uclamp) {
                Ok(()) => report.tasks_restored += 1,
                Err(e) if is_gone(&e) => report.tasks_gone += 1,
                Err(e) => report.failures.push(format!("tid {tid}: {e}")),
            }
        }
        let cgroups: Vec<String> = self.group_originals.keys().cloned().collect();
        for c in cgroups {
            self.release_group(&c);
            report.groups_restored += 1;
        }
        report
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

fn restore_attr(tid: u32, orig: &SchedAttr, with_uclamp: bool) -> io::Result<()> {
    let mut a = *orig;
    a.sched_flags &= SCHED_FLAG_RESET_ON_FORK;
    if with_uclamp {
        a.sched_flags |= SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX;
        if orig.sched_util_min == 0 && orig.sched_util_max == 1024 {
            a.sched_util_min = UCLAMP_RESET;
            a.sched_util_max = UCLAMP_RESET;
        }
    }
    sched_setattr(tid, &a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_task_inherits_its_parents_original_attributes() {
        let mut b = FallbackBackend::new(PathBuf::from("/nonexistent"));
        let orig = SchedAttr { size: 56, sched_nice: 3, ..Default::default() };
        b.originals.insert(10, orig);
        b.inherit_original(11, 10);
        b.inherit_original(12, 99);
        assert_eq!(b.original(11), Some(&orig));
        assert_eq!(b.original(12), None);
    }

    #[test]
    fn sched_attr_is_the_kernel_size() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
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
