//! User names for `user = "name"` rules: a uid's name through NSS (`getpwuid_r`, so
//! `/etc/passwd`, LDAP and systemd's dynamic users alike), looked up once per uid and cached.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Arc;

/// The NSS name of `uid`, `None` when NSS knows no such user. An NSS failure other than "not
/// found" is an error carrying the uid.
pub fn user_name(uid: u32) -> Result<Option<String>, std::io::Error> {
    let mut buffer = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: passwd is plain data; getpwuid_r fills it with pointers into `buffer`, which
        // outlives every use of them below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        match status {
            0 if result.is_null() => return Ok(None),
            // SAFETY: on success pw_name points to a NUL-terminated string inside `buffer`.
            0 => {
                let name = unsafe { CStr::from_ptr(entry.pw_name) };
                return Ok(Some(name.to_string_lossy().into_owned()));
            }
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 4, 0),
            // glibc reports "no such user" as one of these on some NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            error => {
                return Err(std::io::Error::new(
                    std::io::Error::from_raw_os_error(error).kind(),
                    format!(
                        "getpwuid_r({uid}): {}",
                        std::io::Error::from_raw_os_error(error)
                    ),
                ))
            }
        }
    }
}

/// User names by uid, each looked up through NSS once (a uid without a name is cached too;
/// a failed lookup is not, so it is tried again next time).
#[derive(Debug, Default)]
pub struct UserNames {
    by_uid: HashMap<u32, Option<Arc<str>>>,
}

impl UserNames {
    /// An empty cache.
    pub fn new() -> UserNames {
        UserNames::default()
    }

    /// The name of `uid`, looked up the first time it is asked for.
    pub fn name(&mut self, uid: u32) -> Option<Arc<str>> {
        if let Some(known) = self.by_uid.get(&uid) {
            return known.clone();
        }
        let name = user_name(uid)
            .ok()?
            .map(|name| Arc::<str>::from(name.as_str()));
        self.by_uid.insert(uid, name.clone());
        name
    }

    /// How many uids have been looked up (tests check the cache).
    pub fn cached(&self) -> usize {
        self.by_uid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root_and_an_unused_uid_has_no_name() {
        assert_eq!(user_name(0).unwrap().as_deref(), Some("root"));
        assert_eq!(user_name(4_000_000_000).unwrap(), None);
        let mut names = UserNames::new();
        assert_eq!(names.name(0).as_deref(), Some("root"));
        assert_eq!(names.name(0).as_deref(), Some("root"));
        assert_eq!(names.name(4_000_000_000), None);
        assert_eq!(names.cached(), 2);
    }
}
