// SPDX-License-Identifier: GPL-2.0-only
//! `exec`: run a command (typically `canopy ...`) and report its exit status, duration and
//! output as one CANOPY-RESULT, so a scenario can assert on a command without shell plumbing.
//! Standard output that is one JSON document (e.g. `canopy status --json`) is embedded as JSON.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::result::emit;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Result kind.
    #[arg(long, default_value = "exec")]
    kind: String,
    /// Exit non-zero when the command does (the scenario script then stops under `sh -e`).
    #[arg(long)]
    check: bool,
    /// Keep at most this many bytes of each output stream (the tail).
    #[arg(long, default_value_t = 16384)]
    max_output: usize,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: &ExecArgs) -> Result<()> {
    let started = Instant::now();
    let output = Command::new(&args.command[0])
        .args(&args.command[1..])
        .output()
        .with_context(|| format!("running {:?}", args.command))?;
    let stdout = tail(&output.stdout, args.max_output);
    let stderr = tail(&output.stderr, args.max_output);
    // Passed through, so the guest log shows what the command said.
    print!("{stdout}");
    eprint!("{stderr}");
    let stdout_json = serde_json::from_str::<Value>(stdout.trim()).ok();
    let status = output.status.code();
    emit(
        &args.kind,
        json!({
            "command": args.command,
            "status": status,
            "signal": std::os::unix::process::ExitStatusExt::signal(&output.status),
            "success": output.status.success(),
            "duration_s": started.elapsed().as_secs_f64(),
            "stdout": stdout,
            "stderr": stderr,
            "stdout_json": stdout_json,
        }),
    )?;
    if args.check && !output.status.success() {
        bail!("{:?} failed: {}", args.command, output.status);
    }
    Ok(())
}

fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
