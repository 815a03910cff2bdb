// SPDX-License-Identifier: GPL-2.0-only
//! The BPF scheduler loader: canopy's root scheduler (`canopy_root`) and its child scheduler
//! (`canopy_child`), both cid-form sched_ext schedulers built from `bpf/` by build.rs.
//!
//! - `bpf_intf`, `skel`: generated code (intf.h in Rust, libbpf-rs skeletons);
//! - `bpf_bytes`: intf.h values in and out of map bytes, and their C strings;
//! - `kernel`: what the loader learns from or does to the running kernel (BTF enums, sysfs,
//!   cgroup ids, program association);
//! - `config`: the scheduler-side view of a policy (1:1 with the policy's Plan);
//! - `config_from_plan`: building that view from a compiled Plan and the existing cgroups;
//! - `attach`: what every scheduler's load shares (kernel constants, attach and the exit check
//!   right after it, exit records, unregistering);
//! - `root`, `child`: each scheduler's own load steps and map writes;
//! - `group_policy_map`: the root's `group_policy` entries and version bump, edited under one
//!   process-wide lock by the supervisor and the daemon's thread alike;
//! - `fixture`: the foreign sub-scheduler test fixture's loader;
//! - `exit`: decoding why a scheduler stopped and whether to restart;
//! - `child_restart`: when a child that asked for a restart is loaded again (bounded backoff);
//! - `status`: the hierarchy from sysfs and the root's pinned maps;
//! - `op_cost`: what each loaded callback costs per call (the kernel's BPF run-time statistics);
//! - `load_stats`: what a load costs, per program (verifier statistics) and per phase, printed
//!   when `CANOPY_VERIFIER_STATS` is set;
//! - `cgroup_watch`: inotify on cgroupfs, waking the supervisor when cgroups come and go;
//! - `supervisor`: load the root, keep the children in line with the config (inotify, reloads),
//!   restart on the kernel's request, unload on a stop request;
//! - `debug_cli`: the hidden `canopy scheduler ...` debug commands (the VM tests drive these);
//! - `daemon_link`: the scx backend's seam: the supervisor thread and the daemon's map writes;
//! - `move_watch`: the BPF task watcher (`canopy_moves`: cgroup moves and thread exits), a daemon event source.
pub mod attach;
pub mod bpf_bytes;
pub mod bpf_intf;
pub mod cgroup_watch;
pub mod child;
pub mod child_restart;
pub mod config;
pub mod config_from_plan;
pub mod daemon_link;
pub mod debug_cli;
pub mod exit;
pub mod fixture;
pub mod group_policy_map;
pub mod kernel;
pub mod load_stats;
pub mod move_watch;
pub mod op_cost;
pub mod root;
pub mod skel;
pub mod status;
pub mod supervisor;

use std::path::PathBuf;

/// Everything that can go wrong loading or running a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("scheduler config: {0}")]
    Config(String),
    #[error("cgroup {0}: {1}")]
    Cgroup(PathBuf, String),
    #[error("load: {0}")]
    Load(String),
    #[error("attach: {0}")]
    Attach(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Exited(String),
}
