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

/// Appends one tab-separated row, led by the Unix time, to `<target>/vm-logs/<file>`: the
/// harness's timing logs (`timings.tsv`, the VM's hold per scenario, and `steps.tsv`, the systemd
/// guest's steps), which tests/run-all.sh prints at the end of a run. Best effort: a missing log
/// directory must not fail a scenario that passed.
pub fn append_log_row(file: &str, fields: &[&str]) {
    use std::io::Write as _;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut line = since_epoch.to_string();
    for field in fields {
        line.push('\t');
        line.push_str(field);
    }
    line.push('\n');
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir().join(file))
        .and_then(|mut log| log.write_all(line.as_bytes()));
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
