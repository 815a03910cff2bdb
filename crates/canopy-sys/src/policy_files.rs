//! Finding and reading policy files, for every caller (the CLI's check/compile/diff, the
//! scheduler supervisor and the controller daemon's loads and reloads): one set of rules, so the
//! daemon runs exactly the files `canopy check` validated.
//!
//! A directory means `DIR/policy.toml` then `DIR/policy.d/*.toml` in lexical order; a file means
//! itself and, when it is named `policy.toml`, its sibling `policy.d/*.toml` too (so
//! `--policy /etc/canopy/policy.toml` is the whole policy, not its first file). Every read is
//! bounded (size, count) and every failure names the path, so bad input gives a clear error
//! quickly instead of a hang or an out-of-memory. Nothing here parses TOML: the texts go to the
//! pure compiler (`canopy_policy::Source::new(file.name(), file.text)`).
//!
//! Who may have written a policy (threat model: the daemon runs as root and obeys it): a policy
//! file, and the `policy.d` directory drop-ins come from, is read only when it is owned by root
//! or by the user reading it and neither its group nor others may write it. The daemon runs as
//! root, so for it that means root-owned and not group/other-writable; `canopy check` run by a
//! user on a file of their own (mode 0644 or 0600) still works, and `sudo canopy check` refuses
//! what the daemon would refuse. Example: `/etc/canopy/policy.d/50-x.toml` owned by uid 1000, or
//! mode 0664, is refused with an error naming the file, its owner and mode.

use std::fs;
use std::io;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;

/// Default policy directory.
pub const DEFAULT_POLICY_DIR: &str = "/etc/canopy";

/// The main policy file of a policy directory.
pub const MAIN_FILE: &str = "policy.toml";

/// The drop-in directory beside [`MAIN_FILE`].
pub const DROP_IN_DIR: &str = "policy.d";

/// Largest policy file read (a policy is a few kilobytes; this is far beyond any real one).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Most drop-ins read from one `policy.d`.
pub const MAX_DROP_INS: usize = 1024;

/// Why a policy could not be found or read. Every variant names the offending path; the OS
/// error is part of the message (callers print it as one line).
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// A path given as a policy does not exist or cannot be examined.
    #[error("cannot access policy path {}: {error}", path.display())]
    AccessPolicyPath {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A drop-in directory could not be listed.
    #[error("cannot list {}: {error}", dir.display())]
    List {
        /// The `policy.d` directory.
        dir: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A drop-in directory holds more than [`MAX_DROP_INS`] `.toml` files.
    #[error(
        "{} has more than {MAX_DROP_INS} drop-in files; refusing to load so many (merge them into fewer files)",
        dir.display()
    )]
    TooManyDropIns {
        /// The `policy.d` directory.
        dir: PathBuf,
    },
    /// A directory given as a policy holds no policy file.
    #[error("{} has neither policy.toml nor policy.d/*.toml", dir.display())]
    Empty {
        /// The directory as given.
        dir: PathBuf,
    },
    /// A file to read does not exist or cannot be examined.
    #[error("cannot access {}: {error}", path.display())]
    Access {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A file to read is a directory, a device, a FIFO...
    #[error("{} is not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// A file is larger than the limit (refused before reading).
    #[error(
        "{} is {size} bytes; policy files larger than {} MiB are refused",
        path.display(),
        limit / (1024 * 1024)
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A file grew past the limit between the size check and the read.
    #[error("{} grew beyond {} MiB while being read", path.display(), limit / (1024 * 1024))]
    Grew {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Opening or reading a file failed.
    #[error("cannot {action} {}: {error}", path.display())]
    Read {
        /// `open` or `read`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A policy file or drop-in directory owned by somebody the reader does not trust, or
    /// writable by its group or others.
    #[error(
        "{}: refused: owned by uid {owner} with mode {mode:04o}; a policy file (and policy.d) must be owned by root{} and writable by nobody else (chown root, chmod go-w)",
        path.display(),
        if *reader == 0 { String::new() } else { format!(" or by you (uid {reader})") }
    )]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The reading process's effective uid.
        reader: u32,
    },
    /// A file is not UTF-8; located like a compiler diagnostic.
    #[error(
        "{}:{line}:{column}: error: invalid UTF-8 (byte offset {offset}); policy files must be UTF-8",
        path.display()
    )]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
        /// 1-based column of the first invalid byte.
        column: usize,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
}

/// One policy file, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

impl PolicyFile {
    /// The name diagnostics use for it (its path as given).
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// Reads every file of the policy at `paths` (the default directory when empty), in merge
/// order.
pub fn read_policy(paths: &[PathBuf]) -> Result<Vec<PolicyFile>, PolicyFileError> {
    let mut files = Vec::new();
    for path in policy_paths_or_default(paths) {
        for file in policy_files(path)? {
            files.push(read_policy_file(&file)?);
        }
    }
    Ok(files)
}

/// `paths`, or the default policy directory when it is empty.
pub fn policy_paths_or_default(paths: &[PathBuf]) -> Vec<&Path> {
    if paths.is_empty() {
        vec![Path::new(DEFAULT_POLICY_DIR)]
    } else {
        paths.iter().map(PathBuf::as_path).collect()
    }
}

/// The files one policy path stands for, in merge order.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyFileError> {
    let metadata = fs::metadata(path).map_err(|error| PolicyFileError::AccessPolicyPath {
        path: path.to_path_buf(),
        error,
    })?;
    if !metadata.is_dir() {
        let mut files = vec![path.to_path_buf()];
        if path.file_name().is_some_and(|name| name == MAIN_FILE) {
            if let Some(dir) = path.parent() {
                files.extend(drop_ins(dir)?);
            }
        }
        return Ok(files);
    }
    let mut files = Vec::new();
    let main = path.join(MAIN_FILE);
    if main.exists() {
        files.push(main);
    }
    files.extend(drop_ins(path)?);
    if files.is_empty() {
        return Err(PolicyFileError::Empty {
            dir: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// Whether a policy file or drop-in directory with this owner and mode may be trusted by the
/// reading process (see the module documentation).
fn check_writers(path: &Path, metadata: &fs::Metadata) -> Result<(), PolicyFileError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: trivial syscall.
    let reader = unsafe { libc::geteuid() };
    let (owner, mode) = (metadata.uid(), metadata.mode() & 0o7777);
    if (owner == 0 || owner == reader) && mode & 0o022 == 0 {
        return Ok(());
    }
    Err(PolicyFileError::Untrusted {
        path: path.to_path_buf(),
        owner,
        mode,
        reader,
    })
}

/// `dir/policy.d/*.toml` in lexical order (none when there is no such directory).
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, PolicyFileError> {
    let drop_in_dir = dir.join(DROP_IN_DIR);
    let Ok(metadata) = fs::metadata(&drop_in_dir) else {
        return Ok(Vec::new());
    };
    if !metadata.is_dir() {
        return Ok(Vec::new());
    }
    check_writers(&drop_in_dir, &metadata)?;
    let list_error = |error| PolicyFileError::List {
        dir: drop_in_dir.clone(),
        error,
    };
    let mut drop_ins = Vec::new();
    for entry in fs::read_dir(&drop_in_dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        if Path::new(&entry.file_name())
            .extension()
            .is_some_and(|ext| ext == "toml")
        {
            drop_ins.push(entry.path());
            if drop_ins.len() > MAX_DROP_INS {
                return Err(PolicyFileError::TooManyDropIns { dir: drop_in_dir });
            }
        }
    }
    drop_ins.sort();
    Ok(drop_ins)
}

/// Reads one policy file: a regular file of at most [`MAX_FILE_BYTES`] of UTF-8, written by
/// nobody the reader does not trust (see the module documentation).
pub fn read_policy_file(path: &Path) -> Result<PolicyFile, PolicyFileError> {
    Ok(PolicyFile {
        path: path.to_path_buf(),
        text: read_text(path, MAX_FILE_BYTES, check_writers)?,
    })
}

/// Reads a regular UTF-8 file of at most `limit` bytes, with clear errors otherwise (also for
/// other configuration the CLI reads, such as a schedqos import).
pub fn read_bounded_text(path: &Path, limit: u64) -> Result<String, PolicyFileError> {
    read_text(path, limit, |_, _| Ok(()))
}

/// Opens `path` (without blocking on a FIFO), checks what the open file is (regular, at most
/// `limit` bytes, `check` on its metadata) and reads it as UTF-8.
fn read_text(
    path: &Path,
    limit: u64,
    check: impl Fn(&Path, &fs::Metadata) -> Result<(), PolicyFileError>,
) -> Result<String, PolicyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |action, error| PolicyFileError::Read {
        action,
        path: path.to_path_buf(),
        error,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => PolicyFileError::Access {
                path: path.to_path_buf(),
                error,
            },
            _ => read_error("open", error),
        })?;
    let metadata = file.metadata().map_err(|error| PolicyFileError::Access {
        path: path.to_path_buf(),
        error,
    })?;
    if !metadata.is_file() {
        return Err(PolicyFileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if metadata.len() > limit {
        return Err(PolicyFileError::TooLarge {
            path: path.to_path_buf(),
            size: metadata.len(),
            limit,
        });
    }
    check(path, &metadata)?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| read_error("read", error))?;
    if bytes.len() as u64 > limit {
        return Err(PolicyFileError::Grew {
            path: path.to_path_buf(),
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|error| {
        let offset = error.utf8_error().valid_up_to();
        let prefix = error.as_bytes().get(..offset).unwrap_or_default();
        PolicyFileError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: prefix.iter().filter(|&&b| b == b'\n').count() + 1,
            column: prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1,
            offset,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn directory_means_main_file_then_sorted_drop_ins() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("policy.toml"), "").unwrap();
        fs::create_dir(dir.path().join("policy.d")).unwrap();
        for name in ["20-b.toml", "10-a.toml", "README"] {
            fs::write(dir.path().join("policy.d").join(name), "").unwrap();
        }
        let files = policy_files(dir.path()).unwrap();
        assert_eq!(names(&files), ["policy.toml", "10-a.toml", "20-b.toml"]);
    }

    #[test]
    fn main_file_brings_its_drop_ins_and_other_files_stand_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("policy.toml"), "").unwrap();
        fs::write(dir.path().join("other.toml"), "").unwrap();
        fs::create_dir(dir.path().join("policy.d")).unwrap();
        fs::write(dir.path().join("policy.d/10-a.toml"), "").unwrap();
        let main = policy_files(&dir.path().join("policy.toml")).unwrap();
        assert_eq!(names(&main), ["policy.toml", "10-a.toml"]);
        let other = policy_files(&dir.path().join("other.toml")).unwrap();
        assert_eq!(names(&other), ["other.toml"]);
    }

    #[test]
    fn missing_and_empty_paths_are_named() {
        let error = policy_files(Path::new("/nonexistent/canopy/policy.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot access policy path /nonexistent/canopy/policy.toml: "),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let error = policy_files(dir.path()).unwrap_err().to_string();
        assert!(
            error.ends_with("has neither policy.toml nor policy.d/*.toml"),
            "{error}"
        );
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        fs::write(&path, b"a = 1\nb = \"\xff\"\n").unwrap();
        let error = read_bounded_text(&path, 100).unwrap_err().to_string();
        assert!(
            error.ends_with(
                "bad.toml:2:6: error: invalid UTF-8 (byte offset 11); policy files must be UTF-8"
            ),
            "{error}"
        );
    }

    #[test]
    fn files_and_drop_in_directories_others_may_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("policy.toml");
        fs::write(&main, "").unwrap();
        let mode = |path: &Path, mode: u32| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(&main, 0o644);
        assert!(read_policy(&[dir.path().to_path_buf()]).is_ok());
        for wide in [0o664, 0o646] {
            mode(&main, wide);
            let error = read_policy(&[dir.path().to_path_buf()])
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("{}: refused: owned by uid", main.display()))
                    && error.contains(&format!("mode {wide:04o}")),
                "{error}"
            );
        }
        mode(&main, 0o600);
        let drop_in_dir = dir.path().join("policy.d");
        fs::create_dir(&drop_in_dir).unwrap();
        fs::write(drop_in_dir.join("10-a.toml"), "").unwrap();
        mode(&drop_in_dir, 0o777);
        let error = read_policy(std::slice::from_ref(&main))
            .unwrap_err()
            .to_string();
        assert!(error.contains("policy.d: refused"), "{error}");
        mode(&drop_in_dir, 0o755);
        assert_eq!(read_policy(std::slice::from_ref(&main)).unwrap().len(), 2);
        // Read as root, a file owned by another user is refused even at 0644.
        // SAFETY: trivial syscall.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(drop_in_dir.join("10-a.toml"), Some(1000), None).unwrap();
            let error = read_policy(&[main]).unwrap_err().to_string();
            assert!(
                error.contains("10-a.toml: refused: owned by uid 1000")
                    && error.contains("must be owned by root and writable by nobody else"),
                "{error}"
            );
        }
        // Other configuration (a schedqos import) has no owner rule.
        let other = dir.path().join("import.json");
        fs::write(&other, "{}").unwrap();
        mode(&other, 0o666);
        assert!(read_bounded_text(&other, 100).is_ok());
    }

    #[test]
    fn oversized_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        fs::write(&path, vec![b'#'; 2048]).unwrap();
        let error = read_bounded_text(&path, 1024).unwrap_err().to_string();
        assert!(error.contains("2048 bytes"), "{error}");
    }
}
