// SPDX-License-Identifier: GPL-2.0-only
//! The test kernel: resolved once per process by running `scripts/fetch-kernel.sh`, which
//! downloads, checks and caches Debian's sched_ext kernel (or reuses the cached one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::paths::repo_root;

/// A checked kernel directory (`vmlinuz config vmlinux version`).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    /// What qemu's `-kernel` boots: `vmlinux` when the kernel was built with `CONFIG_PVH=y`
    /// (Debian's is), else `vmlinuz`. qemu enters an ELF vmlinux at its PVH entry point, which
    /// skips SeaBIOS's real-mode setup and the decompression of the zstd payload, both slow
    /// under TCG: the guest reached `/init` 0.5-0.8 s sooner per boot (3 boots each way,
    /// 2026-12-05), about 30 s over the suite's boots.
    pub boot_image: PathBuf,
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
    let boot_image = boot_image(&dir).unwrap_or_else(|| vmlinuz.clone());
    Ok(Kernel {
        dir,
        vmlinuz,
        boot_image,
        release,
    })
}

/// `dir/vmlinux` when it exists and `dir/config` says the kernel has a PVH entry point.
fn boot_image(dir: &Path) -> Option<PathBuf> {
    let vmlinux = dir.join("vmlinux");
    let config = std::fs::read_to_string(dir.join("config")).ok()?;
    (vmlinux.is_file() && config.lines().any(|line| line.trim() == "CONFIG_PVH=y"))
        .then_some(vmlinux)
}
