//! The real [`TaskSource`]: facts from /proc (through canopy-sys's `ProcFs`) and membership from
//! cgroupfs. A thin adapter; a vanished task (ENOENT/ESRCH) is `Gone`, never an error.

use std::fs;
use std::path::{Path, PathBuf};

use canopy_sys::procfs::{ProcFs, TaskId};
use canopy_sys::Outcome;

use crate::backend::{Gone, TaskSource};
use crate::plan::ProcessFacts;

/// The default cgroup2 mount when none is configured (on hybrid hosts it is
/// `/sys/fs/cgroup/unified`; see [`detect_cgroup2_root`]).
pub const DEFAULT_CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// Finds the cgroup2 mount point from /proc/self/mounts.
pub fn detect_cgroup2_root() -> PathBuf {
    if let Ok(m) = fs::read_to_string("/proc/self/mounts") {
        for line in m.lines() {
            let mut f = line.split_whitespace();
            let (_, mnt, ty) = (f.next(), f.next(), f.next());
            if ty == Some("cgroup2") {
                if let Some(mnt) = mnt {
                    return PathBuf::from(mnt);
                }
            }
        }
    }
    PathBuf::from(DEFAULT_CGROUP2_ROOT)
}

/// Reads tasks through canopy-sys's `ProcFs` and cgroup membership from the cgroup2 mount.
#[derive(Debug)]
pub struct ProcSource {
    proc: ProcFs,
    cgroup_root: PathBuf,
    tids: Vec<i32>,
}

impl ProcSource {
    /// A source over `/proc` and the given cgroup2 root.
    pub fn new(cgroup_root: PathBuf) -> Self {
        ProcSource {
            proc: ProcFs::new(),
            cgroup_root,
            tids: Vec::new(),
        }
    }

    /// The cgroup2 mount this source reads.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
}

/// Parses the `0::/path` line of /proc/PID/cgroup into a path relative to the cgroup2 root.
pub fn parse_cgroup2(content: &str) -> Option<String> {
    canopy_sys::procfs::parse_cgroup_v2_path(content.as_bytes())
        .ok()
        .flatten()
        .map(relative_cgroup)
}

fn relative_cgroup(path: &str) -> String {
    path.trim_start_matches('/').trim_end().to_string()
}

/// `Done` → value, `Gone` or a parse error → `Gone(id)` (a task mid-exit can show a torn file).
fn done<T>(r: Result<Outcome<T>, canopy_sys::procfs::ProcError>, id: u32) -> Result<T, Gone> {
    match r {
        Ok(Outcome::Done(v)) => Ok(v),
        _ => Err(Gone(id)),
    }
}

fn task(tgid: u32, tid: u32) -> TaskId {
    TaskId {
        pid: tgid as i32,
        tid: tid as i32,
    }
}

impl TaskSource for ProcSource {
    fn process_facts(&mut self, tgid: u32) -> Result<ProcessFacts, Gone> {
        let info = done(self.proc.process_info(tgid as i32), tgid)?;
        let cgroup = self.process_cgroup(tgid)?;
        Ok(ProcessFacts {
            tgid,
            comm: info.comm.to_string_lossy(),
            exe: info
                .exe
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cmdline: info.cmdline.to_strings().join(" "),
            uid: info.real_uid,
            cgroup,
            parent_comm: info
                .parent_comm
                .map(|c| c.to_string_lossy())
                .unwrap_or_default(),
            kthread: info.is_kernel_thread,
        })
    }

    fn exec_facts(&mut self, before: &ProcessFacts) -> Result<ProcessFacts, Gone> {
        // execve changes comm, exe and cmdline; the real uid, parent, flags and cgroup stay.
        let tgid = before.tgid;
        let mut facts = before.clone();
        facts.comm = self.thread_comm(tgid, tgid)?;
        facts.exe = done(self.proc.exe(tgid as i32), tgid)?
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        facts.cmdline = done(self.proc.cmdline(tgid as i32), tgid)?
            .to_strings()
            .join(" ");
        Ok(facts)
    }

    fn thread_comm(&mut self, tgid: u32, tid: u32) -> Result<String, Gone> {
        done(self.proc.thread_comm(task(tgid, tid)), tid).map(|c| c.to_string_lossy())
    }

    fn thread_policy(&mut self, tid: u32) -> Result<i32, Gone> {
        // SAFETY: plain syscall on a tid.
        let r = unsafe { libc::sched_getscheduler(tid as libc::pid_t) };
        if r < 0 {
            Err(Gone(tid))
        } else {
            Ok(r & !libc::SCHED_RESET_ON_FORK)
        }
    }

    fn all_tasks(&mut self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let _ = self
            .proc
            .for_each_task(|t| out.push((t.pid as u32, t.tid as u32)));
        out
    }

    fn threads_of(&mut self, tgid: u32) -> Vec<u32> {
        self.tids.clear();
        match self.proc.thread_ids(tgid as i32, &mut self.tids) {
            Ok(Outcome::Done(())) => self.tids.iter().map(|&t| t as u32).collect(),
            _ => Vec::new(),
        }
    }

    fn cgroup_threads(&mut self, cgroup: &str) -> Vec<u32> {
        let p = self.cgroup_root.join(cgroup).join("cgroup.threads");
        match fs::read_to_string(p) {
            Ok(s) => s.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn process_cgroup(&mut self, tgid: u32) -> Result<String, Gone> {
        Ok(done(self.proc.cgroup(task(tgid, tgid)), tgid)?
            .as_deref()
            .map(relative_cgroup)
            .unwrap_or_default())
    }

    fn tgid_of(&mut self, tid: u32) -> Result<u32, Gone> {
        // /proc/TID resolves for any thread id; its status names the thread group.
        let s = fs::read_to_string(format!("/proc/{tid}/status")).map_err(|_| Gone(tid))?;
        s.lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(Gone(tid))
    }

    fn scope_tasks(&mut self, scope: &str) -> Vec<(u32, u32)> {
        // Walk the scope's cgroups instead of all of /proc.
        let mut out = Vec::new();
        let mut dirs = vec![self.cgroup_root.join(scope)];
        while let Some(dir) = dirs.pop() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for tgid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    for tid in self.threads_of(tgid) {
                        out.push((tgid, tid));
                    }
                }
            }
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        dirs.push(e.path());
                    }
                }
            }
        }
        out
    }

    fn cgroup_cpu_usage_usec(&mut self, cgroup: &str) -> Option<u64> {
        let s = fs::read_to_string(self.cgroup_root.join(cgroup).join("cpu.stat")).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_line_is_relative() {
        assert_eq!(
            parse_cgroup2("12:cpu:/x\n0::/user.slice/a.scope\n").as_deref(),
            Some("user.slice/a.scope")
        );
        assert_eq!(parse_cgroup2("0::/\n").as_deref(), Some(""));
        assert_eq!(parse_cgroup2("1:cpu:/\n"), None);
    }

    #[test]
    fn reads_own_process() {
        let mut src = ProcSource::new(detect_cgroup2_root());
        let me = std::process::id();
        let f = src.process_facts(me).unwrap();
        assert_eq!(f.tgid, me);
        assert!(!f.kthread);
        assert!(src.all_tasks().iter().any(|&(t, _)| t == me));
        assert!(src.process_facts(u32::MAX - 1).is_err());
    }
}
