//! `canopy completions SHELL` and `canopy man`: generated from the clap definition in main.rs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use anyhow::Result;
use clap::CommandFactory;

use crate::Cli;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "canopy", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn man() -> Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}
