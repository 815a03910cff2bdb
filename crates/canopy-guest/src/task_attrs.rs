// SPDX-License-Identifier: GPL-2.0-only
//! `task-attrs`: the scheduling attributes of every thread of some processes, read with
//! sched_getattr(2): policy, nice, RT priority, custom slice (sched_runtime) and uclamp, plus
//! comm and cgroup. What the controller's fallback mode applies, checked from outside.

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use crate::result::emit;

#[derive(Args, Debug)]
pub struct TaskAttrsArgs {
    /// Processes to inspect (all their threads). Repeatable.
    #[arg(long = "pid")]
    pids: Vec<i32>,
    /// Only threads whose comm starts with this prefix (all processes when no --pid).
    #[arg(long)]
    comm_prefix: Option<String>,
    /// Result kind.
    #[arg(long, default_value = "task-attrs")]
    kind: String,
}

/// The kernel's `struct sched_attr` with the uclamp fields (SCHED_ATTR_SIZE_VER1, 56 bytes),
/// which libc's copy lacks.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

pub fn run(args: &TaskAttrsArgs) -> Result<()> {
    let pids: Vec<i32> = if args.pids.is_empty() {
        std::fs::read_dir("/proc")?
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect()
    } else {
        args.pids.clone()
    };
    let mut tasks = Vec::new();
    for pid in pids {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue; // exited
        };
        for thread in threads.flatten() {
            let Some(tid) = thread
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            if args
                .comm_prefix
                .as_deref()
                .is_some_and(|prefix| !comm.starts_with(prefix))
            {
                continue;
            }
            if let Some(task) = describe(pid, tid, comm) {
                tasks.push(task);
            }
        }
    }
    emit(&args.kind, json!({ "count": tasks.len(), "tasks": tasks }))
}

fn describe(pid: i32, tid: i32, comm: String) -> Option<Value> {
    let mut attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel fills at most `size` bytes of our struct.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    if rc != 0 {
        return None; // exited meanwhile
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("0::").map(String::from))
        });
    let policy = match attr.sched_policy {
        0 => "other",
        1 => "fifo",
        2 => "rr",
        3 => "batch",
        5 => "idle",
        6 => "deadline",
        7 => "ext",
        _ => "unknown",
    };
    Some(json!({
        "pid": pid,
        "tid": tid,
        "comm": comm,
        "cgroup": cgroup,
        "policy": policy,
        "nice": attr.sched_nice,
        "rt_priority": attr.sched_priority,
        "runtime_ns": attr.sched_runtime,
        "uclamp_min": attr.sched_util_min,
        "uclamp_max": attr.sched_util_max,
    }))
}
