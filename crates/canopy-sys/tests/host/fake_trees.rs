//! The readers also work on procfs- and cgroupfs-shaped trees of plain files, which is how
//! the daemon's tests will feed it a made-up system.

use std::path::Path;

use canopy_sys::cgroup::{CgroupHierarchy, CpuMax, CpuWeight};
use canopy_sys::procfs::{ProcFs, TaskId};
use canopy_sys::Outcome;

use crate::support::TempDir;

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// One made-up process `pid` with threads `tids` (the first is the main thread).
fn fake_process(root: &Path, pid: i32, parent: i32, tids: &[(i32, &str)], cgroup: &str) {
    let process = root.join(pid.to_string());
    for &(tid, comm) in tids {
        let stat = format!(
            "{tid} ({comm}) S {parent} {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 {} 0 100 0 0 \
             0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0\n",
            tids.len()
        );
        let task = process.join("task").join(tid.to_string());
        write(&task.join("stat"), &stat);
        write(&task.join("comm"), &format!("{comm}\n"));
        write(&task.join("cgroup"), &format!("0::{cgroup}\n"));
        if tid == pid {
            write(&process.join("stat"), &stat);
        }
    }
    write(&process.join("cmdline"), "/usr/bin/fake\0--flag\0");
    write(
        &process.join("status"),
        "Name:\tfake\nUid:\t1000\t1000\t1000\t1000\n",
    );
    std::os::unix::fs::symlink("/usr/bin/fake", process.join("exe")).unwrap();
}

#[test]
fn a_fake_proc_tree_reads_like_the_real_one() {
    let dir = TempDir::new("/tmp");
    fake_process(dir.path(), 1, 0, &[(1, "init")], "/init.scope");
    fake_process(
        dir.path(),
        40,
        1,
        &[(40, "game"), (41, "game:render"), (42, "pool 3")],
        "/user.slice/app-game.scope",
    );
    std::fs::create_dir(dir.path().join("self")).unwrap(); // not a pid: skipped

    let mut proc_fs = ProcFs::at(dir.path());
    let mut tasks = Vec::new();
    proc_fs.for_each_task(|task| tasks.push(task)).unwrap();
    tasks.sort();
    let expected: Vec<TaskId> = [(1, 1), (40, 40), (40, 41), (40, 42)]
        .into_iter()
        .map(|(pid, tid)| TaskId { pid, tid })
        .collect();
    assert_eq!(tasks, expected);

    let info = proc_fs
        .task_info(TaskId { pid: 40, tid: 42 })
        .unwrap()
        .expect_done("fake thread");
    assert_eq!(info.thread.stat.comm, "pool 3");
    assert_eq!(
        info.thread.cgroup.as_deref(),
        Some("/user.slice/app-game.scope")
    );
    assert_eq!(info.process.comm, "game");
    assert_eq!(info.process.real_uid, 1000);
    assert_eq!(info.process.parent_comm.unwrap(), "init");
    assert_eq!(
        info.process.exe.as_deref(),
        Some(Path::new("/usr/bin/fake"))
    );
    assert_eq!(
        info.process.cmdline.to_strings(),
        ["/usr/bin/fake", "--flag"]
    );
    assert_eq!(
        proc_fs.task_info(TaskId { pid: 77, tid: 77 }).unwrap(),
        Outcome::Gone
    );
}

#[test]
fn a_fake_cgroup_tree_reads_and_writes_knobs() {
    let dir = TempDir::new("/tmp");
    let hierarchy = CgroupHierarchy::at(dir.path());
    let app = hierarchy.create("/user.slice/app.scope").unwrap();
    write(&app.dir().join("cpu.weight"), "100\n");
    write(&app.dir().join("cpu.max"), "max 100000\n");
    app.set_cpu_weight(CpuWeight::new(300).unwrap()).unwrap();
    app.set_cpu_max(CpuMax::new(Some(20_000), 100_000).unwrap())
        .unwrap();
    assert_eq!(app.cpu_weight().unwrap().get(), 300);
    assert_eq!(app.cpu_max().unwrap().to_string(), "20000 100000");
    let walked: Vec<String> = hierarchy
        .walk(&hierarchy.root())
        .unwrap()
        .into_iter()
        .map(|entry| entry.relative)
        .collect();
    assert_eq!(walked, ["/", "/user.slice", "/user.slice/app.scope"]);
}
