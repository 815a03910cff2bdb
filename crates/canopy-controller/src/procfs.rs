//! The real [`TaskSource`]: facts from /proc (through canopy-sys's `ProcFs`) and membership and
//! `cpu.stat` from cgroupfs (through canopy-sys's `Cgroup`), user names through NSS (canopy-sys's
//! `UserNames`, once per uid). A thin adapter; a vanished task (ENOENT/ESRCH) is `Gone`, never an error.
//! The command line is read only while the plan has a rule on it (canopy-sys bounds it to
//! `CMDLINE_MAX_BYTES`); exe and cmdline are shared strings, so a fork's facts copy pointers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use canopy_sys::cgroup::{Cgroup, CgroupHierarchy};
use canopy_sys::procfs::{ProcFs, TaskId};
use canopy_sys::users::UserNames;
use canopy_sys::Outcome;

use crate::backend::{Gone, TaskSource};
use crate::policy_port::ProcessFacts;

/// Reads tasks through canopy-sys's `ProcFs` and cgroup membership from the cgroup2 mount.
#[derive(Debug)]
pub struct ProcSource {
    proc: ProcFs,
    cgroup_root: PathBuf,
    tids: Vec<i32>,
    user_names: UserNames,
    read_cmdlines: bool,
}

impl ProcSource {
    /// A source over `/proc` and the given cgroup2 root.
    pub fn new(cgroup_root: PathBuf) -> Self {
        ProcSource {
            proc: ProcFs::new(),
            cgroup_root,
            tids: Vec::new(),
            user_names: UserNames::new(),
            read_cmdlines: true,
        }
    }

    /// The cgroup2 mount this source reads.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// A cgroup by its path relative to the cgroup2 mount.
    fn cgroup(&self, relative: &str) -> Cgroup {
        Cgroup::from_dir(self.cgroup_root.join(relative))
    }

    /// The command line joined by spaces, when it is read at all.
    fn cmdline(&mut self, tgid: u32) -> Result<Arc<str>, Gone> {
        if !self.read_cmdlines {
            return Ok(Arc::default());
        }
        Ok(done(self.proc.cmdline(tgid as i32), tgid)?.joined().into())
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
    fn read_cmdlines(&mut self, wanted: bool) {
        self.read_cmdlines = wanted;
    }

    fn process_facts(&mut self, tgid: u32) -> Result<ProcessFacts, Gone> {
        let info = if self.read_cmdlines {
            self.proc.process_info(tgid as i32)
        } else {
            self.proc.process_info_without_cmdline(tgid as i32)
        };
        let info = done(info, tgid)?;
        let cgroup = self.process_cgroup(tgid)?;
        Ok(ProcessFacts {
            tgid,
            comm: info.comm.to_string_lossy(),
            exe: info
                .exe
                .map(|p| p.to_string_lossy().into())
                .unwrap_or_default(),
            cmdline: info.cmdline.joined().into(),
            uid: info.real_uid,
            user: self.user_names.name(info.real_uid),
            cgroup,
            parent_comm: info
                .parent_comm
                .map(|c| c.to_string_lossy())
                .unwrap_or_default(),
            kthread: info.is_kernel_thread,
        })
    }

    fn process_cmdline(&mut self, tgid: u32) -> Result<Arc<str>, Gone> {
        self.cmdline(tgid)
    }

    fn exec_facts(&mut self, before: &ProcessFacts) -> Result<ProcessFacts, Gone> {
        // execve changes comm, exe and cmdline; the real uid, parent, flags and cgroup stay.
        let tgid = before.tgid;
        let mut facts = before.clone();
        facts.comm = self.thread_comm(tgid, tgid)?;
        facts.exe = done(self.proc.exe(tgid as i32), tgid)?
            .map(|p| p.to_string_lossy().into())
            .unwrap_or_default();
        facts.cmdline = self.cmdline(tgid)?;
        Ok(facts)
    }

    fn thread_comm(&mut self, tgid: u32, tid: u32) -> Result<String, Gone> {
        done(self.proc.thread_comm(task(tgid, tid)), tid).map(|c| c.to_string_lossy())
    }

    fn thread_comm_and_start(&mut self, tgid: u32, tid: u32) -> Result<(String, u64), Gone> {
        done(self.proc.task_stat(task(tgid, tid)), tid)
            .map(|stat| (stat.comm.to_string_lossy(), stat.start_time_ticks))
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

    fn thread_owner(&mut self, tid: u32) -> Result<Option<u32>, Gone> {
        done(self.proc.task_uids(tid as i32), tid).map(|uids| uids.sole())
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
        match self.cgroup(cgroup).threads() {
            Ok(tids) => tids.into_iter().map(|tid| tid as u32).collect(),
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
        done(self.proc.thread_group_id(tid as i32), tid).map(|tgid| tgid as u32)
    }

    fn scope_tasks(&mut self, scope: &str) -> Vec<(u32, u32)> {
        // Walk the scope's cgroups instead of all of /proc.
        let hierarchy = CgroupHierarchy::at(&self.cgroup_root);
        let cgroups = hierarchy.walk(&self.cgroup(scope)).unwrap_or_default();
        let mut out = Vec::new();
        for entry in cgroups {
            let processes = Cgroup::from_dir(entry.dir).processes().unwrap_or_default();
            for tgid in processes {
                for tid in self.threads_of(tgid as u32) {
                    out.push((tgid as u32, tid));
                }
            }
        }
        out
    }

    fn cgroup_cpu_usage_usec(&mut self, cgroup: &str) -> Option<u64> {
        self.cgroup(cgroup)
            .cpu_stat()
            .ok()
            .map(|stat| stat.usage_usec)
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
        let mut src = ProcSource::new(CgroupHierarchy::system().mount_point().to_path_buf());
        let me = std::process::id();
        let f = src.process_facts(me).unwrap();
        assert_eq!(f.tgid, me);
        assert!(!f.kthread);
        assert!(src.all_tasks().iter().any(|&(t, _)| t == me));
        assert!(src.process_facts(u32::MAX - 1).is_err());
    }
}
