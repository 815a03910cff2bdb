// SPDX-License-Identifier: GPL-2.0-only
//! `frames`: the desktop frame benchmark (issue 14). Two periodic threads stand for what a user
//! feels: a 60 Hz "compositor" needing 4 ms of CPU per 16.67 ms frame and an "audio" thread
//! needing 0.5 ms per 5.33 ms period (256 samples at 48 kHz). Beside them runs BACKGROUND load at
//! twice the CPU count: CPU hogs (one process, `hog`) and a fork/exec-heavy "build" (`build`:
//! workers that each spawn short processes doing a fixed amount of work, one after another), both
//! separate processes so that a scheduler can class them apart from the foreground.
//!
//! Deadline accounting ([`DeadlineBook`]): period k is released at `start + k·P` and due at the
//! next release, `start + (k+1)·P`. A period that completes after its due time is late (missed),
//! with lateness `completion - due`. After a completion, periods whose due time has already
//! passed are dropped (missed, as a compositor skips to the next vblank) and the thread goes on
//! with the first period it can still meet. Worked example, P = 16.67 ms: frame 0 completes at
//! 40 ms (due 16.67: late by 23.3 ms); frame 1 (due 33.3) is dropped; frame 2 (released 33.3,
//! due 50) starts at once. Missed = late + dropped = 2, worst lateness 23.3 ms.
//!
//! Where a late period's time went ([`LateParts`]): its wakeup delay (release to the thread
//! running again after its sleep) and how long it was kept off the CPU while it worked (the
//! work's wall time less the CPU time it needed). Worked example, P = 16.67 ms, 4 ms of work:
//! woken 2 ms after its release and preempted for 11 ms in the middle of its work, a frame
//! completes at 17 ms, late by 0.33 ms: wake delay 2 ms, preempted 11 ms. (Under TCG a vCPU
//! the host does not run still advances the guest's clocks, CPU time included, so such a stall
//! shows in neither part.)
//!
//! One CANOPY-RESULT: periods, missed/late/dropped, worst lateness and the late periods' parts
//! per thread, and the build's completed jobs in the measured window (what the background work
//! got).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::result::emit;

#[derive(Args, Debug)]
pub struct FramesArgs {
    /// Measured seconds (after the background load has run for --settle-seconds).
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds between starting the background load and the first frame.
    #[arg(long, default_value_t = 1.0)]
    settle_seconds: f64,
    /// Compositor frame period in microseconds (60 Hz).
    #[arg(long, default_value_t = 16_667)]
    frame_period_us: u64,
    /// Compositor CPU time per frame in microseconds.
    #[arg(long, default_value_t = 4_000)]
    frame_work_us: u64,
    /// Audio period in microseconds (256 samples at 48 kHz).
    #[arg(long, default_value_t = 5_333)]
    audio_period_us: u64,
    /// Audio CPU time per period in microseconds.
    #[arg(long, default_value_t = 500)]
    audio_work_us: u64,
    /// Background CPU hog threads (default: the CPU count).
    #[arg(long)]
    hogs: Option<usize>,
    /// Background build workers, each spawning one short process after another (default: the
    /// CPU count). Hogs plus workers: twice the CPU count by default.
    #[arg(long)]
    build_workers: Option<usize>,
    /// Work of one build job (a spawned process), in loop iterations (fixed work, so the count
    /// of completed jobs measures the CPU the build got).
    #[arg(long, default_value_t = 300_000)]
    build_job_iterations: u64,
    /// A command prefix for the background processes, split on whitespace, e.g.
    /// `canopy scheduler exec --nice 4 --batch --` (schedqos's mapping of BACKGROUND).
    #[arg(long)]
    background_wrap: Option<String>,
    /// Name (comm) of this process's main thread once the background is started, so a policy
    /// or tagger can match the foreground process and not its background children.
    #[arg(long, default_value = "desktop-frames")]
    comm: String,
    /// Result kind.
    #[arg(long, default_value = "frames")]
    kind: String,
}

/// `build`: the background build (run by `frames` as its own process).
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Workers, each spawning one job process after another.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds of spawning before counting starts.
    #[arg(long, default_value_t = 0.0)]
    warmup_seconds: f64,
    /// Counted seconds; jobs completed in this window are reported.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Work of one job, in loop iterations.
    #[arg(long, default_value_t = 300_000)]
    job_iterations: u64,
}

/// `build-job`: one short process of the build: a fixed amount of arithmetic, then exit.
#[derive(Args, Debug)]
pub struct BuildJobArgs {
    #[arg(long)]
    iterations: u64,
}

/// Deadline accounting for one periodic thread (see the module comment). Times are
/// nanoseconds on any one monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineBook {
    start_ns: u64,
    period_ns: u64,
    /// Periods released in the measured window: `ceil(duration / period)`.
    periods: u64,
    /// Index of the next period to run.
    next: u64,
    completed: u64,
    late: u64,
    dropped: u64,
    worst_lateness_ns: u64,
}

impl DeadlineBook {
    /// A book for periods of `period_ns` released from `start_ns` for `duration_ns`.
    pub fn new(start_ns: u64, period_ns: u64, duration_ns: u64) -> DeadlineBook {
        let period_ns = period_ns.max(1);
        DeadlineBook {
            start_ns,
            period_ns,
            periods: duration_ns.div_ceil(period_ns),
            next: 0,
            completed: 0,
            late: 0,
            dropped: 0,
            worst_lateness_ns: 0,
        }
    }

    /// When the next period is released, or `None` once every period of the window is done.
    pub fn next_release_ns(&self) -> Option<u64> {
        (self.next < self.periods).then(|| self.start_ns + self.next * self.period_ns)
    }

    /// Records that the current period's work completed at `completion_ns` and moves on to the
    /// first later period whose due time is still ahead (the ones in between are dropped).
    pub fn complete(&mut self, completion_ns: u64) {
        if self.next >= self.periods {
            return;
        }
        let due = self.start_ns + (self.next + 1) * self.period_ns;
        self.completed += 1;
        if completion_ns > due {
            self.late += 1;
            self.worst_lateness_ns = self.worst_lateness_ns.max(completion_ns - due);
        }
        // Period j is due at start + (j+1)·P, still ahead iff j >= floor((completion-start)/P).
        let first_meetable = completion_ns.saturating_sub(self.start_ns) / self.period_ns;
        let following = self.next + 1;
        let next = following.max(first_meetable);
        self.dropped += next.min(self.periods) - following.min(self.periods);
        self.next = next;
    }

    /// When the current period is due, or `None` once every period of the window is done.
    pub fn due_ns(&self) -> Option<u64> {
        (self.next < self.periods).then(|| self.start_ns + (self.next + 1) * self.period_ns)
    }

    /// Late plus dropped periods.
    pub fn missed(&self) -> u64 {
        self.late + self.dropped
    }

    pub fn summary(&self) -> Value {
        json!({
            "period_ms": self.period_ns as f64 / 1e6,
            "periods": self.periods,
            "completed": self.completed,
            "missed": self.missed(),
            "late": self.late,
            "dropped": self.dropped,
            "worst_lateness_ms": self.worst_lateness_ns as f64 / 1e6,
        })
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Sleeps until `at_ns` on CLOCK_MONOTONIC (absolute, so oversleeping never accumulates).
fn sleep_until_ns(at_ns: u64) {
    let at = libc::timespec {
        tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: an absolute clock_nanosleep on a timespec we own; EINTR just ends the sleep early
    // and the caller's loop checks the time again.
    while monotonic_ns() < at_ns {
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &at,
                std::ptr::null_mut(),
            )
        };
    }
}

/// Spins until this thread has used `work_ns` more CPU time (what a frame needs, however long
/// the scheduler makes it wait).
fn burn_cpu_ns(work_ns: u64) {
    let until = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) + work_ns;
    let mut counter: u64 = 1;
    while clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) < until {
        for _ in 0..200 {
            counter = std::hint::black_box(
                counter
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
    }
}

/// The two parts of every late period's time, in nanoseconds: its wakeup delay and the time it
/// was kept off the CPU while it worked (see the module's comment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LateParts {
    wake_delay_ns: Vec<u64>,
    preempted_ns: Vec<u64>,
}

impl LateParts {
    /// Records a period released at `release_ns`, running from `woke_ns` and done at `done_ns`,
    /// after `work_ns` of CPU time, if it completed after `due_ns`.
    pub fn record(
        &mut self,
        release_ns: u64,
        woke_ns: u64,
        done_ns: u64,
        due_ns: u64,
        work_ns: u64,
    ) {
        if done_ns > due_ns {
            self.wake_delay_ns.push(woke_ns.saturating_sub(release_ns));
            self.preempted_ns
                .push(done_ns.saturating_sub(woke_ns).saturating_sub(work_ns));
        }
    }

    /// Median, 90th percentile and largest of each part (ms), and how many late periods lost
    /// more to the wakeup than to preemption.
    pub fn summary(&self) -> Value {
        let spread = |values: &[u64]| {
            let mut sorted = values.to_vec();
            sorted.sort_unstable();
            let at = |fraction: f64| {
                let index = ((sorted.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
                sorted.get(index).map_or(0.0, |&ns| ns as f64 / 1e6)
            };
            json!({ "p50_ms": at(0.5), "p90_ms": at(0.9), "max_ms": at(1.0) })
        };
        let mostly_wake = self
            .wake_delay_ns
            .iter()
            .zip(&self.preempted_ns)
            .filter(|(wake, preempted)| wake > preempted)
            .count();
        json!({
            "late": self.wake_delay_ns.len(),
            "wake_delay": spread(&self.wake_delay_ns),
            "preempted": spread(&self.preempted_ns),
            "mostly_wake_delay": mostly_wake,
        })
    }
}

/// One periodic thread: named `name`, work `work_ns` each period, accounted in a book, its late
/// periods' parts beside it.
fn periodic(name: &'static str, book: DeadlineBook, work_ns: u64) -> (DeadlineBook, LateParts) {
    let mut book = book;
    let mut parts = LateParts::default();
    crate::storm::set_thread_name(name);
    while let (Some(release), Some(due)) = (book.next_release_ns(), book.due_ns()) {
        sleep_until_ns(release);
        let woke = monotonic_ns();
        burn_cpu_ns(work_ns);
        let done = monotonic_ns();
        parts.record(release, woke, done, due, work_ns);
        book.complete(done);
    }
    (book, parts)
}

fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A child running `canopy-guest ARGS...`, behind the wrap prefix when one is given, in its own
/// process group (so it and everything it spawned can be killed together).
fn spawn_background(wrap: &[String], args: &[String], stdout: Stdio) -> Result<Child> {
    let me = std::env::current_exe().context("finding canopy-guest's own path")?;
    let mut command = match wrap.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(&me);
            command
        }
        None => Command::new(&me),
    };
    command
        .args(args)
        .stdout(stdout)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting background {wrap:?} canopy-guest {args:?}"))
}

fn kill_group(child: &mut Child) {
    // SAFETY: killing the process group the child leads.
    unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
}

pub fn run(args: &FramesArgs) -> Result<()> {
    if args.frame_work_us >= args.frame_period_us || args.audio_work_us >= args.audio_period_us {
        bail!(
            "work must be shorter than its period: frame {} of {} us, audio {} of {} us",
            args.frame_work_us,
            args.frame_period_us,
            args.audio_work_us,
            args.audio_period_us
        );
    }
    let cpus = online_cpus();
    let hogs = args.hogs.unwrap_or(cpus);
    let workers = args.build_workers.unwrap_or(cpus);
    let wrap: Vec<String> = args
        .background_wrap
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut hog = if hogs > 0 {
        Some(spawn_background(
            &wrap,
            &[
                "hog".into(),
                "--threads".into(),
                hogs.to_string(),
                "--comm".into(),
                "bg-hog".into(),
            ],
            Stdio::null(),
        )?)
    } else {
        None
    };
    let build = spawn_background(
        &wrap,
        &[
            "build".into(),
            "--workers".into(),
            workers.to_string(),
            "--warmup-seconds".into(),
            args.settle_seconds.to_string(),
            "--seconds".into(),
            args.seconds.to_string(),
            "--job-iterations".into(),
            args.build_job_iterations.to_string(),
        ],
        Stdio::piped(),
    );
    let mut build = match build {
        Ok(build) => build,
        Err(err) => {
            if let Some(hog) = &mut hog {
                kill_group(hog);
            }
            return Err(err);
        }
    };
    // Only now: the background children keep canopy-guest's name.
    crate::storm::set_thread_name(&args.comm);
    let settle_started = Instant::now();
    let start_ns = monotonic_ns() + (args.settle_seconds * 1e9) as u64;
    let duration_ns = (args.seconds * 1e9) as u64;
    let frame_book = DeadlineBook::new(start_ns, args.frame_period_us * 1000, duration_ns);
    let audio_book = DeadlineBook::new(start_ns, args.audio_period_us * 1000, duration_ns);
    let (frame_work, audio_work) = (args.frame_work_us * 1000, args.audio_work_us * 1000);
    let compositor = std::thread::spawn(move || periodic("compositor", frame_book, frame_work));
    let audio = std::thread::spawn(move || periodic("audio", audio_book, audio_work));
    sleep_until_ns(start_ns);
    let background_before = background_cpu_seconds(hog.as_ref(), &build);
    let frames = compositor.join();
    let audio = audio.join();
    let measured_s = settle_started.elapsed().as_secs_f64() - args.settle_seconds;
    let background_after = background_cpu_seconds(hog.as_ref(), &build);
    if let Some(hog) = &mut hog {
        kill_group(hog);
    }
    let build_report = read_build_report(&mut build);
    kill_group(&mut build);
    let (Ok((frames, frame_parts)), Ok((audio, audio_parts))) = (frames, audio) else {
        bail!("a periodic thread panicked");
    };
    let build_report = build_report?;
    emit(
        &args.kind,
        json!({
            "seconds": args.seconds,
            "measured_s": measured_s,
            "cpus": cpus,
            "hogs": hogs,
            "build_workers": workers,
            "build_job_iterations": args.build_job_iterations,
            "background_wrap": args.background_wrap,
            "frame_work_ms": args.frame_work_us as f64 / 1000.0,
            "audio_work_ms": args.audio_work_us as f64 / 1000.0,
            "frames": frames.summary(),
            "audio": audio.summary(),
            "frames_late_parts": frame_parts.summary(),
            "audio_late_parts": audio_parts.summary(),
            "build_jobs": build_report["jobs"],
            "build_spawn_errors": build_report["spawn_errors"],
            "hog_cpu_s": background_after.0 - background_before.0,
            "build_cpu_s": background_after.1 - background_before.1,
            "background_cpu_s": (background_after.0 + background_after.1)
                - (background_before.0 + background_before.1),
        }),
    )
}

/// CPU seconds the hogs and the build (its jobs counted once reaped) have used so far; 0 for
/// one that is missing or gone. Read at the window's start and end: the difference is what
/// the BACKGROUND work got in all, which a scheduler may split between the hogs and the build
/// as it likes (a peer that favours tasks that sleep often gives the build more).
fn background_cpu_seconds(hog: Option<&Child>, build: &Child) -> (f64, f64) {
    let used = |child: &Child| {
        crate::proc_stat::cpu_seconds_with_reaped_children(child.id()).unwrap_or(0.0)
    };
    (hog.map_or(0.0, used), used(build))
}

/// The build prints one JSON line when its window ends.
fn read_build_report(build: &mut Child) -> Result<Value> {
    let stdout = build.stdout.take().context("the build's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the build's report")?;
    serde_json::from_str(line.trim())
        .with_context(|| format!("the build's report `{}` is not JSON", line.trim()))
}

/// `build`: `workers` threads, each running `canopy-guest build-job` processes back to back;
/// counts the jobs that completed inside the window and prints `{"jobs":N,...}`.
pub fn build(args: &BuildArgs) -> Result<()> {
    let me = std::env::current_exe().context("finding canopy-guest's own path")?;
    let started = Instant::now();
    let window_start = started + Duration::from_secs_f64(args.warmup_seconds);
    let window_end = window_start + Duration::from_secs_f64(args.seconds);
    let mut workers = Vec::new();
    for _ in 0..args.workers.max(1) {
        let me = me.clone();
        let iterations = args.job_iterations.to_string();
        workers.push(std::thread::spawn(move || {
            let (mut jobs, mut errors) = (0u64, 0u64);
            while Instant::now() < window_end {
                let status = Command::new(&me)
                    .args(["build-job", "--iterations", &iterations])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status();
                let done = Instant::now();
                match status {
                    Ok(status) if status.success() => {
                        if done >= window_start && done <= window_end {
                            jobs += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (jobs, errors)
        }));
    }
    let (mut jobs, mut errors) = (0, 0);
    for worker in workers {
        if let Ok((j, e)) = worker.join() {
            jobs += j;
            errors += e;
        }
    }
    println!(
        "{}",
        json!({"jobs": jobs, "spawn_errors": errors, "workers": args.workers})
    );
    Ok(())
}

pub fn build_job(args: &BuildJobArgs) -> Result<()> {
    let mut counter: u64 = 1;
    for _ in 0..args.iterations {
        counter = std::hint::black_box(
            counter
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    std::hint::black_box(counter);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_late_periods_time_splits_into_its_wake_delay_and_its_preemption() {
        // The module's example: P = 16.67 ms, 4 ms of work, woken 2 ms late, preempted 11 ms.
        let period = 16_670_000;
        let mut parts = LateParts::default();
        parts.record(0, 2 * MS, 17 * MS, period, 4 * MS);
        // on time: not recorded
        parts.record(period, period + MS, period + 5 * MS, 2 * period, 4 * MS);
        // late mostly from its wakeup
        parts.record(
            2 * period,
            2 * period + 15 * MS,
            2 * period + 19 * MS,
            3 * period,
            4 * MS,
        );
        let summary = parts.summary();
        assert_eq!(summary["late"], 2);
        assert_eq!(summary["mostly_wake_delay"], 1);
        assert_eq!(summary["wake_delay"]["max_ms"], 15.0);
        assert_eq!(summary["wake_delay"]["p50_ms"], 2.0);
        assert_eq!(summary["preempted"]["max_ms"], 11.0);
        assert_eq!(summary["preempted"]["p50_ms"], 0.0);
        assert_eq!(LateParts::default().summary()["wake_delay"]["max_ms"], 0.0);
    }

    #[test]
    fn periods_in_the_window_round_up() {
        assert_eq!(DeadlineBook::new(0, 16_667_000, 30_000 * MS).periods, 1800);
        assert_eq!(DeadlineBook::new(0, 5_333_000, 30_000 * MS).periods, 5626);
        assert_eq!(DeadlineBook::new(0, 10 * MS, 100 * MS).periods, 10);
    }

    #[test]
    fn on_time_periods_miss_nothing() {
        let mut book = DeadlineBook::new(1000, 10 * MS, 30 * MS);
        let mut releases = Vec::new();
        while let Some(release) = book.next_release_ns() {
            releases.push(release);
            book.complete(release + 4 * MS);
        }
        assert_eq!(releases, vec![1000, 1000 + 10 * MS, 1000 + 20 * MS]);
        assert_eq!(book.missed(), 0);
        assert_eq!(book.summary()["completed"], 3);
        assert_eq!(book.summary()["worst_lateness_ms"], 0.0);
    }

    #[test]
    fn completing_exactly_at_the_due_time_is_on_time() {
        let mut book = DeadlineBook::new(0, 10 * MS, 20 * MS);
        book.complete(10 * MS);
        assert_eq!(book.missed(), 0);
        assert_eq!(book.next_release_ns(), Some(10 * MS));
    }

    #[test]
    fn a_late_period_that_still_leaves_the_next_one_meetable_drops_nothing() {
        let mut book = DeadlineBook::new(0, 10 * MS, 100 * MS);
        book.complete(13 * MS); // due 10: late by 3
        assert_eq!(book.next_release_ns(), Some(10 * MS)); // period 1 (due 20) runs at once
        assert_eq!((book.late, book.dropped), (1, 0));
        assert_eq!(book.worst_lateness_ns, 3 * MS);
    }

    #[test]
    fn the_module_example_a_frame_late_by_23_ms_drops_one() {
        let period = 16_667_000;
        let mut book = DeadlineBook::new(0, period, 1000 * MS);
        book.complete(40 * MS);
        assert_eq!((book.late, book.dropped, book.missed()), (1, 1, 2));
        assert_eq!(book.worst_lateness_ns, 40 * MS - period);
        assert_eq!(book.next_release_ns(), Some(2 * period));
        book.complete(2 * period + 4 * MS);
        assert_eq!(book.missed(), 2);
        assert_eq!(book.worst_lateness_ns, 40 * MS - period);
    }

    #[test]
    fn a_stall_past_the_window_drops_only_periods_inside_it() {
        let mut book = DeadlineBook::new(0, 10 * MS, 50 * MS);
        book.complete(500 * MS);
        assert_eq!(book.periods, 5);
        assert_eq!((book.late, book.dropped), (1, 4));
        assert_eq!(book.next_release_ns(), None);
        book.complete(600 * MS); // after the end: ignored
        assert_eq!(book.summary()["completed"], 1);
    }

    #[test]
    fn worst_lateness_is_the_largest_over_completed_periods() {
        let mut book = DeadlineBook::new(0, 10 * MS, 100 * MS);
        book.complete(11 * MS); // late 1
        book.complete(25 * MS); // period 1 due 20: late 5
        book.complete(32 * MS); // period 2 due 30: late 2
        assert_eq!(book.late, 3);
        assert_eq!(book.worst_lateness_ns, 5 * MS);
        assert_eq!(book.summary()["worst_lateness_ms"], 5.0);
    }
}
