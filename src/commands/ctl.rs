//! `canopy ctl ...`: clients of the daemon's control socket. They build one request, print the
//! reply (a table or JSON), and map refusals and errors to exit code 1. `ctl status` is
//! `canopy status` (`status.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use canopy_controller::protocol::Request;

use super::client::call;
use super::client::ok_result;

/// Default control socket (the policy's `daemon.socket_path` default).
pub const DEFAULT_SOCKET: &str = "/run/canopy/control.sock";

/// Options shared by every client command.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
}

/// `canopy ctl` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCommand {
    /// Switch a cgroup's group to a named state (e.g. `minimized`; `base` = no state).
    ///
    /// Users may change states of cgroups inside their own user@UID.service, to states the
    /// policy marks user-settable; root may change any.
    State {
        /// cgroup path (relative to the cgroup2 root, or absolute under it).
        cgroup: String,
        /// State name.
        state: String,
    },
    /// Override the class of a process (every thread) or of one thread (root only).
    Tag {
        /// Process id.
        #[arg(long, conflicts_with = "tid", required_unless_present = "tid")]
        pid: Option<u32>,
        /// Thread id.
        #[arg(long)]
        tid: Option<u32>,
        /// Class name.
        class: String,
    },
    /// Why a process (or thread) runs in its class: rule, group, state, requested/effective.
    Explain {
        /// Process or thread id.
        #[arg(long)]
        pid: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's status (same as `canopy status`).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counters in Prometheus text format.
    Metrics,
    /// Re-read and recompile the policy (like SIGHUP); prints the error if it does not compile.
    Reload,
}

/// Runs `canopy ctl CMD`.
pub fn ctl(socket: &Path, cmd: CtlCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CtlCommand::State { cgroup, state } => {
            ok_result(call(
                socket,
                Request::State {
                    cgroup: cgroup.clone(),
                    state: state.clone(),
                },
            )?)?;
            println!("{cgroup}: {state}");
        }
        CtlCommand::Tag { pid, tid, class } => {
            let v = ok_result(call(socket, Request::Tag { pid, tid, class })?)?;
            println!("{}", v);
        }
        CtlCommand::Explain { pid, json } => {
            let v = ok_result(call(socket, Request::Explain { pid })?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for t in v.as_array().into_iter().flatten() {
                    let s = |k: &str| {
                        t[k].as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| "-".into())
                    };
                    println!("tid {} ({}) pid {}", t["tid"], s("comm"), t["tgid"]);
                    println!("  cgroup:    /{}", s("cgroup"));
                    println!(
                        "  rule:      {}{}",
                        s("rule"),
                        t["thread_rule"]
                            .as_str()
                            .map(|r| format!(" (thread rule {r})"))
                            .unwrap_or_default()
                    );
                    println!(
                        "  group:     {} (state {})",
                        s("group"),
                        t["state"].as_str().unwrap_or("base")
                    );
                    println!("  requested: {}", s("requested"));
                    println!("  effective: {}", s("effective"));
                    println!("  why:       {}", s("why"));
                }
            }
        }
        CtlCommand::Status { json } => {
            return super::status::run(socket, json, super::status::DEFAULT_INTERVAL)
        }
        CtlCommand::Metrics => {
            let v = ok_result(call(socket, Request::Metrics {})?)?;
            print!("{}", v["text"].as_str().unwrap_or_default());
        }
        CtlCommand::Reload => {
            let v = ok_result(call(socket, Request::Reload {})?)?;
            println!("policy {}", v["policy"].as_str().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}
