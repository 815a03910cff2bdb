//! `canopy-guest`: the one binary the VM harness puts in every guest. `/init` runs `setup`
//! (mounts, cgroup controllers, the `boot` result); scenario scripts then call the workloads
//! (`hog`, `wakeprobe`, `storm`), the measurements (`cpu-split`, `sched-ext-state`) and `report`.
//! Every measurement prints one `CANOPY-RESULT {json}` line on stdout (the serial console),
//! which the host side (`canopy-vmtest`) parses.

mod cgroup;
mod cpu_split;
mod hog;
mod result;
mod sched_ext_state;
mod setup;
mod storm;
mod wakeprobe;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "canopy-guest", about = "canopy's VM scenario runner and workloads")]
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
    /// Fork, thread-create and PR_SET_NAME rename storm.
    Storm(storm::StormArgs),
    /// Create weighted cgroups, run hogs in each, measure the CPU split from cpu.stat.
    CpuSplit(cpu_split::CpuSplitArgs),
    /// Report /sys/kernel/sched_ext as a JSON tree.
    SchedExtState(sched_ext_state::SchedExtStateArgs),
    /// Print a CANOPY-RESULT line: `report KIND key=value...` (values that parse as JSON stay
    /// JSON, the rest become strings).
    Report {
        kind: String,
        fields: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Hog(args) => hog::run(&args),
        Command::Wakeprobe(args) => wakeprobe::run(&args),
        Command::Storm(args) => storm::run(&args),
        Command::CpuSplit(args) => cpu_split::run(&args),
        Command::SchedExtState(args) => sched_ext_state::run(&args),
        Command::Report { kind, fields } => result::report_fields(&kind, &fields),
    }
}
