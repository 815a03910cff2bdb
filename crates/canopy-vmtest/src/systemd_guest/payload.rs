// SPDX-License-Identifier: GPL-2.0-only
//! A boot's payload: the files and the scenario script the guest copies in from its second
//! disk, and the entry point (`run`) the image's `canopy-scenario.service` starts.

use std::path::{Path, PathBuf};

use crate::error::{io_error, Error, Result};

/// A file for the guest's root file system, copied in before the scenario runs.
#[derive(Debug, Clone)]
pub(super) enum PayloadFile {
    Host {
        host_path: PathBuf,
        guest_path: String,
        mode: u32,
    },
    Contents {
        guest_path: String,
        contents: Vec<u8>,
        mode: u32,
    },
}

/// Lays out the payload: `root/<guest path>` for each file, `scenario.sh`.
pub(super) fn write_payload(
    staging: &Path,
    files: &[PayloadFile],
    script: Option<&str>,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    let root = staging.join("root");
    std::fs::create_dir_all(&root).map_err(io_error(&root))?;
    for file in files {
        let (guest_path, contents, mode) = match file {
            PayloadFile::Host {
                host_path,
                guest_path,
                mode,
            } => (
                guest_path,
                std::fs::read(host_path).map_err(io_error(host_path))?,
                *mode,
            ),
            PayloadFile::Contents {
                guest_path,
                contents,
                mode,
            } => (guest_path, contents.clone(), *mode),
        };
        let relative = guest_path.trim_start_matches('/');
        if relative.is_empty() || relative.split('/').any(|part| part == "..") {
            return Err(Error::GuestFile {
                host_path: PathBuf::from(guest_path),
                message: "a guest path must be absolute and stay inside /".into(),
            });
        }
        let target = root.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        std::fs::write(&target, contents).map_err(io_error(&target))?;
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(io_error(&target))?;
    }
    // Directories as the guest expects them (`cp -a` copies their modes onto existing ones).
    for entry in walk_dirs(&root) {
        let _ =
            std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    }
    if let Some(script) = script {
        let path = staging.join("scenario.sh");
        std::fs::write(&path, script).map_err(io_error(&path))?;
    }
    let run = staging.join("run");
    std::fs::write(&run, PAYLOAD_RUN).map_err(io_error(&run))?;
    Ok(())
}

/// The payload's entry point, run by the image's `canopy-scenario.service` (output to the
/// console through journald): copies `root/` into `/`, prints the `boot` result once
/// `systemctl is-system-running --wait` returns, and, when there is a `scenario.sh`, runs it,
/// prints `kernel-health` and `script-exit` and powers off. Without one (an SSH boot) the
/// guest stays up.
const PAYLOAD_RUN: &str = r#"set -u
payload=/run/canopy-payload
cp -a "$payload/root/." /
state=$(systemctl is-system-running --wait 2>/dev/null)
echo "CANOPY-RESULT {\"kind\":\"boot\",\"kernel_release\":\"$(uname -r)\",\"system_state\":\"$state\",\"pid1\":\"$(cat /proc/1/comm)\",\"uptime_s\":$(cut -d' ' -f1 /proc/uptime)}"
[[ -f $payload/scenario.sh ]] || exit 0
cd /root
bash -e "$payload/scenario.sh"
status=$?
canopy-guest kernel-health
echo "CANOPY-RESULT {\"kind\":\"script-exit\",\"status\":$status}"
systemctl poweroff
"#;

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut index = 0;
    while index < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[index]) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
        index += 1;
    }
    dirs
}
