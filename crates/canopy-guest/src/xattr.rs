// SPDX-License-Identifier: GPL-2.0-only
//! `xattr`: set, get or remove an extended attribute (busybox has no setfattr), e.g. GNOME's
//! focus marker on an app scope: `canopy-guest xattr set /sys/fs/cgroup/app.scope
//! user.xdg.inactive-since -1`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::result::emit;

#[derive(Args, Debug)]
pub struct XattrArgs {
    #[command(subcommand)]
    action: XattrAction,
}

#[derive(Subcommand, Debug)]
enum XattrAction {
    /// Set NAME to VALUE on PATH.
    Set {
        path: PathBuf,
        name: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Report NAME's value on PATH (kind `xattr`, `value` null when absent).
    Get { path: PathBuf, name: String },
    /// Remove NAME from PATH.
    Remove { path: PathBuf, name: String },
}

pub fn run(args: &XattrArgs) -> Result<()> {
    match &args.action {
        XattrAction::Set { path, name, value } => {
            let (c_path, c_name) = c_strings(path, name)?;
            // SAFETY: valid C strings and a value buffer of the given length.
            let rc = unsafe {
                libc::setxattr(
                    c_path.as_ptr(),
                    c_name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            check(rc as isize, "setxattr", path, name)
        }
        XattrAction::Remove { path, name } => {
            let (c_path, c_name) = c_strings(path, name)?;
            // SAFETY: valid C strings.
            let rc = unsafe { libc::removexattr(c_path.as_ptr(), c_name.as_ptr()) };
            check(rc as isize, "removexattr", path, name)
        }
        XattrAction::Get { path, name } => {
            let (c_path, c_name) = c_strings(path, name)?;
            let mut buffer = vec![0u8; 65536];
            // SAFETY: the kernel writes at most buffer.len() bytes.
            let read = unsafe {
                libc::getxattr(
                    c_path.as_ptr(),
                    c_name.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            let value = if read < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ENODATA) {
                    return Err(err).with_context(|| format!("getxattr {} {name}", path.display()));
                }
                None
            } else {
                Some(String::from_utf8_lossy(&buffer[..read as usize]).into_owned())
            };
            emit(
                "xattr",
                json!({ "path": path, "name": name, "value": value }),
            )
        }
    }
}

fn c_strings(path: &std::path::Path, name: &str) -> Result<(CString, CString)> {
    Ok((
        CString::new(path.as_os_str().as_bytes())?,
        CString::new(name)?,
    ))
}

fn check(rc: isize, call: &str, path: &std::path::Path, name: &str) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{call} {} {name}", path.display()));
    }
    Ok(())
}
