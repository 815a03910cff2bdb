//! cgroupfs (cgroup v2): finding the cgroup2 mount, cgroup ids, walking a subtree, moving
//! tasks, the cpu knobs canopy's fallback mode writes (`cpu.weight`, `cpu.max`, `cpu.idle`,
//! `cpu.uclamp.min/max`), `cgroup.subtree_control`, `cpu.stat`, and GNOME's focus xattr.
//!
//! Direct file I/O rather than `cgroups-rs`: cgroups-rs 0.5.1 hardcodes the unified mount at
//! `/sys/fs/cgroup` (`UNIFIED_MOUNTPOINT` in `fs/hierarchies.rs` and `fs/cgroup.rs`) and
//! picks v1 on hybrid hosts (it statfs()es that one path), so it cannot address a cgroup2
//! mounted elsewhere (as on the development hosts, `/sys/fs/cgroup/unified`); it lacks
//! `cpu.idle` and `cpu.uclamp.*`; and it always pulls zbus. What canopy needs is a dozen
//! one-line files, each parsed and formatted here with unit tests.
//!
//! Relative cgroup paths look like `/proc/PID/cgroup` shows them: `/` for the root,
//! `/user.slice/app.scope` below it. A cgroup's id is its directory's inode number, the same
//! number BPF's `bpf_get_current_cgroup_id()` and sched_ext's sub-scheduler ids use.
//!
//! The typed values of the files (knobs, `cpu.stat`, the focus xattr) are in `values`; this
//! file keeps the mount, the tree and the one-file operations on a cgroup (about 750 lines
//! without its tests: each operation is small, and they share `Cgroup`'s error plumbing).

use std::ffi::CString;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Outcome, Pid};

mod values;
use values::parse_bool_knob;
pub use values::{CpuMax, CpuStat, CpuWeight, Focus, UclampPercent};

/// GNOME's (Mutter's) focus xattr on an app's unit cgroup.
pub const INACTIVE_SINCE_XATTR: &str = "user.xdg.inactive-since";

/// Where cgroup2 is usually mounted; [`CgroupHierarchy::system`] falls back to it when
/// mountinfo shows no cgroup2 mount.
pub const USUAL_MOUNT_POINT: &str = "/sys/fs/cgroup";

/// A cgroupfs operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 mount in {mountinfo}")]
    NoCgroup2Mount {
        /// The mountinfo file that was searched.
        mountinfo: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {operation} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "mkdir", ...).
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file's content did not parse.
    #[error("cannot parse {path}: {reason}: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: &'static str,
        /// The offending content.
        content: String,
    },
    /// An xattr's value did not parse.
    #[error("cannot parse xattr {name} of {path}: {reason}: {value:?}")]
    BadXattr {
        /// The file or directory.
        path: PathBuf,
        /// The xattr.
        name: &'static str,
        /// What was wrong.
        reason: &'static str,
        /// The offending value.
        value: String,
    },
    /// A value to write is out of range (checked before writing).
    #[error("invalid {knob} value {value}: {reason}")]
    InvalidValue {
        /// The knob.
        knob: &'static str,
        /// The offending value.
        value: String,
        /// The allowed range.
        reason: &'static str,
    },
    /// A path is not under the cgroup2 mount.
    #[error("{path} is not under the cgroup2 mount {mount_point}")]
    NotUnderMount {
        /// The path.
        path: PathBuf,
        /// The mount point.
        mount_point: PathBuf,
    },
}

/// One cgroup2 mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Where it is mounted (e.g. `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
    pub mount_point: PathBuf,
    /// The cgroup it shows at that mount point (`/` unless it is a bind mount of a subtree).
    pub root: String,
}

/// Finds the cgroup2 mount in mountinfo text; prefers a mount of the whole hierarchy (`/`).
/// Mount points are unescaped (`\040` is a space).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<Cgroup2Mount> {
    let mut found: Option<Cgroup2Mount> = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let mut fields = line.split(' ');
        let (Some(_), Some(_), Some(_), Some(root), Some(mount_point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let mut after_separator = fields.skip_while(|&field| field != "-");
        after_separator.next();
        if after_separator.next() != Some("cgroup2") {
            continue;
        }
        let mount = Cgroup2Mount {
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            root: unescape_mountinfo(root),
        };
        if mount.root == "/" {
            return Some(mount);
        }
        found.get_or_insert(mount);
    }
    found
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[index + 1..index + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(octal, 8) {
                out.push(value);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 hierarchy: where it is mounted, and how relative cgroup paths map to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupHierarchy {
    mount_point: PathBuf,
}

impl CgroupHierarchy {
    /// Finds the cgroup2 mount of this process's mount namespace.
    pub fn discover() -> Result<CgroupHierarchy, CgroupError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::Io {
            operation: "read",
            path: mountinfo.to_path_buf(),
            source,
        })?;
        let mount = parse_cgroup2_mount(&text).ok_or_else(|| CgroupError::NoCgroup2Mount {
            mountinfo: mountinfo.to_path_buf(),
        })?;
        Ok(CgroupHierarchy::at(mount.mount_point))
    }

    /// This process's cgroup2 hierarchy, discovered once from mountinfo (the usual
    /// `/sys/fs/cgroup` when mountinfo shows none, so callers get a clear error from the first
    /// file they open there).
    pub fn system() -> &'static CgroupHierarchy {
        static SYSTEM: std::sync::OnceLock<CgroupHierarchy> = std::sync::OnceLock::new();
        SYSTEM.get_or_init(|| {
            CgroupHierarchy::discover().unwrap_or_else(|_| CgroupHierarchy::at(USUAL_MOUNT_POINT))
        })
    }

    /// A cgroup directory given relative to the mount point (`a/b`) or absolute (kept as it
    /// is); no checks (the loader's CLI and configuration take either form).
    pub fn resolve(&self, cgroup: &Path) -> PathBuf {
        if cgroup.is_absolute() {
            cgroup.to_path_buf()
        } else {
            self.mount_point.join(cgroup)
        }
    }

    /// The directory of the cgroup whose id is `id`, searched parents first.
    pub fn find_id(&self, id: u64) -> Option<PathBuf> {
        self.walk(&self.root())
            .ok()?
            .into_iter()
            .find(|entry| entry.id == id)
            .map(|entry| entry.dir)
    }

    /// A hierarchy mounted at `mount_point` (tests may point this at a fake tree).
    pub fn at(mount_point: impl Into<PathBuf>) -> CgroupHierarchy {
        CgroupHierarchy {
            mount_point: mount_point.into(),
        }
    }

    /// The mount point.
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The cgroup at a relative path such as `/proc/PID/cgroup` shows (`/a/b`; `/` is the root).
    /// Paths with `.` or `..` components are refused (a control-API caller must not climb out
    /// of the subtree it was authorized for).
    pub fn cgroup(&self, relative: &str) -> Result<Cgroup, CgroupError> {
        check_relative_path(relative)?;
        let trimmed = relative.trim_matches('/');
        let dir = if trimmed.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(trimmed)
        };
        Ok(Cgroup { dir })
    }

    /// The root cgroup.
    pub fn root(&self) -> Cgroup {
        Cgroup {
            dir: self.mount_point.clone(),
        }
    }

    /// The relative path of a cgroup directory (`/` for the mount point itself).
    pub fn relative_path(&self, dir: &Path) -> Result<String, CgroupError> {
        let below =
            dir.strip_prefix(&self.mount_point)
                .map_err(|_| CgroupError::NotUnderMount {
                    path: dir.to_path_buf(),
                    mount_point: self.mount_point.clone(),
                })?;
        Ok(format!("/{}", below.to_string_lossy()))
    }

    /// Every cgroup at or below `top`, parents before children, with its id. Cgroups removed
    /// during the walk are skipped.
    pub fn walk(&self, top: &Cgroup) -> Result<Vec<CgroupEntry>, CgroupError> {
        let mut entries = Vec::new();
        let mut pending = vec![top.dir.clone()];
        while let Some(dir) = pending.pop() {
            let id = match std::fs::metadata(&dir) {
                Ok(metadata) => metadata.ino(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Io {
                        operation: "stat",
                        path: dir,
                        source,
                    })
                }
            };
            let children = match std::fs::read_dir(&dir) {
                Ok(children) => children,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Io {
                        operation: "list",
                        path: dir,
                        source,
                    })
                }
            };
            let first_child = pending.len();
            for child in children.flatten() {
                if child.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                    pending.push(child.path());
                }
            }
            // Visit children in name order (popped from the end, so push reversed).
            pending[first_child..].sort_unstable_by(|left, right| right.cmp(left));
            entries.push(CgroupEntry {
                relative: self.relative_path(&dir)?,
                id,
                dir,
            });
        }
        Ok(entries)
    }

    /// Creates the cgroup (and missing parents); an existing one is fine.
    pub fn create(&self, relative: &str) -> Result<Cgroup, CgroupError> {
        let cgroup = self.cgroup(relative)?;
        std::fs::create_dir_all(&cgroup.dir).map_err(|source| CgroupError::Io {
            operation: "mkdir",
            path: cgroup.dir.clone(),
            source,
        })?;
        Ok(cgroup)
    }
}

/// Refuses relative cgroup paths that are not plain: `.`/`..` components, NUL bytes, or no
/// leading `/`.
pub fn check_relative_path(relative: &str) -> Result<(), CgroupError> {
    let reason = if !relative.starts_with('/') {
        Some("must start with '/'")
    } else if relative.contains('\0') {
        Some("contains a NUL byte")
    } else if relative
        .split('/')
        .any(|component| component == "." || component == "..")
    {
        Some("has a '.' or '..' component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CgroupError::InvalidValue {
            knob: "cgroup path",
            value: relative.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The part of relative cgroup path `path` below `ancestor`, compared by components:
/// `Some("")` for the ancestor itself, `Some("app.scope/sub")` below it, `None` outside it
/// (`/user.slice-2` is not inside `/user.slice`) or if either path is not plain (see
/// [`check_relative_path`]). `/` contains everything.
pub fn path_below<'a>(path: &'a str, ancestor: &str) -> Option<&'a str> {
    if check_relative_path(path).is_err() || check_relative_path(ancestor).is_err() {
        return None;
    }
    let ancestor = ancestor.trim_end_matches('/');
    let rest = path.strip_prefix(ancestor)?;
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
        .or(if ancestor.is_empty() {
            Some(rest)
        } else {
            None
        })
        .map(|below| below.trim_end_matches('/'))
}

/// One cgroup found by [`CgroupHierarchy::walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    /// Its relative path (`/a/b`).
    pub relative: String,
    /// Its id (directory inode).
    pub id: u64,
    /// Its directory.
    pub dir: PathBuf,
}

/// One cgroup directory; every method is one file operation on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A cgroup by its directory.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Cgroup {
        Cgroup { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Its id: the directory's inode number (what BPF's `cgroup_id` and sched_ext use).
    pub fn id(&self) -> Result<u64, CgroupError> {
        std::fs::metadata(&self.dir)
            .map(|metadata| metadata.ino())
            .map_err(|source| CgroupError::Io {
                operation: "stat",
                path: self.dir.clone(),
                source,
            })
    }

    /// The cgroups below this one, at most `max_levels` levels down (1: its children) and at
    /// most `max_count` of them, as paths relative to it (`a`, `a/b`), parents before children
    /// and siblings by name. Unreadable directories are skipped.
    pub fn descendants(&self, max_levels: usize, max_count: usize) -> Vec<String> {
        fn visit(
            top: &Path,
            dir: &Path,
            level: usize,
            limits: (usize, usize),
            out: &mut Vec<String>,
        ) {
            let (max_levels, max_count) = limits;
            if level > max_levels {
                return;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            let mut children: Vec<PathBuf> = entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.path())
                .collect();
            children.sort();
            for child in children {
                if out.len() >= max_count {
                    return;
                }
                if let Ok(relative) = child.strip_prefix(top) {
                    out.push(relative.to_string_lossy().into_owned());
                }
                visit(top, &child, level + 1, limits, out);
            }
        }
        let mut out = Vec::new();
        visit(&self.dir, &self.dir, 1, (max_levels, max_count), &mut out);
        out
    }

    /// Removes the (empty, childless) cgroup; `Gone` if it did not exist.
    pub fn remove(&self) -> Result<Outcome<()>, CgroupError> {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(Outcome::Done(())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Outcome::Gone),
            Err(source) => Err(CgroupError::Io {
                operation: "rmdir",
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// Moves a whole process into this cgroup (`cgroup.procs`); `Gone` if the pid exited.
    pub fn move_process(&self, pid: Pid) -> Result<Outcome<()>, CgroupError> {
        self.write_task_id("cgroup.procs", pid)
    }

    /// Moves one thread into this cgroup (`cgroup.threads`; the cgroup must be threaded or the
    /// thread's process must already be in this domain); `Gone` if the thread exited.
    pub fn move_thread(&self, tid: Pid) -> Result<Outcome<()>, CgroupError> {
        self.write_task_id("cgroup.threads", tid)
    }

    /// The processes in this cgroup (`cgroup.procs`).
    pub fn processes(&self) -> Result<Vec<Pid>, CgroupError> {
        self.read_pid_list("cgroup.procs")
    }

    /// The threads in this cgroup (`cgroup.threads`).
    pub fn threads(&self) -> Result<Vec<Pid>, CgroupError> {
        self.read_pid_list("cgroup.threads")
    }

    /// The controllers available here (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let text = self.read_knob("cgroup.controllers")?;
        Ok(text.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// The controllers enabled for the children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>, CgroupError> {
        let text = self.read_knob("cgroup.subtree_control")?;
        Ok(text.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// Enables (`+cpu`) and disables (`-io`) controllers for the children in one write.
    pub fn change_subtree_control(
        &self,
        enable: &[&str],
        disable: &[&str],
    ) -> Result<(), CgroupError> {
        let line = format_subtree_control(enable, disable)?;
        self.write_knob("cgroup.subtree_control", &line)
    }

    /// `cpu.weight` (needs the cpu controller).
    pub fn cpu_weight(&self) -> Result<CpuWeight, CgroupError> {
        self.read_parsed("cpu.weight")
    }

    /// Writes `cpu.weight`.
    pub fn set_cpu_weight(&self, weight: CpuWeight) -> Result<(), CgroupError> {
        self.write_knob("cpu.weight", &weight.to_string())
    }

    /// `cpu.max` (needs the cpu controller).
    pub fn cpu_max(&self) -> Result<CpuMax, CgroupError> {
        self.read_parsed("cpu.max")
    }

    /// Writes `cpu.max`.
    pub fn set_cpu_max(&self, limit: CpuMax) -> Result<(), CgroupError> {
        self.write_knob("cpu.max", &limit.to_string())
    }

    /// `cpu.idle` (needs the cpu controller).
    pub fn cpu_idle(&self) -> Result<bool, CgroupError> {
        let path = self.dir.join("cpu.idle");
        let text = self.read_knob("cpu.idle")?;
        parse_bool_knob(&text).map_err(|reason| CgroupError::Parse {
            path,
            reason,
            content: text,
        })
    }

    /// Writes `cpu.idle`.
    pub fn set_cpu_idle(&self, idle: bool) -> Result<(), CgroupError> {
        self.write_knob("cpu.idle", if idle { "1" } else { "0" })
    }

    /// `cpu.uclamp.min` (needs the cpu controller and `CONFIG_UCLAMP_TASK_GROUP`).
    pub fn uclamp_min(&self) -> Result<UclampPercent, CgroupError> {
        self.read_parsed("cpu.uclamp.min")
    }

    /// Writes `cpu.uclamp.min`.
    pub fn set_uclamp_min(&self, value: UclampPercent) -> Result<(), CgroupError> {
        self.write_knob("cpu.uclamp.min", &value.to_string())
    }

    /// `cpu.uclamp.max`.
    pub fn uclamp_max(&self) -> Result<UclampPercent, CgroupError> {
        self.read_parsed("cpu.uclamp.max")
    }

    /// Writes `cpu.uclamp.max`.
    pub fn set_uclamp_max(&self, value: UclampPercent) -> Result<(), CgroupError> {
        self.write_knob("cpu.uclamp.max", &value.to_string())
    }

    /// `cpu.stat` (present on every cgroup2 cgroup; the throttling lines need the cpu
    /// controller).
    pub fn cpu_stat(&self) -> Result<CpuStat, CgroupError> {
        self.read_parsed("cpu.stat")
    }

    /// GNOME's focus signal (`user.xdg.inactive-since`); `NotSet` when the xattr is absent.
    pub fn focus(&self) -> Result<Focus, CgroupError> {
        match read_xattr(&self.dir, INACTIVE_SINCE_XATTR)? {
            None => Ok(Focus::NotSet),
            Some(value) => Focus::parse(&value).map_err(|reason| CgroupError::BadXattr {
                path: self.dir.clone(),
                name: INACTIVE_SINCE_XATTR,
                reason,
                value: String::from_utf8_lossy(&value).into_owned(),
            }),
        }
    }

    /// Writes the focus xattr as Mutter does (`-1`, or a monotonic time in µs); for tests and
    /// VM scenarios. `NotSet` removes it.
    pub fn set_focus(&self, focus: Focus) -> Result<(), CgroupError> {
        match focus {
            Focus::NotSet => remove_xattr(&self.dir, INACTIVE_SINCE_XATTR),
            Focus::Focused => write_xattr(&self.dir, INACTIVE_SINCE_XATTR, b"-1"),
            Focus::InactiveSince { monotonic_us } => write_xattr(
                &self.dir,
                INACTIVE_SINCE_XATTR,
                monotonic_us.to_string().as_bytes(),
            ),
        }
    }

    /// Reads a knob file as text.
    pub fn read_knob(&self, name: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CgroupError::Io {
            operation: "read",
            path,
            source,
        })
    }

    /// Writes a knob file in one `write(2)`, as cgroupfs requires.
    pub fn write_knob(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir.join(name);
        write_once(&path, value.as_bytes()).map_err(|source| CgroupError::Io {
            operation: "write",
            path,
            source,
        })
    }

    fn read_parsed<T: FromStr<Err = &'static str>>(&self, name: &str) -> Result<T, CgroupError> {
        let text = self.read_knob(name)?;
        text.parse().map_err(|reason| CgroupError::Parse {
            path: self.dir.join(name),
            reason,
            content: text,
        })
    }

    fn read_pid_list(&self, name: &str) -> Result<Vec<Pid>, CgroupError> {
        let text = self.read_knob(name)?;
        text.lines()
            .map(|line| line.trim().parse::<Pid>())
            .collect::<Result<_, _>>()
            .map_err(|_| CgroupError::Parse {
                path: self.dir.join(name),
                reason: "not a pid list",
                content: text,
            })
    }

    fn write_task_id(&self, name: &str, id: Pid) -> Result<Outcome<()>, CgroupError> {
        let path = self.dir.join(name);
        match write_once(&path, id.to_string().as_bytes()) {
            Ok(()) => Ok(Outcome::Done(())),
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(Outcome::Gone),
            Err(source) => Err(CgroupError::Io {
                operation: "write",
                path,
                source,
            }),
        }
    }
}

fn write_once(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let written = file.write(bytes)?;
    if written != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to a cgroup file",
        ));
    }
    Ok(())
}

/// The one-line write for `cgroup.subtree_control`.
pub fn format_subtree_control(enable: &[&str], disable: &[&str]) -> Result<String, CgroupError> {
    let mut line = String::new();
    for (sign, names) in [('+', enable), ('-', disable)] {
        for name in names {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
            {
                return Err(CgroupError::InvalidValue {
                    knob: "cgroup.subtree_control",
                    value: (*name).to_owned(),
                    reason: "not a controller name",
                });
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push(sign);
            line.push_str(name);
        }
    }
    Ok(line)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// This development host's mountinfo (hybrid: cgroup2 at /sys/fs/cgroup/unified).
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_hybrid_host() {
        let mount = parse_cgroup2_mount(HYBRID).unwrap();
        assert_eq!(mount.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mount.root, "/");
    }

    #[test]
    fn mountinfo_unified_host_with_optional_fields_and_escapes() {
        let text = "\
25 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw
30 25 0:26 /container /mnt/sub\\040tree rw shared:4 - cgroup2 cgroup2 rw,nsdelegate
35 25 0:26 / /sys/fs/cgroup rw,nosuid shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        let mount = parse_cgroup2_mount(text).unwrap();
        assert_eq!(
            mount.mount_point,
            Path::new("/sys/fs/cgroup"),
            "the whole-hierarchy mount wins"
        );
        let only_sub =
            parse_cgroup2_mount(text.lines().take(2).collect::<Vec<_>>().join("\n").as_str())
                .unwrap();
        assert_eq!(only_sub.mount_point, Path::new("/mnt/sub tree"));
        assert_eq!(only_sub.root, "/container");
        assert_eq!(
            parse_cgroup2_mount("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
    }

    #[test]
    fn relative_paths_map_both_ways() {
        let hierarchy = CgroupHierarchy::at("/sys/fs/cgroup/unified");
        let cgroup = hierarchy.cgroup("/user.slice/app.scope").unwrap();
        assert_eq!(
            cgroup.dir(),
            Path::new("/sys/fs/cgroup/unified/user.slice/app.scope")
        );
        assert_eq!(
            hierarchy.relative_path(cgroup.dir()).unwrap(),
            "/user.slice/app.scope"
        );
        assert_eq!(hierarchy.root().dir(), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            hierarchy.relative_path(hierarchy.root().dir()).unwrap(),
            "/"
        );
        assert!(hierarchy.relative_path(Path::new("/tmp")).is_err());
        let escape = "/user.slice/user@1000.service/../../system.slice";
        assert!(hierarchy
            .cgroup(escape)
            .unwrap_err()
            .to_string()
            .contains(escape));
        assert!(hierarchy.cgroup("user.slice").is_err());
        assert!(hierarchy.cgroup("/a/./b").is_err());
        assert_eq!(hierarchy.cgroup("/").unwrap(), hierarchy.root());
    }

    #[test]
    fn paths_below_an_ancestor() {
        let app = "/user.slice/user-1000.slice/app.slice/app-x.scope";
        assert_eq!(
            path_below(app, "/user.slice"),
            Some("user-1000.slice/app.slice/app-x.scope")
        );
        assert_eq!(
            path_below(app, "/user.slice/"),
            Some("user-1000.slice/app.slice/app-x.scope")
        );
        assert_eq!(path_below(app, app), Some(""));
        assert_eq!(path_below(app, "/"), Some(&app[1..]));
        assert_eq!(path_below("/", "/"), Some(""));
        assert_eq!(path_below("/user.slice-2/x", "/user.slice"), None);
        assert_eq!(path_below("/system.slice", "/user.slice"), None);
        assert_eq!(path_below("/user.slice", "/user.slice/app.slice"), None);
        assert_eq!(
            path_below("/user.slice/../system.slice", "/user.slice"),
            None
        );
    }

    #[test]
    fn cpu_weight_range_and_format() {
        assert_eq!(CpuWeight::new(200).unwrap().to_string(), "200");
        assert!(CpuWeight::new(0).is_err());
        assert!(CpuWeight::new(10_001)
            .unwrap_err()
            .to_string()
            .contains("10001"));
        assert_eq!("100\n".parse::<CpuWeight>().unwrap(), CpuWeight::DEFAULT);
    }

    #[test]
    fn cpu_max_format_and_parse() {
        assert_eq!("max 100000\n".parse::<CpuMax>().unwrap(), CpuMax::UNLIMITED);
        let half = CpuMax::new(Some(50_000), 100_000).unwrap();
        assert_eq!(half.to_string(), "50000 100000");
        assert_eq!("50000 100000".parse::<CpuMax>().unwrap(), half);
        assert!(CpuMax::new(Some(10), 100_000).is_err());
        assert!(CpuMax::new(None, 10).is_err());
        assert!("lots 100000".parse::<CpuMax>().is_err());
    }

    #[test]
    fn uclamp_percent_format_and_parse() {
        assert_eq!(
            "max\n".parse::<UclampPercent>().unwrap(),
            UclampPercent::MAX
        );
        assert_eq!(
            "0.00".parse::<UclampPercent>().unwrap(),
            UclampPercent::ZERO
        );
        assert_eq!("98.76".parse::<UclampPercent>().unwrap().hundredths(), 9876);
        assert_eq!("25.5".parse::<UclampPercent>().unwrap().hundredths(), 2550);
        assert_eq!("7".parse::<UclampPercent>().unwrap().hundredths(), 700);
        assert_eq!(
            UclampPercent::from_hundredths(2505).unwrap().to_string(),
            "25.05"
        );
        assert_eq!(UclampPercent::MAX.to_string(), "max");
        assert!("100.01".parse::<UclampPercent>().is_err());
        assert!("1.234".parse::<UclampPercent>().is_err());
        assert!("-1".parse::<UclampPercent>().is_err());
        assert!(UclampPercent::from_hundredths(10_001).is_err());
    }

    #[test]
    fn cpu_stat_with_and_without_the_cpu_controller() {
        let core_only =
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\ncore_sched.force_idle_usec 0\n";
        let stat: CpuStat = core_only.parse().unwrap();
        assert_eq!(
            (stat.usage_usec, stat.user_usec, stat.system_usec),
            (1234, 1000, 234)
        );
        assert_eq!(stat.nr_throttled, None);
        let full = "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 10\nnr_throttled 4\n\
                    throttled_usec 900\nnr_bursts 0\nburst_usec 0\n";
        let stat: CpuStat = full.parse().unwrap();
        assert_eq!(stat.nr_throttled, Some(4));
        assert_eq!(stat.throttled_usec, Some(900));
        assert!("user_usec 3\n".parse::<CpuStat>().is_err());
        assert!("usage_usec x\n".parse::<CpuStat>().is_err());
    }

    #[test]
    fn focus_values() {
        assert_eq!(Focus::parse(b"-1").unwrap(), Focus::Focused);
        assert_eq!(Focus::parse(b"-1\0").unwrap(), Focus::Focused);
        assert_eq!(
            Focus::parse(b"123456789").unwrap(),
            Focus::InactiveSince {
                monotonic_us: 123_456_789
            }
        );
        assert!(Focus::parse(b"soon").is_err());
        let lost = Focus::InactiveSince {
            monotonic_us: 1_000_000,
        };
        assert_eq!(
            lost.inactive_for(3_500_000),
            Some(std::time::Duration::from_millis(2_500))
        );
        assert_eq!(
            lost.inactive_for(10),
            Some(std::time::Duration::ZERO),
            "clock skew"
        );
        assert_eq!(Focus::Focused.inactive_for(3_500_000), None);
        assert!(Focus::parse(b"-2").is_err());
    }

    #[test]
    fn subtree_control_line() {
        assert_eq!(
            format_subtree_control(&["cpu", "cpuset"], &["io"]).unwrap(),
            "+cpu +cpuset -io"
        );
        assert!(format_subtree_control(&["cpu memory"], &[]).is_err());
    }

    #[test]
    fn bool_knob() {
        assert_eq!(parse_bool_knob("1\n"), Ok(true));
        assert_eq!(parse_bool_knob("0"), Ok(false));
        assert!(parse_bool_knob("yes").is_err());
    }
}
