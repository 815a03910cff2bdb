//! The process's own resource limits: the open-file limit a scheduler loader needs raised.
//!
//! Every loaded BPF scheduler holds about 33 descriptors while it is attached (its programs,
//! maps, BTF and links: 31 canopy children and the root filled the soft limit of 1,024 that a
//! shell or systemd gives by default, and the 32nd child's load failed with `EMFILE`). The
//! kernel's default hard limit is 4,096 and systemd's 524,288; the daemon's unit sets
//! `LimitNOFILE=8192`. [`raise_open_file_limit`] lifts the soft limit to the hard one, as
//! systemd advises programs that need more than 1,024 descriptors to do themselves (the low
//! soft limit only protects `select()` users, and canopy has none).

/// The open-file limit before and after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising it failed).
    pub after: u64,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// getrlimit or setrlimit failed.
    #[error("{call}(RLIMIT_NOFILE, soft {soft}): {source}")]
    Syscall {
        /// Which call.
        call: &'static str,
        /// The soft limit asked for (or read).
        soft: u64,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit.
pub fn raise_open_file_limit() -> Result<OpenFileLimit, LimitError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(LimitError::Syscall {
            call: "getrlimit",
            soft: 0,
            source: std::io::Error::last_os_error(),
        });
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(OpenFileLimit {
            before,
            after: before,
        });
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(LimitError::Syscall {
            call: "setrlimit",
            soft: limit.rlim_cur,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(OpenFileLimit {
        before,
        after: limit.rlim_cur,
    })
}
