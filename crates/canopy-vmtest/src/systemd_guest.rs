// SPDX-License-Identifier: GPL-2.0-only
//! The systemd guest: a real Debian 13 with systemd as PID 1, booted from a cached disk image
//! (`scripts/build-systemd-guest.sh`: mmdebstrap of trixie, the test kernel's modules, an SSH
//! key, `canopy-scenario.service`) with the same test kernel as the busybox guests.
//!
//! A boot's own files travel on a second NVMe disk (serial `canopy-payload`): a tar whose
//! `root/` the guest copies into `/` and whose `scenario.sh` it runs (`bash -e`, from `/root`)
//! once `systemctl is-system-running --wait` returns. The root disk is opened with qemu's
//! `snapshot=on`, so every boot starts from the cached image and leaves it untouched.
//!
//! Two ways to use it:
//! - [`SystemdGuest::run`]: the scenario runs, its `CANOPY-RESULT` lines come over the serial
//!   console (through journald), the guest powers itself off; same [`Outcome`] as a busybox
//!   scenario.
//! - [`SystemdGuest::boot`]: the guest stays up with SSH forwarded to a loopback port; run
//!   commands with [`RunningGuest::ssh`] (or any host tool with [`RunningGuest::ssh_port`] and
//!   [`RunningGuest::ssh_key`], e.g. Ansible), then [`RunningGuest::shutdown`].
//!
//! ```no_run
//! use std::time::Duration;
//! let guest = canopy_vmtest::SystemdGuest::new("ssh-demo").boot()?;
//! let output = guest.ssh("systemctl is-system-running")?;
//! assert!(output.status.success());
//! guest.shutdown()?;
//! # Ok::<(), canopy_vmtest::Error>(())
//! ```
//!
//! Both hold the machine-wide VM lock for the guest's whole life and retry a boot (at most
//! [`EMULATOR_BOOT_FAULT_RETRIES`] times) whose kernel panicked before the system came up: qemu
//! TCG's stale-code `Oops: int3` hits about one boot in seven here, and CI saw two in a row
//! (each costs the 5 s to the panic). [`SystemdGuest::run_steps`] resumes a run of steps at
//! the step the fault struck.
//!
//! This file is the builder and the boot (retries, the qemu command line, judging the
//! console); beside it in `systemd_guest/`: `image` (the cached disk image), `payload` (the
//! files and script on the second disk, and the guest's entry point) and `ssh` (a guest that
//! stays up, driven over SSH).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{io_error, spawn_error, Error, Result};
use crate::guest_build::guest_binary;
use crate::lock::VmLock;
use crate::paths::{log_dir, target_dir, vm_lock_path};
use crate::qemu::{self, Accel, RunningQemu};
use crate::{
    emulator_aborted_on_assertion, hit_emulator_text_patching_fault, judge_console,
    kernel_release_of, read_console, Outcome,
};

mod image;
mod payload;
mod ssh;
pub use image::{systemd_image, SystemdImage};
use payload::{write_payload, PayloadFile};
pub use ssh::RunningGuest;

/// How often a boot of the systemd guest that died before the system came up is retried
/// (cheap: such a boot dies within seconds).
pub const EMULATOR_BOOT_FAULT_RETRIES: u32 = 4;

/// How often [`SystemdGuest::run_steps`] boots again after the emulator's fault struck a step
/// (each costs a boot and that step again).
pub const EMULATOR_STEP_FAULT_RETRIES: u32 = 3;

/// One step of [`SystemdGuest::run_steps`]: its name (printed with its time and named in its
/// errors) and what it does to the running guest.
pub struct GuestStep<'a> {
    pub name: &'a str,
    pub run: &'a dyn Fn(&RunningGuest) -> anyhow::Result<()>,
}

/// One boot of the systemd guest. Build it with the `with_*` methods, then [`run`](Self::run)
/// a scenario or [`boot`](Self::boot) it for SSH.
#[derive(Debug, Clone)]
pub struct SystemdGuest {
    name: String,
    files: Vec<PayloadFile>,
    script: Option<String>,
    timeout: Duration,
    cpus: usize,
    memory: String,
    show_log: Option<bool>,
}

impl SystemdGuest {
    /// Defaults: 2 vCPUs (or `CANOPY_VM_CPUS`), 2G, a 300 s timeout, `canopy-guest` at
    /// `/usr/local/bin/canopy-guest`.
    pub fn new(name: impl Into<String>) -> SystemdGuest {
        SystemdGuest {
            name: name.into(),
            files: Vec::new(),
            script: None,
            timeout: Duration::from_secs(300),
            cpus: std::env::var("CANOPY_VM_CPUS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(2usize)
                .max(1),
            memory: "2G".into(),
            show_log: None,
        }
    }

    /// Copies a host file to an absolute guest path, mode 0644 (0755 for an executable).
    pub fn with_file(mut self, host_path: impl AsRef<Path>, guest_path: &str) -> SystemdGuest {
        let host_path = host_path.as_ref().to_path_buf();
        let executable = std::fs::metadata(&host_path)
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0)
            .unwrap_or(false);
        self.files.push(PayloadFile::Host {
            host_path,
            guest_path: guest_path.into(),
            mode: if executable { 0o755 } else { 0o644 },
        });
        self
    }

    /// Writes `contents` to an absolute guest path with `mode`.
    pub fn with_file_contents(
        mut self,
        guest_path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> SystemdGuest {
        self.files.push(PayloadFile::Contents {
            guest_path: guest_path.into(),
            contents: contents.into(),
            mode,
        });
        self
    }

    /// The bash script (`bash -e`, from `/root`) run once the system is up.
    pub fn script(mut self, script: impl Into<String>) -> SystemdGuest {
        self.script = Some(script.into());
        self
    }

    /// Wall-clock limit from qemu's start, boot included (waiting for the VM lock is not).
    pub fn timeout(mut self, timeout: Duration) -> SystemdGuest {
        self.timeout = timeout;
        self
    }

    pub fn cpus(mut self, cpus: usize) -> SystemdGuest {
        self.cpus = cpus.max(1);
        self
    }

    /// qemu's `-m` value, e.g. `"2G"`.
    pub fn memory(mut self, memory: &str) -> SystemdGuest {
        self.memory = memory.into();
        self
    }

    /// Echo the guest console live on stderr; defaults to `CANOPY_VM_SHOW_LOG=1`.
    pub fn show_log(mut self, show: bool) -> SystemdGuest {
        self.show_log = Some(show);
        self
    }

    fn effective_show_log(&self) -> bool {
        self.show_log.unwrap_or_else(|| {
            matches!(
                std::env::var("CANOPY_VM_SHOW_LOG").as_deref(),
                Ok("1") | Ok("true") | Ok("yes")
            )
        })
    }

    /// Boots, runs the script, collects its results and waits for the guest's own poweroff.
    /// Errors as [`crate::Scenario::run`]: timeout, panic, a system that never came up, a
    /// script that failed.
    pub fn run(&self) -> Result<Outcome> {
        let script = self.script.clone().unwrap_or_default();
        self.with_retries(
            |prepared| {
                let mut boot = prepared.start(self, None)?;
                let deadline = boot.qemu.started + self.timeout;
                let console = read_console(&mut boot.qemu, deadline, None, None);
                let (results, malformed) = judge_console(
                    &self.name,
                    console,
                    &mut boot.qemu,
                    self.timeout,
                    &prepared.log_path,
                    &format!("{:?} acceleration, systemd guest", boot.accel),
                )?;
                Ok(Outcome {
                    scenario: self.name.clone(),
                    kernel_release: kernel_release_of(&results),
                    results,
                    malformed_results: malformed,
                    log_path: prepared.log_path.clone(),
                    duration: boot.qemu.started.elapsed(),
                    accel: boot.accel,
                    cpus: self.cpus,
                })
            },
            Some(&script),
        )
    }

    /// Boots with SSH on `127.0.0.1:<free port>` and returns once `ssh root@` answers (the
    /// script, if any, has run by then: its `boot` result comes first). The guest stays up
    /// until [`RunningGuest::shutdown`] or drop (which kills it).
    pub fn boot(&self) -> Result<RunningGuest> {
        self.with_retries(
            |prepared| {
                let port = free_loopback_port().map_err(io_error("127.0.0.1:0"))?;
                let mut boot = prepared.start(self, Some(port))?;
                let deadline = boot.qemu.started + self.timeout;
                let mut guest = RunningGuest {
                    name: self.name.clone(),
                    accel: boot.accel,
                    cpus: self.cpus,
                    qemu: boot.qemu,
                    ssh_port: port,
                    ssh_key: prepared.image.ssh_key.clone(),
                    log_path: prepared.log_path.clone(),
                    booted_in: Duration::ZERO,
                    _lock: None,
                };
                guest.wait_for_ssh(deadline)?;
                guest.booted_in = guest.qemu.started.elapsed();
                guest._lock = boot.lock.take();
                Ok(guest)
            },
            self.script.as_deref(),
        )
    }

    /// Boots, runs `steps` in order against the running guest (SSH, [`RunningGuest::run_script`])
    /// and powers it off; returns the poweroff's duration. Many steps share one boot this way;
    /// each step's boot, run and the poweroff are timed on stdout.
    ///
    /// A guest that died of the emulator's `Oops: int3` (at any point: in a long boot sched_ext
    /// is enabled and disabled many times) is booted again and the run resumes at the step that
    /// failed, so a fault costs one step, not the whole run; at most
    /// [`EMULATOR_STEP_FAULT_RETRIES`] times in a run. Every step must therefore start as well on
    /// a freshly booted guest as after the step before it. Any other failure (an error or a
    /// failed assertion in a step) is final.
    pub fn run_steps(&self, steps: &[GuestStep<'_>]) -> anyhow::Result<Duration> {
        let mut next = 0;
        let mut faults = 0;
        'boot: loop {
            let guest = self.boot()?;
            println!(
                "systemd guest: boot (qemu start to SSH): {:.1} s",
                guest.booted_in().as_secs_f64()
            );
            record_step_time(&self.name, "boot (qemu start to SSH)", guest.booted_in());
            while let Some(step) = steps.get(next) {
                let started = std::time::Instant::now();
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (step.run)(&guest)));
                println!(
                    "systemd guest: {}: {:.1} s",
                    step.name,
                    started.elapsed().as_secs_f64()
                );
                record_step_time(&self.name, step.name, started.elapsed());
                let failed = !matches!(outcome, Ok(Ok(())));
                if failed
                    && faults < EMULATOR_STEP_FAULT_RETRIES
                    && (hit_emulator_text_patching_fault(&guest.log_path)
                        || emulator_aborted_on_assertion(&guest.log_path))
                {
                    faults += 1;
                    eprintln!(
                        "canopy-vmtest: `{}`: the systemd guest died of qemu TCG's `Oops: int3` \
                         or qemu aborted on its own assertion in step `{}` (an emulator fault, not the scenario's; log {}); that step \
                         again on a new boot, retry {faults} of {EMULATOR_STEP_FAULT_RETRIES}",
                        self.name,
                        step.name,
                        guest.log_path.display()
                    );
                    drop(guest);
                    continue 'boot;
                }
                match outcome {
                    Ok(Ok(())) => next += 1,
                    Ok(Err(err)) => return Err(err.context(format!("step `{}`", step.name))),
                    Err(panic) => {
                        drop(guest);
                        std::panic::resume_unwind(panic)
                    }
                }
            }
            return Ok(guest.shutdown()?);
        }
    }

    /// Boots with the terminal attached to the serial console (log in as root, no password;
    /// SSH forwarded too, its command printed). Quit with `poweroff` or Ctrl-A X.
    pub fn run_interactive(&self) -> Result<PathBuf> {
        let prepared = Prepared::new(self, self.script.as_deref())?;
        let _lock = VmLock::acquire(&vm_lock_path(), &self.name)?;
        let port = free_loopback_port().map_err(io_error("127.0.0.1:0"))?;
        let accel = qemu::choose_accel(&prepared.image.kernel.vmlinuz, &prepared.work_dir);
        let mut command = prepared.command(self, accel, Some(port));
        let log = prepared.log_path.to_string_lossy().replace(',', ",,");
        command
            .args(["-display", "none", "-chardev"])
            .arg(format!("stdio,id=console,mux=on,signal=off,logfile={log}"))
            .args([
                "-serial",
                "chardev:console",
                "-mon",
                "chardev=console,mode=readline",
            ]);
        eprintln!(
            "canopy-vm: systemd guest; log in as root (no password) on the console, or:\n  \
             ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1",
            prepared.image.ssh_key.display()
        );
        let mut child = command
            .spawn()
            .map_err(spawn_error(qemu::describe(&command)))?;
        let _ = child.wait();
        Ok(prepared.log_path)
    }

    /// Runs `attempt` and boots again when the guest's kernel panicked before the system came
    /// up, or died of the emulator's text-patching fault.
    fn with_retries<T>(
        &self,
        attempt: impl Fn(&mut Prepared) -> Result<T>,
        script: Option<&str>,
    ) -> Result<T> {
        let mut retries = 0;
        loop {
            let mut prepared = Prepared::new(self, script)?;
            let result = attempt(&mut prepared);
            prepared.remove_payload();
            if result.is_err()
                && retries < EMULATOR_BOOT_FAULT_RETRIES
                && (hit_emulator_text_patching_fault(&prepared.log_path)
                    || emulator_aborted_on_assertion(&prepared.log_path)
                    || panicked_before_boot(&prepared.log_path))
            {
                retries += 1;
                eprintln!(
                    "canopy-vmtest: `{}`: the systemd guest died of qemu TCG's `Oops: int3`, \
                     qemu aborted on its own assertion, or the guest panicked before the system \
                     came up (an emulator fault, not the scenario's; \
                     log {}); retry {retries} of {EMULATOR_BOOT_FAULT_RETRIES}",
                    self.name,
                    prepared.log_path.display()
                );
                continue;
            }
            return result;
        }
    }
}

/// A kernel panic before the runner's `boot` result: nothing the scenario did caused it.
fn panicked_before_boot(log_path: &Path) -> bool {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    match (
        log.find("Kernel panic - not syncing"),
        log.find(&format!("{}{{\"kind\":\"boot\"", crate::RESULT_PREFIX)),
    ) {
        (Some(panic), Some(boot)) => panic < boot,
        (Some(_), None) => true,
        _ => false,
    }
}

/// A loopback port nobody listens on now (qemu binds it a moment later).
fn free_loopback_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What one boot needs on the host: the image, the payload tar, the log path.
struct Prepared {
    image: SystemdImage,
    payload: PathBuf,
    log_path: PathBuf,
    work_dir: PathBuf,
}

struct Booting {
    qemu: RunningQemu,
    accel: Accel,
    lock: Option<VmLock>,
}

impl Prepared {
    fn new(guest: &SystemdGuest, script: Option<&str>) -> Result<Prepared> {
        let image = systemd_image()?;
        let work_dir = target_dir().join("vm-work");
        std::fs::create_dir_all(&work_dir).map_err(io_error(&work_dir))?;
        let logs = log_dir();
        std::fs::create_dir_all(&logs).map_err(io_error(&logs))?;
        let log_path = qemu::new_log_path(&logs, &guest.name);
        let stem = log_path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let payload = work_dir.join(format!("{stem}.payload.tar"));
        let staging = work_dir.join(format!("{stem}.payload"));
        let mut files = guest.files.clone();
        files.insert(
            0,
            PayloadFile::Host {
                host_path: guest_binary()?,
                guest_path: "/usr/local/bin/canopy-guest".into(),
                mode: 0o755,
            },
        );
        write_payload(&staging, &files, script)?;
        let status = Command::new("tar")
            .arg("-cf")
            .arg(&payload)
            .arg("-C")
            .arg(&staging)
            .arg(".")
            .status()
            .map_err(spawn_error("tar -cf".into()))?;
        let _ = std::fs::remove_dir_all(&staging);
        if !status.success() {
            return Err(Error::GuestFile {
                host_path: payload,
                message: format!("tar exited with {status}"),
            });
        }
        Ok(Prepared {
            image,
            payload,
            log_path,
            work_dir,
        })
    }

    /// Takes the VM lock and starts qemu with the console piped to us.
    fn start(&self, guest: &SystemdGuest, ssh_port: Option<u16>) -> Result<Booting> {
        let lock = VmLock::acquire(&vm_lock_path(), &guest.name)?;
        let accel = qemu::choose_accel(&self.image.kernel.vmlinuz, &self.work_dir);
        let echo = guest.effective_show_log();
        if echo {
            eprintln!(
                "canopy-vmtest: `{}` (systemd guest) on {} ({accel:?}, {} vCPUs), log {}",
                guest.name,
                self.image.kernel.release,
                guest.cpus,
                self.log_path.display()
            );
        }
        let mut command = self.command(guest, accel, ssh_port);
        command
            .arg("-nographic")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let qemu = RunningQemu::spawn(command, true, &self.log_path, echo)?;
        Ok(Booting {
            qemu,
            accel,
            lock: Some(lock),
        })
    }

    fn command(&self, guest: &SystemdGuest, accel: Accel, ssh_port: Option<u16>) -> Command {
        let mut command = Command::new(qemu::qemu_binary());
        command
            .args(accel.qemu_args())
            .args(["-smp", &guest.cpus.to_string(), "-m", &guest.memory])
            .args(["-no-reboot", "-nic", "none"]);
        if let Some(port) = ssh_port {
            // SSH reaches the guest only from this host's loopback; no option ROM (iPXE) to
            // load, the kernel boots directly.
            command
                .arg("-netdev")
                .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"))
                .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        }
        command
            .arg("-kernel")
            .arg(&self.image.kernel.boot_image)
            .args([
                "-append",
                &format!(
                    "root=/dev/nvme0n1 rw rootfstype=ext4 {}",
                    qemu::GUEST_KERNEL_ARGS
                ),
            ])
            // The root disk first, so it is nvme0; every write goes to a temporary overlay.
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=root,format=raw,cache=unsafe,snapshot=on",
                drive_path(&self.image.rootfs)
            ))
            .args(["-device", "nvme,drive=root,serial=sysroot"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=payload,format=raw,snapshot=on",
                drive_path(&self.payload)
            ))
            .args(["-device", "nvme,drive=payload,serial=canopy-payload"]);
        qemu::tie_to_this_process(&mut command);
        command
    }

    fn remove_payload(&self) {
        let _ = std::fs::remove_file(&self.payload);
    }
}

/// A path inside a qemu `-drive` option (commas doubled).
fn drive_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Appends one step's time to `<target>/vm-logs/steps.tsv` (Unix time, scenario, step, seconds),
/// beside the VM's hold times in `timings.tsv`: a passing test's output is captured, and the
/// systemd guest's time varies by the step.
fn record_step_time(scenario: &str, step: &str, took: Duration) {
    crate::paths::append_log_row(
        "steps.tsv",
        &[scenario, step, &format!("{:.1}", took.as_secs_f64())],
    );
}
