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
//! A cgroup's id is its directory's inode number, the same number BPF's
//! `bpf_get_current_cgroup_id()` and sched_ext's sub-scheduler ids use.
//!
//! This file keeps the error type and [`Cgroup`], one cgroup directory whose every method is one
//! file operation (knobs, task lists, ids, subtree control). Beside it in `cgroup/`:
//! `hierarchy` (the cgroup2 mount, relative paths and walking a subtree), `values` (the typed
//! values of the files: knobs, `cpu.stat`, the focus xattr) and `xattr` (extended attributes).

use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Outcome, Pid};

mod hierarchy;
mod values;
mod xattr;
pub use hierarchy::{
    check_relative_path, parse_cgroup2_mount, path_below, Cgroup2Mount, CgroupEntry,
    CgroupHierarchy,
};
use values::parse_bool_knob;
pub use values::{CpuMax, CpuStat, CpuWeight, Focus, UclampPercent};
pub use xattr::{read_xattr, remove_xattr, write_xattr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
