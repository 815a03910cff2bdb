//! The `canopy` command: thin glue over the policy compiler (`canopy-policy`), the OS layer
//! (`canopy-sys`), the controller daemon (`canopy-controller`) and the BPF schedulers. Each
//! subcommand lives in its own module.

mod commands;
mod daemon_cli;

use clap::{Parser, Subcommand};

/// Linux scheduling QoS: tag tasks into classes by policy, clamp them per cgroup.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller daemon (foreground; systemd Type=notify).
    Run(daemon_cli::RunArgs),
    /// Talk to the running daemon: change group states, tag, explain, reload.
    Ctl {
        #[command(flatten)]
        socket: commands::ctl::SocketArg,
        #[command(subcommand)]
        command: commands::ctl::CtlCommand,
    },
    /// The daemon's status: mode and why, policy, counters, groups.
    Status {
        #[command(flatten)]
        socket: commands::ctl::SocketArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => daemon_cli::run(args),
        Command::Ctl { socket, command } => commands::ctl::ctl(&socket.socket, command),
        Command::Status { socket, json } => commands::ctl::status(&socket.socket, json),
    }
}
