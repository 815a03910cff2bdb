// SPDX-License-Identifier: GPL-2.0-only
//! The CPU hog: N threads spinning on arithmetic until a deadline (or forever), optionally
//! renamed (PR_SET_NAME) so the controller's rules can match them, optionally in a duty cycle
//! (spin, sleep, spin...) like an interactive thread that wakes every few milliseconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct HogArgs {
    /// Spinning threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds to run; 0 runs until killed.
    #[arg(long, default_value_t = 0.0)]
    pub seconds: f64,
    /// Thread name (comm) for every hog thread.
    #[arg(long)]
    pub comm: Option<String>,
    /// Start every thread on this CPU, then allow all CPUs again: an even initial placement
    /// (cpu-split spreads its hogs), so a measurement does not start from a lopsided fork
    /// placement the fair scheduler's balancer may keep for many seconds.
    #[arg(long)]
    pub start_on_cpu: Option<usize>,
    /// Duty cycle: sleep this many µs after every `busy_us` of spinning (0: never sleep).
    #[arg(long, default_value_t = 0)]
    pub sleep_us: u64,
    /// Duty cycle: µs of spinning between sleeps.
    #[arg(long, default_value_t = 1000)]
    pub busy_us: u64,
    /// Start spinning only once standard input ends (its writer closed it): cpu-split starts
    /// many hogs together this way, after every one of them has been made.
    #[arg(long)]
    pub start_at_stdin_end: bool,
    /// Fork-heavy load instead of spinning: each thread forks a child that spins `busy_us`
    /// and exits, waits for it, and forks the next (a build's short jobs: every job is a new
    /// task, and the parent wakes once per job).
    #[arg(long)]
    pub fork_jobs: bool,
}

/// Moves the calling thread to `cpu`, then lets it run anywhere it could before: it stays
/// where it is until a scheduler moves it.
fn start_on(cpu: usize) {
    // SAFETY: plain sched_{get,set}affinity on the calling thread with a local cpu_set_t.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, size, &one) == 0 {
            libc::sched_setaffinity(0, size, &allowed);
        }
    }
}

pub fn run(args: &HogArgs) -> Result<()> {
    if args.start_at_stdin_end {
        // end of input or an error alike: the writer is gone, start
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    }
    let deadline =
        (args.seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(args.seconds));
    let mut workers = Vec::new();
    for _ in 0..args.threads.max(1) {
        let comm = args.comm.clone();
        let start_cpu = args.start_on_cpu;
        let fork_jobs = args.fork_jobs;
        let (busy, pause) = (
            Duration::from_micros(args.busy_us.max(1)),
            Duration::from_micros(args.sleep_us),
        );
        workers.push(std::thread::spawn(move || {
            if let Some(comm) = comm {
                crate::storm::set_thread_name(&comm);
            }
            if let Some(cpu) = start_cpu {
                start_on(cpu);
            }
            if fork_jobs {
                return fork_jobs_until(deadline, busy);
            }
            if pause.is_zero() {
                return spin_until(deadline);
            }
            let mut counter = 0;
            while deadline.is_none_or(|at| Instant::now() < at) {
                counter ^= spin_until(Some(Instant::now() + busy));
                std::thread::sleep(pause);
            }
            counter
        }));
    }
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// Forks one job after another until @deadline: each child spins @busy and exits, and the
/// parent waits for it before forking the next. Returns the jobs done.
fn fork_jobs_until(deadline: Option<Instant>, busy: Duration) -> u64 {
    let mut jobs = 0;
    while deadline.is_none_or(|at| Instant::now() < at) {
        // SAFETY: the child only spins on arithmetic, reads the clock and calls _exit; it
        // touches no lock another thread of this process could hold.
        match unsafe { libc::fork() } {
            0 => {
                spin_until(Some(Instant::now() + busy));
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waits for our own child, with a local status word.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                jobs += 1;
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    jobs
}

/// Spins, checking the clock every few microseconds of work.
pub fn spin_until(deadline: Option<Instant>) -> u64 {
    let mut counter: u64 = 0;
    loop {
        for _ in 0..10_000 {
            counter = black_box(counter.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        if let Some(deadline) = deadline {
            if Instant::now() >= deadline {
                return counter;
            }
        }
    }
}
