//! `canopy run`: the controller daemon. The daemon lives in `canopy-controller`; the binary glue
//! (settings, logging, runtime) is `crate::daemon_cli`.

use std::process::ExitCode;

use anyhow::Result;

pub(crate) fn run(args: crate::daemon_cli::RunArgs) -> Result<ExitCode> {
    crate::daemon_cli::run(args).map(|()| ExitCode::SUCCESS)
}
