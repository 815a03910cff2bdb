// SPDX-License-Identifier: GPL-2.0-only
//! canopy-vmtest: the host side of the VM test harness. It fetches and checks the test kernel
//! (`scripts/fetch-kernel.sh`), builds an uncompressed cpio initramfs (busybox, the binaries under
//! test and their libraries, `canopy-guest`, optional Debian tools), boots it under qemu, streams
//! the serial console to `target/vm-logs/`, parses `CANOPY-RESULT {json}` lines, enforces a
//! timeout and always kills qemu.
//!
//! ```no_run
//! use std::time::Duration;
//! let outcome = canopy_vmtest::Scenario::new("boot")
//!     .script("canopy-guest sched-ext-state")
//!     .timeout(Duration::from_secs(60))
//!     .run()?;
//! let state = outcome.result("sched-ext-state")?;
//! assert_eq!(state["state"], "disabled");
//! # Ok::<(), canopy_vmtest::Error>(())
//! ```
//!
//! Inside the guest, `/init` runs `canopy-guest setup` (mounts, `+cpu` in the root cgroup, prints
//! the `boot` result with `kernel_release`), then the scenario script under `sh -e`, then reports
//! `kernel-health` (warnings from the kernel log) and `script-exit`, and powers off. A non-zero
//! exit, a kernel panic, a guest that stops early and a timeout are all errors carrying the
//! tail of the guest log.

mod cpio;
mod cpu_split;
mod error;
mod guest_build;
mod initramfs;
mod kernel;
mod lock;
mod package;
mod paths;
mod qemu;
mod systemd_guest;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cpu_split::CpuSplit;
pub use error::{Error, Result};
pub use guest_build::guest_binary;
pub use initramfs::GuestFile;
pub use kernel::{kernel, Kernel};
pub use lock::VmLock;
pub use package::debian_package;
pub use paths::{log_dir, repo_root, target_dir, vm_lock_path};
pub use qemu::Accel;
/// Re-exported so scenario tests can read results without their own dependency.
pub use serde_json;
pub use systemd_guest::{systemd_image, GuestStep, RunningGuest, SystemdGuest, SystemdImage};

use error::{io_error, spawn_error};
use qemu::{Launch, RunningQemu, SerialEvent};
use serde_json::Value;

/// The prefix of a structured result line on the guest console.
pub const RESULT_PREFIX: &str = "CANOPY-RESULT ";
/// Lines of guest log shown in an error.
pub(crate) const LOG_TAIL_LINES: usize = 60;
/// Debian tools the harness knows how to bring into the guest.
pub const DEBIAN_TOOLS: &[&str] = &["cyclictest", "hackbench", "stress-ng"];

/// One guest boot running one script. Build it with the `with_*` methods, then `run()`.
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    files: Vec<GuestFile>,
    debian_tools: Vec<String>,
    script: String,
    timeout: Duration,
    script_timeout: Option<Duration>,
    cpus: Option<usize>,
    memory: String,
    kernel_args: Vec<String>,
    show_log: Option<bool>,
}

impl Scenario {
    /// A scenario named `name` (used for the log file). Defaults: 2 vCPUs (or
    /// `CANOPY_VM_CPUS`), 2G of memory, a 180 s timeout, an empty script.
    pub fn new(name: impl Into<String>) -> Scenario {
        Scenario {
            name: name.into(),
            files: Vec::new(),
            debian_tools: Vec::new(),
            script: String::new(),
            timeout: Duration::from_secs(180),
            script_timeout: None,
            cpus: None,
            memory: "2G".into(),
            kernel_args: Vec::new(),
            show_log: None,
        }
    }

    /// Puts a host binary at `/bin/<guest_name>` with the shared libraries `ldd` lists.
    /// For the `canopy` binary in a root-package test: `env!("CARGO_BIN_EXE_canopy")`.
    pub fn with_binary(mut self, host_path: impl AsRef<Path>, guest_name: &str) -> Scenario {
        self.files.push(GuestFile::Host {
            host_path: host_path.as_ref().to_path_buf(),
            guest_path: format!("/bin/{guest_name}"),
            mode: 0o755,
            with_libraries: true,
        });
        self
    }

    /// Copies a host file to an absolute guest path (no library resolution).
    pub fn with_file(mut self, host_path: impl AsRef<Path>, guest_path: &str) -> Scenario {
        self.files.push(GuestFile::Host {
            host_path: host_path.as_ref().to_path_buf(),
            guest_path: guest_path.into(),
            mode: 0o644,
            with_libraries: false,
        });
        self
    }

    /// Writes `contents` to an absolute guest path with `mode` (e.g. 0o644, 0o755).
    pub fn with_file_contents(
        mut self,
        guest_path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Scenario {
        self.files.push(GuestFile::Contents {
            guest_path: guest_path.into(),
            contents: contents.into(),
            mode,
        });
        self
    }

    /// Adds Debian's `cyclictest`, `hackbench` and/or `stress-ng` (from the host, which
    /// `scripts/install-deps.sh` provisions) at `/usr/bin/<name>`.
    pub fn with_debian_tools(mut self, tools: &[&str]) -> Scenario {
        self.debian_tools
            .extend(tools.iter().map(|tool| tool.to_string()));
        self
    }

    /// The shell script `/init` runs (with `sh -e`) after setup, from `/root`.
    pub fn script(mut self, script: impl Into<String>) -> Scenario {
        self.script = script.into();
        self
    }

    /// Wall-clock limit from qemu's start (time spent waiting for the VM lock is not counted).
    pub fn timeout(mut self, timeout: Duration) -> Scenario {
        self.timeout = timeout;
        self
    }

    /// A second limit counted from the guest's `boot` result, so the boot's own time (2-5 s
    /// quiet, over 15 s on a loaded host) is not part of it; the run ends at whichever limit
    /// comes first, and a `Timeout` error names the one that did.
    pub fn script_timeout(mut self, script_timeout: Duration) -> Scenario {
        self.script_timeout = Some(script_timeout);
        self
    }

    /// vCPUs; overrides `CANOPY_VM_CPUS` and the default of 2.
    pub fn cpus(mut self, cpus: usize) -> Scenario {
        self.cpus = Some(cpus.max(1));
        self
    }

    /// qemu's `-m` value, e.g. `"2G"`.
    pub fn memory(mut self, memory: &str) -> Scenario {
        self.memory = memory.into();
        self
    }

    /// Appends to the kernel command line (after `console=ttyS0 panic=-1 quiet no_timer_check`).
    pub fn kernel_arg(mut self, arg: &str) -> Scenario {
        self.kernel_args.push(arg.into());
        self
    }

    /// Echo the guest console live on stderr; defaults to `CANOPY_VM_SHOW_LOG=1`.
    pub fn show_log(mut self, show: bool) -> Scenario {
        self.show_log = Some(show);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn effective_cpus(&self) -> usize {
        self.cpus
            .or_else(|| {
                std::env::var("CANOPY_VM_CPUS")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(2)
            .max(1)
    }

    fn effective_show_log(&self) -> bool {
        self.show_log.unwrap_or_else(|| {
            matches!(
                std::env::var("CANOPY_VM_SHOW_LOG").as_deref(),
                Ok("1") | Ok("true") | Ok("yes")
            )
        })
    }

    /// Builds what the guest needs (kernel, guest binary, initramfs) into a prepared launch.
    fn prepare(&self, script: &str) -> Result<Prepared> {
        let kernel = kernel()?;
        let guest = guest_binary()?;
        let mut files = vec![GuestFile::Host {
            host_path: guest,
            guest_path: "/bin/canopy-guest".into(),
            mode: 0o755,
            with_libraries: true,
        }];
        files.extend(self.files.iter().cloned());
        for tool in &self.debian_tools {
            files.push(GuestFile::Host {
                host_path: initramfs::find_host_tool(tool)?,
                guest_path: format!("/usr/bin/{tool}"),
                mode: 0o755,
                with_libraries: true,
            });
        }
        let work_dir = target_dir().join("vm-work");
        std::fs::create_dir_all(&work_dir).map_err(io_error(&work_dir))?;
        let log_dir = log_dir();
        std::fs::create_dir_all(&log_dir).map_err(io_error(&log_dir))?;
        let log_path = qemu::new_log_path(&log_dir, &self.name);
        let initramfs_path = work_dir.join(format!(
            "{}.cpio",
            log_path.file_stem().unwrap_or_default().to_string_lossy()
        ));
        let archive = initramfs::build(&files, script)?;
        std::fs::write(&initramfs_path, archive).map_err(io_error(&initramfs_path))?;
        Ok(Prepared {
            kernel,
            initramfs_path,
            log_path,
            work_dir,
        })
    }

    /// Boots the guest, runs the script and collects its results. Fails (never skips) when the
    /// kernel is missing, qemu cannot boot, the guest panics or stops early, the script exits
    /// non-zero, or the timeout passes.
    ///
    /// One failure is not the scenario's: qemu 7.2's multi-threaded TCG can run stale translated
    /// code after the kernel patches its own text (static keys, which sched_ext flips on every
    /// enable and disable), and the guest dies of an `Oops: int3` at a patch site, even in
    /// scenarios that never load BPF and even during boot. Nothing a scenario does can raise
    /// that, so such a run is retried (at most [`EMULATOR_FAULT_RETRIES`] times, said on
    /// stderr with the failed run's log); any other failure is final.
    pub fn run(&self) -> Result<Outcome> {
        let mut attempt = 0;
        loop {
            let prepared = self.prepare(&self.script)?;
            let lock = lock::VmLock::acquire(&paths::vm_lock_path(), &self.name)?;
            let result = self.boot(&prepared);
            drop(lock);
            // The initramfs is only needed while qemu runs.
            let _ = std::fs::remove_file(&prepared.initramfs_path);
            let fault = match &result {
                Err(_) if hit_emulator_text_patching_fault(&prepared.log_path) => {
                    Some("died of qemu TCG's stale-code `Oops: int3`")
                }
                Err(_) if emulator_aborted_on_assertion(&prepared.log_path) => {
                    Some("lost its emulator, which aborted on one of its own assertions")
                }
                Err(Error::BootHung { .. }) => {
                    Some("printed nothing past the firmware before the boot limit")
                }
                _ => None,
            };
            if let Some(fault) = fault.filter(|_| attempt < EMULATOR_FAULT_RETRIES) {
                attempt += 1;
                eprintln!(
                    "canopy-vmtest: `{}`: the guest {fault} (an emulator fault, not the \
                     scenario's; log {}); retry {attempt} of {EMULATOR_FAULT_RETRIES}",
                    self.name,
                    prepared.log_path.display()
                );
                continue;
            }
            return result;
        }
    }

    fn boot(&self, prepared: &Prepared) -> Result<Outcome> {
        let accel = qemu::choose_accel(&prepared.kernel.vmlinuz, &prepared.work_dir);
        let cpus = self.effective_cpus();
        let launch = Launch {
            kernel_image: &prepared.kernel.boot_image,
            initramfs: &prepared.initramfs_path,
            cpus,
            memory: &self.memory,
            accel,
            kernel_args: &self.kernel_args,
            interactive_log: None,
        };
        let log_path = prepared.log_path.clone();
        let echo = self.effective_show_log();
        if echo {
            eprintln!(
                "canopy-vmtest: `{}` on {} ({accel:?}, {cpus} vCPUs), log {}",
                self.name,
                prepared.kernel.release,
                log_path.display()
            );
        }
        let mut qemu = RunningQemu::start(&launch, &log_path, echo)?;
        let deadline = qemu.started + self.timeout;
        let console = read_console(&mut qemu, deadline, self.script_timeout, Some(BOOT_LIMIT));
        let timeout = console.script_limit_hit.unwrap_or(self.timeout);
        let (results, malformed) = judge_console(
            &self.name,
            console,
            &mut qemu,
            timeout,
            &log_path,
            &format!("{accel:?} acceleration"),
        )?;
        let duration = qemu.started.elapsed();
        let kernel_release = kernel_release_of(&results);
        Ok(Outcome {
            scenario: self.name.clone(),
            kernel_release,
            results,
            malformed_results: malformed,
            log_path,
            duration,
            accel,
            cpus,
        })
    }

    /// Boots the guest with the terminal attached and drops into a shell after setup (the
    /// scenario script, if any, runs first). Quit with `poweroff -f` or Ctrl-A X. The console is
    /// still logged. No timeout.
    pub fn run_interactive(&self) -> Result<PathBuf> {
        let script = format!("{}\necho 'canopy-vmtest: interactive shell; poweroff -f (or Ctrl-A X) to quit'\nsetsid cttyhack sh -l || true\n", self.script);
        let prepared = self.prepare(&script)?;
        let _lock = lock::VmLock::acquire(&paths::vm_lock_path(), &self.name)?;
        let accel = qemu::choose_accel(&prepared.kernel.vmlinuz, &prepared.work_dir);
        let launch = Launch {
            kernel_image: &prepared.kernel.boot_image,
            initramfs: &prepared.initramfs_path,
            cpus: self.effective_cpus(),
            memory: &self.memory,
            accel,
            kernel_args: &self.kernel_args,
            interactive_log: Some(&prepared.log_path),
        };
        let mut qemu = launch
            .command()
            .spawn()
            .map_err(spawn_error(launch.describe()))?;
        let _ = qemu.wait();
        let _ = std::fs::remove_file(&prepared.initramfs_path);
        Ok(prepared.log_path)
    }
}

struct Prepared {
    kernel: Kernel,
    initramfs_path: PathBuf,
    log_path: PathBuf,
    work_dir: PathBuf,
}

/// What a successful scenario produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    /// `uname -r` inside the guest, e.g. `7.3.4+deb13-cloud-amd64`.
    pub kernel_release: String,
    /// Every `CANOPY-RESULT` object in console order, including the harness's own `boot`,
    /// `kernel-health` and `script-exit` records.
    pub results: Vec<Value>,
    /// `CANOPY-RESULT` lines that did not parse as a JSON object (e.g. cut by kernel output).
    pub malformed_results: Vec<String>,
    pub log_path: PathBuf,
    /// From qemu's start to its exit.
    pub duration: Duration,
    pub accel: Accel,
    pub cpus: usize,
}

impl Outcome {
    /// The first result whose `"kind"` is `kind`, or an error naming the kinds that exist.
    pub fn result(&self, kind: &str) -> Result<&Value> {
        find_kind(&self.results, kind).ok_or_else(|| Error::MissingResult {
            scenario: self.scenario.clone(),
            kind: kind.into(),
            available: self
                .results
                .iter()
                .filter_map(|value| value["kind"].as_str().map(String::from))
                .collect(),
            malformed: self.malformed_results.clone(),
            log_path: self.log_path.clone(),
        })
    }

    /// Every result of `kind`, in console order.
    pub fn results_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.results
            .iter()
            .filter(move |value| value["kind"] == kind)
    }

    /// Kernel log lines reporting trouble during the scenario (WARN splats, BUGs, Oopses,
    /// lockups, RCU stalls, hung tasks, OOM), from the `kernel-health` record `/init` prints
    /// after the script. The console is `quiet`, so these are not all in the serial log.
    pub fn kernel_warnings(&self) -> Vec<String> {
        self.kernel_health_lines("warnings")
    }

    /// Every kernel log line mentioning sched_ext (schedulers enabled, disabled and why).
    pub fn sched_ext_events(&self) -> Vec<String> {
        self.kernel_health_lines("sched_ext")
    }

    fn kernel_health_lines(&self, key: &str) -> Vec<String> {
        find_kind(&self.results, "kernel-health")
            .and_then(|health| health[key].as_array())
            .map(|lines| {
                lines
                    .iter()
                    .filter_map(|line| line.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `lines` lines of the guest log.
    pub fn log_tail(&self, lines: usize) -> String {
        qemu::log_tail(&self.log_path, lines)
    }

    /// One line for test output: scenario, kernel, accelerator, vCPUs, wall time, log.
    pub fn summary(&self) -> String {
        format!(
            "{}: kernel {}, {:?}, {} vCPUs, {:.1} s, log {}",
            self.scenario,
            self.kernel_release,
            self.accel,
            self.cpus,
            self.duration.as_secs_f64(),
            self.log_path.display()
        )
    }
}

/// What the serial console carried until qemu closed it or the deadline passed.
pub(crate) struct Console {
    results: Vec<Value>,
    malformed: Vec<String>,
    panic_line: Option<String>,
    closed: bool,
    /// The script's own limit, when it was the one that ended the reading.
    script_limit_hit: Option<Duration>,
    /// The limit on reaching the `boot` result, when the guest had not reached it by then.
    boot_limit_hit: Option<Duration>,
}

/// Reads console lines until qemu closes its output or `deadline` passes, keeping the
/// `CANOPY-RESULT` objects and the first kernel panic line. With `script_timeout`, the
/// `boot` result brings the deadline forward to that long after it, if that is sooner. With
/// `boot_limit`, a guest that has not printed its `boot` result that long after qemu started
/// ends the reading then (`boot_limit_hit`).
pub(crate) fn read_console(
    qemu: &mut RunningQemu,
    mut deadline: Instant,
    script_timeout: Option<Duration>,
    boot_limit: Option<Duration>,
) -> Console {
    let mut console = Console {
        results: Vec::new(),
        malformed: Vec::new(),
        panic_line: None,
        closed: false,
        script_limit_hit: None,
        boot_limit_hit: None,
    };
    let mut script_deadline = None;
    let boot_deadline = boot_limit.map(|limit| qemu.started + limit);
    let mut booted = false;
    loop {
        let until = match boot_deadline {
            Some(boot_deadline) if !booted && boot_deadline < deadline => boot_deadline,
            _ => deadline,
        };
        let Some(remaining) = until.checked_duration_since(Instant::now()) else {
            break;
        };
        match qemu.lines.recv_timeout(remaining) {
            Ok(SerialEvent::Line(line)) => {
                if let Some(parsed) = result_in_line(&line) {
                    match parsed {
                        Some(value) => {
                            booted |= value["kind"] == "boot";
                            if let Some(limit) = script_timeout.filter(|_| value["kind"] == "boot")
                            {
                                let script_end = Instant::now() + limit;
                                if script_end < deadline {
                                    deadline = script_end;
                                    script_deadline = Some(limit);
                                }
                            }
                            console.results.push(value);
                        }
                        None => console.malformed.push(line),
                    }
                } else if line.contains("Kernel panic - not syncing")
                    && console.panic_line.is_none()
                {
                    console.panic_line = Some(line);
                }
            }
            Ok(SerialEvent::Closed) => {
                console.closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    if !console.closed {
        if booted {
            console.script_limit_hit = script_deadline;
        } else if boot_deadline.is_some_and(|boot_deadline| Instant::now() >= boot_deadline) {
            console.boot_limit_hit = boot_limit;
        }
    }
    console
}

/// The `CANOPY-RESULT` object a line carries: `None` when the line has none, `Some(None)` when
/// it does not parse as a JSON object. Trailing text is ignored; a line that kernel output cut
/// in two is kept aside by the caller (asking for its kind later names it) rather than failing
/// the run.
pub(crate) fn result_in_line(line: &str) -> Option<Option<Value>> {
    let json = &line[line.find(RESULT_PREFIX)? + RESULT_PREFIX.len()..];
    match serde_json::Deserializer::from_str(json)
        .into_iter::<Value>()
        .next()
    {
        Some(Ok(value)) if value.is_object() => Some(Some(value)),
        _ => Some(None),
    }
}

/// Turns a finished console into the results, or the error that ends the scenario: a boot that
/// hung before its `boot` result ([`Error::BootHung`]) or a timeout (qemu is killed), a kernel
/// panic, a guest that never printed its `boot` result, a script
/// that failed or never finished. `how` describes the boot for the never-booted message.
pub(crate) fn judge_console(
    scenario: &str,
    console: Console,
    qemu: &mut RunningQemu,
    timeout: Duration,
    log_path: &Path,
    how: &str,
) -> Result<(Vec<Value>, Vec<String>)> {
    let guest_error = |reason: String| Error::Guest {
        scenario: scenario.into(),
        reason,
        log_path: log_path.to_path_buf(),
        log_tail: qemu::log_tail(log_path, LOG_TAIL_LINES),
    };
    if !console.closed {
        qemu.kill();
        if let Some(limit) = console.boot_limit_hit {
            return Err(Error::BootHung {
                scenario: scenario.into(),
                limit,
                log_path: log_path.to_path_buf(),
                log_tail: qemu::log_tail(log_path, LOG_TAIL_LINES),
            });
        }
        return Err(Error::Timeout {
            scenario: scenario.into(),
            timeout,
            log_path: log_path.to_path_buf(),
            log_tail: qemu::log_tail(log_path, LOG_TAIL_LINES),
        });
    }
    let exit_status = qemu.wait_exit(Duration::from_secs(5));
    qemu.kill();
    if let Some(line) = console.panic_line {
        return Err(guest_error(format!("kernel panic: {}", line.trim())));
    }
    if find_kind(&console.results, "boot").is_none() {
        let status = exit_status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "no exit status".into());
        return Err(guest_error(format!(
            "the guest never reached its /init setup (qemu {status}, {how})"
        )));
    }
    match find_kind(&console.results, "script-exit").map(|exit| exit["status"].as_i64()) {
        Some(Some(0)) => Ok((console.results, console.malformed)),
        Some(status) => {
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into());
            Err(guest_error(format!(
                "the scenario script exited with status {status}"
            )))
        }
        None => Err(guest_error(
            "the guest stopped before the scenario script finished".into(),
        )),
    }
}

/// The `kernel_release` of the `boot` result (empty when absent).
pub(crate) fn kernel_release_of(results: &[Value]) -> String {
    find_kind(results, "boot")
        .and_then(|boot| boot["kernel_release"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn find_kind<'a>(results: &'a [Value], kind: &str) -> Option<&'a Value> {
    results.iter().find(|value| value["kind"] == kind)
}

/// How long a busybox guest may take from qemu's start to its `boot` result before the boot
/// counts as hung: [`Scenario::run`] then kills qemu and boots again (an emulator fault, from
/// the same retries as the text-patching fault). Boots take 2-5 s on a quiet host and about 15
/// s at host load 40. On 2026-12-05 a clean-clone run's `harness-fail` scenario printed nothing
/// after SeaBIOS's "Booting from ROM.." (the kernel boots `quiet`) until its 180 s timeout, and
/// failed the suite; nothing a scenario does runs before that result.
pub const BOOT_LIMIT: Duration = Duration::from_secs(90);

/// How often [`Scenario::run`] retries a run that died of the emulator's text-patching fault
/// (or hung before its `boot` result, [`BOOT_LIMIT`]).
/// Four: on 2026-12-04, 4 of 15 boots on the busy 2-core dev host died of it, two scenarios
/// twice in a row (`sched-admission` at 1.2 s and 17 s, `sched-many-children` at 132 s and
/// 2.1 s), one retry short of failing with two. At one boot in four, five tries all fail about
/// once in a thousand scenarios; three did in one in sixty, most suites at about fifty VM runs.
pub const EMULATOR_FAULT_RETRIES: u32 = 4;

/// Whether a guest log shows qemu TCG's stale-code fault: an `Oops: int3` (a breakpoint trap no
/// kernel code path raises on purpose; the kernel's text patching leaves one in place for a
/// moment, and MTTCG can keep executing it after the patch completed).
pub(crate) fn hit_emulator_text_patching_fault(log_path: &Path) -> bool {
    std::fs::read(log_path)
        .map(|log| log.windows(11).any(|window| window == b"Oops: int3:"))
        .unwrap_or(false)
}

/// Whether qemu itself aborted on one of its internal assertions (its stderr, which the log
/// keeps as `qemu: ` lines, says `Assertion `...' failed`), e.g. qemu 10's MTTCG race
/// `system/physmem.c:2678: iotlb_to_section: Assertion `section_index < d->map.sections_nb'
/// failed.`, seen once in 301 boots here on 2026-12-07 while the firmware was still loading the
/// kernel. A guest cannot make the emulator assert on purpose, so the run says nothing about
/// the scenario.
pub(crate) fn emulator_aborted_on_assertion(log_path: &Path) -> bool {
    std::fs::read(log_path)
        .map(|log| {
            String::from_utf8_lossy(&log).lines().any(|line| {
                line.starts_with("qemu: ")
                    && line.contains("Assertion `")
                    && line.ends_with("failed.")
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod emulator_fault_tests {
    use super::{emulator_aborted_on_assertion, hit_emulator_text_patching_fault};
    use std::path::PathBuf;

    /// A fresh directory under the temporary one holding each (file name, text) as a log.
    fn write_logs(name: &str, logs: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("canopy-vmtest-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in logs {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }

    #[test]
    fn only_qemus_own_assertion_counts_as_an_emulator_abort() {
        let dir = write_logs(
            "abort",
            &[
                (
                    "aborted.log",
                    "SeaBIOS (version 1.16.3)\nqemu: qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion `section_index < d->map.sections_nb' failed.\nBooting from ROM..\n",
                ),
                // the guest printing the same words is the guest's business, not qemu's
                ("guest.log", "prog: x.c:1: main: Assertion `0' failed.\n"),
            ],
        );
        assert!(emulator_aborted_on_assertion(&dir.join("aborted.log")));
        assert!(!emulator_aborted_on_assertion(&dir.join("guest.log")));
        assert!(!emulator_aborted_on_assertion(&dir.join("missing.log")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_an_int3_oops_counts_as_the_emulator_fault() {
        let dir = write_logs(
            "fault",
            &[
                (
                    "int3.log",
                    "[    0.940291] Oops: int3: 0000 [#1] SMP NOPTI\n[    0.94] Kernel panic - not syncing: Fatal exception in interrupt\n",
                ),
                (
                    "other.log",
                    "[    3.1] Oops: invalid opcode: 0000 [#1] SMP NOPTI\n[    3.2] Kernel panic - not syncing: Fatal exception\n",
                ),
            ],
        );
        assert!(hit_emulator_text_patching_fault(&dir.join("int3.log")));
        assert!(!hit_emulator_text_patching_fault(&dir.join("other.log")));
        assert!(!hit_emulator_text_patching_fault(&dir.join("missing.log")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod boot_limit_tests {
    use super::{judge_console, read_console, Error, RunningQemu};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Runs `script` as a stand-in for qemu (its stdout is the serial console) and judges what
    /// it printed with a 300 ms boot limit and a 1 s deadline.
    fn judge_stand_in(name: &str, script: &str) -> Error {
        let log_path = std::env::temp_dir().join(format!(
            "canopy-vmtest-boot-limit-{name}-{}.log",
            std::process::id()
        ));
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut stand_in = RunningQemu::spawn(command, false, &log_path, false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let console = read_console(
            &mut stand_in,
            deadline,
            None,
            Some(Duration::from_millis(300)),
        );
        let error = judge_console(
            name,
            console,
            &mut stand_in,
            Duration::from_secs(1),
            &log_path,
            "a stand-in",
        )
        .expect_err("the stand-in never finishes");
        let _ = std::fs::remove_file(&log_path);
        error
    }

    #[test]
    fn a_guest_silent_past_the_firmware_is_a_hung_boot_and_a_booted_one_a_timeout() {
        let hung = judge_stand_in(
            "hung",
            "echo 'SeaBIOS (version 1.16.3)'; echo 'Booting from ROM..'; exec sleep 30",
        );
        assert!(
            matches!(&hung, Error::BootHung { limit, log_tail, .. }
                if *limit == Duration::from_millis(300) && log_tail.contains("Booting from ROM")),
            "{hung}"
        );
        let booted = judge_stand_in(
            "booted",
            "echo 'CANOPY-RESULT {\"kind\":\"boot\",\"cpus_online\":2}'; exec sleep 30",
        );
        assert!(
            matches!(&booted, Error::Timeout { timeout, .. } if *timeout == Duration::from_secs(1)),
            "{booted}"
        );
    }
}

#[cfg(test)]
mod result_line_tests {
    use super::result_in_line;

    #[test]
    fn a_result_line_parses_and_a_cut_one_is_kept_aside() {
        let value =
            result_in_line("[   25.7] unit[249]: CANOPY-RESULT {\"kind\":\"boot\",\"n\":1} tail")
                .expect("a result line")
                .expect("an object");
        assert_eq!(value["kind"], "boot");
        assert_eq!(value["n"], 1);
        assert_eq!(result_in_line("CANOPY-RESULT {\"kind\":\"bo"), Some(None));
        assert_eq!(result_in_line("CANOPY-RESULT [1]"), Some(None));
        assert_eq!(result_in_line("Debian GNU/Linux 13"), None);
    }
}
