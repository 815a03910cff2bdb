// SPDX-License-Identifier: GPL-2.0-only
//! One VM at a time: an exclusive `flock` held for the whole life of a guest. Test threads of
//! one `cargo test` and other work trees' tests queue on it instead of halving each other's
//! CPU (a 2-vCPU TCG guest saturates both host cores). When a guest lets the lock go, one line
//! says how long it held it and how long it waited: on stderr (`--nocapture` shows it) and
//! appended to `<target>/vm-logs/timings.tsv` (Unix time, scenario, seconds held, seconds
//! waited), which is where the suite's VM time is read from.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{io_error, Result};

/// Held while a guest runs; the kernel drops the lock when this closes (or the process dies).
pub struct VmLock {
    _file: File,
    scenario: String,
    acquired: Instant,
    waited: Duration,
}

impl VmLock {
    pub fn acquire(path: &Path, scenario: &str) -> Result<VmLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        // Read-only is enough for flock, so a lock file another user created still works.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o666)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
            .map_err(io_error(path))?;
        let asked = Instant::now();
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let _ = writeln!(
                std::io::stderr(),
                "canopy-vmtest: `{scenario}` waits for another VM to finish ({})",
                path.display()
            );
            loop {
                // SAFETY: as above; blocking this time.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(io_error(path)(err));
                }
            }
        }
        Ok(VmLock {
            _file: file,
            scenario: scenario.to_string(),
            acquired: Instant::now(),
            waited: asked.elapsed(),
        })
    }
}

impl Drop for VmLock {
    fn drop(&mut self) {
        let held = self.acquired.elapsed().as_secs_f64();
        let waited = self.waited.as_secs_f64();
        eprintln!(
            "canopy-vmtest: `{}` held the VM for {held:.1} s (waited {waited:.1} s for it)",
            self.scenario
        );
        crate::paths::append_log_row(
            "timings.tsv",
            &[
                &self.scenario,
                &format!("{held:.1}"),
                &format!("{waited:.1}"),
            ],
        );
    }
}
