// SPDX-License-Identifier: GPL-2.0-only
//! `canopy-guest`: the one binary the VM harness puts in every guest. `/init` runs `setup`
//! (mounts, cgroup controllers, the `boot` result); scenario scripts then call the workloads
//! (`hog`, `wakeprobe`, `storm`, `latency` around cyclictest, `frames`: the desktop frame
//! benchmark), the measurements (`cpu-split`, `sched-ext-state`, `dmesg`), `exec` (run a command, report its status and
//! output) and `report`.
//! Every measurement prints one `CANOPY-RESULT {json}` line on stdout (the serial console),
//! which the host side (`canopy-vmtest`) parses.

mod cgroup;
mod churn;
mod class_map;
mod cpu_split;
mod dmesg;
mod exec;
mod fair_mode;
mod frames;
mod hog;
mod kernel_health;
mod latency;
mod pingpong;
mod proc_stat;
mod result;
mod run_as;
mod sched_ext_state;
mod setup;
mod storm;
mod task_attrs;
mod wait_for;
mod wakeprobe;
mod xattr;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "canopy-guest",
    about = "canopy's VM scenario runner and workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount proc, sysfs, devtmpfs, bpffs, cgroup2, tracefs, debugfs; enable +cpu (+cpuset) in
    /// the root cgroup; print the `boot` result.
    Setup,
    /// Spin CPU-bound threads.
    Hog(hog::HogArgs),
    /// Wakeup-latency probe (timer and/or pipe wakeups), prints percentiles.
    Wakeprobe(wakeprobe::WakeprobeArgs),
    /// cyclictest (optionally under a background load) with histogram percentiles.
    Latency(latency::LatencyArgs),
    /// Pipe ping-pong between thread pairs: round trips per second.
    Pingpong(pingpong::PingpongArgs),
    /// A process's CPU use over a window, RSS and thread count.
    ProcStat(proc_stat::ProcStatArgs),
    /// Scheduling attributes (policy, nice, slice, uclamp, cgroup) of threads.
    TaskAttrs(task_attrs::TaskAttrsArgs),
    /// Class ids of a process's threads in the schedulers' pinned `task_classes` map.
    ClassMap(class_map::ClassMapArgs),
    /// Move processes between two cgroups and report, from the schedulers' move log, when each
    /// thread's class was first decided after each move, and which class it got.
    MoveProbe(class_map::MoveProbeArgs),
    /// Fork, thread-create and PR_SET_NAME rename storm.
    Storm(storm::StormArgs),
    /// mkdir / move a process in and out / rmdir cycles on scopes below one cgroup.
    CgroupChurn(churn::ChurnArgs),
    /// Create weighted cgroups, run hogs in each, measure the CPU split from cpu.stat.
    CpuSplit(cpu_split::CpuSplitArgs),
    /// Run a command and report its status, duration and output.
    Exec(exec::ExecArgs),
    /// The desktop frame benchmark: a 60 Hz compositor and a 5.33 ms audio thread beside
    /// background hogs and a fork/exec build; missed periods, worst lateness, build jobs.
    Frames(frames::FramesArgs),
    /// The frame benchmark's background build: workers spawning short processes back to back.
    Build(frames::BuildArgs),
    /// One job of the background build: a fixed amount of arithmetic.
    BuildJob(frames::BuildJobArgs),
    /// Report kernel log lines (optionally filtered).
    Dmesg(dmesg::DmesgArgs),
    /// Report kernel warnings, stalls and sched_ext messages from the kernel log (run by /init
    /// after every scenario).
    KernelHealth,
    /// Report /sys/kernel/sched_ext as a JSON tree.
    SchedExtState(sched_ext_state::SchedExtStateArgs),
    /// Wait until a file contains a text and/or sched_ext reaches a state.
    WaitFor(wait_for::WaitForArgs),
    /// Set, get or remove an extended attribute.
    Xattr(xattr::XattrArgs),
    /// Exec a command as another uid/gid (optionally in a cgroup).
    RunAs(run_as::RunAsArgs),
    /// Print a CANOPY-RESULT line: `report KIND key=value...` (values that parse as JSON stay
    /// JSON, the rest become strings; `key=@FILE` takes the file's content).
    Report { kind: String, fields: Vec<String> },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Hog(args) => hog::run(&args),
        Command::Wakeprobe(args) => wakeprobe::run(&args),
        Command::Latency(args) => latency::run(&args),
        Command::Pingpong(args) => pingpong::run(&args),
        Command::ProcStat(args) => proc_stat::run(&args),
        Command::TaskAttrs(args) => task_attrs::run(&args),
        Command::Storm(args) => storm::run(&args),
        Command::CgroupChurn(args) => churn::run(&args),
        Command::ClassMap(args) => class_map::run(&args),
        Command::MoveProbe(args) => class_map::probe(&args),
        Command::CpuSplit(args) => cpu_split::run(&args),
        Command::Exec(args) => exec::run(&args),
        Command::Frames(args) => frames::run(&args),
        Command::Build(args) => frames::build(&args),
        Command::BuildJob(args) => frames::build_job(&args),
        Command::Dmesg(args) => dmesg::run(&args),
        Command::KernelHealth => kernel_health::run(),
        Command::SchedExtState(args) => sched_ext_state::run(&args),
        Command::WaitFor(args) => wait_for::run(&args),
        Command::Xattr(args) => xattr::run(&args),
        Command::RunAs(args) => run_as::run(&args),
        Command::Report { kind, fields } => result::report_fields(&kind, &fields),
    }
}
