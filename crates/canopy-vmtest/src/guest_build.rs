// SPDX-License-Identifier: GPL-2.0-only
//! Builds `canopy-guest` (the guest-side runner and workloads) once per process with
//! `scripts/build-guest.sh`: a nested `cargo build --release` in its own target directory
//! (`target/guest`), so it never waits on the build lock of the `cargo test` that is running us.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::paths::{repo_root, target_dir};

/// Path of a freshly built, stripped `canopy-guest` binary.
pub fn guest_binary() -> Result<PathBuf> {
    static GUEST: OnceLock<std::result::Result<PathBuf, (String, String)>> = OnceLock::new();
    GUEST
        .get_or_init(build)
        .clone()
        .map_err(|(command, stderr)| Error::GuestBuild { command, stderr })
}

fn build() -> std::result::Result<PathBuf, (String, String)> {
    // `scripts/build-guest.sh` is the one definition of this build (tests/run-all.sh starts it
    // early, beside the workspace's compile); it runs `$CARGO`, which cargo sets for the
    // processes it runs (tests, `cargo run`), so the same toolchain builds the guest.
    let guest_target = target_dir().join("guest");
    let script = repo_root().join("scripts/build-guest.sh");
    let command_text = format!("bash {} {}", script.display(), guest_target.display());
    let output = Command::new("bash")
        .arg(&script)
        .arg(&guest_target)
        .current_dir(repo_root())
        .output()
        .map_err(|err| (command_text.clone(), err.to_string()))?;
    if !output.status.success() {
        return Err((
            command_text,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(guest_target.join("release/canopy-guest"))
}
