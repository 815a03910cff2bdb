//! `canopy import schedqos DIR`: read a schedqos configuration directory and print the
//! equivalent canopy policy (converted by `canopy_policy::schedqos`) on stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use anyhow::Context;
use anyhow::Result;

use canopy_sys::policy_files::read_bounded_text;
use canopy_sys::policy_files::MAX_DROP_INS;
use canopy_sys::policy_files::MAX_FILE_BYTES;

pub(crate) fn schedqos(dir: &Path) -> Result<ExitCode> {
    if !dir.is_dir() {
        bail!(
            "{} is not a schedqos configuration directory",
            dir.display()
        );
    }
    let mapping_path = dir.join("qos_mappings.json");
    let mapping = if mapping_path.exists() {
        Some((
            mapping_path.display().to_string(),
            read_bounded_text(&mapping_path, MAX_FILE_BYTES)?,
        ))
    } else {
        None
    };
    let apps_dir = dir.join("app_configs");
    let mut app_paths = Vec::new();
    if apps_dir.is_dir() {
        for entry in std::fs::read_dir(&apps_dir)
            .with_context(|| format!("cannot list {}", apps_dir.display()))?
        {
            let path = entry
                .with_context(|| format!("cannot list {}", apps_dir.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "json") {
                app_paths.push(path);
            }
            if app_paths.len() > MAX_DROP_INS {
                bail!(
                    "{} has more than {MAX_DROP_INS} app configs",
                    apps_dir.display()
                );
            }
        }
    }
    app_paths.sort();
    if mapping.is_none() && app_paths.is_empty() {
        bail!(
            "{} has neither qos_mappings.json nor app_configs/*.json",
            dir.display()
        );
    }
    let mut apps = Vec::new();
    for path in &app_paths {
        apps.push((
            path.display().to_string(),
            read_bounded_text(path, MAX_FILE_BYTES)?,
        ));
    }
    let app_refs: Vec<(&str, &str)> = apps.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let toml = canopy_policy::schedqos::import(
        mapping.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        &app_refs,
    )
    .context("cannot convert the schedqos configuration")?;
    if let Err(error) = canopy_policy::compile_str("(imported)", &toml) {
        super::print_diagnostics(&error.diagnostics);
        bail!("the converted policy does not compile (a canopy bug); output withheld");
    }
    print!("{toml}");
    Ok(ExitCode::SUCCESS)
}
