// SPDX-License-Identifier: GPL-2.0-only
//! Running qemu: accelerator choice (KVM only when a probe guest really boots with it), the
//! command line, a reader thread that streams the serial console to the log file (and to the
//! terminal on request) and hands lines to the caller, and a guard that always kills the whole
//! qemu process group, on timeout, error, panic or drop alike.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{io_error, spawn_error, Result};

/// The kernel command line every guest starts with. `no_timer_check` skips the boot-time check
/// that the IO-APIC delivers timer interrupts within a few loops: under TCG on a loaded host the
/// emulated CPU can be too slow for it, and the kernel then panics ("IO-APIC + timer doesn't
/// work!") before any scenario runs (seen in a suite run beside five helpers' builds, load 15 on
/// 2 cores). The timer works; the check is what a slow emulator fails.
pub const GUEST_KERNEL_ARGS: &str = "console=ttyS0 panic=-1 quiet no_timer_check";

/// How the guest's CPUs are emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub(crate) fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// The qemu binary (`CANOPY_QEMU` overrides).
pub fn qemu_binary() -> String {
    std::env::var("CANOPY_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// `CANOPY_VM_NICE`: the host nice value for qemu (e.g. `-10`, so that timing scenarios suffer
/// less from compiles sharing the host). Unset: qemu inherits ours.
fn host_nice() -> Option<libc::c_int> {
    std::env::var("CANOPY_VM_NICE").ok()?.trim().parse().ok()
}

/// Everything one qemu invocation needs.
pub struct Launch<'a> {
    /// The kernel qemu boots ([`crate::kernel::Kernel::boot_image`]).
    pub kernel_image: &'a Path,
    pub initramfs: &'a Path,
    pub cpus: usize,
    pub memory: &'a str,
    pub accel: Accel,
    pub kernel_args: &'a [String],
    /// Interactive: the console is the terminal itself (qemu's stdio, logged by qemu to this
    /// file) and qemu stays in our process group so it may read the terminal. Otherwise
    /// stdin is /dev/null, the console is piped to us, and qemu leads its own process group.
    pub interactive_log: Option<&'a Path>,
}

impl Launch<'_> {
    pub fn command(&self) -> Command {
        let mut command = Command::new(qemu_binary());
        command
            .args(self.accel.qemu_args())
            .args(["-smp", &self.cpus.to_string(), "-m", self.memory])
            // No NIC: nothing needs a network, and skipping iPXE's option ROM saves boot time.
            .args(["-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(self.kernel_image)
            .arg("-initrd")
            .arg(self.initramfs);
        let mut append = String::from(GUEST_KERNEL_ARGS);
        for arg in self.kernel_args {
            append.push(' ');
            append.push_str(arg);
        }
        command.args(["-append", &append]);
        match self.interactive_log {
            Some(log) => {
                // The serial console and qemu's monitor (Ctrl-A C; Ctrl-A X quits) share the
                // terminal; Ctrl-C goes to the guest. Commas in an option value are doubled.
                let log = log.to_string_lossy().replace(',', ",,");
                command
                    .args(["-display", "none", "-chardev"])
                    .arg(format!("stdio,id=console,mux=on,signal=off,logfile={log}"))
                    .args([
                        "-serial",
                        "chardev:console",
                        "-mon",
                        "chardev=console,mode=readline",
                    ])
                    .stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
            }
            None => {
                command
                    .arg("-nographic")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
            }
        }
        tie_to_this_process(&mut command);
        command
    }

    pub fn describe(&self) -> String {
        describe(&self.command())
    }
}

/// qemu dies with the test process, even one that dies without unwinding (SIGKILL, abort),
/// and runs at `CANOPY_VM_NICE` when set.
pub fn tie_to_this_process(command: &mut Command) {
    let nice = host_nice();
    // SAFETY: prctl and setpriority are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(nice) = nice {
                // Best effort: a negative value needs root (or CAP_SYS_NICE).
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            }
            Ok(())
        });
    }
}

/// A command line as one string, for logs and errors.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// A running qemu. Dropping it kills qemu's process group and reaps it.
pub struct RunningQemu {
    child: Child,
    own_group: bool,
    pub lines: Receiver<SerialEvent>,
    pub started: Instant,
}

/// What the reader thread reports.
pub enum SerialEvent {
    Line(String),
    /// qemu closed its stdout: it exited or is exiting.
    Closed,
}

impl RunningQemu {
    /// Starts qemu; serial lines go to `log_path` (and to stderr when `echo`) and to `lines`.
    pub fn start(launch: &Launch, log_path: &Path, echo: bool) -> Result<RunningQemu> {
        RunningQemu::spawn(
            launch.command(),
            launch.interactive_log.is_none(),
            log_path,
            echo,
        )
    }

    /// Starts any qemu command line whose stdout and stderr are piped (the systemd guest's
    /// too); `own_group` says whether it leads its own process group.
    pub fn spawn(
        mut command: Command,
        own_group: bool,
        log_path: &Path,
        echo: bool,
    ) -> Result<RunningQemu> {
        let description = describe(&command);
        let mut log = File::create(log_path).map_err(io_error(log_path))?;
        let _ = writeln!(log, "# {description}");
        let mut child = command.spawn().map_err(spawn_error(description))?;
        let started = Instant::now();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::channel();
        let stderr_sender = sender.clone();
        let mut stderr_log = log.try_clone().map_err(io_error(log_path))?;
        // qemu's own complaints (bad option, KVM errors) go to the same log, marked.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|line| line.ok()) {
                let line = format!("qemu: {line}");
                let _ = writeln!(stderr_log, "{line}");
                if stderr_sender.send(SerialEvent::Line(line)).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buffer);
                let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                let _ = writeln!(log, "{line}");
                let _ = log.flush();
                if echo {
                    echo_line(&line);
                }
                if sender.send(SerialEvent::Line(line)).is_err() {
                    break;
                }
            }
            let _ = sender.send(SerialEvent::Closed);
        });
        Ok(RunningQemu {
            child,
            own_group,
            lines,
            started,
        })
    }

    /// Waits (bounded) for qemu to exit after its console closed.
    pub fn wait_exit(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling the process group qemu leads (or qemu alone when interactive).
        unsafe {
            if self.own_group {
                libc::killpg(pid, libc::SIGKILL);
            } else {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a console line to stderr straight away: the test harness's output capture would
/// otherwise hold it back until the test ends.
fn echo_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The accelerator to use: `CANOPY_VM_ACCEL` (`kvm`, `tcg` or `auto`, the default). `auto`
/// boots a tiny probe guest with KVM once per process and uses KVM only if it reaches its
/// `/init`: on nested machines `/dev/kvm` exists but guests die ("KVM internal error").
/// The probe boots `vmlinuz`, not the PVH `vmlinux` the scenarios boot: on the dev host's
/// refused nested KVM, qemu reports the failure at once for `vmlinuz` but sat silent until the
/// probe's 30 s deadline for `vmlinux`.
pub fn choose_accel(vmlinuz: &Path, scratch: &Path) -> Accel {
    static CHOSEN: OnceLock<Accel> = OnceLock::new();
    *CHOSEN.get_or_init(|| match std::env::var("CANOPY_VM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => {
            if kvm_device_usable() && kvm_probe_boots(vmlinuz, scratch) {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    })
}

fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

const KVM_PROBE_MARKER: &str = "CANOPY-KVM-PROBE-OK";

fn kvm_probe_boots(vmlinuz: &Path, scratch: &Path) -> bool {
    let probe = || -> Result<bool> {
        let mut archive = crate::cpio::CpioWriter::new();
        let busybox = crate::initramfs::find_host_tool("busybox")?;
        archive.file(
            "/bin/busybox",
            0o755,
            &std::fs::read(&busybox).map_err(io_error(&busybox))?,
        );
        archive.char_device("/dev/console", 0o600, 5, 1);
        let init = format!(
            "#!/bin/busybox sh\n/bin/busybox echo {KVM_PROBE_MARKER}\n/bin/busybox poweroff -f\n"
        );
        archive.file("/init", 0o755, init.as_bytes());
        let initramfs = scratch.join("kvm-probe.cpio");
        std::fs::write(&initramfs, archive.finish()).map_err(io_error(&initramfs))?;
        let launch = Launch {
            kernel_image: vmlinuz,
            initramfs: &initramfs,
            cpus: 1,
            memory: "256M",
            accel: Accel::Kvm,
            kernel_args: &[],
            interactive_log: None,
        };
        let log_path = scratch.join("kvm-probe.log");
        let qemu = RunningQemu::start(&launch, &log_path, false)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
            match qemu.lines.recv_timeout(remaining) {
                Ok(SerialEvent::Line(line)) if line.contains(KVM_PROBE_MARKER) => return Ok(true),
                // A /dev/kvm that opens but cannot run the guest (nested virtualisation refused:
                // "KVM internal error. Suberror: 1" on the dev host) leaves qemu paused, not
                // exited; waiting out the deadline cost 30 s of every test process's first boot.
                Ok(SerialEvent::Line(line)) if kvm_failed(&line) => break,
                Ok(SerialEvent::Line(_)) => {}
                Ok(SerialEvent::Closed) | Err(_) => break,
            }
        }
        Ok(false)
    };
    probe().unwrap_or(false)
}

/// Whether a line of qemu's stderr says KVM cannot run the guest.
fn kvm_failed(line: &str) -> bool {
    line.starts_with("qemu: ")
        && [
            "KVM internal error",
            "emulation failure",
            "failed to initialize kvm",
        ]
        .iter()
        .any(|sign| line.contains(sign))
}

/// The last `count` lines of a log file, for error messages.
pub fn log_tail(path: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Logs kept in `target/vm-logs` (the oldest beyond this are deleted when a new one starts).
const LOGS_KEPT: usize = 300;

/// `target/vm-logs/<scenario>-<UTC timestamp>.log`, unique within the process.
pub fn new_log_path(dir: &Path, scenario: &str) -> PathBuf {
    prune_logs(dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let safe: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stamp = utc_timestamp(now.as_secs());
    let mut path = dir.join(format!("{safe}-{stamp}.log"));
    let mut counter = 1;
    while path.exists() {
        counter += 1;
        path = dir.join(format!("{safe}-{stamp}-{counter}.log"));
    }
    path
}

fn prune_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    if logs.len() <= LOGS_KEPT {
        return;
    }
    logs.sort();
    for (_, path) in &logs[..logs.len() - LOGS_KEPT] {
        let _ = std::fs::remove_file(path);
    }
}

/// `YYYYmmddTHHMMSSZ` from Unix seconds (civil-from-days, no date crate needed).
fn utc_timestamp(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        (rest % 3600) / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_match_known_dates() {
        assert_eq!(utc_timestamp(0), "19700101T000000Z");
        assert_eq!(utc_timestamp(1_795_372_081), "20261122T182801Z");
        assert_eq!(utc_timestamp(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn only_qemus_own_kvm_errors_end_the_probe() {
        assert!(kvm_failed("qemu: KVM internal error. Suberror: 1"));
        assert!(kvm_failed("qemu: emulation failure"));
        assert!(!kvm_failed("qemu: extra data[0]: 0x0000000000000001"));
        // the guest's console is not qemu's stderr
        assert!(!kvm_failed("KVM internal error"));
    }
}
