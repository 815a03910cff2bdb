// SPDX-License-Identifier: GPL-2.0-only
//! A systemd guest that stays up: SSH on a loopback port, commands run over it, a clean
//! poweroff.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::error::{spawn_error, Error, Result};
use crate::lock::VmLock;
use crate::qemu::{self, Accel, RunningQemu, SerialEvent};
use crate::{kernel_release_of, Outcome, LOG_TAIL_LINES};

/// A booted systemd guest with SSH on a loopback port. Dropping it kills qemu; call
/// [`shutdown`](Self::shutdown) for a clean poweroff.
pub struct RunningGuest {
    pub(super) name: String,
    pub(super) accel: Accel,
    pub(super) cpus: usize,
    pub(super) qemu: RunningQemu,
    pub(super) ssh_port: u16,
    pub(super) ssh_key: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) booted_in: Duration,
    pub(super) _lock: Option<VmLock>,
}

/// ssh options for a throwaway guest whose host key is new on every image build.
const SSH_OPTIONS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=5",
];

impl RunningGuest {
    /// The host port forwarded to the guest's port 22 (on 127.0.0.1 only).
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }

    /// The private key that logs in as `root`.
    pub fn ssh_key(&self) -> &Path {
        &self.ssh_key
    }

    /// The serial console log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// From qemu's start until SSH answered.
    pub fn booted_in(&self) -> Duration {
        self.booted_in
    }

    /// `ssh` to `root@127.0.0.1` with the port, key and options set; add the remote command.
    pub fn ssh_command(&self) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(SSH_OPTIONS)
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .arg("-i")
            .arg(&self.ssh_key)
            .arg("root@127.0.0.1")
            .stdin(Stdio::null());
        command
    }

    /// Runs `remote` (a shell command line) in the guest as root and returns its output,
    /// whatever its exit status.
    pub fn ssh(&self, remote: &str) -> Result<Output> {
        self.ssh_command()
            .arg(remote)
            .output()
            .map_err(spawn_error(format!("ssh root@127.0.0.1 {remote}")))
    }

    /// Runs `script` with `bash -e` as root from `/root` in the guest (over SSH, the script on
    /// stdin) and returns the `CANOPY-RESULT` objects it printed on stdout, as a scenario's
    /// [`Outcome`] named `<guest>/<step>`: one boot, several steps. A script that exits
    /// non-zero is an error with the end of its output.
    pub fn run_script(&self, step: &str, script: &str) -> Result<Outcome> {
        let scenario = format!("{}/{step}", self.name);
        let started = Instant::now();
        let mut child = self
            .ssh_command()
            .arg("cd /root && bash -e -s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error(format!("ssh root@127.0.0.1 bash ({scenario})")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let text = format!("printf '{}{{\"kind\":\"boot\",\"kernel_release\":\"%s\"}}\\n' \"$(uname -r)\"\n{script}\n", crate::RESULT_PREFIX);
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let output = child
            .wait_with_output()
            .map_err(spawn_error(format!("ssh root@127.0.0.1 bash ({scenario})")))?;
        let _ = writer.join();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (mut results, mut malformed) = (Vec::new(), Vec::new());
        for line in stdout.lines() {
            match crate::result_in_line(line) {
                Some(Some(value)) => results.push(value),
                Some(None) => malformed.push(line.to_string()),
                None => {}
            }
        }
        if !output.status.success() {
            let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
            let lines: Vec<&str> = all.lines().collect();
            return Err(Error::Guest {
                scenario,
                reason: format!("the step's script exited with {}", output.status),
                log_path: self.log_path.clone(),
                log_tail: lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"),
            });
        }
        Ok(Outcome {
            scenario,
            kernel_release: kernel_release_of(&results),
            results,
            malformed_results: malformed,
            log_path: self.log_path.clone(),
            duration: started.elapsed(),
            accel: self.accel,
            cpus: self.cpus,
        })
    }

    pub(super) fn wait_for_ssh(&mut self, deadline: Instant) -> Result<()> {
        let mut last = String::new();
        let mut panicked = None;
        while Instant::now() < deadline {
            // Drain the console: it shows a panic or an early poweroff.
            while let Ok(event) = self.qemu.lines.try_recv() {
                match event {
                    SerialEvent::Line(line) if line.contains("Kernel panic - not syncing") => {
                        panicked = Some(line)
                    }
                    SerialEvent::Line(_) => {}
                    SerialEvent::Closed => {
                        return Err(self.error(format!(
                            "the guest stopped before SSH answered{}",
                            panicked
                                .as_deref()
                                .map(|line| format!(" ({})", line.trim()))
                                .unwrap_or_default()
                        )))
                    }
                }
            }
            match self.ssh("true") {
                Ok(output) if output.status.success() => return Ok(()),
                Ok(output) => last = String::from_utf8_lossy(&output.stderr).trim().to_string(),
                Err(err) => return Err(err),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.qemu.kill();
        Err(Error::Timeout {
            scenario: self.name.clone(),
            timeout: deadline.saturating_duration_since(self.qemu.started),
            log_path: self.log_path.clone(),
            log_tail: format!(
                "{}\n(last ssh error: {last})",
                qemu::log_tail(&self.log_path, LOG_TAIL_LINES)
            ),
        })
    }

    /// `systemctl poweroff` over SSH and waits (up to 60 s) for qemu to exit; kills it after
    /// that. Returns how long the shutdown took.
    pub fn shutdown(mut self) -> Result<Duration> {
        let started = Instant::now();
        // The connection may drop as the guest goes down; the exit is what counts.
        let _ = self.ssh_command().arg("systemctl poweroff").output();
        while started.elapsed() < Duration::from_secs(60) {
            match self.qemu.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(SerialEvent::Closed) => {
                    self.qemu.wait_exit(Duration::from_secs(5));
                    self.qemu.kill();
                    return Ok(started.elapsed());
                }
                Ok(SerialEvent::Line(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.qemu.kill();
        Err(self.error("the guest did not power off within 60 s of `systemctl poweroff`".into()))
    }

    fn error(&self, reason: String) -> Error {
        Error::Guest {
            scenario: self.name.clone(),
            reason,
            log_path: self.log_path.clone(),
            log_tail: qemu::log_tail(&self.log_path, LOG_TAIL_LINES),
        }
    }
}
