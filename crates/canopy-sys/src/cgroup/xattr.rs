//! Extended attributes on cgroup directories (and any path), without following symlinks: read,
//! set, remove. GNOME's focus signal is one (`Cgroup::focus`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use super::CgroupError;

fn path_cstring(path: &Path) -> Result<CString, CgroupError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| CgroupError::InvalidValue {
        knob: "path",
        value: path.display().to_string(),
        reason: "contains a NUL byte",
    })
}

/// Reads an xattr without following symlinks; `None` if it is not set (`ENODATA`).
pub fn read_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, CgroupError> {
    let c_path = path_cstring(path)?;
    let c_name = CString::new(name).expect("xattr names have no NUL");
    let mut buffer = vec![0u8; 64];
    loop {
        // SAFETY: valid C strings and a writable buffer of the given length.
        let size = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if size >= 0 {
            buffer.truncate(size as usize);
            return Ok(Some(buffer));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buffer.len() < 65_536 => buffer.resize(buffer.len() * 4, 0),
            _ => {
                return Err(CgroupError::Io {
                    operation: "read xattr of",
                    path: path.to_path_buf(),
                    source: error,
                })
            }
        }
    }
}

/// Sets an xattr without following symlinks.
pub fn write_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), CgroupError> {
    let c_path = path_cstring(path)?;
    let c_name = CString::new(name).expect("xattr names have no NUL");
    // SAFETY: valid C strings and a readable buffer of the given length.
    let result = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result == 0 {
        return Ok(());
    }
    Err(CgroupError::Io {
        operation: "set xattr of",
        path: path.to_path_buf(),
        source: io::Error::last_os_error(),
    })
}

/// Removes an xattr without following symlinks; an absent one is fine.
pub fn remove_xattr(path: &Path, name: &str) -> Result<(), CgroupError> {
    let c_path = path_cstring(path)?;
    let c_name = CString::new(name).expect("xattr names have no NUL");
    // SAFETY: valid C strings.
    let result = unsafe { libc::lremovexattr(c_path.as_ptr(), c_name.as_ptr()) };
    let error = io::Error::last_os_error();
    if result == 0 || error.raw_os_error() == Some(libc::ENODATA) {
        return Ok(());
    }
    Err(CgroupError::Io {
        operation: "remove xattr of",
        path: path.to_path_buf(),
        source: error,
    })
}
