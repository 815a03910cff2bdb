//! The real [`TaskSource`]: facts from /proc and membership from cgroupfs. A thin adapter; a
//! vanished task (ENOENT/ESRCH) is `Gone`, never an error.
//!
//! Integration point: canopy-sys owns /proc parsing; when its `ProcFs` lands this adapter
//! delegates to it instead of the few direct reads below.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

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

/// Reads tasks from a procfs mount and cgroups from a cgroup2 mount.
#[derive(Debug, Clone)]
pub struct ProcSource {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    buf: Vec<u8>,
}

impl ProcSource {
    /// A source over `/proc` and the given cgroup2 root.
    pub fn new(cgroup_root: PathBuf) -> Self {
        ProcSource { proc_root: PathBuf::from("/proc"), cgroup_root, buf: Vec::with_capacity(4096) }
    }

    /// The cgroup2 mount this source reads.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    fn read(&mut self, path: &Path) -> std::io::Result<&[u8]> {
        self.buf.clear();
        fs::File::open(path)?.read_to_end(&mut self.buf)?;
        Ok(&self.buf)
    }

    fn read_string(&mut self, path: &Path, id: u32) -> Result<String, Gone> {
        let b = self.read(path).map_err(|_| Gone(id))?;
        Ok(String::from_utf8_lossy(b).trim_end_matches('\n').to_string())
    }

    /// (ppid, flags) from /proc/PID/stat.
    fn stat(&mut self, tgid: u32) -> Result<(u32, u64), Gone> {
        let p = self.proc_root.join(format!("{tgid}/stat"));
        let b = self.read(&p).map_err(|_| Gone(tgid))?;
        let s = String::from_utf8_lossy(b);
        let after = s.rfind(')').map(|i| &s[i + 1..]).ok_or(Gone(tgid))?;
        let f: Vec<&str> = after.split_whitespace().collect();
        // after ")": state(0) ppid(1) ... flags is field 9 of stat = index 6 here.
        let ppid = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let flags = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((ppid, flags))
    }
}

impl ProcSource {
    fn cmdline(&mut self, tgid: u32) -> Result<String, Gone> {
        let p = self.proc_root.join(format!("{tgid}/cmdline"));
        let b = self.read(&p).map_err(|_| Gone(tgid))?;
        let mut s = String::from_utf8_lossy(b).replace('\0', " ");
        s.truncate(s.trim_end().len());
        Ok(s)
    }

    /// Real uid: the owner of /proc/PID/status would be the effective uid, so read the line.
    fn uid(&mut self, tgid: u32) -> Result<u32, Gone> {
        let status = self.read_string(&self.proc_root.join(format!("{tgid}/status")), tgid)?;
        Ok(status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }
}

/// Parses the `0::/path` line of /proc/PID/cgroup into a path relative to the cgroup2 root.
pub fn parse_cgroup2(content: &str) -> Option<String> {
    content
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').trim_end().to_string())
}

const PF_KTHREAD: u64 = 0x0020_0000;

impl TaskSource for ProcSource {
    fn process_facts(&mut self, tgid: u32) -> Result<ProcessFacts, Gone> {
        let (ppid, flags) = self.stat(tgid)?;
        let comm = self.read_string(&self.proc_root.join(format!("{tgid}/comm")), tgid)?;
        let exe = fs::read_link(self.proc_root.join(format!("{tgid}/exe")))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = self.cmdline(tgid)?;
        let uid = self.uid(tgid)?;
        let cgroup = self.process_cgroup(tgid)?;
        let parent_comm = if ppid > 0 {
            self.read_string(&self.proc_root.join(format!("{ppid}/comm")), ppid).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ProcessFacts {
            tgid,
            comm,
            exe,
            cmdline,
            uid,
            cgroup,
            parent_comm,
            kthread: flags & PF_KTHREAD != 0,
        })
    }

    fn exec_facts(&mut self, before: &ProcessFacts) -> Result<ProcessFacts, Gone> {
        let tgid = before.tgid;
        let mut facts = before.clone();
        facts.comm = self.read_string(&self.proc_root.join(format!("{tgid}/comm")), tgid)?;
        facts.exe = fs::read_link(self.proc_root.join(format!("{tgid}/exe")))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        facts.cmdline = self.cmdline(tgid)?;
        // The real uid survives execve (a setuid binary changes the effective uid only).
        Ok(facts)
    }

    fn thread_comm(&mut self, tgid: u32, tid: u32) -> Result<String, Gone> {
        self.read_string(&self.proc_root.join(format!("{tgid}/task/{tid}/comm")), tid)
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
        let Ok(dir) = fs::read_dir(&self.proc_root) else { return out };
        for e in dir.flatten() {
            let Some(tgid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            for tid in self.threads_of(tgid) {
                out.push((tgid, tid));
            }
        }
        out
    }

    fn threads_of(&mut self, tgid: u32) -> Vec<u32> {
        let Ok(dir) = fs::read_dir(self.proc_root.join(format!("{tgid}/task"))) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect()
    }

    fn cgroup_threads(&mut self, cgroup: &str) -> Vec<u32> {
        let p = self.cgroup_root.join(cgroup).join("cgroup.threads");
        match fs::read_to_string(p) {
            Ok(s) => s.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn process_cgroup(&mut self, tgid: u32) -> Result<String, Gone> {
        let s = self.read_string(&self.proc_root.join(format!("{tgid}/cgroup")), tgid)?;
        Ok(parse_cgroup2(&s).unwrap_or_default())
    }

    fn tgid_of(&mut self, tid: u32) -> Result<u32, Gone> {
        let s = self.read_string(&self.proc_root.join(format!("{tid}/status")), tid)?;
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
        s.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_line_is_relative() {
        assert_eq!(parse_cgroup2("12:cpu:/x\n0::/user.slice/a.scope\n").as_deref(), Some("user.slice/a.scope"));
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
