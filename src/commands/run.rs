//! `canopy run`: the daemon. Not implemented yet (the daemon issues will fill this in).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

pub(crate) fn run(_paths: &[PathBuf]) -> Result<ExitCode> {
    eprintln!("canopy run: not implemented yet");
    Ok(ExitCode::from(2))
}
