//! Checks of the files in `deploy/systemd/` with systemd's own tools: `systemd-analyze verify`
//! on `canopy.service` (in a scratch root holding the built `canopy` as /usr/bin/canopy, the
//! host's unit directory, and the man page `canopy man` generates, which the unit's
//! Documentation= names), and `systemd-sysusers` + `systemd-tmpfiles --create` on the sysusers
//! and tmpfiles files in a scratch root (the socket directory ends up owned by the group
//! sysusers made). A check whose tool is missing is skipped with a printed reason. The
//! window-manager helper in `deploy/window-managers/` is run against a real daemon in
//! `tests/daemon_cli.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/systemd")
        .join(file)
}

/// Whether `name` is installed; prints why the check is skipped when it is not.
fn installed(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {name} is not installed on this machine");
    }
    found
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("canopy-deploy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    println!(
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// `systemd-analyze verify` accepts deploy/systemd/canopy.service without a single complaint
/// about it: every key known and well-formed, ExecStart/ExecStartPre/ExecReload executable,
/// the Documentation= man page present.
#[test]
fn systemd_analyze_verifies_the_unit() {
    if !installed("systemd-analyze") {
        return;
    }
    let scratch = Scratch::new("verify");
    let root = scratch.0.join("root");
    for dir in ["usr/bin", "usr/lib/systemd", "etc/systemd/system", "bin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    // The unit's commands, at the paths it names, inside the scratch root.
    std::fs::copy(env!("CARGO_BIN_EXE_canopy"), root.join("usr/bin/canopy")).unwrap();
    let kill = Command::new("sh")
        .args(["-c", "command -v kill"])
        .output()
        .unwrap();
    let kill = String::from_utf8_lossy(&kill.stdout).trim().to_string();
    let kill = if kill.starts_with('/') {
        kill
    } else {
        "/bin/kill".into()
    };
    std::fs::copy(&kill, root.join("bin/kill")).unwrap();
    // The targets it orders itself against and is wanted by, from the host.
    let units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("the host's systemd unit directory");
    copy_dir(units, &root.join("usr/lib/systemd/system"));
    let unit = root.join("etc/systemd/system/canopy.service");
    std::fs::copy(deploy("canopy.service"), &unit).unwrap();
    // Documentation=man:canopy(1): the page the packaging installs, from `canopy man`.
    let man = scratch.0.join("man");
    std::fs::create_dir_all(man.join("man1")).unwrap();
    let page = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .arg("man")
        .output()
        .unwrap();
    assert!(page.status.success());
    std::fs::write(man.join("man1/canopy.1"), &page.stdout).unwrap();

    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&unit)
        .env("MANPATH", &man));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("canopy.service"))
        .collect();
    // verify exits 0 on mere warnings (an unknown key, a bad value), so those are checked too.
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The sysusers file makes group `canopy`, and the tmpfiles file then creates /run/canopy as
/// 0750 root:canopy (the control socket's directory) and /etc/canopy/policy.d.
#[test]
fn sysusers_and_tmpfiles_set_up_the_socket_directory() {
    if !installed("systemd-sysusers") || !installed("systemd-tmpfiles") {
        return;
    }
    // SAFETY: trivial syscall.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CANOPY_TESTS_WITHOUT_ROOT").is_some_and(|v| v == "1"),
            "this test needs root (chown in the scratch root); run as root or set CANOPY_TESTS_WITHOUT_ROOT=1 to skip it"
        );
        eprintln!("skipped: needs root (CANOPY_TESTS_WITHOUT_ROOT=1)");
        return;
    }
    let scratch = Scratch::new("tmpfiles");
    let root = &scratch.0;
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(deploy("canopy.sysusers.conf")));
    assert!(out.status.success());
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let gid: u32 = groups
        .lines()
        .find_map(|l| l.strip_prefix("canopy:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no group canopy in {groups:?}"));

    let out = run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(deploy("canopy.tmpfiles.conf")));
    assert!(out.status.success() && out.stderr.is_empty());
    use std::os::unix::fs::MetadataExt;
    let run_dir = std::fs::metadata(root.join("run/canopy")).unwrap();
    assert!(run_dir.is_dir());
    assert_eq!(run_dir.mode() & 0o7777, 0o750);
    assert_eq!(
        (run_dir.uid(), run_dir.gid()),
        (0, gid),
        "/run/canopy owner"
    );
    assert!(root.join("etc/canopy/policy.d").is_dir());
}
