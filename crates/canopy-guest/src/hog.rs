// SPDX-License-Identifier: GPL-2.0-only
//! The CPU hog: N threads spinning on arithmetic until a deadline (or forever), optionally
//! renamed (PR_SET_NAME) so the controller's rules can match them.

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
}

pub fn run(args: &HogArgs) -> Result<()> {
    let deadline =
        (args.seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(args.seconds));
    let mut workers = Vec::new();
    for _ in 0..args.threads.max(1) {
        let comm = args.comm.clone();
        workers.push(std::thread::spawn(move || {
            if let Some(comm) = comm {
                crate::storm::set_thread_name(&comm);
            }
            spin_until(deadline)
        }));
    }
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
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
