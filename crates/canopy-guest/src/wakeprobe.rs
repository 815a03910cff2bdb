//! Wakeup-latency probe (filled in after milestone 1).

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct WakeprobeArgs {}

pub fn run(_args: &WakeprobeArgs) -> Result<()> {
    bail!("wakeprobe: not implemented yet")
}
