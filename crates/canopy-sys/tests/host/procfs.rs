//! /proc against the live host: a scan sees this process and its threads, task_info reads
//! what the matcher needs, kernel threads are told apart by PF_KTHREAD, an exited task is
//! `Gone`, and a scan of 10,000 threads is fast.

use std::os::unix::process::CommandExt;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use canopy_sys::procfs::{ProcFs, TaskId};
use canopy_sys::sched::SchedPolicy;
use canopy_sys::Outcome;

use crate::support::{current_tid, flood_lock, set_thread_name, ChildGuard};

fn own_pid() -> i32 {
    std::process::id() as i32
}

#[test]
fn scan_sees_this_process_and_a_named_thread() {
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let (stop, stop_receiver) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        set_thread_name("canopy scan(x)");
        ready_sender.send(current_tid()).unwrap();
        let _ = stop_receiver.recv();
    });
    let tid = ready.recv().unwrap();

    let mut proc_fs = ProcFs::new();
    let mut seen = Vec::new();
    let total = proc_fs.for_each_task(|task| seen.push(task)).unwrap();
    assert_eq!(total, seen.len());
    let task = TaskId {
        pid: own_pid(),
        tid,
    };
    assert!(seen.contains(&task), "the scan lists our thread {task:?}");
    assert!(seen.contains(&TaskId {
        pid: own_pid(),
        tid: own_pid()
    }));

    let stat = proc_fs.task_stat(task).unwrap().expect_done("task_stat");
    assert_eq!(
        stat.comm, "canopy scan(x)",
        "a comm with a space and parentheses"
    );
    assert_eq!(stat.id, tid);
    assert!(!stat.is_kernel_thread());
    assert_eq!(stat.scheduling_policy(), SchedPolicy::Other);
    assert_eq!(
        proc_fs.thread_comm(task).unwrap().expect_done("comm"),
        "canopy scan(x)"
    );

    let info = proc_fs.task_info(task).unwrap().expect_done("task_info");
    assert_eq!(info.thread.stat.comm, "canopy scan(x)");
    let main_comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let process = &info.process;
    assert_eq!(process.comm, main_comm.trim_end());
    assert!(!process.is_kernel_thread);
    assert_eq!(
        process.exe.as_deref(),
        Some(std::env::current_exe().unwrap().as_path())
    );
    let expected_args: Vec<String> = std::env::args().collect();
    assert_eq!(process.cmdline.to_strings(), expected_args);
    let expected_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let expected_cgroup = expected_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned);
    assert_eq!(info.thread.cgroup, expected_cgroup);
    // SAFETY: getuid/getppid have no preconditions.
    assert_eq!(process.real_uid, unsafe { libc::getuid() });
    assert_eq!(process.parent_pid, unsafe { libc::getppid() });
    let parent_comm =
        std::fs::read_to_string(format!("/proc/{}/comm", process.parent_pid)).unwrap();
    assert_eq!(process.parent_comm.unwrap(), parent_comm.trim_end());

    drop(stop);
    thread.join().unwrap();
}

#[test]
fn kernel_threads_are_flagged_and_have_no_exe() {
    // kthreadd is pid 2 on every kernel without a pid namespace of its own.
    let mut proc_fs = ProcFs::new();
    let stat = proc_fs.process_stat(2).unwrap().expect_done("kthreadd");
    assert!(stat.is_kernel_thread(), "PF_KTHREAD on {stat:?}");
    let kthreadd = proc_fs.process_info(2).unwrap().expect_done("kthreadd");
    assert!(kthreadd.is_kernel_thread);
    assert_eq!((kthreadd.exe, kthreadd.parent_comm), (None, None));
    assert_eq!(proc_fs.exe(2).unwrap(), Outcome::Done(None));
    assert!(proc_fs
        .cmdline(2)
        .unwrap()
        .expect_done("cmdline")
        .is_empty());
    let own = proc_fs.process_stat(own_pid()).unwrap().expect_done("self");
    assert!(!own.is_kernel_thread());
}

#[test]
fn an_exited_task_is_gone_not_an_error() {
    let pid = ChildGuard::sleeper().reap();
    let mut proc_fs = ProcFs::new();
    let task = TaskId { pid, tid: pid };
    assert_eq!(proc_fs.task_stat(task).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.exe(pid).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.cmdline(pid).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.cgroup(task).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.real_uid(pid).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.task_info(task).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.process_info(pid).unwrap(), Outcome::Gone);
    assert_eq!(proc_fs.thread_info(task).unwrap(), Outcome::Gone);
    let mut tids = Vec::new();
    assert_eq!(proc_fs.thread_ids(pid, &mut tids).unwrap(), Outcome::Gone);
}

/// A child leading its own process group; on drop the whole group is killed and the child
/// reaped (the group's other members are reparented and reaped by init).
struct ProcessGroupGuard(std::process::Child);

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        // SAFETY: a plain kill(2) of the process group this test made.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A process controls its argv: a 1 MiB command line is read only up to CMDLINE_MAX_BYTES.
#[test]
fn a_huge_command_line_is_read_only_up_to_the_bound() {
    use canopy_sys::procfs::CMDLINE_MAX_BYTES;
    let big = "x".repeat(100 * 1024);
    // `sh` forks the sleep and waits, keeping its own 1 MiB argv. In a process group of its
    // own, killed whole: killing `sh` alone left its `sleep 60` holding the test's stdout, and
    // `cargo test | tee` (tests/run-all.sh) waited up to a minute for it.
    let child = std::process::Command::new("sh")
        .args(["-c", "sleep 60; :", "sh"])
        .args(std::iter::repeat_n(&big, 10))
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let group = ProcessGroupGuard(child);
    let pid = group.0.id() as i32;
    let mut proc_fs = ProcFs::new();
    let wait_until = Instant::now() + std::time::Duration::from_secs(5);
    let cmdline = loop {
        let cmdline = proc_fs.cmdline(pid).unwrap().expect_done("sh");
        if cmdline.args().count() > 3 || Instant::now() > wait_until {
            break cmdline;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    drop(group);
    let args = cmdline.to_strings();
    assert_eq!(args[..3], ["sh", "-c", "sleep 60; :"]);
    // The arguments and the NULs between them (the last one is cut short, without its NUL).
    let bytes: usize = args.iter().map(|arg| arg.len()).sum::<usize>() + args.len() - 1;
    assert!(
        bytes <= CMDLINE_MAX_BYTES,
        "{bytes} bytes of command line read"
    );
}

#[test]
fn a_live_child_reads_fully() {
    let child = ChildGuard::sleeper();
    let mut proc_fs = ProcFs::new();
    let task = TaskId {
        pid: child.pid(),
        tid: child.pid(),
    };
    let info = proc_fs.task_info(task).unwrap().expect_done("child");
    assert_eq!(info.thread.stat.comm, "sleep");
    assert_eq!(info.process.cmdline.to_strings(), ["sleep", "60"]);
    assert_eq!(info.process.parent_pid, own_pid());
    assert!(info.process.exe.unwrap().ends_with("sleep"));
}

/// 10,000 extra threads, then a full scan that reads every thread's stat (what the daemon
/// does at start and after an overrun).
#[test]
fn scan_of_ten_thousand_threads_is_fast() {
    const THREADS: usize = 10_000;
    let _flood = flood_lock();
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let mut handles = Vec::with_capacity(THREADS);
    for _ in 0..THREADS {
        let barrier = Arc::clone(&barrier);
        let handle = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                barrier.wait(); // all started
                barrier.wait(); // scan done
            })
            .expect("spawn a thread");
        handles.push(handle);
    }
    barrier.wait();

    let mut proc_fs = ProcFs::new();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(THREADS + 1024);
    proc_fs.for_each_task(|task| tasks.push(task)).unwrap();
    let listed = started.elapsed();
    let mut read = 0;
    let mut kernel_threads = 0;
    for &task in &tasks {
        if let Outcome::Done(stat) = proc_fs.task_stat(task).unwrap() {
            read += 1;
            kernel_threads += usize::from(stat.is_kernel_thread());
        }
    }
    let elapsed = started.elapsed();

    // What the daemon does at start: per-process facts once per process, per-thread facts for
    // every thread.
    let info_started = Instant::now();
    let mut last_pid = 0;
    let mut infos = 0;
    for &task in &tasks {
        if task.pid != last_pid {
            last_pid = task.pid;
            let _ = proc_fs.process_info(task.pid).unwrap();
        }
        if proc_fs.thread_info(task).unwrap().done().is_some() {
            infos += 1;
        }
    }
    let info_elapsed = info_started.elapsed();
    let cgroup_started = Instant::now();
    for &task in &tasks {
        let _ = proc_fs.cgroup(task).unwrap();
    }
    let cgroup_elapsed = cgroup_started.elapsed();

    barrier.wait();
    for handle in handles {
        handle.join().unwrap();
    }
    let ours = tasks.iter().filter(|task| task.pid == own_pid()).count();
    eprintln!(
        "scanned {} threads ({ours} ours, {kernel_threads} kernel) in {elapsed:?} (listing {listed:?}), \
         {:.1} µs per thread",
        tasks.len(),
        elapsed.as_secs_f64() * 1e6 / read as f64
    );
    assert!(
        ours > THREADS,
        "the scan saw our {THREADS} threads ({ours})"
    );
    assert!(read >= THREADS);
    // Generous for a shared 2-core machine; a scan takes well under a second here.
    assert!(elapsed.as_secs_f64() < 5.0, "scan took {elapsed:?}");
    eprintln!(
        "process_info per process + thread_info (stat, cgroup) per thread, {infos} threads: \
         {info_elapsed:?} (of which /proc/PID/task/TID/cgroup alone: {cgroup_elapsed:?})"
    );
    assert!(
        info_elapsed.as_secs_f64() < 10.0,
        "reading task facts took {info_elapsed:?}"
    );
}

/// Every process on the host reads without an error (Gone is fine): no /proc quirk of a real
/// system (unreadable exe links, zombies, kernel threads) stops a scan.
#[test]
fn every_process_on_the_host_reads() {
    let mut proc_fs = ProcFs::new();
    let mut read = 0;
    for pid in proc_fs.process_ids().unwrap() {
        let info = proc_fs.task_info(TaskId { pid, tid: pid });
        match info {
            Ok(Outcome::Done(_)) => read += 1,
            Ok(Outcome::Gone) => {}
            Err(error) => panic!("pid {pid}: {error}"),
        }
    }
    assert!(read > 10, "read {read} processes");
}
