// SPDX-License-Identifier: GPL-2.0-only
//! Reads the schedulers' pinned `task_classes` map (tid → class id) from inside the guest with
//! the raw `bpf(2)` syscall (no libbpf here): `class-map` reports the class of every thread of a
//! process (the scx-mode half of issue 5's acceptance (a)); `move-probe` moves processes between
//! two cgroups and reads the schedulers' pinned `move_log` to report when, after each move, each
//! thread's class was first decided (enqueue or keep) and which it got (acceptance (b)).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::result::emit;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const DEFAULT_MAP: &str = "/sys/fs/bpf/canopy/task_classes";

/// One `bpf(2)` call with `attr` as its `union bpf_attr` (unused bytes zero); returns what the
/// syscall returns (a new fd, 0, or -1 with errno set).
///
/// # Safety
/// Every pointer written into `attr` must point at memory that outlives the call and is as
/// large as the kernel will read or write there (the map's key or value size).
unsafe fn bpf(command: libc::c_long, attr: &mut [u8; 128]) -> libc::c_long {
    // SAFETY: attr is a bpf_attr of the size passed; the caller vouches for its pointers.
    unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len() as u32) }
}

/// A pinned BPF map, looked up by raw key and value bytes.
pub(crate) struct PinnedMap {
    fd: OwnedFd,
}

impl PinnedMap {
    /// The schedulers' pinned `task_classes` map (tid or process id → class id).
    pub(crate) fn task_classes() -> Result<Self> {
        Self::open(DEFAULT_MAP)
    }

    fn open(path: &str) -> Result<Self> {
        let path_c = std::ffi::CString::new(path)?;
        // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
        let mut attr = [0u8; 128];
        attr[0..8].copy_from_slice(&(path_c.as_ptr() as u64).to_ne_bytes());
        // SAFETY: the only pointer is path_c's, a NUL-terminated string that outlives the call.
        let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("BPF_OBJ_GET {path}"));
        }
        // SAFETY: the kernel returned a new fd that we own.
        Ok(PinnedMap {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Copies the value under `key` into `value` (which must be the map's value size); false
    /// when absent.
    fn lookup(&self, key: &[u8], value: &mut [u8]) -> bool {
        // union bpf_attr for map element ops: map_fd (u32), pad, key (u64), value (u64), flags.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
        // SAFETY: the callers pass key and value buffers as large as the map's key and value
        // (the sizes bpf/intf.h defines), and both outlive the call.
        let r = unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) };
        r == 0
    }

    /// How many entries a map with u32 keys holds (BPF_MAP_GET_NEXT_KEY from the start; a
    /// key deleted during the walk restarts it from the first key, so this counts at most
    /// `limit` steps).
    fn count_u32_keys(&self, limit: u64) -> u64 {
        let (mut key, mut next) = (0u32, 0u32);
        let mut count = 0u64;
        let mut first = true;
        while count < limit {
            // union bpf_attr for BPF_MAP_GET_NEXT_KEY: map_fd (u32), pad, key (u64, 0 for the
            // first key), next_key (u64).
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
            if !first {
                attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
            }
            attr[16..24].copy_from_slice(&(&mut next as *mut u32 as u64).to_ne_bytes());
            // SAFETY: key and next are u32s (the map's key size) that outlive the call.
            let r = unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) };
            if r != 0 {
                break;
            }
            count += 1;
            key = next;
            first = false;
        }
        count
    }

    /// Sets the u32 value under a u32 key (`task_classes`: a class id under a process id). Only
    /// the `bpf(2)` syscall on stack memory, so it may run between fork and exec; returns the
    /// syscall's error.
    pub(crate) fn set(&self, key: u32, value: u32) -> std::io::Result<()> {
        let (key, value) = (key.to_ne_bytes(), value.to_ne_bytes());
        // union bpf_attr for map element ops: map_fd (u32), pad, key (u64), value (u64), flags
        // (u64, 0: BPF_ANY).
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&(self.fd.as_raw_fd() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
        // SAFETY: key and value are 4-byte buffers (the map's key and value sizes, bpf/intf.h)
        // that outlive the call.
        if unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The u32 value under a u32 key (`task_classes`), or None when absent.
    fn get(&self, key: u32) -> Option<u32> {
        let mut value = [0u8; 4];
        self.lookup(&key.to_ne_bytes(), &mut value)
            .then(|| u32::from_ne_bytes(value))
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

/// Reports `{threads, classes: {"<id>"|"absent": count}, map_entries}` for the process's
/// threads; `map_entries` counts every entry in the map (every process's).
pub fn run(args: &ClassMapArgs) -> Result<()> {
    let map = PinnedMap::open(&args.map)?;
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
    let map_entries = map.count_u32_keys(1 << 20);
    emit(
        &args.kind,
        json!({"threads": threads, "classes": classes, "map_entries": map_entries}),
    )
}

#[derive(Args, Debug)]
pub struct MoveProbeArgs {
    /// Process to move (all its threads move with it). Repeatable: each round moves them all.
    #[arg(long = "pid", required = true)]
    pids: Vec<u32>,
    /// Watch the threads of those processes whose comm starts with this prefix (threads that
    /// never wake, such as a main thread waiting in join, have no enqueue to watch).
    #[arg(long)]
    comm_prefix: String,
    /// cgroup (relative to /sys/fs/cgroup) the probe moves the processes into...
    #[arg(long)]
    to: String,
    /// ...where each watched thread must get this class id...
    #[arg(long)]
    to_class: u32,
    /// ...and the cgroup it moves them back to...
    #[arg(long)]
    back: String,
    /// ...where each must get this class id again.
    #[arg(long)]
    back_class: u32,
    /// Round trips.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Give up on one move after this long.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// The schedulers' pinned move log (`struct canopy_move_log`, bpf/intf.h).
    #[arg(long, default_value = MOVE_LOG)]
    log: String,
    /// Result kind.
    #[arg(long, default_value = "move-probe")]
    kind: String,
}

const MOVE_LOG: &str = "/sys/fs/bpf/canopy/move_log";
/// `struct canopy_move_log`: u64 next, then 64 records of 40 bytes.
const MOVE_RECORDS: usize = 64;
const MOVE_RECORD_BYTES: usize = 40;

/// One `struct canopy_move_record` (bpf/intf.h).
#[derive(Debug, Clone, Copy)]
struct MoveRecord {
    moved_at_ns: u64,
    decided_at_ns: u64,
    tid: u32,
    requested_class: u32,
    class: u32,
    /// `enum canopy_move_state`: 0 sleeping, 1 queued, 2 running.
    state_at_move: u32,
}

fn read_move_log(map: &PinnedMap) -> Vec<MoveRecord> {
    let mut value = vec![0u8; 8 + MOVE_RECORDS * MOVE_RECORD_BYTES];
    if !map.lookup(&0u32.to_ne_bytes(), &mut value) {
        return Vec::new();
    }
    let u64_at = |at: usize| u64::from_ne_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_ne_bytes(value[at..at + 4].try_into().expect("4 bytes"));
    (0..MOVE_RECORDS)
        .map(|i| 8 + i * MOVE_RECORD_BYTES)
        .map(|at| MoveRecord {
            moved_at_ns: u64_at(at + 8),
            decided_at_ns: u64_at(at + 16),
            tid: u32_at(at + 24),
            requested_class: u32_at(at + 28),
            class: u32_at(at + 32),
            state_at_move: u32_at(at + 36),
        })
        .collect()
}

/// The watched threads of `pids`.
fn watched_threads(pids: &[u32], comm_prefix: &str) -> Result<Vec<u32>> {
    let mut watched = Vec::new();
    for &pid in pids {
        for tid in threads_of(pid)? {
            let comm =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            if comm.starts_with(comm_prefix) {
                watched.push(tid);
            }
        }
    }
    Ok(watched)
}

/// One direction's findings over all rounds.
#[derive(Default)]
struct Direction {
    /// Kernel move -> first class decision (enqueue, or keeping it running), for threads
    /// runnable (queued or running) at the move: the move itself brings that decision.
    runnable_move_to_decided_us: Vec<u64>,
    /// Kernel move -> first class decision, for threads asleep at the move: their next wakeup.
    sleeping_move_to_decided_us: Vec<u64>,
    /// Of the runnable ones, how many were running (their slice was cut).
    were_running: u64,
    /// Kernel move -> first class decision for the ones that were running.
    running_move_to_decided_us: Vec<u64>,
    /// Start of the write to cgroup.procs -> first class decision, all threads.
    write_to_decided_us: Vec<u64>,
    /// The writes' own durations.
    write_us: Vec<u64>,
    wrong_class: Vec<serde_json::Value>,
    missed: u64,
}

impl Direction {
    fn report(&self) -> serde_json::Value {
        json!({
            "runnable_move_to_decided_us": self.runnable_move_to_decided_us,
            "max_runnable_move_to_decided_us": self.runnable_move_to_decided_us.iter().max(),
            "sleeping_move_to_decided_us": self.sleeping_move_to_decided_us,
            "were_running": self.were_running,
            "running_move_to_decided_us": self.running_move_to_decided_us,
            "write_to_decided_us": self.write_to_decided_us,
            "write_us": self.write_us,
            "wrong_class": self.wrong_class,
            "missed": self.missed,
            "followed": self.runnable_move_to_decided_us.len() + self.sleeping_move_to_decided_us.len(),
        })
    }
}

/// Moves every process to `cgroup`, then polls the move log (every 200 µs) until each watched
/// thread has a record of the first decision about its class after this move.
fn move_and_watch(
    log: &PinnedMap,
    args: &MoveProbeArgs,
    watched: &[u32],
    cgroup: &str,
    class: u32,
    direction: &mut Direction,
) -> Result<()> {
    let procs = format!("/sys/fs/cgroup/{cgroup}/cgroup.procs");
    let started_ns = crate::wakeprobe::monotonic_ns();
    let started = Instant::now();
    for pid in &args.pids {
        std::fs::write(&procs, pid.to_string()).with_context(|| format!("writing {procs}"))?;
    }
    direction
        .write_us
        .push(started.elapsed().as_micros() as u64);
    let limit = Duration::from_millis(args.timeout_ms);
    let mut pending: Vec<u32> = watched.to_vec();
    while !pending.is_empty() && started.elapsed() < limit {
        let records = read_move_log(log);
        pending.retain(|&tid| {
            // The latest record of this thread for a move made after the write started.
            let Some(record) = records
                .iter()
                .filter(|r| r.tid == tid && r.moved_at_ns >= started_ns)
                .max_by_key(|r| r.moved_at_ns)
            else {
                return true;
            };
            let move_to_decided_us = record.decided_at_ns.saturating_sub(record.moved_at_ns) / 1000;
            match record.state_at_move {
                0 => direction
                    .sleeping_move_to_decided_us
                    .push(move_to_decided_us),
                state => {
                    direction
                        .runnable_move_to_decided_us
                        .push(move_to_decided_us);
                    if state == 2 {
                        direction.were_running += 1;
                        direction
                            .running_move_to_decided_us
                            .push(move_to_decided_us);
                    }
                }
            }
            direction
                .write_to_decided_us
                .push(record.decided_at_ns.saturating_sub(started_ns) / 1000);
            if record.class != class {
                direction.wrong_class.push(json!({
                    "tid": tid,
                    "class": record.class,
                    "requested_class": record.requested_class,
                }));
            }
            false
        });
        std::thread::sleep(Duration::from_micros(200));
    }
    direction.missed += pending.len() as u64;
    Ok(())
}

/// Reports, per direction (`to`, `back`), how long after each kernel move (and after the start
/// of each write to cgroup.procs) each watched thread's class was first decided, and any thread
/// given another class than expected.
pub fn probe(args: &MoveProbeArgs) -> Result<()> {
    let log = PinnedMap::open(&args.log)?;
    let watched = watched_threads(&args.pids, &args.comm_prefix)?;
    if watched.is_empty() {
        bail!(
            "no thread of {:?} has a comm starting with {}",
            args.pids,
            args.comm_prefix
        );
    }
    let (mut to, mut back) = (Direction::default(), Direction::default());
    for _ in 0..args.rounds {
        move_and_watch(&log, args, &watched, &args.to, args.to_class, &mut to)?;
        std::thread::sleep(Duration::from_millis(20));
        move_and_watch(&log, args, &watched, &args.back, args.back_class, &mut back)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    emit(
        &args.kind,
        json!({
            "watched_threads": watched.len(),
            "rounds": args.rounds,
            "to": to.report(),
            "back": back.report(),
        }),
    )
}
