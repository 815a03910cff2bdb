// SPDX-License-Identifier: GPL-2.0-only
//! The harness's one error type. Every variant carries what a developer needs to act on it:
//! the command or path that failed and, for guest failures, the log path and its tail.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("test kernel unavailable: {message} (run `scripts/fetch-kernel.sh` by hand to see why; set CANOPY_KERNEL_VERSION to pin a cached kernel)")]
    Kernel { message: String },

    #[error("systemd guest image unavailable: {message} (run `scripts/build-systemd-guest.sh \"$(scripts/fetch-kernel.sh)\"` by hand to see why)")]
    SystemdImage { message: String },

    #[error("building the guest binary with `{command}` failed:\n{stderr}")]
    GuestBuild { command: String, stderr: String },

    #[error("building the Debian package with `{command}` failed:\n{stderr}")]
    Package { command: String, stderr: String },

    #[error("guest file {host_path}: {message}")]
    GuestFile { host_path: PathBuf, message: String },

    #[error("`{tool}` is not installed on the host; run scripts/install-deps.sh")]
    MissingTool { tool: String },

    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("scenario `{scenario}` timed out after {timeout:?}; guest log {log_path}, last lines:\n{log_tail}")]
    Timeout {
        scenario: String,
        timeout: Duration,
        log_path: PathBuf,
        log_tail: String,
    },

    #[error("scenario `{scenario}`: the guest printed no `boot` result within {limit:?} of qemu's start (a hung boot; see BOOT_LIMIT); guest log {log_path}, last lines:\n{log_tail}")]
    BootHung {
        scenario: String,
        limit: Duration,
        log_path: PathBuf,
        log_tail: String,
    },

    #[error(
        "scenario `{scenario}` failed: {reason}; guest log {log_path}, last lines:\n{log_tail}"
    )]
    Guest {
        scenario: String,
        reason: String,
        log_path: PathBuf,
        log_tail: String,
    },

    #[error("scenario `{scenario}`: no result of kind `{kind}` among {available:?} (unparsable result lines: {malformed:?}); guest log {log_path}")]
    MissingResult {
        scenario: String,
        kind: String,
        available: Vec<String>,
        malformed: Vec<String>,
        log_path: PathBuf,
    },

    #[error("result lacks a valid `{what}`: {result}")]
    BadResult { what: String, result: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Error::Spawn, or Error::MissingTool when the program does not exist.
pub(crate) fn spawn_error(command: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            let tool = command
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            Error::MissingTool { tool }
        } else {
            Error::Spawn { command, source }
        }
    }
}
