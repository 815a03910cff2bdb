//! Resolving a path that somebody else chose (a control request's cgroup, a crash record's
//! cgroup key) strictly beneath a root directory the daemon trusts (the cgroup2 mount).
//!
//! The length limits come first (PATH_MAX for the whole path, NAME_MAX per component), before
//! any allocation that grows with the input or any system call; then the kernel resolves the
//! path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` from a
//! descriptor of the root, so neither `..` nor an absolute path nor a symlink anywhere on the way
//! can leave the root, whatever the string looks like. What comes back is the directory's owner
//! (for "a non-root caller may only name its own cgroups").
//!
//! Where `openat2` answers `ENOSYS` (kernels before 5.6, which the fallback mode supports, or a
//! seccomp filter that does not know it) the same rules are kept by walking the path one
//! component at a time with `openat(O_NOFOLLOW)`: `..`, an absolute path and any symlink are
//! refused before they are followed.
//!
//! Example: with root `/sys/fs/cgroup`, `user.slice/user-1000.slice` resolves (owner 0);
//! `user.slice/../../etc` is refused by the kernel (`EXDEV`), a 5,000-byte path is refused before
//! any system call, and a directory that does not exist is [`BeneathError::Missing`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Longest path accepted, in bytes, root included (the kernel's PATH_MAX, NUL included).
pub const PATH_MAX_BYTES: usize = libc::PATH_MAX as usize - 1;

/// Longest path component accepted, in bytes (the kernel's NAME_MAX).
pub const NAME_MAX_BYTES: usize = 255;

/// Why a path was not resolved beneath the root. Every variant carries the offending path
/// (cut to its first 64 bytes when it is over-long, so an error never echoes 60 KiB back).
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    /// Longer than [`PATH_MAX_BYTES`] with the root.
    #[error("path {shown:?}... is {len} bytes long; at most {PATH_MAX_BYTES} are accepted")]
    PathTooLong {
        /// The first bytes of the path.
        shown: String,
        /// Its length in bytes.
        len: usize,
    },
    /// One component longer than [`NAME_MAX_BYTES`].
    #[error("path {shown:?}... has a {len}-byte component; at most {NAME_MAX_BYTES} are accepted")]
    NameTooLong {
        /// The first bytes of the path.
        shown: String,
        /// The component's length in bytes.
        len: usize,
    },
    /// A NUL byte inside the path.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// Nothing there.
    #[error("{0:?} does not exist")]
    Missing(String),
    /// The path leaves the root (`..`, an absolute path) or goes through a symlink.
    #[error("{0:?} leaves the root or goes through a symlink")]
    Escapes(String),
    /// A component is not a directory.
    #[error("{0:?} is not a directory")]
    NotADirectory(String),
    /// The root itself could not be opened, or another OS error.
    #[error("resolving {path:?} beneath {}: {source}", root.display())]
    Io {
        /// The path.
        path: String,
        /// The root.
        root: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A directory found beneath the root.
#[derive(Debug)]
pub struct DirBeneath {
    /// Its owner.
    pub owner_uid: u32,
    /// An `O_PATH` descriptor of it (it stays the same directory even if renamed later).
    pub fd: OwnedFd,
}

/// The first 64 bytes of `path` (on a character boundary), for error messages.
fn shown(path: &str) -> String {
    let mut end = path.len().min(64);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path.get(..end).unwrap_or_default().to_string()
}

/// Checks the length limits of `relative` (to be joined to `root`) without any system call.
pub fn check_limits(root: &Path, relative: &str) -> Result<(), BeneathError> {
    let len = relative.len();
    if root.as_os_str().len() + 1 + len > PATH_MAX_BYTES {
        return Err(BeneathError::PathTooLong {
            shown: shown(relative),
            len,
        });
    }
    if let Some(longest) = relative.split('/').map(str::len).max() {
        if longest > NAME_MAX_BYTES {
            return Err(BeneathError::NameTooLong {
                shown: shown(relative),
                len: longest,
            });
        }
    }
    if relative.contains('\0') {
        return Err(BeneathError::Nul(shown(relative)));
    }
    Ok(())
}

/// Resolves the directory `relative` beneath `root` (see the module documentation); `""` is the
/// root itself.
pub fn dir_beneath(root: &Path, relative: &str) -> Result<DirBeneath, BeneathError> {
    dir_beneath_with(root, relative, open_beneath)
}

/// [`dir_beneath`] with the way of opening `relative` from the root's descriptor chosen.
fn dir_beneath_with(
    root: &Path,
    relative: &str,
    open: fn(OwnedFd, &str) -> io::Result<OwnedFd>,
) -> Result<DirBeneath, BeneathError> {
    check_limits(root, relative)?;
    let io_error = |source| BeneathError::Io {
        path: relative.to_string(),
        root: root.to_path_buf(),
        source,
    };
    let c_root = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io_error(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: a NUL-terminated path; the returned descriptor is owned below.
    let root_fd = unsafe { libc::open(c_root.as_ptr(), DIRECTORY_PATH_FLAGS) };
    if root_fd < 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened and own.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let fd = open(root_fd, relative).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOENT) => BeneathError::Missing(relative.to_string()),
        Some(libc::EXDEV) | Some(libc::ELOOP) => BeneathError::Escapes(relative.to_string()),
        Some(libc::ENOTDIR) => BeneathError::NotADirectory(relative.to_string()),
        _ => io_error(error),
    })?;
    // SAFETY: fstat on an open descriptor (O_PATH descriptors may be fstat'ed) into a zeroed
    // stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    Ok(DirBeneath {
        owner_uid: st.st_uid,
        fd,
    })
}

/// Opens `relative` beneath `root_fd` with `openat2`, or component by component where the
/// system has no `openat2`.
fn open_beneath(root_fd: OwnedFd, relative: &str) -> io::Result<OwnedFd> {
    // Once ENOSYS was seen, later calls walk at once: the answer does not change while the
    // process lives (the kernel and the seccomp filter are fixed).
    static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);
    if OPENAT2_MISSING.load(Ordering::Relaxed) {
        return open_beneath_component_by_component(root_fd, relative);
    }
    match open_beneath_with_openat2(&root_fd, relative) {
        Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
            OPENAT2_MISSING.store(true, Ordering::Relaxed);
            open_beneath_component_by_component(root_fd, relative)
        }
        result => result,
    }
}

/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` of `relative` from
/// `root_fd`, as an `O_PATH` directory descriptor.
fn open_beneath_with_openat2(root_fd: &OwnedFd, relative: &str) -> io::Result<OwnedFd> {
    let target = if relative.is_empty() { "." } else { relative };
    let c_target = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain integers; all-zero is its "nothing asked" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = DIRECTORY_PATH_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid directory descriptor, a NUL-terminated path and an open_how
    // of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            c_target.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a descriptor we now own (it fits a c_int: descriptors do).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The flags every step opens a directory with: a path-only, close-on-exec descriptor.
const DIRECTORY_PATH_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;

/// The same resolution without `openat2`: one `openat(O_NOFOLLOW)` per component, so nothing
/// is followed that was not checked. `..` and an absolute path answer `EXDEV` and a symlink
/// `ELOOP`, as `openat2` does; empty and `.` components are skipped. A cgroup path of depth 8
/// costs 8 `openat` calls instead of one.
fn open_beneath_component_by_component(root_fd: OwnedFd, relative: &str) -> io::Result<OwnedFd> {
    if relative.starts_with('/') {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let mut directory = root_fd;
    for component in relative.split('/') {
        match component {
            "" | "." => continue,
            ".." => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
            _ => {}
        }
        let c_component =
            CString::new(component).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: openat on a directory descriptor we own with a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                directory.as_raw_fd(),
                c_component.as_ptr(),
                DIRECTORY_PATH_FLAGS | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            let error = io::Error::last_os_error();
            // O_PATH | O_NOFOLLOW opens a symlink itself, which O_DIRECTORY then refuses with
            // ENOTDIR: tell a symlink apart from a file.
            if error.raw_os_error() == Some(libc::ENOTDIR)
                && is_symlink_in(&directory, &c_component)
            {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            return Err(error);
        }
        // SAFETY: openat returned a descriptor we now own.
        directory = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(directory)
}

/// Whether `name` in `directory` is a symlink (not followed).
fn is_symlink_in(directory: &OwnedFd, name: &CString) -> bool {
    // SAFETY: fstatat on a directory descriptor we own, a NUL-terminated name and a zeroed
    // stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let status = unsafe {
        libc::fstatat(
            directory.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    status == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_directories_beneath_the_root_only() {
        resolves_directories_beneath_the_root_only_with(open_beneath);
    }

    #[test]
    fn without_openat2_the_component_walk_keeps_the_same_rules() {
        resolves_directories_beneath_the_root_only_with(open_beneath_component_by_component);
    }

    fn resolves_directories_beneath_the_root_only_with(
        open: fn(OwnedFd, &str) -> io::Result<OwnedFd>,
    ) {
        let dir_beneath = |root: &Path, relative: &str| dir_beneath_with(root, relative, open);
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::write(root.path().join("a/file"), "").unwrap();
        std::os::unix::fs::symlink(root.path().join("a"), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/", root.path().join("a/up")).unwrap();

        // SAFETY: trivial syscall.
        let me = unsafe { libc::geteuid() };
        assert_eq!(dir_beneath(root.path(), "a/b").unwrap().owner_uid, me);
        assert_eq!(dir_beneath(root.path(), "").unwrap().owner_uid, me);
        assert!(matches!(
            dir_beneath(root.path(), "a/missing"),
            Err(BeneathError::Missing(_))
        ));
        for escape in ["..", "a/../..", "/etc", "link/b", "a/up/etc"] {
            assert!(
                matches!(
                    dir_beneath(root.path(), escape),
                    Err(BeneathError::Escapes(_))
                ),
                "{escape:?}: {:?}",
                dir_beneath(root.path(), escape)
            );
        }
        assert!(matches!(
            dir_beneath(root.path(), "a/file"),
            Err(BeneathError::NotADirectory(_))
        ));
    }

    #[test]
    fn limits_come_before_any_lookup() {
        let root = Path::new("/nonexistent-root");
        let long = "a/".repeat(30 * 1024);
        let error = dir_beneath(root, &long).unwrap_err();
        assert!(matches!(error, BeneathError::PathTooLong { len, .. } if len == long.len()));
        assert!(error.to_string().len() < 200, "{error}");
        let wide = "x".repeat(NAME_MAX_BYTES + 1);
        assert!(matches!(
            dir_beneath(root, &format!("a/{wide}")),
            Err(BeneathError::NameTooLong { len: 256, .. })
        ));
        assert!(matches!(
            dir_beneath(root, "a\0b"),
            Err(BeneathError::Nul(_))
        ));
        assert!(check_limits(root, &"x".repeat(NAME_MAX_BYTES)).is_ok());
    }
}
