//! Where the cgroup2 hierarchy is and how paths map onto it: the cgroup2 mount from
//! `/proc/self/mountinfo`, relative cgroup paths (`/` for the root, `/user.slice/app.scope`
//! below it, as `/proc/PID/cgroup` shows them) and their checks, and walking a subtree.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::{Cgroup, CgroupError, USUAL_MOUNT_POINT};

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
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = tail
            .get(..3)
            .filter(|_| byte == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(value) => {
                out.push(value);
                rest = tail.get(3..).unwrap_or_default();
            }
            None => {
                out.push(byte);
                rest = tail;
            }
        }
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
            if let Some(children) = pending.get_mut(first_child..) {
                children.sort_unstable_by(|left, right| right.cmp(left));
            }
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
}
