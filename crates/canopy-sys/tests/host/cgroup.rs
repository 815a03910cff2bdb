//! cgroupfs against the host's cgroup2 mount (discovered, not assumed): a scratch cgroup is
//! created, a child moved into it and seen there through /proc, its id is its inode, the tree
//! walk finds it, cpu.stat parses, the focus xattr round-trips, and everything is removed.
//! The cpu-controller knobs run only where the cpu controller is on cgroup2 (the VM); on this
//! host they are covered by unit tests of their formats.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use canopy_sys::cgroup::{CgroupError, CgroupHierarchy, CpuMax, CpuWeight, Focus, UclampPercent};
use canopy_sys::procfs::{ProcFs, TaskId};
use canopy_sys::Outcome;

use crate::support::{ChildGuard, ScratchCgroup, TempDir};

#[test]
fn discovers_the_cgroup2_mount() {
    let hierarchy = CgroupHierarchy::discover().unwrap();
    let mount_point = hierarchy.mount_point();
    assert!(
        mount_point.join("cgroup.controllers").exists(),
        "{mount_point:?} is a cgroup2 root"
    );
    // SAFETY: statfs on a valid C path into a zeroed struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut stat) }, 0);
    assert_eq!(
        stat.f_type,
        libc::CGROUP2_SUPER_MAGIC,
        "{mount_point:?} is cgroup2"
    );
    eprintln!(
        "cgroup2 at {mount_point:?}, controllers {:?}",
        hierarchy.root().controllers().unwrap()
    );
}

#[test]
fn move_a_child_in_and_out() {
    let scratch = ScratchCgroup::new("move");
    let child = ChildGuard::sleeper();
    let pid = child.pid();

    assert_eq!(scratch.cgroup.move_process(pid).unwrap(), Outcome::Done(()));
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        proc_cgroup
            .lines()
            .any(|line| line == format!("0::{}", scratch.relative)),
        "/proc/{pid}/cgroup shows the move: {proc_cgroup}"
    );
    let mut proc_fs = ProcFs::new();
    let seen = proc_fs
        .cgroup(TaskId { pid, tid: pid })
        .unwrap()
        .expect_done("cgroup");
    assert_eq!(seen.as_deref(), Some(scratch.relative.as_str()));
    assert_eq!(scratch.cgroup.processes().unwrap(), [pid]);
    assert_eq!(scratch.cgroup.threads().unwrap(), [pid]);
    assert_eq!(
        scratch
            .hierarchy
            .relative_path(scratch.cgroup.dir())
            .unwrap(),
        scratch.relative
    );

    let id = scratch.cgroup.id().unwrap();
    assert_eq!(id, std::fs::metadata(scratch.cgroup.dir()).unwrap().ino());
    let inner = scratch
        .hierarchy
        .create(&format!("{}/inner", scratch.relative))
        .unwrap();
    let walked = scratch.hierarchy.walk(&scratch.cgroup).unwrap();
    let names: Vec<&str> = walked.iter().map(|entry| entry.relative.as_str()).collect();
    assert_eq!(
        names,
        [
            scratch.relative.clone(),
            format!("{}/inner", scratch.relative)
        ]
    );
    assert_eq!(walked[0].id, id);
    assert_eq!(walked[1].id, inner.id().unwrap());
    let everything = scratch.hierarchy.walk(&scratch.hierarchy.root()).unwrap();
    assert!(
        everything.iter().any(|entry| entry.id == id),
        "a walk from the root finds it"
    );

    let stat = scratch.cgroup.cpu_stat().unwrap();
    assert!(stat.usage_usec >= stat.user_usec);

    // Back to the root; a pid that has exited is Gone.
    assert_eq!(
        scratch.hierarchy.root().move_process(pid).unwrap(),
        Outcome::Done(())
    );
    assert!(scratch.cgroup.processes().unwrap().is_empty());
    let gone = ChildGuard::sleeper().reap();
    assert_eq!(scratch.cgroup.move_process(gone).unwrap(), Outcome::Gone);
    assert_eq!(inner.remove().unwrap(), Outcome::Done(()));
    assert_eq!(inner.remove().unwrap(), Outcome::Gone);
}

/// The focus xattr on a real cgroup directory (cgroupfs takes user.* xattrs since 5.7); if a
/// host refuses them, the same code is exercised on a tmpfs directory instead.
#[test]
fn focus_xattr_round_trips() {
    let scratch = ScratchCgroup::new("focus");
    let tmpfs_dir;
    let dir: &Path = match scratch.cgroup.set_focus(Focus::Focused) {
        Ok(()) => scratch.cgroup.dir(),
        Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            eprintln!("this kernel refuses user.* xattrs on cgroupfs; testing on tmpfs (/dev/shm)");
            tmpfs_dir = TempDir::new("/dev/shm");
            tmpfs_dir.path()
        }
        Err(other) => panic!("setting the focus xattr failed: {other}"),
    };
    let cgroup = canopy_sys::cgroup::Cgroup::from_dir(dir);
    cgroup.set_focus(Focus::Focused).unwrap();
    assert_eq!(cgroup.focus().unwrap(), Focus::Focused);
    let lost = Focus::InactiveSince {
        monotonic_us: 1_234_567_890,
    };
    cgroup.set_focus(lost).unwrap();
    assert_eq!(cgroup.focus().unwrap(), lost);
    cgroup.set_focus(Focus::NotSet).unwrap();
    assert_eq!(
        cgroup.focus().unwrap(),
        Focus::NotSet,
        "a missing xattr is normal"
    );
    canopy_sys::cgroup::write_xattr(dir, canopy_sys::cgroup::INACTIVE_SINCE_XATTR, b"soon")
        .unwrap();
    let error = cgroup.focus().unwrap_err().to_string();
    assert!(
        error.contains("soon"),
        "the bad value is in the error: {error}"
    );
}

/// cpu.weight, cpu.max, cpu.idle and cpu.uclamp.* on a real cgroup, where the cpu controller
/// is available on cgroup2 (the VM kernel); skipped with a note elsewhere.
#[test]
fn cpu_knobs_where_the_cpu_controller_exists() {
    let hierarchy = CgroupHierarchy::discover().unwrap();
    let root = hierarchy.root();
    if !root.controllers().unwrap().iter().any(|name| name == "cpu") {
        eprintln!(
            "skipped: no cpu controller on cgroup2 here (hybrid host); formats are unit-tested"
        );
        return;
    }
    let enabled_before = root
        .subtree_control()
        .unwrap()
        .iter()
        .any(|name| name == "cpu");
    root.change_subtree_control(&["cpu"], &[]).unwrap();
    let scratch = ScratchCgroup::new("knobs");
    let cgroup = &scratch.cgroup;
    cgroup.set_cpu_weight(CpuWeight::new(250).unwrap()).unwrap();
    assert_eq!(cgroup.cpu_weight().unwrap().get(), 250);
    let limit = CpuMax::new(Some(50_000), 100_000).unwrap();
    cgroup.set_cpu_max(limit).unwrap();
    assert_eq!(cgroup.cpu_max().unwrap(), limit);
    cgroup.set_cpu_max(CpuMax::UNLIMITED).unwrap();
    assert_eq!(cgroup.cpu_max().unwrap(), CpuMax::UNLIMITED);
    cgroup.set_cpu_idle(true).unwrap();
    assert!(cgroup.cpu_idle().unwrap());
    cgroup.set_cpu_idle(false).unwrap();
    if cgroup.dir().join("cpu.uclamp.max").exists() {
        let quarter = UclampPercent::from_hundredths(2500).unwrap();
        cgroup.set_uclamp_max(quarter).unwrap();
        assert_eq!(cgroup.uclamp_max().unwrap(), quarter);
        cgroup.set_uclamp_min(UclampPercent::ZERO).unwrap();
        assert_eq!(cgroup.uclamp_min().unwrap(), UclampPercent::ZERO);
    }
    drop(scratch);
    if !enabled_before {
        let _ = root.change_subtree_control(&[], &["cpu"]);
    }
}
