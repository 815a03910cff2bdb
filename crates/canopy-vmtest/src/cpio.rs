// SPDX-License-Identifier: GPL-2.0-only
//! The initramfs archive: an uncompressed "newc" cpio written directly, so device nodes
//! (`/dev/console`) and root-owned files need no privileges on the host and no staging
//! directory. Owns only the byte format; what goes into the archive is `initramfs.rs`'s job.

use std::collections::BTreeSet;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An in-memory newc archive under construction. Parent directories are created on demand,
/// and each path is written at most once (the first writer wins), so callers can add the
/// binaries under test before busybox's applet links without shadowing them.
pub struct CpioWriter {
    out: Vec<u8>,
    next_inode: u32,
    written: BTreeSet<String>,
}

impl CpioWriter {
    pub fn new() -> Self {
        CpioWriter {
            out: Vec::new(),
            next_inode: 1,
            written: BTreeSet::new(),
        }
    }

    /// True when `path` (absolute, as in the guest) is already in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.written.contains(normalize(path))
    }

    pub fn dir(&mut self, path: &str) {
        let path = normalize(path);
        if path.is_empty() || self.written.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, S_IFDIR | 0o755, 0, &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.with_parent(path, |w, p| w.entry(p, S_IFREG | (mode & 0o7777), 0, data));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.with_parent(path, |w, p| {
            w.entry(p, S_IFLNK | 0o777, 0, target.as_bytes())
        });
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let rdev = (major << 8) | minor;
        self.with_parent(path, |w, p| {
            w.entry(p, S_IFCHR | (mode & 0o7777), rdev, &[])
        });
    }

    /// Finishes the archive (the trailer) and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 0, 0);
        self.out
    }

    fn with_parent(&mut self, path: &str, write: impl FnOnce(&mut Self, &str)) {
        let path = normalize(path).to_string();
        if self.written.contains(&path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        write(self, &path);
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.written.insert(path.to_string());
        let inode = self.next_inode;
        self.next_inode += 1;
        self.header(path, inode, mode, rdev, data.len());
        self.put(data);
        self.pad();
    }

    fn header(&mut self, name: &str, inode: u32, mode: u32, rdev: u32, size: usize) {
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size as u32,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes());
        self.put(name.as_bytes());
        self.put(&[0]);
        self.pad();
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn pad(&mut self) {
        let padding = (4 - (self.out.len() % 4)) % 4;
        self.put(&[0u8; 3][..padding]);
    }
}

fn normalize(path: &str) -> &str {
    path.trim_start_matches('/').trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_four_byte_aligned_and_parents_come_first() {
        let mut writer = CpioWriter::new();
        writer.file("/usr/bin/x", 0o755, b"abcde");
        writer.file("/usr/bin/x", 0o755, b"shadowed");
        let raw = writer.finish();
        let text = String::from_utf8_lossy(&raw);
        let usr = text.find("usr\0").unwrap();
        let usr_bin = text.find("usr/bin\0").unwrap();
        let file = text.find("usr/bin/x\0").unwrap();
        assert!(usr < usr_bin && usr_bin < file);
        assert!(!text.contains("shadowed"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!"));
        assert_eq!(raw.len() % 4, 0);
        // Every header starts on a 4-byte boundary.
        for (offset, _) in text.match_indices("070701") {
            assert_eq!(offset % 4, 0);
        }
    }
}
