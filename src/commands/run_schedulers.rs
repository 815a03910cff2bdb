//! `canopy run-schedulers` (hidden; `canopy run` in scx mode uses the same supervisor): compile
//! the policy, then load canopy's root scheduler with the policy's class table and group terms,
//! attach canopy's child scheduler on every existing cgroup whose group asks for it, admit
//! foreign schedulers where the policy names them, pick up cgroups created later (inotify on
//! cgroupfs) and unload cleanly on SIGINT/SIGTERM. No controller runs here (that is `canopy
//! run`), so no task is tagged: every task takes the policy's default class.
//! The scheduler side lives in `crate::scheduler`; this file is only the glue from the Plan.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::load_and_compile;
use crate::scheduler::config_from_plan::config_from_plan;
use crate::scheduler::supervisor::run_with_refresh;

pub(crate) fn run(paths: &[PathBuf]) -> Result<ExitCode> {
    let Some(compiled) = load_and_compile(paths)? else {
        return Ok(ExitCode::from(1));
    };
    let plan = compiled.plan;
    let nr_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let refresh = || {
        config_from_plan(
            &plan,
            canopy_sys::cgroup::CgroupHierarchy::system().mount_point(),
            nr_cpus,
        )
    };
    let config = refresh();
    config.validate()?;
    println!(
        "canopy: plan {} ({} groups on existing cgroups)",
        plan.hash_hex(),
        config.groups.len()
    );
    run_with_refresh(&config, 0.0, Some(&refresh))?;
    Ok(ExitCode::SUCCESS)
}
