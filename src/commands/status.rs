//! `canopy status` (and `canopy ctl status`): what canopy is doing on this machine, from both
//! sources: the daemon's snapshot over its control socket (mode, policy, counters, groups) and
//! the sched_ext scheduler hierarchy read directly from sysfs and the root's pinned maps (root
//! and each child: cgroup, scheduler, weight, granted cids, CPU time in the last interval,
//! share against target). Either may be missing: schedulers run without the daemon under
//! `canopy run-schedulers`, and the daemon runs without schedulers in fallback mode.
//!
//! Exit status, as `systemctl status`: 0 when the daemon answered, 3 when it did not (the
//! hierarchy is still shown when schedulers are loaded), 1 when the daemon answered with an
//! error.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use canopy_controller::protocol::Request;
use canopy_controller::stats::Snapshot;
use serde::Serialize;

use super::client::call;
use super::client::ok_result;
use crate::scheduler::status::Sampler;
use crate::scheduler::status::Status as Hierarchy;

/// How long the hierarchy's CPU rates are sampled over by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Exit status when the daemon does not answer (LSB "program is not running").
const NOT_RUNNING: u8 = 3;

/// Everything `canopy status` shows; the table and the JSON are both rendered from it.
#[derive(Debug, Serialize)]
pub struct SystemStatus {
    /// The daemon's snapshot, its fields at the top level (as the daemon sends them).
    #[serde(flatten)]
    pub daemon: Option<Snapshot>,
    /// Whether the daemon answered on its control socket.
    pub daemon_running: bool,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_error: Option<String>,
    /// `/sys/kernel/sched_ext/state` (`absent` without sched_ext).
    pub sched_ext_state: String,
    /// canopy-sys's kernel probe: each check (sched_ext, cid-form ops, sub-scheduler kfuncs)
    /// and whether canopy's schedulers can run, or which check failed.
    pub kernel_support: String,
    /// The scheduler hierarchy, when a sched_ext scheduler is loaded.
    pub hierarchy: Option<Hierarchy>,
}

impl SystemStatus {
    /// Asks the daemon at `socket` while sampling the hierarchy over `interval`. Fails only
    /// when the daemon answers with an error.
    pub fn collect(socket: &Path, interval: Duration) -> anyhow::Result<SystemStatus> {
        let sampler = Sampler::start();
        let (daemon, daemon_error) = match call(socket, Request::Status {}) {
            Ok(response) => {
                let value = ok_result(response)?;
                let snapshot: Snapshot =
                    serde_json::from_value(value).context("decoding the daemon's status")?;
                (Some(snapshot), None)
            }
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        let hierarchy = sampler.finish(interval);
        Ok(SystemStatus {
            daemon_running: daemon.is_some(),
            daemon,
            daemon_error,
            sched_ext_state: hierarchy.state.clone(),
            kernel_support: canopy_sys::sched_ext::KernelSupport::probe().summary(),
            hierarchy: hierarchy.is_loaded().then_some(hierarchy),
        })
    }

    /// The human-readable table: the daemon's part, then the hierarchy.
    pub fn table(&self) -> String {
        let mut out = String::new();
        match (&self.daemon, &self.hierarchy) {
            (None, None) => {
                let _ = writeln!(
                    out,
                    "canopy is not running: the daemon does not answer ({}) and no sched_ext scheduler is loaded (sched_ext state: {})",
                    self.daemon_error.as_deref().unwrap_or("no reply"),
                    self.sched_ext_state
                );
                let _ = writeln!(out, "kernel: {}", self.kernel_support);
                return out;
            }
            (Some(snapshot), _) => out.push_str(&snapshot.render_table()),
            (None, Some(_)) => {
                let _ = writeln!(
                    out,
                    "daemon:          not running ({})",
                    self.daemon_error.as_deref().unwrap_or("no reply")
                );
            }
        }
        out.push_str("\nschedulers:\n");
        let _ = writeln!(out, "  kernel: {}", self.kernel_support);
        match &self.hierarchy {
            Some(hierarchy) => out.push_str(&hierarchy.table()),
            None => {
                let _ = writeln!(
                    out,
                    "  none loaded (sched_ext state: {})",
                    self.sched_ext_state
                );
            }
        }
        out
    }

    /// 0 when the daemon answered, 3 when it did not.
    pub fn exit_code(&self) -> ExitCode {
        if self.daemon_running {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(NOT_RUNNING)
        }
    }
}

/// Runs `canopy status [--json]`.
pub fn run(socket: &Path, json: bool, interval: Duration) -> anyhow::Result<ExitCode> {
    let status = SystemStatus::collect(socket, interval)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.table());
    }
    Ok(status.exit_code())
}
