// SPDX-License-Identifier: GPL-2.0-only
//! The systemd guest's disk image: built once by `scripts/build-systemd-guest.sh` (mmdebstrap
//! of Debian 13, the test kernel's modules, an SSH key) and cached; once per test process.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{spawn_error, Error, Result};
use crate::kernel::{kernel, Kernel};
use crate::paths::repo_root;

/// The cached disk image and the key that logs into it as root.
#[derive(Debug, Clone)]
pub struct SystemdImage {
    /// `~/.cache/canopy/systemd-guest/<key>/`.
    pub dir: PathBuf,
    /// The ext4 root file system (opened read-only by every boot: `snapshot=on`).
    pub rootfs: PathBuf,
    /// The private SSH key for `root@` the guest.
    pub ssh_key: PathBuf,
    /// Seconds the first build of this image took.
    pub build_seconds: Option<u64>,
    pub kernel: Kernel,
}

/// Builds the image on first use (about 2 minutes, network needed), else returns the cached
/// one; once per process.
pub fn systemd_image() -> Result<SystemdImage> {
    static IMAGE: OnceLock<std::result::Result<SystemdImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image().map_err(|err| err.to_string()))
        .clone()
        .map_err(|message| Error::SystemdImage { message })
}

fn build_image() -> Result<SystemdImage> {
    let kernel = kernel()?;
    let script = repo_root().join("scripts/build-systemd-guest.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(&kernel.dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(spawn_error(format!("bash {}", script.display())))?;
    if !output.status.success() {
        return Err(Error::SystemdImage {
            message: format!(
                "{} exited with {} (its messages are above)",
                script.display(),
                output.status
            ),
        });
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let build_seconds = std::fs::read_to_string(dir.join("build-seconds"))
        .ok()
        .and_then(|text| text.trim().parse().ok());
    Ok(SystemdImage {
        rootfs: dir.join("rootfs.img"),
        ssh_key: dir.join("id_ed25519"),
        build_seconds,
        dir,
        kernel,
    })
}
