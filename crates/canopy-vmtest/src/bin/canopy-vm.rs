// SPDX-License-Identifier: GPL-2.0-only
//! `canopy-vm`: the harness by hand. `shell` boots the test kernel and drops into a guest
//! shell (after an optional script); `run` runs a script file as a scenario with the console
//! shown live and prints the results. Wrapped by `scripts/vm-shell` and `scripts/vm-run`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use canopy_vmtest::{Scenario, SystemdGuest};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Boot canopy's test kernel under qemu by hand")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive guest shell (quit with `poweroff -f` or Ctrl-A X).
    Shell(GuestOptions),
    /// Run a script as a scenario, console shown live; prints the CANOPY-RESULT objects.
    Run {
        #[command(flatten)]
        guest: GuestOptions,
        /// Timeout in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Args)]
struct GuestOptions {
    /// A host binary to put in the guest's /bin, as PATH or PATH:NAME. Repeatable.
    #[arg(long = "binary", value_name = "PATH[:NAME]")]
    binaries: Vec<String>,
    /// Debian tools to add (cyclictest, hackbench, stress-ng). Repeatable.
    #[arg(long = "tool", value_name = "NAME")]
    tools: Vec<String>,
    /// vCPUs (default: CANOPY_VM_CPUS or 2).
    #[arg(long)]
    cpus: Option<usize>,
    /// Extra kernel command-line argument. Repeatable.
    #[arg(long = "kernel-arg")]
    kernel_args: Vec<String>,
    /// Shell script run in the guest after setup ("-" reads standard input).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Scenario name (log file name).
    #[arg(long, default_value = "manual")]
    name: String,
    /// Boot the systemd guest (Debian 13, systemd as PID 1, SSH forwarded) instead of the
    /// busybox initramfs; binaries go to /usr/local/bin, --tool and --kernel-arg do not apply.
    #[arg(long)]
    systemd: bool,
}

impl GuestOptions {
    fn binaries(&self) -> Result<Vec<(PathBuf, String)>> {
        self.binaries
            .iter()
            .map(|binary| match binary.rsplit_once(':') {
                Some((path, name)) => Ok((PathBuf::from(path), name.to_string())),
                None => {
                    let path = PathBuf::from(binary);
                    let name = path
                        .file_name()
                        .context("binary path has no file name")?
                        .to_string_lossy()
                        .into_owned();
                    Ok((path, name))
                }
            })
            .collect()
    }

    fn script_text(&self) -> Result<Option<String>> {
        let Some(path) = &self.script else {
            return Ok(None);
        };
        if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
                .context("reading the script from stdin")
                .map(Some)
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some)
        }
    }

    fn systemd_guest(&self) -> Result<SystemdGuest> {
        let mut guest = SystemdGuest::new(&self.name);
        for (path, name) in self.binaries()? {
            guest = guest.with_file(path, &format!("/usr/local/bin/{name}"));
        }
        if let Some(cpus) = self.cpus {
            guest = guest.cpus(cpus);
        }
        if let Some(script) = self.script_text()? {
            guest = guest.script(script);
        }
        Ok(guest)
    }

    fn scenario(&self) -> Result<Scenario> {
        let mut scenario = Scenario::new(&self.name);
        for (path, name) in self.binaries()? {
            scenario = scenario.with_binary(path, &name);
        }
        let tools: Vec<&str> = self.tools.iter().map(String::as_str).collect();
        scenario = scenario.with_debian_tools(&tools);
        if let Some(cpus) = self.cpus {
            scenario = scenario.cpus(cpus);
        }
        for arg in &self.kernel_args {
            scenario = scenario.kernel_arg(arg);
        }
        if let Some(script) = self.script_text()? {
            scenario = scenario.script(script);
        }
        Ok(scenario)
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Shell(guest) => {
            let log = if guest.systemd {
                guest.systemd_guest()?.run_interactive()?
            } else {
                guest.scenario()?.run_interactive()?
            };
            eprintln!("canopy-vm: guest log {}", log.display());
        }
        Command::Run { guest, timeout } => {
            let outcome = if guest.systemd {
                guest
                    .systemd_guest()?
                    .timeout(Duration::from_secs(timeout))
                    .show_log(true)
                    .run()?
            } else {
                guest
                    .scenario()?
                    .timeout(Duration::from_secs(timeout))
                    .show_log(true)
                    .run()?
            };
            for result in &outcome.results {
                println!("{result}");
            }
            eprintln!("canopy-vm: {}", outcome.summary());
        }
    }
    Ok(())
}
