// SPDX-License-Identifier: GPL-2.0-only
//! Builds `canopy-guest` (the guest-side runner and workloads) once per process with a nested
//! `cargo build` in its own target directory (`target/guest`), so it never waits on the build
//! lock of the `cargo test` that is running us.

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
    // `CARGO` is set by cargo for the processes it runs (tests, `cargo run`).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let guest_target = target_dir().join("guest");
    let args = [
        "build",
        "--release",
        "--locked",
        "--package",
        "canopy-guest",
        "--bin",
        "canopy-guest",
        "--target-dir",
    ];
    let command_text = format!(
        "{} {} {}",
        PathBuf::from(&cargo).display(),
        args.join(" "),
        guest_target.display()
    );
    let output = Command::new(&cargo)
        .args(args)
        .arg(&guest_target)
        .current_dir(repo_root())
        // Small, fast-to-pack binary: the initramfs is rebuilt for every scenario.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
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
