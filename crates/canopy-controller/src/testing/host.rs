//! What the root-only host tests of every crate and the daemon benchmark share: the root check,
//! polling for a condition, the cgroup2 root, the cgroup directories a test makes and must
//! remove again (deepest first, waiting for the kernel to let go of exited tasks), and copies of
//! the build's executables that other users can run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canopy_sys::cgroup::CgroupHierarchy;

/// Whether a root-only test may go on: root, or fail, so that a run without root cannot pass
/// silently; `CANOPY_TESTS_WITHOUT_ROOT=1` skips instead (and says so).
pub fn can_run_as_root() -> bool {
    // SAFETY: trivial syscall.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CANOPY_TESTS_WITHOUT_ROOT").is_some_and(|v| v == "1"),
        "these tests need root; run as root or set CANOPY_TESTS_WITHOUT_ROOT=1 to skip them"
    );
    eprintln!("skipped: needs root (CANOPY_TESTS_WITHOUT_ROOT=1)");
    false
}

/// A copy of @file (an executable or script) in @dir, mode 0755, for a test that runs it as
/// another user. The build's own copy can sit where other users cannot reach it: a checkout
/// under `/root` (mode 0700), as on a fresh machine run as root, made every such test fail with
/// EACCES (found by `tests/vm/fresh_system.rs`). @dir must be one they can reach (the tests'
/// own directories under the temp dir are); it is made when missing. A copy already there is
/// kept.
pub fn copy_for_other_users(file: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let name = file.file_name().expect("a file name");
    let copy = dir.join(name);
    if copy.exists() {
        return copy;
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(file, &copy)
        .unwrap_or_else(|err| panic!("copying {} to {}: {err}", file.display(), copy.display()));
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// The host's cgroup2 mount point.
pub fn cgroup2_root() -> PathBuf {
    CgroupHierarchy::system().mount_point().to_path_buf()
}

/// Polls `check` every millisecond until it holds or `limit` passes; how long it took.
pub fn wait_for(limit: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    poll_every(Duration::from_millis(1), limit, check)
}

/// Polls `check` every `every` until it holds or `limit` passes; how long it took.
pub fn poll_every(
    every: Duration,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(every);
    }
    check().then(|| start.elapsed())
}

/// Rules for a rename storm between `storm-a` (BACKGROUND) and `storm-b` (USER_INITIATED), as
/// `canopy-testload renamestorm` and the root crate's hostile-loop tests make one.
pub const RENAME_STORM_RULES: &str = r#"
[[rules]]
name = "storm-a"
comm = "storm-a"
class = "BACKGROUND"

[[rules]]
name = "storm-b"
comm = "storm-b"
class = "USER_INITIATED"
"#;

/// The policy the controller's host tests and the daemon benchmark start from (`{scope}` stands
/// for the test's cgroup scope): `canopy-testload` USER_INTERACTIVE with its `w-*` and `f-*`
/// threads BACKGROUND, a group `min` with a user-settable `minimized` state (ceiling
/// BACKGROUND), and a group `app` driven by the focus xattr (`unfocused` after 1 s, ceiling
/// BACKGROUND).
pub const TESTLOAD_POLICY: &str = r#"
[[rules]]
name = "storm-children"
comm = "f-*"
class = "BACKGROUND"

[[rules]]
name = "testload"
comm = "canopy-testload"
class = "USER_INTERACTIVE"
threads = [{ name = "w-*", class = "BACKGROUND" }, { name = "f-*", class = "BACKGROUND" }]

[groups.min]
path = "{scope}/min"
[groups.min.states.minimized]
ceiling = "BACKGROUND"
user_settable = true

[groups.app]
path = "{scope}/app"
[groups.app.states.focused]
user_settable = true
[groups.app.states.unfocused]
after_s = 1
ceiling = "BACKGROUND"
user_settable = true
"#;

/// Removes the cgroup `top` and every cgroup below it, deepest first. A cgroup whose tasks have
/// just been killed stays busy for a moment: each removal is retried for up to a second.
pub fn remove_cgroup_tree(top: &Path) {
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&entry.path(), out);
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut dirs = Vec::new();
    collect(top, &mut dirs);
    for dir in dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes, deepest first, the cgroup directories a test made (and only those) when dropped.
pub struct MadeCgroups(pub Vec<PathBuf>);

impl MadeCgroups {
    /// Makes every missing directory of `rel` below the cgroup2 root, remembering which it made.
    pub fn make(rel: &str) -> MadeCgroups {
        let mut made = Vec::new();
        let mut path = cgroup2_root();
        for part in rel.split('/') {
            path.push(part);
            match std::fs::create_dir(&path) {
                Ok(()) => made.push(path.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir {}: {e}", path.display()),
            }
        }
        MadeCgroups(made)
    }
}

impl Drop for MadeCgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
