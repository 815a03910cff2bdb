// SPDX-License-Identifier: GPL-2.0-only
//! `latency`: Debian's cyclictest as a measurement. Runs `cyclictest -q -h <limit>` (by default
//! SCHED_OTHER, one thread, as in TESTBED's baselines), optionally under a background load
//! command that is started first and killed afterwards (e.g. `hackbench -T -p -g 2 -l 100000000`),
//! and turns the histogram into percentiles. Samples above the histogram limit count as
//! overflows; a percentile that lands among them is reported as the limit and flagged. With
//! `--floor-kind`, a SCHED_FIFO cyclictest runs beside it for the same seconds: the platform's
//! floor at that very time, so a comparison between runs made at different times can be
//! normalised by how busy the host was in each. With `--interleaved-floor-kind`, the SCHED_FIFO
//! floor instead takes turns with the measured probe under the one load (`--rounds` turns each,
//! in the order floor, probe, probe, floor, floor, ...), so both sample the same stretch of the
//! host's weather without running at the same time; each kind's rounds are summed into one
//! histogram.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::class_map::PinnedMap;
use crate::result::emit;

#[derive(Args, Debug)]
pub struct LatencyArgs {
    /// cyclictest's wakeup interval (-i) in microseconds.
    #[arg(long, default_value_t = 1777)]
    interval_us: u64,
    /// Measurement duration (-D) in seconds.
    #[arg(long, default_value_t = 12)]
    seconds: u64,
    /// Measuring threads (-t).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Histogram limit (-h) in microseconds.
    #[arg(long, default_value_t = 20000)]
    histogram_us: usize,
    /// Background load, a shell command started before and killed after the measurement.
    #[arg(long)]
    load: Option<String>,
    /// Seconds between starting the load and starting cyclictest.
    #[arg(long, default_value_t = 1.0)]
    load_settle: f64,
    /// Result kind.
    #[arg(long, default_value = "latency")]
    kind: String,
    /// Also measure the platform's floor at the same time, reported as this result kind: a
    /// second cyclictest, one SCHED_FIFO 50 thread, which preempts everything the moment its
    /// timer fires, so its latency is what the (emulated) machine itself adds right then.
    #[arg(long, conflicts_with = "interleaved_floor_kind")]
    floor_kind: Option<String>,
    /// Measure the platform's floor (as `--floor-kind` does) in turns with the measured probe
    /// instead of beside it, reported as this result kind: `--rounds` runs of each, each
    /// `--seconds` / `--rounds` long, alternating floor, probe, probe, floor, ... so that a host
    /// whose other work rises or falls during the measurement weighs on both alike.
    #[arg(long)]
    interleaved_floor_kind: Option<String>,
    /// With `--interleaved-floor-kind`: how many runs of each probe (`--seconds` must be a
    /// multiple of it).
    #[arg(long, default_value_t = 5, requires = "interleaved_floor_kind")]
    rounds: u64,
    /// Put each measured cyclictest in this class of canopy's pinned `task_classes` map, by
    /// id (bpf/intf.h's CANOPY_CLASS_*: 0 is USER_INTERACTIVE), under its process id between
    /// fork and exec, so it has its class before its first wakeup (its threads follow the
    /// process's entry). The map must exist (canopy's root loaded); a failed write fails the
    /// run. A tagging process would start as the load's class and, beside hackbench, took
    /// seconds to start each round.
    #[arg(long)]
    measured_class_id: Option<u32>,
    /// Extra cyclictest arguments (after `--`), e.g. `-- -p 50` or `-- --policy=batch`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    extra: Vec<String>,
}

pub fn run(args: &LatencyArgs) -> Result<()> {
    let mut load = match &args.load {
        Some(command) => {
            let child = Command::new("/bin/sh")
                .args(["-c", command])
                .stdout(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting load `{command}`"))?;
            std::thread::sleep(Duration::from_secs_f64(args.load_settle));
            Some(child)
        }
        None => None,
    };
    let measured = match &args.interleaved_floor_kind {
        Some(floor_kind) => measure_interleaved(args, floor_kind),
        None => measure_beside_floor(args),
    };
    if let Some(child) = &mut load {
        // SAFETY: killing the process group the load leads.
        unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
    }
    for (kind, result) in measured? {
        emit(&kind, result)?;
    }
    Ok(())
}

/// The measured probe for `--seconds`, with the SCHED_FIFO floor beside it if `--floor-kind`
/// names one: each kind with its result.
fn measure_beside_floor(args: &LatencyArgs) -> Result<Vec<(String, serde_json::Value)>> {
    // The floor probe starts first so that it covers the whole measurement.
    let floor = match &args.floor_kind {
        Some(_) => Some(
            floor_probe(args, args.seconds)?
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting the SCHED_FIFO floor probe (cyclictest)")?,
        ),
        None => None,
    };
    let output = measured_probe(args, args.seconds)?
        .output()
        .context("running cyclictest (add it with with_debian_tools)");
    let floor = floor.map(|child| child.wait_with_output());
    let mut measured = summary(
        args,
        args.interval_us,
        args.threads,
        &histogram_of(&output?)?,
    );
    measured["class_id"] = json!(args.measured_class_id);
    let mut results = vec![(args.kind.clone(), measured)];
    if let (Some(kind), Some(floor)) = (&args.floor_kind, floor) {
        let floor = floor.context("waiting for the SCHED_FIFO floor probe")?;
        results.push((
            kind.clone(),
            summary(args, FLOOR_INTERVAL_US, 1, &histogram_of(&floor)?),
        ));
    }
    Ok(results)
}

/// The measured probe and the SCHED_FIFO floor in turns (`--interleaved-floor-kind`): `--rounds`
/// runs of each, in the order floor, probe, probe, floor, floor, probe, ..., so a host load that
/// rises or falls steadily lands on both alike; each kind's runs summed into one histogram.
fn measure_interleaved(
    args: &LatencyArgs,
    floor_kind: &str,
) -> Result<Vec<(String, serde_json::Value)>> {
    let seconds = seconds_per_round(args.seconds, args.rounds)?;

    let mut measured = Histogram::default();
    let mut floor = Histogram::default();
    let mut measured_rounds = Vec::new();
    let mut floor_rounds = Vec::new();
    for round in 0..args.rounds {
        let floor_first = round % 2 == 0;
        for floor_turn in [floor_first, !floor_first] {
            let (mut command, what) = if floor_turn {
                (floor_probe(args, seconds)?, "the SCHED_FIFO floor probe")
            } else {
                (measured_probe(args, seconds)?, "the measured probe")
            };
            let output = command
                .output()
                .with_context(|| format!("running {what} (cyclictest), round {}", round + 1))?;
            let histogram =
                histogram_of(&output).with_context(|| format!("{what}, round {}", round + 1))?;
            if floor_turn {
                floor_rounds.push(histogram.round_summary());
                floor.add(&histogram);
            } else {
                measured_rounds.push(histogram.round_summary());
                measured.add(&histogram);
            }
        }
    }
    let mut measured_result = summary(args, args.interval_us, args.threads, &measured);
    measured_result["rounds"] = json!(measured_rounds);
    measured_result["class_id"] = json!(args.measured_class_id);
    let mut floor_result = summary(args, FLOOR_INTERVAL_US, 1, &floor);
    floor_result["rounds"] = json!(floor_rounds);
    Ok(vec![
        (args.kind.clone(), measured_result),
        (floor_kind.to_string(), floor_result),
    ])
}

/// Each round's length in whole seconds (cyclictest's `-D`): @seconds split into @rounds.
fn seconds_per_round(seconds: u64, rounds: u64) -> Result<u64> {
    if rounds == 0 || seconds % rounds != 0 {
        bail!(
            "--seconds {seconds} is not a whole number of seconds per round for --rounds {rounds}"
        );
    }
    Ok(seconds / rounds)
}

/// The measured cyclictest for @seconds: `--threads` threads at `--interval-us` with the extra
/// arguments, put in `--measured-class-id`'s class before it runs if that is given.
fn measured_probe(args: &LatencyArgs, seconds: u64) -> Result<Command> {
    let mut command = Command::new("cyclictest");
    if let Some(class_id) = args.measured_class_id {
        let map = PinnedMap::task_classes()
            .context("opening canopy's task_classes map for --measured-class-id")?;
        // SAFETY: between fork and exec this only calls getpid(2) and bpf(2) on stack memory
        // and the map's descriptor (inherited; it closes at exec), all async-signal-safe.
        unsafe {
            command.pre_exec(move || map.set(libc::getpid() as u32, class_id));
        }
    }
    Ok(cyclictest(
        command,
        args,
        seconds,
        args.interval_us,
        args.threads,
        &args.extra,
    ))
}

/// The SCHED_FIFO 50 floor: one thread at FLOOR_INTERVAL_US under the name FLOOR_COMM.
fn floor_probe(args: &LatencyArgs, seconds: u64) -> Result<Command> {
    Ok(cyclictest(
        Command::new(floor_program()?),
        args,
        seconds,
        FLOOR_INTERVAL_US,
        1,
        &["-p".into(), "50".into()],
    ))
}

/// The floor probe's interval: near the measured probe's default, but not a multiple of it, so
/// the two timers do not fire together for the whole run.
const FLOOR_INTERVAL_US: u64 = 2003;

/// The floor probe's command name (its comm): not `cyclictest`, so that tagging the measured
/// probe by its comm (`canopy scheduler tag --comm cyclictest`) never finds the floor first.
const FLOOR_COMM: &str = "floor-probe";

/// cyclictest under the name FLOOR_COMM: a symbolic link to it in the temporary directory (a
/// process's comm is the name it was executed by).
fn floor_program() -> Result<PathBuf> {
    let cyclictest = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("cyclictest"))
        .find(|path| path.is_file())
        .context("cyclictest is not on PATH (add it with with_debian_tools)")?;
    let link = std::env::temp_dir().join(FLOOR_COMM);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&cyclictest, &link)
        .with_context(|| format!("linking {} to {}", link.display(), cyclictest.display()))?;
    Ok(link)
}

/// Every probe's timer slack: 1 ns, what the kernel gives a realtime task's sleep (it ignores
/// slack for RT and deadline tasks), so the SCHED_FIFO floor and the probes it is compared with
/// wake from the same timer; a normal task's default of 50 us would let the kernel fire the
/// measured probe's timer up to 50 us late, a delay no scheduler adds (cyclictest counts it).
const PROBE_TIMER_SLACK_NS: libc::c_ulong = 1;

/// @command (cyclictest, or a shell that becomes it) with the probe's timer slack and
/// cyclictest's arguments for a run of @seconds.
fn cyclictest(
    mut command: Command,
    args: &LatencyArgs,
    seconds: u64,
    interval_us: u64,
    threads: usize,
    extra: &[String],
) -> Command {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only sets the forked child's own timer slack; it
    // allocates nothing and is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_TIMERSLACK, PROBE_TIMER_SLACK_NS, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .args(["-q", "-m"])
        .arg(format!("-t{threads}"))
        .arg(format!("-i{interval_us}"))
        .arg(format!("-D{seconds}"))
        .arg(format!("-h{}", args.histogram_us))
        .args(extra);
    command
}

/// The histogram a finished cyclictest printed, or its failure with what it said.
fn histogram_of(output: &std::process::Output) -> Result<Histogram> {
    if !output.status.success() {
        bail!(
            "cyclictest failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Histogram::parse(&String::from_utf8_lossy(&output.stdout))
}

/// A histogram (one run's or several summed) as the result's fields.
fn summary(
    args: &LatencyArgs,
    interval_us: u64,
    threads: usize,
    histogram: &Histogram,
) -> serde_json::Value {
    json!({
        "tool": "cyclictest",
        "interval_us": interval_us,
        "seconds": args.seconds,
        "threads": threads,
        "load": args.load,
        "samples": histogram.samples(),
        "overflows": histogram.overflows,
        "min_us": histogram.min_us,
        "avg_us": histogram.avg_us,
        "max_us": histogram.max_us,
        "p50_us": histogram.percentile(50.0),
        "p90_us": histogram.percentile(90.0),
        "p99_us": histogram.percentile(99.0),
        "p99_9_us": histogram.percentile(99.9),
        "p99_overflowed": histogram.percentile_overflows(99.0),
        "tail_per_ms": histogram.tail_per_ms(),
    })
}

/// cyclictest's `-h` output: one `bucket count [count...]` line per microsecond (counts summed
/// over threads), then `# Min/Avg/Max Latencies` and `# Histogram Overflows`.
#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    overflows: u64,
    min_us: u64,
    avg_us: u64,
    max_us: u64,
}

impl Histogram {
    fn parse(text: &str) -> Result<Histogram> {
        let mut histogram = Histogram::default();
        let summary = |line: &str| -> u64 {
            line.split(':')
                .nth(1)
                .map(|values| {
                    values
                        .split_whitespace()
                        .filter_map(|v| v.parse::<u64>().ok())
                        .collect::<Vec<_>>()
                })
                .map(|values| values.into_iter().max().unwrap_or(0))
                .unwrap_or(0)
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('#') {
                let rest = rest.trim();
                if rest.starts_with("Min Latencies") {
                    histogram.min_us = summary(rest);
                } else if rest.starts_with("Avg Latencies") {
                    histogram.avg_us = summary(rest);
                } else if rest.starts_with("Max Latencies") {
                    histogram.max_us = summary(rest);
                } else if rest.starts_with("Histogram Overflows") {
                    histogram.overflows = rest
                        .split(':')
                        .nth(1)
                        .map(|values| {
                            values
                                .split_whitespace()
                                .filter_map(|v| v.parse::<u64>().ok())
                                .sum()
                        })
                        .unwrap_or(0);
                }
                continue;
            }
            let mut fields = line.split_whitespace().map(|field| field.parse::<u64>());
            let Some(Ok(bucket)) = fields.next() else {
                continue;
            };
            let count: u64 = fields.filter_map(|count| count.ok()).sum();
            let bucket = bucket as usize;
            if histogram.counts.len() <= bucket {
                histogram.counts.resize(bucket + 1, 0);
            }
            histogram.counts[bucket] += count;
        }
        if histogram.counts.is_empty() {
            bail!("cyclictest printed no histogram");
        }
        Ok(histogram)
    }

    /// @other's samples added to these (another run of the same probe): counts and overflows
    /// summed, the minimum and maximum widened, the average weighted by samples.
    fn add(&mut self, other: &Histogram) {
        let (mine, theirs) = (self.samples(), other.samples());
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (bucket, count) in other.counts.iter().enumerate() {
            self.counts[bucket] += count;
        }
        self.overflows += other.overflows;
        self.min_us = if mine == 0 {
            other.min_us
        } else {
            self.min_us.min(other.min_us)
        };
        self.max_us = self.max_us.max(other.max_us);
        if let Some(average) =
            (self.avg_us * mine + other.avg_us * theirs).checked_div(mine + theirs)
        {
            self.avg_us = average;
        }
    }

    /// What one round of an interleaved measurement adds to its result: its samples, those of
    /// 1 ms and more (overflows included) and its p99, to see the host's weather change.
    fn round_summary(&self) -> serde_json::Value {
        let over_one_ms: u64 = self.counts.iter().skip(1000).sum::<u64>() + self.overflows;
        json!({
            "samples": self.samples(),
            "over_1ms": over_one_ms,
            "p99_us": self.percentile(99.0),
        })
    }

    fn samples(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.overflows
    }

    fn rank(&self, percent: f64) -> u64 {
        ((percent / 100.0) * self.samples() as f64 - 1e-9)
            .ceil()
            .max(1.0) as u64
    }

    /// Nearest-rank percentile in microseconds; the histogram limit if it is an overflow.
    fn percentile(&self, percent: f64) -> u64 {
        let rank = self.rank(percent);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket as u64;
            }
        }
        self.counts.len() as u64
    }

    /// Samples of 1 ms and more, counted per whole millisecond (index 0 is 1-2 ms): where the
    /// tail sits, e.g. a bump at one time slice.
    fn tail_per_ms(&self) -> Vec<u64> {
        let mut per_ms = Vec::new();
        for (bucket, count) in self.counts.iter().enumerate().skip(1000) {
            let ms = bucket / 1000 - 1;
            if per_ms.len() <= ms {
                per_ms.resize(ms + 1, 0);
            }
            per_ms[ms] += count;
        }
        while per_ms.last() == Some(&0) {
            per_ms.pop();
        }
        per_ms
    }

    fn percentile_overflows(&self, percent: f64) -> bool {
        self.rank(percent) > self.counts.iter().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# /dev/cpu_dma_latency set to 0us\n# Histogram\n000000 000000\n000001 000090\n000002 000009\n000003 000000\n# Total: 000000099\n# Min Latencies: 00001\n# Avg Latencies: 00001\n# Max Latencies: 00950\n# Histogram Overflows: 00001\n";

    #[test]
    fn percentiles_come_from_the_histogram_and_overflows_are_flagged() {
        let histogram = Histogram::parse(SAMPLE).unwrap();
        assert_eq!(histogram.samples(), 100);
        assert_eq!(histogram.percentile(50.0), 1);
        assert_eq!(histogram.percentile(99.0), 2);
        assert!(!histogram.percentile_overflows(99.0));
        assert!(histogram.percentile_overflows(100.0));
        assert_eq!(histogram.max_us, 950);
    }

    #[test]
    fn interleaved_rounds_sum_into_one_histogram() {
        let mut summed = Histogram::default();
        let first = Histogram::parse(SAMPLE).unwrap();
        let second = Histogram::parse(
            "000000 000000\n000001 000000\n000002 000000\n000003 000000\n000004 000100\n\
             # Min Latencies: 00004\n# Avg Latencies: 00004\n# Max Latencies: 00004\n\
             # Histogram Overflows: 00000\n",
        )
        .unwrap();
        summed.add(&first);
        summed.add(&second);
        assert_eq!(summed.samples(), 200);
        assert_eq!(summed.overflows, 1);
        assert_eq!((summed.min_us, summed.max_us), (1, 950));
        assert_eq!(summed.avg_us, 2);
        // 90 samples at 1 us, 9 at 2, 100 at 4, one overflow
        assert_eq!(summed.percentile(45.0), 1);
        assert_eq!(summed.percentile(49.5), 2);
        assert_eq!(summed.percentile(99.0), 4);
        assert_eq!(summed.round_summary()["over_1ms"], 1);
    }

    #[test]
    fn rounds_must_split_the_seconds_evenly() {
        assert_eq!(seconds_per_round(10, 5).unwrap(), 2);
        assert!(seconds_per_round(10, 3).is_err());
        assert!(seconds_per_round(10, 0).is_err());
    }
}
