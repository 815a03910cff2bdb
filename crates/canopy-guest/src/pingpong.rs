// SPDX-License-Identifier: GPL-2.0-only
//! `pingpong`: context-switch throughput. Pairs of threads bounce one byte over two pipes for
//! a fixed time; reports round trips per second (each round trip is two wakeups and, on a
//! busy machine, two context switches), a lighter companion to hackbench.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::result::emit;

#[derive(Args, Debug)]
pub struct PingpongArgs {
    /// Thread pairs.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Result kind.
    #[arg(long, default_value = "pingpong")]
    kind: String,
}

pub fn run(args: &PingpongArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut pairs = Vec::new();
    for _ in 0..args.pairs.max(1) {
        let (ping_read, ping_write) = pipe()?;
        let (pong_read, pong_write) = pipe()?;
        // The echo side returns every byte until its input closes.
        let echo = std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while read_byte(&ping_read, &mut byte) {
                if !write_byte(&pong_write, &byte) {
                    break;
                }
            }
        });
        let stop = stop.clone();
        let driver = std::thread::spawn(move || -> u64 {
            let mut byte = [0u8; 1];
            let mut round_trips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !write_byte(&ping_write, &byte) || !read_byte(&pong_read, &mut byte) {
                    break;
                }
                round_trips += 1;
            }
            drop(ping_write); // ends the echo thread
            round_trips
        });
        pairs.push((driver, echo));
    }
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut round_trips = 0;
    for (driver, echo) in pairs {
        round_trips += driver.join().unwrap_or(0);
        let _ = echo.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    emit(
        &args.kind,
        json!({
            "pairs": args.pairs.max(1),
            "seconds": elapsed,
            "round_trips": round_trips,
            "round_trips_per_s": round_trips as f64 / elapsed,
        }),
    )
}

fn read_byte(fd: &OwnedFd, byte: &mut [u8; 1]) -> bool {
    // SAFETY: one byte into a stack buffer from a pipe we own.
    unsafe { libc::read(fd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) == 1 }
}

fn write_byte(fd: &OwnedFd, byte: &[u8; 1]) -> bool {
    // SAFETY: one byte from a stack buffer to a pipe we own.
    unsafe { libc::write(fd.as_raw_fd(), byte.as_ptr().cast(), 1) == 1 }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: freshly created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
