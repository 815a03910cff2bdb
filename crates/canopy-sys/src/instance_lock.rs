//! One daemon at a time: an exclusive, non-blocking `flock(2)` on a lock file in the run
//! directory, held for the daemon's life. The kernel drops the lock when the holder exits, however
//! it exits (SIGKILL included), so a stale file never blocks a restart; the file is never
//! unlinked (unlinking a lock file lets a third process lock a fresh inode beside a live holder).
//! The holder writes its pid into the file so a refused second instance can name it.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceLockError {
    /// Another process holds it.
    #[error("another daemon holds the instance lock {path}{}", holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid the holder wrote into it, when readable.
        holder: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A held instance lock; dropping it releases the lock (the file stays).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Creates `path` if needed (mode 0600, never through a symlink) and locks it exclusively
    /// without waiting. [`InstanceLockError::Held`] when another process has it.
    pub fn acquire(path: &Path) -> Result<InstanceLock, InstanceLockError> {
        let io_error = |source| InstanceLockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_error)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_error(error));
            }
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(InstanceLockError::Held {
                path: path.to_path_buf(),
                holder,
            });
        }
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(InstanceLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Closing the fd releases the lock too; say so explicitly for readers of strace.
        // SAFETY: flock on an fd we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canopy.lock");
        let first = InstanceLock::acquire(&path).unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process.
        match InstanceLock::acquire(&path) {
            Err(InstanceLockError::Held { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            other => panic!("second lock not refused: {other:?}"),
        }
        drop(first);
        let again = InstanceLock::acquire(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("canopy.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            InstanceLock::acquire(&link),
            Err(InstanceLockError::Io { .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
