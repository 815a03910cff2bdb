//! `canopy diff OLD NEW`: the semantic difference of two policies.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::load_and_compile;

pub(crate) fn run(old: &Path, new: &Path) -> Result<ExitCode> {
    let Some(old_plan) = load_and_compile(&[old.to_path_buf()])? else {
        return Ok(ExitCode::from(1));
    };
    let Some(new_plan) = load_and_compile(&[new.to_path_buf()])? else {
        return Ok(ExitCode::from(1));
    };
    let changes = canopy_policy::diff(&old_plan.plan, &new_plan.plan);
    println!("--- {} (plan {})", old.display(), old_plan.plan.hash_hex());
    println!("+++ {} (plan {})", new.display(), new_plan.plan.hash_hex());
    if changes.is_empty() {
        println!("no semantic difference");
    }
    for change in changes {
        println!("{change}");
    }
    Ok(ExitCode::SUCCESS)
}
