//! The process's own resources: the open-file limit a scheduler loader needs raised, and the
//! CPU time it has used ([`own_cpu_times`], for the load measurement of `CANOPY_VERIFIER_STATS`).
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

/// This process's user and system CPU time so far (getrusage, RUSAGE_SELF).
pub fn own_cpu_times() -> (std::time::Duration, std::time::Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given (zeroed already); RUSAGE_SELF with a valid
    // pointer cannot fail.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        std::time::Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + std::time::Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_times_grow_while_this_process_computes() {
        let (user_before, system_before) = own_cpu_times();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let (user_after, system_after) = own_cpu_times();
        assert!(user_after + system_after > user_before + system_before);
        assert!(user_after >= user_before && system_after >= system_before);
    }
}
