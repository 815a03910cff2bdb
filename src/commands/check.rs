//! `canopy check`: validate a policy, print every diagnostic, exit 0 (valid) or 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use canopy_policy::Diagnostic;

use super::load_sources;
use super::print_diagnostics;
use crate::Format;

pub(crate) fn run(paths: &[PathBuf], format: Format) -> Result<ExitCode> {
    let sources = match load_sources(paths) {
        Ok(sources) => sources,
        Err(error) if format == Format::Json => {
            let report = serde_json::json!({"valid": false, "error": format!("{error:#}"), "diagnostics": []});
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error),
    };
    let (valid, diagnostics, hash) = match canopy_policy::compile(&sources) {
        Ok(compiled) => (true, compiled.warnings, Some(compiled.plan.hash_hex())),
        Err(error) => (false, error.diagnostics, None),
    };
    match format {
        Format::Text => {
            print_diagnostics(&diagnostics);
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            let warnings = diagnostics.len() - errors;
            if valid {
                let files = sources
                    .iter()
                    .map(|s| s.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                eprintln!(
                    "canopy: policy is valid ({files}; {warnings} warning(s); plan {})",
                    hash.unwrap_or_default()
                );
            } else {
                eprintln!("canopy: policy is invalid: {errors} error(s), {warnings} warning(s)");
            }
        }
        Format::Json => {
            let report = serde_json::json!({
                "valid": valid,
                "files": sources.iter().map(|s| s.path.clone()).collect::<Vec<_>>(),
                "plan_hash": hash,
                "diagnostics": diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
