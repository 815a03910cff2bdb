//! One module per subcommand. Each `run` returns the process exit code, or an error that `main`
//! prints as `canopy: error: ...` with exit code 1.

pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod client;
pub(crate) mod compile;
pub(crate) mod ctl;
pub(crate) mod diff;
pub(crate) mod generate;
pub(crate) mod import;
pub(crate) mod run_schedulers;
pub(crate) mod status;
pub(crate) mod top;

use std::path::PathBuf;

use anyhow::Result;
use canopy_policy::Compiled;
use canopy_policy::Diagnostic;
use canopy_policy::Source;
use canopy_sys::policy_files::read_policy;

/// The sources of the policy at `paths` (the default directory when empty), in merge order
/// (`canopy_sys::policy_files` finds and reads them).
pub(crate) fn load_sources(paths: &[PathBuf]) -> Result<Vec<Source>> {
    Ok(read_policy(paths)?
        .into_iter()
        .map(|file| Source::new(file.name(), file.text))
        .collect())
}

/// Prints diagnostics as text on stderr.
pub(crate) fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
}

/// Loads and compiles a policy; on failure prints the diagnostics and returns None.
pub(crate) fn load_and_compile(paths: &[PathBuf]) -> Result<Option<Compiled>> {
    let sources = load_sources(paths)?;
    match canopy_policy::compile(&sources) {
        Ok(compiled) => {
            print_diagnostics(&compiled.warnings);
            Ok(Some(compiled))
        }
        Err(error) => {
            print_diagnostics(&error.diagnostics);
            eprintln!("canopy: {error}");
            Ok(None)
        }
    }
}
