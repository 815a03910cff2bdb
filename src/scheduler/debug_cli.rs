// SPDX-License-Identifier: GPL-2.0-only
//! `canopy scheduler ...`: hidden debug commands over the loader, used by the VM tests and by
//! hand (`canopy run` and `canopy run-schedulers` drive the same supervisor from a compiled
//! Plan).
//!
//! - `run [--config FILE]`: the supervisor (`supervisor.rs`) on a JSON scheduler config;
//! - `child --cgroup PATH [--ops-name NAME]`: attach one child scheduler and hold it;
//! - `tag --tid N --class NAME`: tag a task with a class in the shared class map;
//! - `exec --nice N [--batch] -- CMD`: run a command with schedqos's attributes (baselines);
//! - `restart-fixture`: the restart path, with a fixture root that asks for restarts;
//! - `status [--json]`: the hierarchy, members and counters.
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;

use super::attach::describe_exit;
use super::attach::Registered;
use super::attach::SchedulerSkel;
use super::child::ask_next_loads_for_a_restart;
use super::child::attach_child;
use super::child::ChildOptions;
use super::config::class_id;
use super::config::SchedulerConfig;
use super::fixture::attach_fixture;
use super::fixture::attach_restart_fixture;
use super::status;
use super::supervisor::after_root_exit;
use super::supervisor::deadline;
use super::supervisor::detach_and_log;
use super::supervisor::install_stop_handlers;
use super::supervisor::run;
use super::supervisor::should_stop;
use super::supervisor::TICK;

#[derive(Parser, Debug)]
#[command(
    name = "canopy scheduler",
    about = "Debug commands for canopy's BPF schedulers"
)]
struct SchedulerCli {
    #[command(subcommand)]
    command: SchedulerCommand,
}

#[derive(Subcommand, Debug)]
enum SchedulerCommand {
    /// Load the root scheduler (and configured children) until SIGINT/SIGTERM.
    Run {
        /// Scheduler config as JSON (see `config.rs`); default: no groups, built-in classes.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Unload after this many seconds (0: run until a signal).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
        /// Test hook: the first N canopy_child loads ask for a restart (the kernel's restart
        /// action) after a few dispatches, to exercise re-attaching them.
        #[arg(long, default_value_t = 0, hide = true)]
        child_restart_loads: u32,
    },
    /// Attach canopy_child to a cgroup and hold it until SIGINT/SIGTERM.
    Child {
        /// The cgroup, relative to /sys/fs/cgroup or absolute.
        #[arg(long)]
        cgroup: PathBuf,
        /// Register under another ops name (to test admission).
        #[arg(long)]
        ops_name: Option<String>,
        /// Attach the foreign test fixture (`foreign_fifo`) instead of canopy_child.
        #[arg(long)]
        foreign_fixture: bool,
        /// With --foreign-fixture: the slice it gives every task, in milliseconds.
        #[arg(long, default_value_t = 5, requires = "foreign_fixture")]
        fixture_slice_ms: u64,
        /// Detach after this many seconds (0: hold until a signal).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
    },
    /// Tag a task (thread id) with a class in the shared class map, or, with --comm, wait for
    /// processes of that name and tag them (by process id: their threads follow).
    Tag {
        #[arg(long, required_unless_present = "comm")]
        tid: Option<u32>,
        /// Process name (comm) to watch for instead of one tid.
        #[arg(long)]
        comm: Option<String>,
        /// With --comm: how long to keep watching, in seconds.
        #[arg(long, default_value_t = 30.0)]
        watch_seconds: f64,
        #[arg(long)]
        class: String,
    },
    /// Run a command with a nice value and optionally SCHED_BATCH (baseline measurements:
    /// schedqos's sched_setattr mapping without a uclamp/slice-capable tool in the guest).
    Exec {
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        nice: i32,
        #[arg(long)]
        batch: bool,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Load the `restart_once` test fixture as the root: it asks for a restart after a few
    /// dispatches `restarts` times; each time it is loaded again as canopy_root would be.
    RestartFixture {
        #[arg(long, default_value_t = 1)]
        restarts: u32,
        /// Unload after this many seconds (0: run until a signal).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
    },
    /// What each loaded callback of canopy's schedulers costs per call, measured by the kernel
    /// (BPF run-time statistics) over a window.
    OpCost {
        /// Programs whose full name starts with this (`canopy_child_` for the children).
        #[arg(long, default_value = "canopy_root_")]
        prefix: String,
        /// The window, in seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        json: bool,
    },
    /// Show the scheduler hierarchy, the root's members and counters.
    Status {
        #[arg(long)]
        json: bool,
        /// Sampling interval for the CPU rates, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

/// Entry point: `args` starts with the word `scheduler`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<()> {
    let cli = SchedulerCli::parse_from(args);
    match cli.command {
        SchedulerCommand::Run {
            config,
            seconds,
            child_restart_loads,
        } => {
            ask_next_loads_for_a_restart(child_restart_loads);
            let config = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    SchedulerConfig::from_json(&text)?
                }
                None => SchedulerConfig::default(),
            };
            run(&config, seconds)
        }
        SchedulerCommand::Child {
            cgroup,
            ops_name,
            foreign_fixture,
            fixture_slice_ms,
            seconds,
        } => {
            install_stop_handlers();
            let stop_at = deadline(seconds);
            if foreign_fixture {
                let slice_ns = fixture_slice_ms.saturating_mul(1_000_000);
                hold("foreign_fifo", attach_fixture(&cgroup, slice_ns)?, stop_at)
            } else {
                let options = ChildOptions { ops_name };
                hold("child scheduler", attach_child(&cgroup, &options)?, stop_at)
            }
        }
        SchedulerCommand::Tag {
            tid,
            comm,
            watch_seconds,
            class,
        } => {
            let class = class_id(&class)?;
            let map =
                MapHandle::from_pinned_path(canopy_sys::sched_ext::pinned_map("task_classes"))
                    .context("opening the shared task_classes map (is the root loaded?)")?;
            let tag = |tid: u32| {
                map.update(&tid.to_ne_bytes(), &class.to_ne_bytes(), MapFlags::ANY)
                    .context("writing task_classes")
            };
            match (tid, comm) {
                (Some(tid), _) => tag(tid),
                (None, Some(comm)) => watch_and_tag(&comm, watch_seconds, &tag),
                (None, None) => unreachable!("clap requires --tid or --comm"),
            }
        }
        SchedulerCommand::Exec {
            nice,
            batch,
            command,
        } => exec_with(nice, batch, &command),
        SchedulerCommand::RestartFixture { restarts, seconds } => {
            install_stop_handlers();
            run_restart_fixture(restarts, deadline(seconds))
        }
        SchedulerCommand::OpCost {
            prefix,
            seconds,
            json,
        } => {
            let window = Duration::try_from_secs_f64(seconds)
                .with_context(|| format!("--seconds {seconds}"))?;
            let rows = super::op_cost::measure(&prefix, window)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", super::op_cost::table(&rows));
            }
            Ok(())
        }
        SchedulerCommand::Status { json, interval_ms } => {
            let status = status::collect(Duration::from_millis(interval_ms));
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(())
        }
    }
}

/// `canopy scheduler restart-fixture`: the restart path with the `restart_once` fixture as the
/// root. The first `restarts` loads ask for a restart after a few dispatches; each exit goes
/// through `after_root_exit` as canopy_root's would; the last load runs until a signal or
/// `stop_at`.
fn run_restart_fixture(restarts: u32, stop_at: Option<Instant>) -> anyhow::Result<()> {
    for load in 0..=restarts {
        let after_dispatches = if load < restarts { 500 } else { 0 };
        let root = attach_restart_fixture(after_dispatches)?;
        println!("canopy: restart_once enabled as the root scheduler (load {load})");
        let report = loop {
            if let Some(report) = root.exit_report() {
                break Some(report);
            }
            if should_stop(stop_at) {
                break None;
            }
            std::thread::sleep(TICK);
        };
        match report {
            Some(report) => {
                drop(root);
                after_root_exit(report, should_stop(stop_at))?;
            }
            None => {
                println!(
                    "canopy: restart_once unloaded: {}",
                    describe_exit(root.detach())
                );
                return Ok(());
            }
        }
    }
    anyhow::bail!("restart_once asked for more restarts than requested")
}

/// Holds a scheduler registered on a cgroup until a signal or `seconds`, then detaches it;
/// fails if it exits first. `label` names it in the log lines.
fn hold<S: SchedulerSkel>(
    label: &str,
    scheduler: Registered<S>,
    stop_at: Option<Instant>,
) -> anyhow::Result<()> {
    println!(
        "canopy: {label} enabled on {} (cgroup id {})",
        scheduler.cgroup().display(),
        scheduler.cgroup_id()
    );
    while !should_stop(stop_at) {
        if let Some(report) = scheduler.exit_report() {
            anyhow::bail!(
                "{label} on {} exited: {report}",
                scheduler.cgroup().display()
            );
        }
        std::thread::sleep(TICK);
    }
    detach_and_log(label, scheduler);
    Ok(())
}

fn exec_with(nice: i32, batch: bool, command: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    // SAFETY: plain syscalls on the calling process before exec.
    unsafe {
        if batch {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
                anyhow::bail!(
                    "sched_setscheduler(SCHED_BATCH): {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            anyhow::bail!("setpriority({nice}): {}", std::io::Error::last_os_error());
        }
    }
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(anyhow::anyhow!("exec {}: {error}", command[0]))
}

/// Tags the processes named `comm` (by pid; their threads take the process's class) as soon as
/// they appear, polling /proc every 2 ms until the first scan that finds one, or `seconds`. A stand-in for the controller's rules in the
/// VM tests; it tags itself first so it is not stuck behind the load it races with.
fn watch_and_tag(
    comm: &str,
    seconds: f64,
    tag: &dyn Fn(u32) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    tag(std::process::id())?;
    let stop_at = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tagged = std::collections::HashSet::new();
    while Instant::now() < stop_at {
        let mut proc = canopy_sys::procfs::ProcFs::new();
        for pid in proc.process_ids()? {
            let pid_u32 = pid as u32;
            if tagged.contains(&pid_u32) {
                continue;
            }
            let task = canopy_sys::procfs::TaskId { pid, tid: pid };
            let Ok(canopy_sys::Outcome::Done(name)) = proc.thread_comm(task) else {
                continue;
            };
            if name.to_string_lossy() == comm {
                tag(pid_u32)?;
                tagged.insert(pid_u32);
                println!("canopy: tagged {comm} (pid {pid})");
            }
        }
        if !tagged.is_empty() {
            // its threads follow the process's tag; stop competing with what we just tagged
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
