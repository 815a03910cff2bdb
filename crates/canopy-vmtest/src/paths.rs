// SPDX-License-Identifier: GPL-2.0-only
//! Where the harness finds the repository and keeps its outputs (guest build, logs, lock).

use std::path::PathBuf;

/// The workspace root: this crate lives at `crates/canopy-vmtest`.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|crates| crates.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` when set, else `<repo>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// Guest serial logs: `target/vm-logs/<scenario>-<timestamp>.log`.
pub fn log_dir() -> PathBuf {
    target_dir().join("vm-logs")
}

/// The lock that keeps one VM running at a time. Machine-wide by default, because a 2-vCPU
/// TCG guest saturates both host cores whichever work tree started it; `CANOPY_VM_LOCK`
/// overrides it (e.g. `target/vm.lock` to serialize only this tree's tests).
pub fn vm_lock_path() -> PathBuf {
    match std::env::var_os("CANOPY_VM_LOCK") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => std::env::temp_dir().join("canopy-vm.lock"),
    }
}
