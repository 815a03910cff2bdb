//! canopy-sys: every OS edge canopy touches, and nothing else.
//!
//! # Layout
//! - [`procfs`]: reading `/proc` (pids, tids, `stat`, comm, exe, cmdline, cgroup, uid).
//! - [`sched`]: `sched_setattr`/`sched_getattr` with our own 56-byte `sched_attr` (uclamp
//!   fields included), capability detection (uclamp, custom slices) and restore.
//! - [`cgroup`]: the cgroup2 mount, cgroup ids, the tree walk, cpu knobs, membership moves,
//!   `cpu.stat`, and GNOME's `user.xdg.inactive-since` focus xattr.
//! - [`proc_events`]: the netlink proc connector (fork/exec/comm/exit), filtered where the
//!   kernel allows it, batched, on tokio, with overruns surfaced as an event.
//! - [`watch`]: inotify on cgroup subtrees (recursive create/remove, xattr changes) and on
//!   policy files (editors' rename-replace included).
//! - [`sched_ext`]: the one kernel probe (sched_ext, cid-form ops, sub-scheduler kfuncs) and
//!   sched_ext's sysfs files; the bpffs directory of canopy's pinned maps.
//! - [`users`]: a uid's user name through NSS, cached per uid (`user = "..."` rules).
//! - [`peer`]: `SO_PEERCRED` on Unix stream sockets.
//! - [`beneath`]: resolving a path somebody else chose strictly beneath a trusted root
//!   (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), with PATH_MAX/NAME_MAX limits.
//! - [`instance_lock`]: one daemon at a time (`flock` on a lock file in the run directory).
//! - [`limits`]: the open-file limit raised to the hard limit (a loader of 64 BPF children
//!   needs more than the default 1,024 descriptors).
//! - [`policy_files`]: finding and reading policy files (`policy.toml`, `policy.d/*.toml`),
//!   bounded and with the path in every error, for the CLI and the daemon alike.
//!
//! # Conventions
//! Every module has its own `thiserror` error type that carries the offending input (path,
//! pid, value). A task that exits while we look at it is not an error: operations on a task
//! return [`Outcome::Gone`] for `ENOENT`/`ESRCH`, and the caller simply forgets the task.
//! No module logs; callers decide what is worth saying. Outside tests `unwrap` and indexing or
//! slicing that may panic are denied (`clippy::unwrap_used`, `clippy::indexing_slicing`; the
//! suite's clippy step in `tests/run-all.sh` enforces it): input from the kernel is bounds-checked
//! with `get` and becomes an error or a fallback, never a panic of the daemon.
//!
//! # Tests
//! Pure parsing and formatting have unit tests beside the code. `tests/host/` is one test
//! binary that runs against the live kernel as root (real /proc, sched_setattr, the host's
//! cgroup2 mount, the proc connector, inotify); the cpu-controller knobs run there only
//! where cgroup2 has the cpu controller (the VM kernel).

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod beneath;
pub mod cgroup;
pub mod instance_lock;
pub mod limits;
pub mod peer;
pub mod policy_files;
pub mod proc_events;
pub mod procfs;
pub mod sched;
pub mod sched_ext;
pub mod users;
pub mod watch;

mod comm;

pub use comm::Comm;

/// A process or thread id, as the kernel's `pid_t` (a thread id is a "pid" to the kernel).
pub type Pid = i32;

/// The result of an operation on a task that may exit at any moment.
///
/// `Gone` is normal flow (the task exited, or its pid was never there): the caller drops the
/// task from its state and moves on, without logging an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Outcome<T> {
    /// The operation completed on a live task.
    Done(T),
    /// The task no longer exists (`ENOENT` or `ESRCH`).
    Gone,
}

impl<T> Outcome<T> {
    /// The value if the task was there.
    pub fn done(self) -> Option<T> {
        match self {
            Outcome::Done(value) => Some(value),
            Outcome::Gone => None,
        }
    }

    /// Whether the task had gone.
    pub fn is_gone(&self) -> bool {
        matches!(self, Outcome::Gone)
    }

    /// Transforms the value of a live task.
    pub fn map<U>(self, transform: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Done(value) => Outcome::Done(transform(value)),
            Outcome::Gone => Outcome::Gone,
        }
    }

    /// The value; panics if the task had gone (for tests and callers that own the task).
    #[track_caller]
    pub fn expect_done(self, what: &str) -> T {
        match self {
            Outcome::Done(value) => value,
            Outcome::Gone => panic!("{what}: the task is gone"),
        }
    }
}

/// The current `CLOCK_MONOTONIC` time in ns: the clock of [`proc_events::ProcEvent`]'s
/// `timestamp_ns` (the kernel's `ktime_get_ns`) and, divided by 1000, of GNOME's
/// `user.xdg.inactive-since` (`g_get_monotonic_time`).
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Whether an OS error means "that task (or its /proc entry) no longer exists".
pub(crate) fn is_gone_error(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

#[cfg(test)]
mod tests {
    /// The daemon moves these into tokio tasks and shares the applier across them.
    #[test]
    fn handles_cross_threads() {
        fn send<T: Send>() {}
        fn send_and_sync<T: Send + Sync>() {}
        send::<crate::procfs::ProcFs>();
        send::<crate::proc_events::ProcEvents>();
        send::<crate::watch::Watcher>();
        send_and_sync::<crate::sched::SchedApplier>();
        send_and_sync::<crate::cgroup::CgroupHierarchy>();
        send_and_sync::<crate::cgroup::Cgroup>();
    }
}
