// SPDX-License-Identifier: GPL-2.0-only
//! Where a scheduler load's time goes: with `CANOPY_VERIFIER_STATS=1` in the environment, every
//! load of canopy_root or canopy_child asks the kernel for each program's verifier statistics
//! (log level `BPF_LOG_STATS`, 4: no per-instruction log, so the verifier does the same work as
//! without it) and prints on stderr, when the load ends (attached or failed), e.g. (TCG guest):
//!
//! ```text
//! canopy: verifier canopy_root prog canopy_root_dispatch: 4205571 usec, 220432 insns processed, 18804 states (peak 19927, max 30 per insn), stack max 144
//! canopy: verifier canopy_root prog canopy_root_dispatch   fn move_first_within_quota (static): 176647 insns self, 188827 with callees, stack 144
//! canopy: verifier canopy_root total: 28 programs, 4729860 usec, 290570 insns processed, 21318 states (peaks summed 21618)
//! canopy: load canopy_root phases: kernel-consts 0.533 s (user 0.466 s, system 0.059 s), open 0.028 s (...), load 1.530 s (user 0.200 s, system 1.316 s), prepare 0.027 s (...), attach 0.098 s (...)
//! ```
//!
//! programs slowest first, each with its busiest functions (7.3's per-function counts). Without
//! the variable a load pays one cached environment lookup. With it, a program the verifier
//! rejects is reported with its statistics only (no reasons: those need log level 1); unset the
//! variable to see them.
//!
//! The log buffers handed to libbpf are leaked (64 KiB per program, diagnostics only): libbpf
//! keeps the pointer in the program until the object is loaded, and a leaked buffer cannot
//! dangle whichever way the load ends.
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use libbpf_rs::AsRawLibbpf;
use libbpf_rs::OpenObject;

/// The environment variable that turns the report on (any value but empty or `0`).
pub const ENV_VAR: &str = "CANOPY_VERIFIER_STATS";

/// The kernel's `BPF_LOG_STATS` log level (include/linux/bpf_verifier.h).
const BPF_LOG_STATS: u32 = 4;

/// Bytes of log per program: the stats log is three lines plus one of about 90 bytes per
/// function (canopy_root_dispatch's fits in 4 KiB). Generous, because a log that does not fit
/// fails the load (ENOSPC), and libbpf only retries with a bigger buffer of its own.
const LOG_BUF_BYTES: usize = 64 * 1024;

/// Whether `CANOPY_VERIFIER_STATS` asks for the report (read once per process).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os(ENV_VAR).is_some_and(|value| !value.is_empty() && value != "0")
    })
}

/// One program's statistics, as the verifier prints them at `BPF_LOG_STATS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifierStats {
    /// `verification time N usec`: the verifier's own time for this program.
    pub verification_usec: u64,
    /// `stack depth ...` as printed: `max N` in 7.3, each function's `A+B+...` before.
    pub stack_depth: String,
    /// `processed N insns`: instructions the verifier walked (all paths, all subprograms).
    pub processed_insns: u64,
    /// `(limit N)`: the kernel's complexity limit.
    pub insn_limit: u64,
    pub max_states_per_insn: u64,
    /// States the verifier stored for pruning over the whole walk.
    pub total_states: u64,
    /// The most states it held at once (its memory).
    pub peak_states: u64,
    /// `mark_read N`, where the kernel still prints it.
    pub mark_read: Option<u64>,
    /// One per `subprog N (name) kind insns_self A insns_total B stack C` line (7.3+): where
    /// the processed instructions were spent, by function.
    pub subprogs: Vec<SubprogStats>,
}

/// A function of a program, as the verifier's stats log lists it (7.3+).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubprogStats {
    pub index: u32,
    pub name: String,
    /// `main`, `global` (verified once, on its own) or `static` (verified at every call).
    pub kind: String,
    /// Instructions processed inside this function itself.
    pub insns_self: u64,
    /// The same with the functions it calls.
    pub insns_total: u64,
    pub stack: u64,
}

/// A stats log that does not say what `VerifierStats` needs, with the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsParseError {
    #[error("no `{expected}` line in the verifier's log {log:?}")]
    MissingLine { expected: &'static str, log: String },
    #[error("`{field}` is not followed by a number in the verifier's line {line:?}")]
    BadNumber { field: &'static str, line: String },
}

impl VerifierStats {
    /// Reads the statistics from a program's log at `BPF_LOG_STATS`, e.g.
    /// `verification time 123 usec\nstack depth 8\nprocessed 4567 insns (limit 1000000)
    /// max_states_per_insn 4 total_states 321 peak_states 300 mark_read 12`. Lines it does
    /// not know and key-value pairs a newer kernel adds are passed over.
    pub fn parse(log: &str) -> Result<Self, StatsParseError> {
        let mut stats = VerifierStats::default();
        let mut saw_time = false;
        let mut saw_processed = false;
        for line in log.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("verification time ") {
                stats.verification_usec = leading_number(rest, "verification time", line)?;
                saw_time = true;
            } else if let Some(rest) = line.strip_prefix("stack depth ") {
                stats.stack_depth = rest.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("subprog ") {
                stats.subprogs.push(parse_subprog(rest, line)?);
            } else if let Some(rest) = line.strip_prefix("processed ") {
                parse_processed(rest, line, &mut stats)?;
                saw_processed = true;
            }
        }
        let missing = |expected| StatsParseError::MissingLine {
            expected,
            log: log.to_string(),
        };
        if !saw_time {
            return Err(missing("verification time N usec"));
        }
        if !saw_processed {
            return Err(missing("processed N insns"));
        }
        Ok(stats)
    }
}

/// The number at the start of `text` (up to the first space).
fn leading_number(text: &str, field: &'static str, line: &str) -> Result<u64, StatsParseError> {
    text.split_whitespace()
        .next()
        .and_then(|word| word.parse().ok())
        .ok_or_else(|| StatsParseError::BadNumber {
            field,
            line: line.to_string(),
        })
}

/// `N (name) kind insns_self A insns_total B stack C` (after `subprog `).
fn parse_subprog(rest: &str, line: &str) -> Result<SubprogStats, StatsParseError> {
    let bad = |field| StatsParseError::BadNumber {
        field,
        line: line.to_string(),
    };
    let mut words = rest.split_whitespace();
    let index = words
        .next()
        .and_then(|word| word.parse().ok())
        .ok_or_else(|| bad("subprog"))?;
    let name = words
        .next()
        .map(|word| {
            word.trim_start_matches('(')
                .trim_end_matches(')')
                .to_string()
        })
        .unwrap_or_default();
    let kind = words.next().unwrap_or_default().to_string();
    let mut subprog = SubprogStats {
        index,
        name,
        kind,
        ..SubprogStats::default()
    };
    while let Some(key) = words.next() {
        let Some(value) = words.next() else { break };
        let slot = match key {
            "insns_self" => &mut subprog.insns_self,
            "insns_total" => &mut subprog.insns_total,
            "stack" => &mut subprog.stack,
            _ => continue,
        };
        *slot = value.parse().map_err(|_| bad("subprog counts"))?;
    }
    Ok(subprog)
}

/// `N insns (limit L) key value key value ...` (after `processed `).
fn parse_processed(
    rest: &str,
    line: &str,
    stats: &mut VerifierStats,
) -> Result<(), StatsParseError> {
    let bad = |field| StatsParseError::BadNumber {
        field,
        line: line.to_string(),
    };
    stats.processed_insns = leading_number(rest, "processed", line)?;
    let mut words = rest.split_whitespace().skip(1).peekable();
    if words.peek() == Some(&"insns") {
        words.next();
    }
    if words.peek() == Some(&"(limit") {
        words.next();
        stats.insn_limit = words
            .next()
            .and_then(|word| word.trim_end_matches(')').parse().ok())
            .ok_or_else(|| bad("limit"))?;
    }
    let mut required = [
        ("max_states_per_insn", None),
        ("total_states", None),
        ("peak_states", None),
    ];
    while let Some(key) = words.next() {
        let Some(value) = words.next() else { break };
        let number = || value.parse::<u64>();
        if key == "mark_read" {
            stats.mark_read = Some(number().map_err(|_| bad("mark_read"))?);
        } else if let Some(slot) = required.iter_mut().find(|(name, _)| *name == key) {
            slot.1 = Some(number().map_err(|_| bad(slot.0))?);
        }
    }
    let [(_, max_states), (_, total), (_, peak)] = required;
    stats.max_states_per_insn = max_states.ok_or_else(|| bad("max_states_per_insn"))?;
    stats.total_states = total.ok_or_else(|| bad("total_states"))?;
    stats.peak_states = peak.ok_or_else(|| bad("peak_states"))?;
    Ok(())
}

/// One program's result in a load's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramReport {
    pub name: String,
    /// None: not loaded (autoload off, or the load stopped before it); Some(Err): a log the
    /// parser did not understand.
    pub stats: Option<Result<VerifierStats, StatsParseError>>,
}

/// The report's lines for one object's programs: one per program (slowest first, then the
/// programs without statistics), then the totals.
pub fn report_lines(object: &str, programs: &[ProgramReport]) -> Vec<String> {
    let mut measured: Vec<(&str, &VerifierStats)> = programs
        .iter()
        .filter_map(|p| match &p.stats {
            Some(Ok(stats)) => Some((p.name.as_str(), stats)),
            _ => None,
        })
        .collect();
    measured.sort_by(|a, b| {
        (b.1.verification_usec, b.1.processed_insns, a.0).cmp(&(
            a.1.verification_usec,
            a.1.processed_insns,
            b.0,
        ))
    });
    let mut lines = Vec::new();
    for (name, s) in &measured {
        lines.push(format!(
            "canopy: verifier {object} prog {name}: {} usec, {} insns processed, {} states \
             (peak {}, max {} per insn), stack {}",
            s.verification_usec,
            s.processed_insns,
            s.total_states,
            s.peak_states,
            s.max_states_per_insn,
            s.stack_depth
        ));
        lines.extend(subprog_lines(object, name, s));
    }
    for program in programs {
        match &program.stats {
            None => lines.push(format!(
                "canopy: verifier {object} prog {}: not loaded",
                program.name
            )),
            Some(Err(e)) => lines.push(format!(
                "canopy: verifier {object} prog {}: {e}",
                program.name
            )),
            Some(Ok(_)) => {}
        }
    }
    let sum =
        |field: fn(&VerifierStats) -> u64| measured.iter().map(|(_, s)| field(s)).sum::<u64>();
    lines.push(format!(
        "canopy: verifier {object} total: {} programs, {} usec, {} insns processed, {} states \
         (peaks summed {})",
        measured.len(),
        sum(|s| s.verification_usec),
        sum(|s| s.processed_insns),
        sum(|s| s.total_states),
        sum(|s| s.peak_states)
    ));
    lines
}

/// Functions shown under a program: the busiest by their own processed instructions.
const SUBPROGS_SHOWN: usize = 6;

/// Under a program of more than one function: where its processed instructions went (the
/// functions with the most of their own, at most SUBPROGS_SHOWN).
fn subprog_lines(object: &str, program: &str, stats: &VerifierStats) -> Vec<String> {
    if stats.subprogs.len() < 2 {
        return Vec::new();
    }
    let mut busiest: Vec<&SubprogStats> =
        stats.subprogs.iter().filter(|s| s.insns_self > 0).collect();
    busiest.sort_by(|a, b| (b.insns_self, a.index).cmp(&(a.insns_self, b.index)));
    busiest
        .iter()
        .take(SUBPROGS_SHOWN)
        .map(|s| {
            format!(
                "canopy: verifier {object} prog {program}   fn {} ({}): {} insns self, {} with \
                 callees, stack {}",
                s.name, s.kind, s.insns_self, s.insns_total, s.stack
            )
        })
        .collect()
}

/// A program's log buffer, leaked (see the module comment).
struct ProgramLog {
    name: String,
    buf: NonNull<[u8]>,
}

/// One phase of a load: its name, wall time, and the process's user and system CPU time in it.
struct Phase {
    name: &'static str,
    wall: Duration,
    user: Duration,
    system: Duration,
}

struct Probe {
    object: &'static str,
    logs: Vec<ProgramLog>,
    phases: Vec<Phase>,
    mark: Instant,
    mark_cpu: (Duration, Duration),
}

/// A load's measurement: inert (no allocation, no syscalls) unless [`enabled`]. Make it before
/// opening the object, hand it the open object before load ([`LoadProbe::request_logs`]), mark
/// the end of each phase ([`LoadProbe::phase`]); the report is printed when it is dropped.
pub struct LoadProbe(Option<Probe>);

impl LoadProbe {
    /// Starts measuring a load of `object` (its first phase starts now).
    pub fn start(object: &'static str) -> Self {
        if !enabled() {
            return LoadProbe(None);
        }
        LoadProbe(Some(Probe {
            object,
            logs: Vec::new(),
            phases: Vec::new(),
            mark: Instant::now(),
            mark_cpu: canopy_sys::limits::own_cpu_times(),
        }))
    }

    /// Ends the current phase (named `name`) and starts the next.
    pub fn phase(&mut self, name: &'static str) {
        let Some(probe) = &mut self.0 else { return };
        let now = Instant::now();
        let cpu = canopy_sys::limits::own_cpu_times();
        probe.phases.push(Phase {
            name,
            wall: now - probe.mark,
            user: cpu.0.saturating_sub(probe.mark_cpu.0),
            system: cpu.1.saturating_sub(probe.mark_cpu.1),
        });
        probe.mark = now;
        probe.mark_cpu = cpu;
    }

    /// Gives every program of the opened, not yet loaded `object` a stats log.
    pub fn request_logs(&mut self, object: &mut OpenObject) {
        let Some(probe) = &mut self.0 else { return };
        for mut program in object.progs_mut() {
            let name = program.name().to_string_lossy().into_owned();
            let buf = NonNull::from(Box::leak(vec![0u8; LOG_BUF_BYTES].into_boxed_slice()));
            program.set_log_level(BPF_LOG_STATS);
            // SAFETY: the buffer is leaked, so it outlives the object's load however it ends.
            let rc = unsafe {
                libbpf_sys::bpf_program__set_log_buf(
                    program.as_libbpf_object().as_ptr(),
                    buf.as_ptr() as *mut std::os::raw::c_char,
                    LOG_BUF_BYTES as _,
                )
            };
            if rc != 0 {
                eprintln!(
                    "canopy: verifier {}: no stats log for {name} ({rc})",
                    probe.object
                );
                continue;
            }
            probe.logs.push(ProgramLog { name, buf });
        }
    }

    fn report(probe: &Probe) -> Vec<String> {
        let programs: Vec<ProgramReport> = probe
            .logs
            .iter()
            .map(|log| {
                // SAFETY: the leaked buffer is never freed; the kernel's writes to it ended
                // with the load (this runs after it, on this thread).
                let bytes = unsafe { log.buf.as_ref() };
                let text_len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                let text = String::from_utf8_lossy(&bytes[..text_len]);
                ProgramReport {
                    name: log.name.clone(),
                    stats: (!text.trim().is_empty()).then(|| VerifierStats::parse(&text)),
                }
            })
            .collect();
        let mut lines = if programs.is_empty() {
            Vec::new()
        } else {
            report_lines(probe.object, &programs)
        };
        let phases: Vec<String> = probe
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{} {:.3} s (user {:.3} s, system {:.3} s)",
                    p.name,
                    p.wall.as_secs_f64(),
                    p.user.as_secs_f64(),
                    p.system.as_secs_f64()
                )
            })
            .collect();
        lines.push(format!(
            "canopy: load {} phases: {}",
            probe.object,
            phases.join(", ")
        ));
        lines
    }
}

impl Drop for LoadProbe {
    fn drop(&mut self) {
        if let Some(probe) = &self.0 {
            for line in LoadProbe::report(probe) {
                eprintln!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "verification time 123 usec\nstack depth 8+16\n\
        processed 4567 insns (limit 1000000) max_states_per_insn 4 total_states 321 \
        peak_states 300 mark_read 12\n";

    #[test]
    fn parses_the_kernel_stats_log() {
        let stats = VerifierStats::parse(LOG).unwrap();
        assert_eq!(
            stats,
            VerifierStats {
                verification_usec: 123,
                stack_depth: "8+16".into(),
                processed_insns: 4567,
                insn_limit: 1_000_000,
                max_states_per_insn: 4,
                total_states: 321,
                peak_states: 300,
                mark_read: Some(12),
                subprogs: Vec::new(),
            }
        );
    }

    #[test]
    fn parses_the_per_function_lines_of_7_3() {
        let log = "verification time 9173142 usec\nstack depth max 144\n\
                   subprog 0 (canopy_root_dispatch) main insns_self 1200 insns_total 220432 stack 144\n\
                   subprog 1 (pick_member) global insns_self 150000 insns_total 150000 stack 64\n\
                   processed 220432 insns (limit 1000000) max_states_per_insn 30 total_states 18804 \
                   peak_states 19927 mark_read 0\n";
        let stats = VerifierStats::parse(log).unwrap();
        assert_eq!(stats.stack_depth, "max 144");
        assert_eq!(stats.subprogs.len(), 2);
        assert_eq!(
            stats.subprogs[1],
            SubprogStats {
                index: 1,
                name: "pick_member".into(),
                kind: "global".into(),
                insns_self: 150_000,
                insns_total: 150_000,
                stack: 64,
            }
        );
        let lines = report_lines(
            "root",
            &[ProgramReport {
                name: "canopy_root_dispatch".into(),
                stats: Some(Ok(stats)),
            }],
        );
        assert_eq!(
            lines[1],
            "canopy: verifier root prog canopy_root_dispatch   fn pick_member (global): 150000 \
             insns self, 150000 with callees, stack 64"
        );
        assert!(lines[2].contains("fn canopy_root_dispatch (main): 1200 insns self"));
    }

    #[test]
    fn a_kernel_without_mark_read_or_with_new_keys_still_parses() {
        let log = "verification time 9 usec\nstack depth 0\nprocessed 10 insns (limit 1000000) \
                   max_states_per_insn 0 total_states 1 peak_states 1 new_key 7\n";
        let stats = VerifierStats::parse(log).unwrap();
        assert_eq!(stats.mark_read, None);
        assert_eq!(stats.processed_insns, 10);
        assert_eq!(stats.peak_states, 1);
    }

    #[test]
    fn a_log_without_the_counts_is_an_error_naming_the_log() {
        let err = VerifierStats::parse("verification time 5 usec\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no `processed N insns` line in the verifier's log \"verification time 5 usec\\n\""
        );
        let err = VerifierStats::parse("processed x insns").unwrap_err();
        assert!(
            matches!(
                err,
                StatsParseError::BadNumber {
                    field: "processed",
                    ..
                }
            ),
            "{err}"
        );
        let err = VerifierStats::parse(
            "verification time 1 usec\nprocessed 3 insns (limit 9) max_states_per_insn 0",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                StatsParseError::BadNumber {
                    field: "total_states",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn report_orders_by_verification_time_and_sums() {
        let stats = |usec, insns| {
            Some(Ok(VerifierStats {
                verification_usec: usec,
                processed_insns: insns,
                total_states: 2,
                peak_states: 1,
                stack_depth: "0".into(),
                ..VerifierStats::default()
            }))
        };
        let programs = [
            ProgramReport {
                name: "fast".into(),
                stats: stats(10, 100),
            },
            ProgramReport {
                name: "skipped".into(),
                stats: None,
            },
            ProgramReport {
                name: "slow".into(),
                stats: stats(900, 50),
            },
        ];
        let lines = report_lines("obj", &programs);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("canopy: verifier obj prog slow: 900 usec, 50 insns"));
        assert!(lines[1].starts_with("canopy: verifier obj prog fast: 10 usec"));
        assert_eq!(lines[2], "canopy: verifier obj prog skipped: not loaded");
        assert_eq!(
            lines[3],
            "canopy: verifier obj total: 2 programs, 910 usec, 150 insns processed, 4 states \
             (peaks summed 2)"
        );
    }
}
