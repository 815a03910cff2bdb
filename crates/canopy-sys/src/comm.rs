//! `Comm`: a task's command name (`TASK_COMM_LEN` = 16 bytes with the NUL) stored inline, so
//! that /proc scans and proc-connector events carry names without allocating.

use std::fmt;

/// The kernel's `TASK_COMM_LEN`: 15 bytes of name plus the terminating NUL.
pub const TASK_COMM_LEN: usize = 16;

/// A task's command name (`comm`), at most 15 bytes, stored inline.
///
/// The kernel treats comm as bytes; [`Comm::as_str`] gives a lossless `&str` when the bytes
/// are UTF-8 (the usual case) and [`Comm::to_string_lossy`] otherwise.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Comm {
    bytes: [u8; TASK_COMM_LEN],
    len: u8,
}

impl Comm {
    /// A comm from raw bytes, cut at the first NUL and at 15 bytes (as the kernel does).
    pub fn from_bytes(raw: &[u8]) -> Comm {
        let until_nul = raw.iter().position(|&byte| byte == 0).unwrap_or(raw.len());
        let len = until_nul.min(TASK_COMM_LEN - 1);
        let mut bytes = [0u8; TASK_COMM_LEN];
        for (slot, &byte) in bytes.iter_mut().zip(raw).take(len) {
            *slot = byte;
        }
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// The name's bytes, without the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        // `len` is at most TASK_COMM_LEN - 1 (from_bytes).
        self.bytes.get(..self.len as usize).unwrap_or_default()
    }

    /// The name as `&str`, or `None` if it is not UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The name as a `String`, with invalid UTF-8 replaced.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }

    /// Whether the name is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Comm {
        Comm::from_bytes(name.as_bytes())
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_nul_and_at_fifteen_bytes() {
        assert_eq!(Comm::from_bytes(b"bash\0garbage"), "bash");
        assert_eq!(Comm::from_bytes(b"0123456789abcdefXYZ"), "0123456789abcde");
        assert!(Comm::from_bytes(b"").is_empty());
    }

    #[test]
    fn non_utf8_is_kept_as_bytes() {
        let comm = Comm::from_bytes(&[0xff, b'a']);
        assert_eq!(comm.as_bytes(), &[0xff, b'a']);
        assert_eq!(comm.as_str(), None);
        assert_eq!(comm.to_string_lossy(), "\u{fffd}a");
    }
}
