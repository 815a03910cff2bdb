// SPDX-License-Identifier: GPL-2.0-only
//! The test kernel: resolved once per process by running `scripts/fetch-kernel.sh`, which
//! downloads, checks and caches Debian's sched_ext kernel (or reuses the cached one).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::paths::repo_root;

/// A checked kernel directory (`vmlinuz config vmlinux version`).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// The package's release string, e.g. `7.3.4+deb13-cloud-amd64`.
    pub release: String,
}

/// Runs `scripts/fetch-kernel.sh` the first time and remembers its answer (or its error).
pub fn kernel() -> Result<Kernel> {
    static KERNEL: OnceLock<std::result::Result<Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(fetch)
        .clone()
        .map_err(|message| Error::Kernel { message })
}

fn fetch() -> std::result::Result<Kernel, String> {
    let script = repo_root().join("scripts/fetch-kernel.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|err| format!("could not run {}: {err}", script.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|line| !line.trim().is_empty());
        return Err(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            last.unwrap_or("no message")
        ));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return Err(format!(
            "{} printed {}, which has no vmlinuz",
            script.display(),
            dir.display()
        ));
    }
    let release = std::fs::read_to_string(dir.join("version"))
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| {
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
    Ok(Kernel {
        dir,
        vmlinuz,
        release,
    })
}
