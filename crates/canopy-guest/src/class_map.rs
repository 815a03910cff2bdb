// SPDX-License-Identifier: GPL-2.0-only
//! Reads the schedulers' pinned `task_classes` map (tid → class id) from inside the guest with
//! the raw `bpf(2)` syscall (no libbpf here): `class-map` reports the class of every thread of a
//! process, `move-probe` moves a process between two cgroups and measures how long the class in
//! the map takes to follow each move (the scx-mode half of issue 5's acceptance (a) and (b)).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::result::emit;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
const DEFAULT_MAP: &str = "/sys/fs/bpf/canopy/task_classes";

/// A pinned BPF hash map with u32 keys and u32 values.
struct PinnedU32Map {
    fd: OwnedFd,
}

impl PinnedU32Map {
    fn open(path: &str) -> Result<Self> {
        let path_c = std::ffi::CString::new(path)?;
        // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(path_c.as_ptr() as u64).to_ne_bytes());
        // SAFETY: attr is a valid, zeroed bpf_attr of the size we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                attr.as_mut_ptr(),
                attr.len() as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("BPF_OBJ_GET {path}"));
        }
        // SAFETY: the kernel returned a new fd that we own.
        Ok(PinnedU32Map {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// The value under `key`, or None when absent.
    fn get(&self, key: u32) -> Option<u32> {
        let mut value = 0u32;
        // union bpf_attr for map element ops: map_fd (u32), pad, key (u64), value (u64), flags.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(&mut value as *mut u32 as u64).to_ne_bytes());
        // SAFETY: key and value outlive the call; attr is a valid bpf_attr.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                attr.as_mut_ptr(),
                attr.len() as u32,
            )
        };
        (r == 0).then_some(value)
    }
}

fn threads_of(pid: u32) -> Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

#[derive(Args, Debug)]
pub struct ClassMapArgs {
    /// Process whose threads to look up.
    #[arg(long)]
    pid: u32,
    /// Only threads whose comm starts with this prefix.
    #[arg(long)]
    comm_prefix: Option<String>,
    /// The pinned map.
    #[arg(long, default_value = DEFAULT_MAP)]
    map: String,
    /// Result kind.
    #[arg(long, default_value = "class-map")]
    kind: String,
}

/// Reports `{threads, classes: {"<id>"|"absent": count}}` for the process's threads.
pub fn run(args: &ClassMapArgs) -> Result<()> {
    let map = PinnedU32Map::open(&args.map)?;
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut threads = 0u64;
    for tid in threads_of(args.pid)? {
        if let Some(prefix) = &args.comm_prefix {
            let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", args.pid))
                .unwrap_or_default();
            if !comm.starts_with(prefix.as_str()) {
                continue;
            }
        }
        threads += 1;
        let key = map
            .get(tid)
            .map(|c| c.to_string())
            .unwrap_or_else(|| "absent".into());
        *classes.entry(key).or_default() += 1;
    }
    emit(&args.kind, json!({"threads": threads, "classes": classes}))
}

#[derive(Args, Debug)]
pub struct MoveProbeArgs {
    /// Process to move (all its threads move with it).
    #[arg(long)]
    pid: u32,
    /// Thread whose class is watched (default: the process's main thread).
    #[arg(long)]
    tid: Option<u32>,
    /// cgroup (relative to /sys/fs/cgroup) the probe moves the process into...
    #[arg(long)]
    to: String,
    /// ...where the thread's class must become this id...
    #[arg(long)]
    to_class: u32,
    /// ...and the cgroup it moves it back to...
    #[arg(long)]
    back: String,
    /// ...where the class must become this id again.
    #[arg(long)]
    back_class: u32,
    /// Round trips.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Give up on one move after this long.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// The pinned map.
    #[arg(long, default_value = DEFAULT_MAP)]
    map: String,
    /// Result kind.
    #[arg(long, default_value = "move-probe")]
    kind: String,
}

/// One timed move: how long the write to `cgroup.procs` took (the kernel attaches the task
/// somewhere inside it, after taking the cgroup locks) and when the class followed, from just
/// before the write.
struct TimedMove {
    write_us: u64,
    class_us: Option<u64>,
}

/// Moves the process, then polls the map (every 20 µs) until the class follows.
fn move_and_wait(
    map: &PinnedU32Map,
    args: &MoveProbeArgs,
    cgroup: &str,
    class: u32,
) -> Result<TimedMove> {
    let tid = args.tid.unwrap_or(args.pid);
    let procs = format!("/sys/fs/cgroup/{cgroup}/cgroup.procs");
    let started = Instant::now();
    std::fs::write(&procs, args.pid.to_string()).with_context(|| format!("writing {procs}"))?;
    let write_us = started.elapsed().as_micros() as u64;
    let limit = Duration::from_millis(args.timeout_ms);
    while started.elapsed() < limit {
        if map.get(tid) == Some(class) {
            return Ok(TimedMove {
                write_us,
                class_us: Some(started.elapsed().as_micros() as u64),
            });
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    Ok(TimedMove {
        write_us,
        class_us: None,
    })
}

/// Reports `{to_us: [...], back_us: [...], missed_to, missed_back, max_to_us, max_back_us}`
/// (from just before each write) and the writes' own durations (`write_to_us`, `write_back_us`).
pub fn probe(args: &MoveProbeArgs) -> Result<()> {
    let map = PinnedU32Map::open(&args.map)?;
    let tid = args.tid.unwrap_or(args.pid);
    if map.get(tid).is_none() {
        bail!(
            "tid {tid} has no entry in {} before the first move",
            args.map
        );
    }
    let (mut to_us, mut back_us) = (Vec::new(), Vec::new());
    let (mut write_to_us, mut write_back_us) = (Vec::new(), Vec::new());
    let (mut missed_to, mut missed_back) = (0u64, 0u64);
    for _ in 0..args.rounds {
        let to = move_and_wait(&map, args, &args.to, args.to_class)?;
        write_to_us.push(to.write_us);
        match to.class_us {
            Some(us) => to_us.push(us),
            None => missed_to += 1,
        }
        // Let the daemon settle so each round measures one move.
        std::thread::sleep(Duration::from_millis(20));
        let back = move_and_wait(&map, args, &args.back, args.back_class)?;
        write_back_us.push(back.write_us);
        match back.class_us {
            Some(us) => back_us.push(us),
            None => missed_back += 1,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    emit(
        &args.kind,
        json!({
            "to_us": to_us,
            "back_us": back_us,
            "missed_to": missed_to,
            "missed_back": missed_back,
            "max_to_us": to_us.iter().max(),
            "max_back_us": back_us.iter().max(),
            "write_to_us": write_to_us,
            "write_back_us": write_back_us,
        }),
    )
}
