// SPDX-License-Identifier: GPL-2.0-only
//! Storm generator for the controller's event paths: `--threads` threads created (each renamed
//! with PR_SET_NAME, `--renames` times in all), `--forks` short-lived child processes (each can
//! rename itself too) and `--execs` fork+exec of `/bin/true`, at a target `--rate` of operations
//! per second (0 = as fast as possible). Threads can be held alive (`--hold-ms`) so a daemon
//! has time to tag them; a SIGUSR1 to the storm ends the threads' hold early, so a script holds
//! them exactly as long as its checks take. Reports counts, elapsed time and the achieved rate.

use std::process::Command;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::result::emit;

#[derive(Args, Debug)]
pub struct StormArgs {
    /// Threads to create.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Child processes to fork (each exits after its rename and hold).
    #[arg(long, default_value_t = 0)]
    forks: usize,
    /// fork+exec of /bin/true.
    #[arg(long, default_value_t = 0)]
    execs: usize,
    /// PR_SET_NAME calls per created thread or forked child (the last name sticks).
    #[arg(long, default_value_t = 1)]
    renames: usize,
    /// Name prefix; thread i is named `<prefix><i>` (truncated to 15 bytes by the kernel).
    #[arg(long, default_value = "storm-")]
    name_prefix: String,
    /// Target operations (thread creations, forks, execs) per second; 0 = unthrottled.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long each thread (and forked child) stays alive after renaming, in milliseconds. A
    /// SIGUSR1 to the storm process ends the threads' hold at once (not the children's).
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Include the created threads' tids in the result.
    #[arg(long)]
    report_tids: bool,
    /// Result kind.
    #[arg(long, default_value = "storm")]
    kind: String,
}

pub fn run(args: &StormArgs) -> Result<()> {
    let started = Instant::now();
    let pacer = Pacer::new(args.rate);
    let hold = Duration::from_millis(args.hold_ms);
    let mut operations = 0usize;

    // Forks first, while this process still has one thread (fork in a threaded process is
    // safe here anyway: the child only calls async-signal-safe functions).
    let mut children = Vec::new();
    for index in 0..args.forks {
        pacer.wait(operations, started);
        let names: Vec<Vec<u8>> = (0..args.renames)
            .map(|_| c_name(&format!("{}f{index}", args.name_prefix)))
            .collect();
        // SAFETY: the child only calls prctl, nanosleep and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                for name in &names {
                    libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
                }
                if !hold.is_zero() {
                    let pause = libc::timespec {
                        tv_sec: hold.as_secs() as libc::time_t,
                        tv_nsec: hold.subsec_nanos() as libc::c_long,
                    };
                    libc::nanosleep(&pause, std::ptr::null_mut());
                }
                libc::_exit(0);
            }
        }
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        children.push(pid);
        operations += 1;
    }

    for _ in 0..args.execs {
        pacer.wait(operations, started);
        let child = Command::new("/bin/true")
            .spawn()
            .context("exec /bin/true")?;
        children.push(child.id() as libc::pid_t);
        std::mem::forget(child); // reaped below with the forks
        operations += 1;
    }

    // SIGUSR1 is blocked here, before any thread exists (they inherit the mask), so only the
    // `sigtimedwait` below receives it, whichever thread the kernel picks.
    let early_release = signal_set(libc::SIGUSR1);
    // SAFETY: a valid signal set; changes only this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &early_release, std::ptr::null_mut()) };
    let hold_over = Arc::new((Mutex::new(false), Condvar::new()));
    let (tid_sender, tid_receiver) = std::sync::mpsc::channel();
    let release = Arc::new(Barrier::new(args.threads + 1));
    let mut threads = Vec::new();
    for index in 0..args.threads {
        pacer.wait(operations, started);
        let name = format!("{}{index}", args.name_prefix);
        let renames = args.renames;
        let tid_sender = tid_sender.clone();
        let release = release.clone();
        let hold_over = hold_over.clone();
        threads.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    for _ in 0..renames {
                        set_thread_name(&name);
                    }
                    // SAFETY: gettid has no preconditions.
                    let _ = tid_sender.send(unsafe { libc::syscall(libc::SYS_gettid) });
                    // Every thread stays until all exist, then `hold` longer or until the
                    // hold is declared over (SIGUSR1).
                    release.wait();
                    let (over, changed) = &*hold_over;
                    let over = over.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let _ = changed.wait_timeout_while(over, hold, |over| !*over);
                })
                .context("creating a storm thread")?,
        );
        operations += 1;
    }
    drop(tid_sender);
    let created = Instant::now();
    release.wait();
    if args.threads > 0 && !hold.is_zero() {
        let timeout = libc::timespec {
            tv_sec: hold.as_secs() as libc::time_t,
            tv_nsec: hold.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a valid blocked set; waits for SIGUSR1 or the hold, whichever comes first.
        unsafe { libc::sigtimedwait(&early_release, std::ptr::null_mut(), &timeout) };
        let (over, changed) = &*hold_over;
        *over.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        changed.notify_all();
    }
    let tids: Vec<i64> = tid_receiver.iter().collect();
    for thread in threads {
        let _ = thread.join();
    }
    for pid in children {
        let mut status = 0;
        // SAFETY: reaping our own children.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let creation_s = created.duration_since(started).as_secs_f64();
    let mut result = json!({
        "threads": args.threads,
        "forks": args.forks,
        "execs": args.execs,
        "renames_per_task": args.renames,
        "creation_s": creation_s,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "ops_per_s": if creation_s > 0.0 { operations as f64 / creation_s } else { 0.0 },
    });
    if args.report_tids {
        result["tids"] = json!(tids);
    }
    emit(&args.kind, result)
}

/// Spreads operations evenly at `rate` per second.
struct Pacer {
    period: Option<Duration>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            period: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
        }
    }

    fn wait(&self, done: usize, started: Instant) {
        if let Some(period) = self.period {
            let due = started + period * done as u32;
            if let Some(pause) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(pause);
            }
        }
    }
}

/// A signal set holding `signal` alone.
fn signal_set(signal: libc::c_int) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        set
    }
}

fn c_name(name: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    bytes
}

/// Renames the calling thread (comm, at most 15 bytes).
pub fn set_thread_name(name: &str) {
    let bytes = c_name(name);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}
