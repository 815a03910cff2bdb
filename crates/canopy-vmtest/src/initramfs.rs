// SPDX-License-Identifier: GPL-2.0-only
//! What goes into a scenario's initramfs: busybox and its applet links, the binaries under test
//! in /bin, Debian tools in /usr/bin, every shared library `ldd` names (at the same path as on
//! the host) plus the dynamic loader, extra files, `/scenario.sh` and the `/init` that runs it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::{io_error, Error, Result};

/// The guest's `/init`: set up the mounts (the guest binary also prints the `boot` result),
/// run the scenario under `sh -e`, report kernel warnings (`kernel-health`) and the script's
/// exit status, power off.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# canopy VM harness /init: mounts, runs /scenario.sh, reports its exit status, powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=${TERM:-linux}
if ! /bin/canopy-guest setup; then
    echo "canopy-init: canopy-guest setup failed"
    poweroff -f
fi
cd /root
/bin/sh -e /scenario.sh
status=$?
/bin/canopy-guest kernel-health
/bin/canopy-guest report script-exit status=$status
sync
poweroff -f
"#;

/// A file placed in the guest.
#[derive(Debug, Clone)]
pub enum GuestFile {
    /// Copied from the host; `with_libraries` also pulls in what `ldd` says it needs.
    Host {
        host_path: PathBuf,
        guest_path: String,
        mode: u32,
        with_libraries: bool,
    },
    Contents {
        guest_path: String,
        contents: Vec<u8>,
        mode: u32,
    },
}

/// Builds the archive. Files listed first win over later ones at the same path (busybox's
/// applet links come last so `/bin/canopy` etc. are never shadowed).
pub fn build(files: &[GuestFile], scenario_script: &str) -> Result<Vec<u8>> {
    let mut archive = CpioWriter::new();
    for dir in [
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
        "/lib",
        "/lib64",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/etc",
        "/mnt",
        "/var/tmp",
    ] {
        archive.dir(dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    archive.char_device("/dev/console", 0o600, 5, 1);
    archive.char_device("/dev/null", 0o666, 1, 3);
    archive.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    archive.file("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    archive.file("/etc/hostname", 0o644, b"canopy-vm\n");
    archive.file("/init", 0o755, INIT_SCRIPT.as_bytes());
    archive.file("/scenario.sh", 0o755, scenario_script.as_bytes());

    let mut libraries = BTreeSet::new();
    for file in files {
        match file {
            GuestFile::Host {
                host_path,
                guest_path,
                mode,
                with_libraries,
            } => {
                let contents = if *with_libraries {
                    read_without_debug_info(host_path)?
                } else {
                    std::fs::read(host_path).map_err(io_error(host_path))?
                };
                archive.file(guest_path, *mode, &contents);
                if *with_libraries {
                    libraries.extend(shared_libraries(host_path)?);
                }
            }
            GuestFile::Contents {
                guest_path,
                contents,
                mode,
            } => {
                archive.file(guest_path, *mode, contents);
            }
        }
    }
    for library in &libraries {
        // Same path as on the host, so the loader and RPATHs find them; the bytes come from
        // the resolved file (Debian's /lib and /lib64 are symlinks into /usr).
        let contents = std::fs::read(library).map_err(io_error(library))?;
        archive.file(&library.to_string_lossy(), 0o755, &contents);
    }

    let busybox = find_host_tool("busybox")?;
    let contents = std::fs::read(&busybox).map_err(io_error(&busybox))?;
    archive.file("/bin/busybox", 0o755, &contents);
    for applet in busybox_applets(&busybox)? {
        if !archive.contains(&applet) {
            archive.symlink(&applet, "/bin/busybox");
        }
    }
    Ok(archive.finish())
}

/// A binary's bytes without DWARF (`strip --strip-debug`; symbols stay for backtraces): a
/// debug build of `canopy` shrinks from ~105 MB to ~25 MB (2026-12-05), which the TCG guest
/// then need not copy into its tmpfs. Falls back to the file as it is when `strip` is missing or fails.
fn read_without_debug_info(host_path: &Path) -> Result<Vec<u8>> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let stripped = std::env::temp_dir().join(format!(
        "canopy-vmtest-strip-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(host_path)
        .stderr(std::process::Stdio::null())
        .status();
    let contents = match status {
        Ok(status) if status.success() => std::fs::read(&stripped).ok(),
        _ => None,
    };
    let _ = std::fs::remove_file(&stripped);
    match contents {
        Some(contents) => Ok(contents),
        None => std::fs::read(host_path).map_err(io_error(host_path)),
    }
}

/// Finds a host program in PATH or the usual Debian directories.
pub fn find_host_tool(name: &str) -> Result<PathBuf> {
    let path_var = std::env::var("PATH").unwrap_or_default();
    let candidates = path_var
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"])
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::MissingTool { tool: name.into() })
}

/// The libraries (and the loader) a dynamic binary needs, per `ldd`. Static binaries need none.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| Error::Spawn {
            command: format!("ldd {}", binary.display()),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
            || stdout.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        return Err(Error::GuestFile {
            host_path: binary.to_path_buf(),
            message: format!("ldd failed: {}", stderr.trim()),
        });
    }
    let mut libraries = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(Error::GuestFile {
                host_path: binary.to_path_buf(),
                message: format!("ldd: {line}"),
            });
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| Error::Spawn {
            command: format!("{} --list-full", busybox.display()),
            source,
        })?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("/{}", line.trim()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_of_a_dynamic_binary_includes_libc_and_the_loader() {
        let libraries = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libraries
                .iter()
                .any(|lib| lib.to_string_lossy().contains("libc.so")),
            "{libraries:?}"
        );
        assert!(
            libraries
                .iter()
                .any(|lib| lib.to_string_lossy().contains("ld-linux")),
            "{libraries:?}"
        );
    }
}
