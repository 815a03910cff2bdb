//! The `canopy` command: thin glue over the policy compiler (`canopy-policy`), the OS layer
//! (`canopy-sys`), the controller daemon (`canopy-controller`) and the BPF schedulers. This file owns the command-line surface (clap derive,
//! so `--help`, completions and the man page come from one definition) and the exit codes:
//! 0 success, 1 invalid input or failure, 2 not implemented / usage error, 3 (`status`) the
//! daemon is not running.

mod commands;
mod daemon_cli;
mod scheduler;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;

/// Linux scheduling QoS: tag tasks into classes by policy, clamp them per cgroup, and run
/// per-cgroup sched_ext child schedulers.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Output format of diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// `file:line:column: error: message` lines.
    Text,
    /// One JSON document with every diagnostic (for CI systems).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a policy: exit 0 when valid, 1 with every diagnostic on stderr.
    ///
    /// Each PATH is a policy file, or a directory holding policy.toml and policy.d/*.toml
    /// (merged in lexical order); a file named policy.toml brings its policy.d/*.toml too, as
    /// for the daemon. Default: /etc/canopy.
    Check {
        /// Policy files or directories.
        paths: Vec<PathBuf>,
        /// Diagnostic format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Compile a policy and print it resolved (canonical TOML), or explain it.
    Compile {
        /// Policy files or directories (default: /etc/canopy).
        paths: Vec<PathBuf>,
        /// Explain instead: classes, rules in evaluation order, groups and the existing cgroups
        /// each group owns on this machine.
        #[arg(long)]
        explain: bool,
        /// cgroup2 mount to look for existing cgroups (with --explain; detected when absent).
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
    },
    /// Show the semantic difference between two policies (classes, rules, groups).
    Diff {
        /// The old policy (file or directory).
        old: PathBuf,
        /// The new policy (file or directory).
        new: PathBuf,
    },
    /// Convert another tool's configuration into a canopy policy on stdout.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Run the controller daemon in the foreground (systemd Type=notify): tags tasks into
    /// classes, clamps them per group state, serves the control socket; SIGHUP reloads,
    /// SIGTERM restores everything it changed and exits.
    Run(daemon_cli::RunArgs),
    /// Run only the schedulers of a policy, without the controller (debugging; VM tests).
    #[command(hide = true)]
    RunSchedulers {
        /// Policy files or directories (default: /etc/canopy).
        paths: Vec<PathBuf>,
    },
    /// Talk to the running daemon: change group states, tag, explain, metrics, reload.
    Ctl {
        #[command(flatten)]
        socket: commands::ctl::SocketArg,
        #[command(subcommand)]
        command: commands::ctl::CtlCommand,
    },
    /// canopy's status: the daemon's (mode and why, policy, counters, groups) and the sched_ext
    /// scheduler hierarchy (each scheduler's cgroup, weight, granted CPUs, CPU time and share).
    ///
    /// Works without the daemon: the hierarchy is read from sysfs and the root scheduler's
    /// pinned maps. Exit status 0 when the daemon answered, 3 when it did not.
    Status {
        #[command(flatten)]
        socket: commands::ctl::SocketArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Interval the schedulers' CPU time and shares are measured over, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// A live terminal view of canopy: groups and their state, CPU share against target, task
    /// counts, the sched_ext hierarchy, wakeup and refusal counters; refreshed every interval.
    ///
    /// Works without the daemon (the scheduler part alone). q, Esc or Ctrl-C quits.
    Top {
        #[command(flatten)]
        socket: commands::ctl::SocketArg,
        /// Refresh interval (and the span CPU shares are measured over), in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Print a shell completion script.
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
    /// Benchmarks (not tests): print timings.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Convert a schedqos configuration directory (qos_mappings.json, app_configs/*.json).
    Schedqos {
        /// The schedqos configuration directory, e.g. /etc/schedqos.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Compile a generated policy and match tasks against it.
    Policy {
        /// Number of process rules.
        #[arg(long, default_value_t = 10_000)]
        rules: usize,
        /// Number of groups.
        #[arg(long, default_value_t = 1_000)]
        groups: usize,
    },
}

fn main() -> ExitCode {
    // Hidden debug commands over the BPF loader (`canopy scheduler --help`), used by the VM tests.
    if std::env::args().nth(1).as_deref() == Some("scheduler") {
        return match scheduler::debug_cli::main(std::env::args_os().skip(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("Error: {error:#}");
                ExitCode::from(1)
            }
        };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths, format } => commands::check::run(&paths, format),
        Command::Compile {
            paths,
            explain,
            cgroup_root,
        } => commands::compile::run(&paths, explain, cgroup_root.as_deref()),
        Command::Diff { old, new } => commands::diff::run(&old, &new),
        Command::Import(ImportCommand::Schedqos { dir }) => commands::import::schedqos(&dir),
        Command::Run(args) => daemon_cli::run(args).map(|()| ExitCode::SUCCESS),
        Command::RunSchedulers { paths } => commands::run_schedulers::run(&paths),
        Command::Ctl { socket, command } => commands::ctl::ctl(&socket.socket, command),
        Command::Status {
            socket,
            json,
            interval_ms,
        } => commands::status::run(&socket.socket, json, Duration::from_millis(interval_ms)),
        Command::Top {
            socket,
            interval_ms,
        } => commands::top::run(&socket.socket, Duration::from_millis(interval_ms)),
        Command::Completions { shell } => commands::generate::completions(shell),
        Command::Man => commands::generate::man(),
        Command::Bench(BenchCommand::Policy { rules, groups }) => {
            commands::bench::policy(rules, groups)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            if error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("canopy: error: {error:#}");
            ExitCode::from(1)
        }
    }
}
