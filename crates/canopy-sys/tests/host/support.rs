//! Test helpers: child processes that are always reaped, a scratch cgroup that is always
//! removed, thread naming, and a lock for the tests that flood the system with tasks.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use canopy_sys::cgroup::{Cgroup, CgroupHierarchy};
use canopy_sys::Pid;

/// Serializes the tests that create thousands of tasks with the tests that must not lose
/// proc-connector events to an overrun they cause.
static FLOOD_LOCK: Mutex<()> = Mutex::new(());

/// Takes the flood lock (a failed test holding it does not poison the others).
pub fn flood_lock() -> MutexGuard<'static, ()> {
    FLOOD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A child process that is killed and reaped when dropped.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Runs `sleep 60`.
    pub fn sleeper() -> ChildGuard {
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let guard = ChildGuard { child: Some(child) };
        // spawn() returns once the child's exec has released the parent (vfork), which the
        // kernel does before it sets the new comm and argv; and it sets the comm
        // (setup_new_exec) before the new argv exists (create_elf_tables): wait for both.
        let comm_path = format!("/proc/{}/comm", guard.pid());
        let cmdline_path = format!("/proc/{}/cmdline", guard.pid());
        let exec_finished = || {
            std::fs::read_to_string(&comm_path).unwrap_or_default() == "sleep\n"
                && std::fs::read(&cmdline_path).unwrap_or_default() == b"sleep\x0060\x00"
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !exec_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep never finished its exec"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        guard
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.child.as_ref().expect("child").id() as Pid
    }

    /// Kills and reaps the child now; returns its pid (now free).
    pub fn reap(mut self) -> Pid {
        let pid = self.pid();
        self.kill();
        pid
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cgroup made for one test directly under the cgroup2 root; on drop, every process in it
/// or below it goes back to the root and the directories are removed bottom-up.
pub struct ScratchCgroup {
    pub hierarchy: CgroupHierarchy,
    pub cgroup: Cgroup,
    pub relative: String,
}

impl ScratchCgroup {
    pub fn new(purpose: &str) -> ScratchCgroup {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let hierarchy = CgroupHierarchy::discover().expect("a cgroup2 mount");
        remove_stale_scratch_cgroups(&hierarchy);
        let relative = format!(
            "/canopy-sys-test-{purpose}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = hierarchy
            .create(&relative)
            .expect("create a scratch cgroup");
        ScratchCgroup {
            hierarchy,
            cgroup,
            relative,
        }
    }
}

impl ScratchCgroup {
    /// Moves the live process `pid` back to the cgroup2 root (out of the test's cgroups).
    pub fn move_to_root(&self, pid: Pid) {
        let moved = self.hierarchy.root().move_process(pid).unwrap();
        assert!(!moved.is_gone(), "process {pid} is gone");
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        remove_subtree(&self.hierarchy, &self.cgroup);
    }
}

/// Moves every process below `top` to the root and removes the directories, children first.
fn remove_subtree(hierarchy: &CgroupHierarchy, top: &Cgroup) {
    let root = hierarchy.root();
    let Ok(mut entries) = hierarchy.walk(top) else {
        return;
    };
    entries.reverse(); // children first
    for entry in entries {
        let cgroup = Cgroup::from_dir(&entry.dir);
        for pid in cgroup.processes().unwrap_or_default() {
            let _ = root.move_process(pid);
        }
        let _ = cgroup.remove();
    }
}

/// Scratch cgroups of test runs that were killed before their guards ran
/// (`canopy-sys-test-PURPOSE-PID-N` whose PID is gone).
fn remove_stale_scratch_cgroups(hierarchy: &CgroupHierarchy) {
    let Ok(children) = std::fs::read_dir(hierarchy.mount_point()) else {
        return;
    };
    for child in children.flatten() {
        let name = child.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("canopy-sys-test-") else {
            continue;
        };
        let fields: Vec<&str> = rest.split('-').collect();
        let Some(pid) = fields
            .len()
            .checked_sub(2)
            .and_then(|index| fields[index].parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_subtree(hierarchy, &Cgroup::from_dir(child.path()));
        }
    }
}

/// Names the calling thread (`prctl(PR_SET_NAME)`).
pub fn set_thread_name(name: &str) {
    let name = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let result = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(result, 0, "prctl(PR_SET_NAME)");
}

/// The calling thread's id.
pub fn current_tid() -> Pid {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(parent: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            Path::new(parent).join(format!("canopy-sys-test-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
