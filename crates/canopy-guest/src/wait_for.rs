// SPDX-License-Identifier: GPL-2.0-only
//! `wait-for`: block until a condition holds, so scenario scripts need no polling loops: a file
//! contains a text (at least `--count` times), and/or `/sys/kernel/sched_ext/state` has a value.
//! Fails (exit 1, printing the file) on timeout or when `--pid` (the process expected to make
//! the condition true) exits first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct WaitForArgs {
    /// File to watch (e.g. a background daemon's log).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Text the file must contain.
    #[arg(long, requires = "file")]
    contains: Option<String>,
    /// How many occurrences of the text are needed.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Wanted value of /sys/kernel/sched_ext/state (e.g. `enabled`, `disabled`).
    #[arg(long)]
    sched_ext_state: Option<String>,
    /// Give up when this process has exited.
    #[arg(long)]
    pid: Option<i32>,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

pub fn run(args: &WaitForArgs) -> Result<()> {
    if args.contains.is_none() && args.sched_ext_state.is_none() {
        bail!("wait-for needs --contains or --sched-ext-state");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    loop {
        if condition_holds(args) {
            return Ok(());
        }
        let gone = args.pid.is_some_and(|pid| !process_alive(pid));
        if gone || Instant::now() >= deadline {
            // One last look: the process may have made it true just before exiting.
            if condition_holds(args) {
                return Ok(());
            }
            if let Some(file) = &args.file {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                eprintln!("--- {} ---\n{text}--- end ---", file.display());
            }
            let why = if gone {
                format!("process {} exited", args.pid.unwrap_or(0))
            } else {
                format!("{} s passed", args.timeout)
            };
            bail!("wait-for {args:?}: {why} before the condition held");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn condition_holds(args: &WaitForArgs) -> bool {
    if let (Some(file), Some(text)) = (&args.file, &args.contains) {
        let content = std::fs::read_to_string(file).unwrap_or_default();
        if content.matches(text.as_str()).count() < args.count {
            return false;
        }
    }
    if let Some(wanted) = &args.sched_ext_state {
        let state = std::fs::read_to_string("/sys/kernel/sched_ext/state").unwrap_or_default();
        if state.trim() != wanted {
            return false;
        }
    }
    true
}

/// Alive and not a zombie (a backgrounded child of the calling shell stays a zombie until
/// the shell waits for it).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .map(str::trim_start)
                .and_then(|rest| rest.chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}
