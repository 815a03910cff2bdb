//! Reading `/proc`: enumerating processes and threads, and the few per-task facts canopy
//! matches on (comm, thread name, exe, cmdline, cgroup v2 path, real uid, parent, flags,
//! scheduling policy).
//!
//! Hand-written rather than the `procfs` crate: canopy reads five small files per task, and a
//! full scan of every `/proc/*/task/*` must stay cheap. [`ProcFs`] keeps one path buffer and
//! one read buffer and reuses them for every read, `stat` is parsed in place (the comm lands in
//! an inline [`Comm`]), and a task that vanishes mid-read is [`Outcome::Gone`], never an error.
//! The parsers (`procfs/parse.rs`) are pure functions with unit tests; the reads are tested
//! against the live host.
//!
//! Every read is bounded, because a process controls what some of these files hold: the
//! command line is read up to [`CMDLINE_MAX_BYTES`] (a 4 MiB argv costs 4 KiB), anything else
//! up to [`FILE_MAX_BYTES`]. The reader's buffer never grows past that.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::{is_gone_error, Comm, Outcome, Pid};

mod parse;
use parse::parse_pid_name;
pub use parse::{
    parse_cgroup_v2_path, parse_stat, parse_status_real_uid, parse_status_tgid, parse_status_uids,
    Cmdline, TaskStat, TaskUids,
};

/// How much of `/proc/PID/cmdline` is read: the arguments past this are not seen (a `cmdline`
/// rule matches within the first 4 KiB).
pub const CMDLINE_MAX_BYTES: usize = 4096;
/// How much of any other `/proc` file is read (`stat`, `status`, `cgroup` are far smaller; a
/// cgroup path is at most a few KiB).
pub const FILE_MAX_BYTES: usize = 64 * 1024;

/// `PF_KTHREAD` from the kernel's `include/linux/sched.h`: the task is a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Something in `/proc` could not be read or did not have the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Reading a file or directory failed for a reason other than the task having gone.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file's content did not parse.
    #[error("cannot parse {path}: {reason}: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
        /// The offending content (cut to 256 bytes).
        content: String,
    },
}

/// A thread, named by its process (thread group) id and its own thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// The process id (tgid).
    pub pid: Pid,
    /// The thread id (equal to `pid` for the main thread).
    pub tid: Pid,
}

/// The per-process facts canopy's matcher looks at (the same for every thread of it; a
/// caller may read them once per process and cache them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process id.
    pub pid: Pid,
    /// The process's comm (its main thread's name).
    pub comm: Comm,
    /// Whether it is a kernel thread (`PF_KTHREAD`).
    pub is_kernel_thread: bool,
    /// The executable (`/proc/PID/exe`); `None` for kernel threads, zombies and processes the
    /// kernel will not show it for (`EACCES`). A deleted executable reads with the kernel's
    /// ` (deleted)` suffix.
    pub exe: Option<PathBuf>,
    /// The command line.
    pub cmdline: Cmdline,
    /// The real uid.
    pub real_uid: u32,
    /// The parent process id (0 if none).
    pub parent_pid: Pid,
    /// The parent's comm; `None` if there is no parent or it has gone.
    pub parent_comm: Option<Comm>,
}

/// The per-thread facts: its stat (name, flags, nice, policy) and its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Which thread.
    pub task: TaskId,
    /// The thread's own stat: its name (`comm`), flags, nice, policy.
    pub stat: TaskStat,
    /// The cgroup v2 path relative to the cgroup2 root (the `0::` line); `None` if the kernel
    /// has no cgroup2 hierarchy.
    pub cgroup: Option<String>,
}

/// Everything canopy's matcher looks at for one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The thread's own facts.
    pub thread: ThreadInfo,
    /// Its process's facts.
    pub process: ProcessInfo,
}

/// Unwraps a `Result<Outcome<T>, _>` or returns `Ok(Outcome::Gone)` from the caller.
macro_rules! or_gone {
    ($read:expr) => {
        match $read? {
            Outcome::Done(value) => value,
            Outcome::Gone => return Ok(Outcome::Gone),
        }
    };
}

/// A reader of one `/proc` mount, reusing its buffers for every read (one per thread of use).
#[derive(Debug)]
pub struct ProcFs {
    root: String,
    path: String,
    buffer: Vec<u8>,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::new()
    }
}

impl ProcFs {
    /// A reader of `/proc`.
    pub fn new() -> ProcFs {
        ProcFs::at(Path::new("/proc"))
    }

    /// A reader of a procfs-shaped tree elsewhere (tests use a fake one). The path must be
    /// UTF-8.
    pub fn at(root: &Path) -> ProcFs {
        ProcFs {
            root: root.to_string_lossy().trim_end_matches('/').to_owned(),
            path: String::with_capacity(64),
            buffer: Vec::with_capacity(1024),
        }
    }

    /// The root this reader reads.
    pub fn root(&self) -> &Path {
        Path::new(&self.root)
    }

    /// Every process id in `/proc`, in directory order.
    pub fn process_ids(&mut self) -> Result<Vec<Pid>, ProcError> {
        let mut pids = Vec::with_capacity(512);
        let entries = std::fs::read_dir(&self.root).map_err(|source| ProcError::Read {
            path: PathBuf::from(&self.root),
            source,
        })?;
        for entry in entries.flatten() {
            if let Some(pid) = parse_pid_name(entry.file_name().as_encoded_bytes()) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Appends the thread ids of process `pid` to `tids` (`/proc/PID/task/*`).
    pub fn thread_ids(&mut self, pid: Pid, tids: &mut Vec<Pid>) -> Result<Outcome<()>, ProcError> {
        self.set_path(format_args!("{pid}/task"));
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(error) if is_gone_error(&error) => return Ok(Outcome::Gone),
            Err(source) => return Err(self.read_error(source)),
        };
        for entry in entries {
            match entry {
                Ok(entry) => {
                    if let Some(tid) = parse_pid_name(entry.file_name().as_encoded_bytes()) {
                        tids.push(tid);
                    }
                }
                Err(error) if is_gone_error(&error) => return Ok(Outcome::Gone),
                Err(source) => return Err(self.read_error(source)),
            }
        }
        Ok(Outcome::Done(()))
    }

    /// Calls `visit` for every thread of every process (`/proc/*/task/*`); processes that exit
    /// during the scan are skipped. Returns the number of threads visited.
    pub fn for_each_task(&mut self, mut visit: impl FnMut(TaskId)) -> Result<usize, ProcError> {
        let mut tids = Vec::with_capacity(64);
        let mut visited = 0;
        for pid in self.process_ids()? {
            tids.clear();
            if self.thread_ids(pid, &mut tids)?.is_gone() {
                continue;
            }
            for &tid in &tids {
                visit(TaskId { pid, tid });
                visited += 1;
            }
        }
        Ok(visited)
    }

    /// The stat of one thread (`/proc/PID/task/TID/stat`).
    pub fn task_stat(&mut self, task: TaskId) -> Result<Outcome<TaskStat>, ProcError> {
        self.set_path(format_args!("{}/task/{}/stat", task.pid, task.tid));
        self.read_stat()
    }

    /// The stat of a process (`/proc/PID/stat`, its main thread's view plus process totals).
    pub fn process_stat(&mut self, pid: Pid) -> Result<Outcome<TaskStat>, ProcError> {
        self.set_path(format_args!("{pid}/stat"));
        self.read_stat()
    }

    /// The thread's name (`/proc/PID/task/TID/comm`).
    pub fn thread_comm(&mut self, task: TaskId) -> Result<Outcome<Comm>, ProcError> {
        self.set_path(format_args!("{}/task/{}/comm", task.pid, task.tid));
        Ok(self
            .read_file()?
            .map(|content| Comm::from_bytes(content.strip_suffix(b"\n").unwrap_or(content))))
    }

    /// The process's executable (`/proc/PID/exe`); `Done(None)` for kernel threads, zombies
    /// and processes whose exe link the kernel will not show us (the link needs ptrace read
    /// access, which even root lacks for some processes, e.g. a sandbox's init).
    pub fn exe(&mut self, pid: Pid) -> Result<Outcome<Option<PathBuf>>, ProcError> {
        self.set_path(format_args!("{pid}/exe"));
        match std::fs::read_link(&self.path) {
            Ok(target) => Ok(Outcome::Done(Some(target))),
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                Ok(Outcome::Done(None))
            }
            Err(error) if is_gone_error(&error) => {
                // Kernel threads and zombies have no exe link; a process that exited has no
                // directory at all.
                self.set_path(format_args!("{pid}"));
                if Path::new(&self.path).exists() {
                    Ok(Outcome::Done(None))
                } else {
                    Ok(Outcome::Gone)
                }
            }
            Err(source) => Err(self.read_error(source)),
        }
    }

    /// The process's command line (`/proc/PID/cmdline`), its first [`CMDLINE_MAX_BYTES`].
    pub fn cmdline(&mut self, pid: Pid) -> Result<Outcome<Cmdline>, ProcError> {
        self.set_path(format_args!("{pid}/cmdline"));
        Ok(self
            .read_file_up_to(CMDLINE_MAX_BYTES)?
            .map(|content| Cmdline::from_raw(content.to_vec())))
    }

    /// The thread's cgroup v2 path (`0::` line of `/proc/PID/task/TID/cgroup`); `Done(None)`
    /// when the kernel has no cgroup2 hierarchy.
    pub fn cgroup(&mut self, task: TaskId) -> Result<Outcome<Option<String>>, ProcError> {
        self.set_path(format_args!("{}/task/{}/cgroup", task.pid, task.tid));
        match self.read_file()? {
            Outcome::Gone => Ok(Outcome::Gone),
            Outcome::Done(content) => match parse_cgroup_v2_path(content) {
                Ok(path) => Ok(Outcome::Done(path.map(str::to_owned))),
                Err(reason) => Err(self.parse_error(reason)),
            },
        }
    }

    /// The process's real uid (first field of the `Uid:` line of `/proc/PID/status`).
    pub fn real_uid(&mut self, pid: Pid) -> Result<Outcome<u32>, ProcError> {
        self.parsed_status(pid, parse_status_real_uid)
    }

    /// The uids thread `tid` runs with now (`/proc/TID/status`: that thread's own credentials,
    /// which a `setresuid` may have changed since it was forked or exec'd).
    pub fn task_uids(&mut self, tid: Pid) -> Result<Outcome<TaskUids>, ProcError> {
        self.parsed_status(tid, parse_status_uids)
    }

    /// The thread group (process) a thread id belongs to (`/proc/TID` resolves for any thread).
    pub fn thread_group_id(&mut self, tid: Pid) -> Result<Outcome<Pid>, ProcError> {
        self.parsed_status(tid, parse_status_tgid)
    }

    /// One field of `/proc/ID/status`, by `parse`.
    fn parsed_status<T>(
        &mut self,
        id: Pid,
        parse: fn(&[u8]) -> Result<T, &'static str>,
    ) -> Result<Outcome<T>, ProcError> {
        self.set_path(format_args!("{id}/status"));
        match self.read_file()? {
            Outcome::Gone => Ok(Outcome::Gone),
            Outcome::Done(content) => match parse(content) {
                Ok(value) => Ok(Outcome::Done(value)),
                Err(reason) => Err(self.parse_error(reason)),
            },
        }
    }

    /// The per-process facts: stat (comm, flags, parent), exe, cmdline, real uid and the
    /// parent's comm. `Gone` if the process exits on the way (the parent exiting only empties
    /// `parent_comm`).
    pub fn process_info(&mut self, pid: Pid) -> Result<Outcome<ProcessInfo>, ProcError> {
        self.read_process_info(pid, true)
    }

    /// [`ProcFs::process_info`] without reading the command line (left empty): for a caller
    /// with no use for it, since the process controls what it holds.
    pub fn process_info_without_cmdline(
        &mut self,
        pid: Pid,
    ) -> Result<Outcome<ProcessInfo>, ProcError> {
        self.read_process_info(pid, false)
    }

    fn read_process_info(
        &mut self,
        pid: Pid,
        with_cmdline: bool,
    ) -> Result<Outcome<ProcessInfo>, ProcError> {
        let stat = or_gone!(self.process_stat(pid));
        let exe = or_gone!(self.exe(pid));
        let cmdline = if with_cmdline {
            or_gone!(self.cmdline(pid))
        } else {
            Cmdline::default()
        };
        let real_uid = or_gone!(self.real_uid(pid));
        let parent_comm = if stat.parent_pid > 0 {
            self.process_stat(stat.parent_pid)?
                .done()
                .map(|parent| parent.comm)
        } else {
            None
        };
        Ok(Outcome::Done(ProcessInfo {
            pid,
            comm: stat.comm,
            is_kernel_thread: stat.is_kernel_thread(),
            exe,
            cmdline,
            real_uid,
            parent_pid: stat.parent_pid,
            parent_comm,
        }))
    }

    /// The per-thread facts: the thread's stat and cgroup.
    pub fn thread_info(&mut self, task: TaskId) -> Result<Outcome<ThreadInfo>, ProcError> {
        let stat = or_gone!(self.task_stat(task));
        let cgroup = or_gone!(self.cgroup(task));
        Ok(Outcome::Done(ThreadInfo { task, stat, cgroup }))
    }

    /// Everything the matcher needs about one thread: [`ProcFs::thread_info`] and
    /// [`ProcFs::process_info`]. `Gone` if the thread or its process exits on the way.
    pub fn task_info(&mut self, task: TaskId) -> Result<Outcome<TaskInfo>, ProcError> {
        let thread = or_gone!(self.thread_info(task));
        let process = or_gone!(self.process_info(task.pid));
        Ok(Outcome::Done(TaskInfo { thread, process }))
    }

    fn set_path(&mut self, relative: std::fmt::Arguments<'_>) {
        self.path.clear();
        self.path.push_str(&self.root);
        self.path.push('/');
        let _ = self.path.write_fmt(relative);
    }

    fn read_stat(&mut self) -> Result<Outcome<TaskStat>, ProcError> {
        match self.read_file()? {
            Outcome::Gone => Ok(Outcome::Gone),
            Outcome::Done(content) => match parse_stat(content) {
                Ok(stat) => Ok(Outcome::Done(stat)),
                Err(reason) => Err(self.parse_error(reason)),
            },
        }
    }

    /// Reads the file at `self.path` into the reused buffer, up to [`FILE_MAX_BYTES`].
    fn read_file(&mut self) -> Result<Outcome<&[u8]>, ProcError> {
        self.read_file_up_to(FILE_MAX_BYTES)
    }

    /// Reads at most `limit` bytes of the file at `self.path` into the reused buffer.
    fn read_file_up_to(&mut self, limit: usize) -> Result<Outcome<&[u8]>, ProcError> {
        self.buffer.clear();
        let result = File::open(&self.path)
            .and_then(|mut file| read_until_short(&mut file, &mut self.buffer, limit));
        match result {
            Ok(_) => Ok(Outcome::Done(&self.buffer)),
            Err(error) if is_gone_error(&error) => Ok(Outcome::Gone),
            Err(source) => Err(ProcError::Read {
                path: PathBuf::from(&self.path),
                source,
            }),
        }
    }

    fn read_error(&self, source: io::Error) -> ProcError {
        ProcError::Read {
            path: PathBuf::from(&self.path),
            source,
        }
    }

    fn parse_error(&self, reason: &'static str) -> ProcError {
        let shown = self.buffer.get(..256).unwrap_or(self.buffer.as_slice());
        ProcError::Parse {
            path: PathBuf::from(&self.path),
            reason,
            content: String::from_utf8_lossy(shown).into_owned(),
        }
    }
}

/// The size of one read of a `/proc` file: every file canopy reads is smaller but for a long
/// command line or a deep cgroup path, which take a few reads.
const READ_CHUNK_BYTES: usize = 4096;

/// Reads `file` into `buffer` up to `limit` bytes, stopping at the first read that returns less
/// than it asked for. procfs answers a read with as much as it has (seq_file fills the caller's
/// buffer until its records end; `cmdline` copies until the arguments end), and so does a
/// regular file short of its end, so a short read is the end: one `read` per small file where
/// `read_to_end` needs a second one to see 0 (the daemon reads one to three per fork and exec).
fn read_until_short(file: &mut File, buffer: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    loop {
        let start = buffer.len();
        let want = limit.saturating_sub(start).min(READ_CHUNK_BYTES);
        if want == 0 {
            return Ok(());
        }
        buffer.resize(start + want, 0);
        let read = file.read(buffer.get_mut(start..).unwrap_or_default());
        match read {
            Ok(got) => {
                buffer.truncate(start + got);
                if got < want {
                    return Ok(());
                }
            }
            Err(error) => {
                buffer.truncate(start);
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), to tell a record from an earlier boot.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|text| text.trim().to_string())
}

/// Seconds since boot (`/proc/uptime`, the clock of the VM tests' timestamps).
pub fn uptime_s() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_path(path: &Path, limit: usize) -> Vec<u8> {
        let mut buffer = Vec::new();
        let mut file = File::open(path).expect("open");
        read_until_short(&mut file, &mut buffer, limit).expect("read");
        buffer
    }

    #[test]
    fn a_file_longer_than_one_read_is_read_whole_and_cut_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long");
        let content: Vec<u8> = (0..3 * READ_CHUNK_BYTES + 17).map(|i| i as u8).collect();
        std::fs::write(&path, &content).expect("write");
        assert_eq!(read_path(&path, FILE_MAX_BYTES), content);
        assert_eq!(
            read_path(&path, READ_CHUNK_BYTES + 5),
            &content[..READ_CHUNK_BYTES + 5]
        );
        assert_eq!(read_path(&path, 0), b"");
        let exact = dir.path().join("exact");
        std::fs::write(&exact, &content[..READ_CHUNK_BYTES]).expect("write");
        assert_eq!(
            read_path(&exact, FILE_MAX_BYTES),
            &content[..READ_CHUNK_BYTES]
        );
    }

    #[test]
    fn procfs_files_read_in_one_go_match_read_to_end() {
        // files that do not change between two reads; mountinfo is a seq_file of many records,
        // often longer than one read
        for file in [
            "/proc/self/mountinfo",
            "/proc/self/cgroup",
            "/proc/self/cmdline",
            "/proc/self/comm",
        ] {
            let path = Path::new(file);
            assert_eq!(
                read_path(path, FILE_MAX_BYTES),
                std::fs::read(path).expect(file),
                "{file}"
            );
        }
    }
}
