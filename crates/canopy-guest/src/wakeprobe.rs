// SPDX-License-Identifier: GPL-2.0-only
//! Wakeup-latency probe, schbench-like: sleeper threads are woken either by their own absolute
//! timer (`timer`: latency = wake time - timer expiry) or by a waker thread writing a timestamp
//! into each sleeper's pipe (`pipe`: latency = wake time - write time). After each wakeup a
//! sleeper can burn `--work-us` of CPU, as a request handler would. Prints p50/p90/p99/p99.9/max
//! in microseconds as one CANOPY-RESULT.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::result::emit;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum WakeMode {
    Timer,
    Pipe,
}

#[derive(Args, Debug)]
pub struct WakeprobeArgs {
    /// How sleepers are woken.
    #[arg(long, value_enum, default_value = "timer")]
    mode: WakeMode,
    /// Sleeper threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Sleep period between wakeups, in microseconds.
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
    /// CPU work after each wakeup, in microseconds.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// Measurement duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Samples from the first `warmup` seconds are dropped.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Thread name (comm) for the probe threads, so policy rules can match them.
    #[arg(long)]
    comm: Option<String>,
    /// Nice value for the probe threads.
    #[arg(long, allow_hyphen_values = true)]
    nice: Option<i32>,
    /// Result kind (to tell several probes in one run apart).
    #[arg(long, default_value = "wakeprobe")]
    kind: String,
}

pub fn run(args: &WakeprobeArgs) -> Result<()> {
    if args.threads == 0 || args.interval_us == 0 {
        bail!("wakeprobe needs at least one thread and a non-zero interval");
    }
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(args.warmup);
    let end = warmup_end + Duration::from_secs_f64(args.seconds);
    let interval = Duration::from_micros(args.interval_us);
    let work = Duration::from_micros(args.work_us);

    let mut sleepers = Vec::new();
    let mut pipe_writers = Vec::new();
    for _ in 0..args.threads {
        let pipe_reader = if args.mode == WakeMode::Pipe {
            let (reader, writer) = pipe()?;
            pipe_writers.push(writer);
            Some(reader)
        } else {
            None
        };
        let comm = args.comm.clone();
        let nice = args.nice;
        sleepers.push(std::thread::spawn(move || -> Vec<u64> {
            prepare_thread(comm.as_deref(), nice);
            match pipe_reader {
                None => timer_sleeper(interval, work, warmup_end, end),
                Some(reader) => pipe_sleeper(reader, work, warmup_end),
            }
        }));
    }
    let waker = (args.mode == WakeMode::Pipe).then(|| {
        let comm = args.comm.clone();
        let nice = args.nice;
        std::thread::spawn(move || {
            prepare_thread(comm.as_deref(), nice);
            pipe_waker(pipe_writers, interval, end)
        })
    });
    if let Some(waker) = waker {
        waker
            .join()
            .map_err(|_| anyhow::anyhow!("waker thread panicked"))?;
    }
    let mut samples_ns = Vec::new();
    for sleeper in sleepers {
        samples_ns.extend(
            sleeper
                .join()
                .map_err(|_| anyhow::anyhow!("sleeper thread panicked"))?,
        );
    }
    if samples_ns.is_empty() {
        bail!("wakeprobe collected no samples");
    }
    samples_ns.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean =
        samples_ns.iter().map(|&ns| ns as f64).sum::<f64>() / samples_ns.len() as f64 / 1000.0;
    emit(
        &args.kind,
        json!({
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "threads": args.threads,
            "interval_us": args.interval_us,
            "work_us": args.work_us,
            "seconds": args.seconds,
            "samples": samples_ns.len(),
            "mean_us": mean,
            "p50_us": us(percentile(&samples_ns, 50.0)),
            "p90_us": us(percentile(&samples_ns, 90.0)),
            "p99_us": us(percentile(&samples_ns, 99.0)),
            "p99_9_us": us(percentile(&samples_ns, 99.9)),
            "max_us": us(*samples_ns.last().unwrap_or(&0)),
        }),
    )
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u64], percent: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
    let rank = ((percent / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn prepare_thread(comm: Option<&str>, nice: Option<i32>) {
    // The default 50 us timer slack would dominate what we measure.
    // SAFETY: per-thread prctl with no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if let Some(comm) = comm {
        crate::storm::set_thread_name(comm);
    }
    if let Some(nice) = nice {
        // SAFETY: setpriority on the calling thread (tid), which Linux treats per thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
}

/// CLOCK_MONOTONIC in ns (the clock of bpf_ktime_get_ns, so it compares with BPF timestamps).
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn sleep_until_ns(target_ns: u64) {
    let target = libc::timespec {
        tv_sec: (target_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (target_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: absolute monotonic sleep; EINTR just ends the sleep early (it is re-measured).
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &target,
            std::ptr::null_mut(),
        );
    }
}

fn burn(work: Duration) {
    if !work.is_zero() {
        crate::hog::spin_until(Some(Instant::now() + work));
    }
}

fn timer_sleeper(
    interval: Duration,
    work: Duration,
    warmup_end: Instant,
    end: Instant,
) -> Vec<u64> {
    let interval_ns = interval.as_nanos() as u64;
    let mut samples = Vec::new();
    let mut next = monotonic_ns() + interval_ns;
    while Instant::now() < end {
        sleep_until_ns(next);
        let woke = monotonic_ns();
        if Instant::now() >= warmup_end {
            samples.push(woke.saturating_sub(next));
        }
        burn(work);
        next += interval_ns;
        let now = monotonic_ns();
        if next <= now {
            // Overran (long work or a long delay): restart the period rather than bursting.
            next = now + interval_ns;
        }
    }
    samples
}

fn pipe_sleeper(reader: OwnedFd, work: Duration, warmup_end: Instant) -> Vec<u64> {
    let mut samples = Vec::new();
    let mut buffer = [0u8; 8];
    loop {
        // SAFETY: reading into a stack buffer from a pipe we own.
        let n = unsafe { libc::read(reader.as_raw_fd(), buffer.as_mut_ptr().cast(), 8) };
        if n != 8 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break; // writer closed: the run is over
        }
        let woke = monotonic_ns();
        let sent = u64::from_ne_bytes(buffer);
        if Instant::now() >= warmup_end {
            samples.push(woke.saturating_sub(sent));
        }
        burn(work);
    }
    samples
}

fn pipe_waker(writers: Vec<OwnedFd>, interval: Duration, end: Instant) {
    let interval_ns = interval.as_nanos() as u64;
    let mut next = monotonic_ns() + interval_ns;
    while Instant::now() < end {
        sleep_until_ns(next);
        for writer in &writers {
            let stamp = monotonic_ns().to_ne_bytes();
            // SAFETY: writing 8 bytes to a pipe we own (atomic below PIPE_BUF).
            unsafe { libc::write(writer.as_raw_fd(), stamp.as_ptr().cast(), 8) };
        }
        next += interval_ns;
        let now = monotonic_ns();
        if next <= now {
            next = now + interval_ns;
        }
    }
    // Dropping the writers ends the sleepers' reads.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 50.0), 500);
        assert_eq!(percentile(&samples, 99.0), 990);
        assert_eq!(percentile(&samples, 99.9), 999);
        assert_eq!(percentile(&samples, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn timer_probe_collects_one_sample_per_wakeup() {
        // Loose bounds: the host may be busy (period restarts after an overrun).
        let start = Instant::now();
        let samples = timer_sleeper(
            Duration::from_millis(1),
            Duration::ZERO,
            start,
            start + Duration::from_millis(200),
        );
        assert!(
            (5..=201).contains(&samples.len()),
            "{} samples",
            samples.len()
        );
    }
}
