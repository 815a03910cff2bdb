// SPDX-License-Identifier: GPL-2.0-only
//! The Debian package under test: built once per process with the README's command
//! (`scripts/build-deb.sh`, cargo-deb) in its own target directory (`target/deb`), so it never
//! waits on the build lock of the `cargo test` that is running us.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::paths::{repo_root, target_dir};

/// Path of `canopy_<version>-1_amd64.deb`, built on first use.
pub fn debian_package() -> Result<PathBuf> {
    static PACKAGE: OnceLock<std::result::Result<PathBuf, (String, String)>> = OnceLock::new();
    PACKAGE
        .get_or_init(build)
        .clone()
        .map_err(|(command, stderr)| Error::Package { command, stderr })
}

fn build() -> std::result::Result<PathBuf, (String, String)> {
    let script = repo_root().join("scripts/build-deb.sh");
    let command_text = format!("CARGO_TARGET_DIR=target/deb bash {}", script.display());
    let output = Command::new("bash")
        .arg(&script)
        .env("CARGO_TARGET_DIR", target_dir().join("deb"))
        .stdin(Stdio::null())
        .output()
        .map_err(|err| (command_text.clone(), err.to_string()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !path.is_file() {
        return Err((
            command_text,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(path)
}
