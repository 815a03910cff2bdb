// SPDX-License-Identifier: GPL-2.0-only
//! The README's main command on a fresh Debian 13 (issue 12, item 4): a clean trixie root file
//! system (`scripts/build-package-chroot.sh`: mmdebstrap's minbase plus systemd, with the
//! archive's usual sources: trixie, trixie-updates, trixie-security) with only the repository's
//! files copied in, where `bash scripts/run-canopy.sh` must, as for a newcomer, install the
//! Debian packages the build needs, install Rust through rustup (there is no cargo), build the
//! release binary and run the daemon with the shipped default policy until Ctrl-C.
//!
//! It runs in a chroot on the host, in a mount namespace of its own (`unshare --mount`:
//! `/proc`, `/sys` and `/dev` bound in, `/run` and `/tmp` fresh), so the daemon runs on the host's
//! kernel: there, `--mode auto` picks what the host has (the fallback on a kernel without
//! sched_ext sub-schedulers, which CI's and the dev machine's are). Building canopy under the
//! emulator would take longer than CI's whole budget; the daemon's scx mode on the 7.3 kernel is
//! what the systemd guest's scenarios prove with the same binary's test build.
//!
//! The check: the daemon answers `canopy status` and says its mode and why; a process the default
//! policy makes BACKGROUND (rule `indexers`: a `sleep` copied as `updatedb`), started before the
//! daemon, gets the fallback's BACKGROUND attributes; Ctrl-C (SIGINT) ends the daemon with
//! status 0 and puts that process back as it was. The build holds both host cores for minutes,
//! so the test holds the VM lock from the moment cargo starts (the downloads and installs
//! before it run beside the VM scenarios): no guest's timing shares the CPUs with the build. apt's
//! downloads are kept between runs in `~/.cache/canopy/fresh-system-apt` (only the downloads: apt
//! still resolves and installs every package); rustup and crates.io download afresh, as on a
//! new machine. The chroot gets the host's network setup and nothing else of it: its resolver
//! and its local certificate authorities (`/usr/local/share/ca-certificates`, which a network
//! whose HTTPS goes through a proxy needs, as the dev and CI machines' does; the
//! `ca-certificates` package that install-deps.sh installs takes them in). The script runs with
//! a clean environment (`PATH`, `HOME`, `LANG`), as a login shell's.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use canopy_vmtest::{repo_root, vm_lock_path, VmLock};

use crate::debian_releases::{unpacked_root, value};

/// What a Debian 13 installation's apt sources say (the installer writes the same three).
const SOURCES: &str = "Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Runs inside the chroot with the repository at /root/canopy, as root. Prints `key=value`
/// lines the test reads.
const MAIN_COMMAND: &str = r#"
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /root/canopy
echo "release=$(. /etc/os-release; echo "$VERSION_ID")"
echo "cargo_before=$(command -v cargo || echo none)"
# The shipped default policy's rule `indexers` makes a process named updatedb BACKGROUND.
cp /bin/sleep /tmp/updatedb
/tmp/updatedb 3600 &
probe=$!
attributes() {
  local policy
  policy=$(chrt -p "$1" | sed -n 's/.*scheduling policy: //p')
  echo "$policy/nice $(cut -d' ' -f19 "/proc/$1/stat")"
}
before=$(attributes "$probe")
echo "probe_before=$before"
started=$(date +%s)
bash scripts/run-canopy.sh > /root/run-canopy.log 2>&1 &
daemon=$!
trap 'kill -INT "$daemon" 2> /dev/null || true; kill "$probe" 2> /dev/null || true' EXIT
until [ -x target/release/canopy ] && target/release/canopy status --json > /root/status.json 2> /dev/null; do
  kill -0 "$daemon" 2> /dev/null || { echo "daemon=exited before answering"; tail -n 60 /root/run-canopy.log; exit 1; }
  sleep 1
done
echo "ready_after_s=$(($(date +%s) - started))"
for _ in $(seq 100); do
  [ "$(attributes "$probe")" != "$before" ] && break
  sleep 0.1
done
echo "probe_tagged=$(attributes "$probe")"
kill -INT "$daemon"
exit_status=0
wait "$daemon" || exit_status=$?
echo "daemon_exit=$exit_status"
echo "probe_after=$(attributes "$probe")"
tail -n 5 /root/run-canopy.log | sed 's/^/log: /'
"#;

/// With `CANOPY_FRESH_SYSTEM_TESTS=1`, after the main command in the same chroot: the README's
/// test command without its VM scenarios (`tests/run-all.sh --host-only`: the full install,
/// clippy as the compiler, every host test against the host's kernel, fuzzing). Not in CI's
/// run: a second build of the whole workspace and its tests from nothing costs more minutes
/// than CI's budget has left (567 s on the dev host, 2026-12-05: install and build 209 s, the
/// tests 139 s, fuzzing with its build 125 s). Its first run found the host tests that run a
/// built executable as another user failing with EACCES when the checkout is under `/root`;
/// they now run copies (`copy_for_other_users` in `canopy_controller::testing::host`).
const TEST_COMMAND: &str = r#"
started=$(date +%s)
status=0
bash tests/run-all.sh --host-only > /root/run-all.log 2>&1 || status=$?
echo "test_command_exit=$status"
echo "test_command_s=$(($(date +%s) - started))"
grep -E '^test result|^run-all:|FAILED|panicked' /root/run-all.log | sed 's/^/log: /' || true
"#;

/// Sets the namespace up and enters the chroot (run by `unshare --mount --propagation private`,
/// so nothing mounted here is seen outside, and all of it goes when the namespace does).
const ENTER: &str = r#"
set -euo pipefail
root=$1 apt_cache=$2 seconds=$3
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root/var/cache/apt/archives"
mount --bind "$apt_cache" "$root/var/cache/apt/archives"
exec timeout --kill-after=30 "$seconds" chroot "$root" /bin/bash /root/fresh-system.sh
"#;

#[test]
fn the_readme_main_command_runs_canopy_on_a_fresh_debian_13() -> anyhow::Result<()> {
    let root = unpacked_root("trixie", "fresh-system")?;
    let started = Instant::now();
    std::fs::remove_file(root.0.join("etc/apt/sources.list")).ok();
    std::fs::write(
        root.0.join("etc/apt/sources.list.d/debian.sources"),
        SOURCES,
    )?;
    let local_authorities = root.0.join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&local_authorities)?;
    if let Ok(entries) = std::fs::read_dir("/usr/local/share/ca-certificates") {
        for entry in entries.flatten() {
            std::fs::copy(entry.path(), local_authorities.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    // Only the repository: its tracked files as they are in this work tree.
    let tracked = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["ls-files", "-z"])
        .output()
        .context("git ls-files")?;
    anyhow::ensure!(tracked.status.success(), "git ls-files failed");
    let destination = root.0.join("root/canopy");
    std::fs::create_dir_all(&destination)?;
    let mut pack = Command::new("tar")
        .arg("-C")
        .arg(repo_root())
        .args(["--null", "-T", "-", "-cf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("tar")?;
    {
        use std::io::Write;
        let mut input = pack.stdin.take().context("tar's stdin")?;
        input.write_all(&tracked.stdout)?;
    }
    let unpack = Command::new("tar")
        .arg("-C")
        .arg(&destination)
        .arg("-xf")
        .arg("-")
        .stdin(pack.stdout.take().context("tar's stdout")?)
        .status()
        .context("tar -x")?;
    anyhow::ensure!(
        pack.wait()?.success() && unpack.success(),
        "copying the repository failed"
    );
    let test_command = std::env::var("CANOPY_FRESH_SYSTEM_TESTS").is_ok_and(|v| v == "1");
    let script = if test_command {
        format!("{MAIN_COMMAND}{TEST_COMMAND}")
    } else {
        MAIN_COMMAND.to_string()
    };
    std::fs::write(root.0.join("root/fresh-system.sh"), script)?;
    let apt_cache = canopy_cache().join("fresh-system-apt");
    std::fs::create_dir_all(apt_cache.join("partial"))?;
    let output_path = root.0.join("root/fresh-system.out");
    let output_file = std::fs::File::create(&output_path)?;
    let mut chroot = Command::new("unshare")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            ENTER,
            "enter",
        ])
        .arg(&root.0)
        .arg(&apt_cache)
        // A fresh machine's downloads and build: minutes; a hang must not hold CI.
        .arg(if test_command { "5400" } else { "1800" })
        .stdin(Stdio::null())
        .stdout(output_file.try_clone()?)
        .stderr(output_file)
        .spawn()
        .context("unshare")?;
    // The downloads and the packages' and Rust's installation run beside the VM scenarios; from
    // the moment cargo makes the target dir (the build, then the daemon, then with
    // CANOPY_FRESH_SYSTEM_TESTS the test command) this holds the VM lock, so no guest's
    // timing shares the CPUs with the build or the daemon that changes the host's tasks.
    let mut lock = None;
    let mut locked_at = None;
    let status = loop {
        if let Some(status) = chroot.try_wait()? {
            break status;
        }
        if lock.is_none() && root.0.join("root/canopy/target").exists() {
            lock = Some(VmLock::acquire(&vm_lock_path(), "fresh-debian-13")?);
            locked_at = Some(Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    drop(lock);
    let held = started.elapsed();
    let locked = locked_at.map(|at| at.elapsed()).unwrap_or_default();
    let output = std::fs::read_to_string(&output_path).unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "the fresh Debian 13 chroot failed ({status}):\n{output}"
    );
    let what = if test_command {
        "main command, then its test command's host part"
    } else {
        "main command"
    };
    println!(
        "{output}\nfresh Debian 13: the README's {what}, {held:.0?} in all, the build and after \
         {locked:.0?} of it (holding the VM lock)"
    );
    assert_eq!(value(&output, "release"), Some("13"), "{output}");
    assert_eq!(value(&output, "cargo_before"), Some("none"), "{output}");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.0.join("root/status.json"))?)
            .context("canopy status --json")?;
    let mode = status["mode"].as_str().unwrap_or_default();
    let reason = status["mode_reason"].as_str().unwrap_or_default();
    println!("mode {mode} ({reason}), policy {}", status["policy_hash"]);
    assert!(
        reason.starts_with("auto:") && (mode == "fallback" || mode == "scx"),
        "the daemon did not say it chose its mode itself: {status}"
    );
    let before = value(&output, "probe_before").unwrap_or_default();
    let tagged = value(&output, "probe_tagged").unwrap_or_default();
    if mode == "fallback" {
        assert!(
            tagged != before,
            "the default policy's BACKGROUND rule did not change `updatedb` ({before}): {output}"
        );
    }
    assert_eq!(value(&output, "daemon_exit"), Some("0"), "{output}");
    assert_eq!(
        value(&output, "probe_after"),
        Some(before),
        "Ctrl-C did not put `updatedb` back as it was: {output}"
    );
    if test_command {
        assert_eq!(
            value(&output, "test_command_exit"),
            Some("0"),
            "tests/run-all.sh --host-only failed on a fresh Debian 13: {output}"
        );
    } else {
        println!(
            "the README's test command's host part: CANOPY_FRESH_SYSTEM_TESTS=1 runs it here too"
        );
    }
    Ok(())
}

/// `~/.cache/canopy` (`CANOPY_CACHE` overrides), where the harness keeps what it downloads.
fn canopy_cache() -> std::path::PathBuf {
    if let Some(cache) = std::env::var_os("CANOPY_CACHE") {
        return cache.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::PathBuf::from(home).join(".cache/canopy")
}
