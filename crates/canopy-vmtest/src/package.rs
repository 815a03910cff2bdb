// SPDX-License-Identifier: GPL-2.0-only
//! The Debian package under test: built with the README's command (`scripts/build-deb.sh`,
//! cargo-deb, same metadata and layout) from the binary the running `cargo test` built
//! (`--from-test-build`: no second, cold release build in CI), once per process and Debian
//! revision (an upgrade scenario installs revision 1, then revision 2 of the same build).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::paths::{repo_root, target_dir};

/// A build's package path, or the command that failed and its output.
type BuildResult = std::result::Result<PathBuf, (String, String)>;

/// Path of `canopy_<version>-<revision>_amd64.deb`, built on first use.
pub fn debian_package(revision: u32) -> Result<PathBuf> {
    static PACKAGES: Mutex<BTreeMap<u32, BuildResult>> = Mutex::new(BTreeMap::new());
    let mut packages = PACKAGES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    packages
        .entry(revision)
        .or_insert_with(|| build(revision))
        .clone()
        .map_err(|(command, stderr)| Error::Package { command, stderr })
}

fn build(revision: u32) -> BuildResult {
    let script = repo_root().join("scripts/build-deb.sh");
    let command_text = format!(
        "bash {} --from-test-build --deb-revision {revision} (CARGO_TARGET_DIR={})",
        script.display(),
        target_dir().display()
    );
    let output = Command::new("bash")
        .arg(&script)
        .args(["--from-test-build", "--deb-revision", &revision.to_string()])
        .env("CARGO_TARGET_DIR", target_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|err| (command_text.clone(), err.to_string()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !path.is_file() {
        return Err((
            command_text,
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ));
    }
    // cargo-deb clears its output directory, so the next revision's build would delete this one.
    let kept_dir = target_dir().join("vm-work/packages");
    std::fs::create_dir_all(&kept_dir).map_err(|err| (command_text.clone(), err.to_string()))?;
    let kept = kept_dir.join(path.file_name().unwrap_or_default());
    std::fs::copy(&path, &kept).map_err(|err| (command_text, err.to_string()))?;
    Ok(kept)
}
