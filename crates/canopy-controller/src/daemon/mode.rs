// SPDX-License-Identifier: GPL-2.0-only
//! The daemon's mode: chosen at start from the user's choice and canopy-sys's kernel probe, and
//! switched to fallback when the schedulers are ejected while it runs.

use std::path::PathBuf;

use canopy_policy::DaemonMode;
use canopy_sys::sched_ext::KernelSupport;
use tokio::time::Instant;

use super::DaemonError;
use crate::backend::{Backend, Mode};
use crate::controller::Controller;
use crate::fallback::FallbackBackend;
use crate::procfs::ProcSource;
use crate::sdnotify;

/// Decides the mode from the user's choice and canopy-sys's kernel probe. Returns the mode and
/// the reason `status` shows (naming the probe's failed check when scx is not possible).
pub fn choose_mode(choice: DaemonMode, scx_built_in: bool) -> Result<(Mode, String), DaemonError> {
    let probe = KernelSupport::probe()
        .require_schedulers()
        .map_err(|missing| missing.to_string());
    match (choice, probe) {
        (DaemonMode::Fallback, _) => Ok((
            Mode::Fallback,
            "fallback requested (--mode fallback)".into(),
        )),
        (DaemonMode::Scx, Err(why)) => Err(DaemonError::ScxUnavailable(why)),
        (DaemonMode::Scx, Ok(())) if !scx_built_in => Err(DaemonError::ScxUnavailable(
            "this binary has no scheduler loader".into(),
        )),
        (DaemonMode::Scx, Ok(())) => Ok((Mode::Scx, "scx requested (--mode scx)".into())),
        (DaemonMode::Auto, Err(why)) => Ok((Mode::Fallback, format!("auto: {why}"))),
        (DaemonMode::Auto, Ok(())) if !scx_built_in => Ok((
            Mode::Fallback,
            "auto: kernel has sched_ext sub-schedulers but this binary has no scheduler loader"
                .into(),
        )),
        (DaemonMode::Auto, Ok(())) => Ok((
            Mode::Scx,
            "auto: kernel has sched_ext with cid-form ops and cgroup sub-schedulers".into(),
        )),
    }
}

/// The fallback backend, recording originals in `state_file` when given (and adopting RT/DL
/// originals from it only when the policy manages realtime tasks, `realtime_managed`).
pub(super) fn fallback_backend(
    cgroup_root: &std::path::Path,
    state_file: Option<&PathBuf>,
    realtime_managed: bool,
) -> Box<dyn Backend> {
    let mut backend = FallbackBackend::new(cgroup_root.to_path_buf());
    if let Some(path) = state_file {
        backend = backend.with_state_file(path.clone(), realtime_managed);
    }
    Box::new(backend)
}

/// The schedulers stopped on their own (`why`, from the root's exit record): every task and
/// group goes to the fallback backend, and `status` says so.
pub(super) fn fall_back_after_ejection(
    ctl: &mut Controller<Box<dyn Backend>, ProcSource>,
    cgroup_root: &std::path::Path,
    state_file: Option<&PathBuf>,
    why: &str,
) {
    tracing::error!(reason = %why, "the sched_ext schedulers were ejected; switching to fallback mode");
    let started = Instant::now();
    let realtime_managed = ctl.plan().manage_realtime();
    let mut scx = ctl.switch_backend(
        fallback_backend(cgroup_root, state_file, realtime_managed),
        format!("scx ejected, fallback since: {why}"),
    );
    // The schedulers are gone; their orphaned maps keep nothing anyone reads.
    let _ = scx.restore_all();
    ctl.persist_state(true);
    let _ = sdnotify::notify("STATUS=fallback (the schedulers were ejected)");
    tracing::info!(
        tasks = ctl.task_count(),
        took_ms = started.elapsed().as_millis() as u64,
        "fallback mode"
    );
}
