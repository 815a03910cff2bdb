// SPDX-License-Identifier: GPL-2.0-only
//! canopy's Debian package on the releases the systemd guest does not boot (issue 12: "installs
//! on Debian 12 and 13"; Debian 13 is `debian_package.rs`, a step of the systemd guest). The
//! package built for the tests (`canopy_vmtest::debian_package`, the README's command) is
//! installed with `apt install ./canopy_*.deb` into a minimal root file system of the release
//! (`scripts/build-package-chroot.sh`: mmdebstrap minbase plus systemd, cached) through chroot,
//! with no running systemd, as an image build or a container would install it: apt resolves
//! its dependencies from the release's archive (the network, as for the other images), the
//! maintainer scripts run
//! (the `canopy` group made by sysusers, the unit enabled, its start skipped because systemd is
//! not running), the binary runs on the release's libraries and checks the shipped policies;
//! then `apt purge` leaves none of the package's files, its configuration or its enablement.
//! No VM: nothing here needs the kernel, so it does not take the VM lock.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use canopy_vmtest::{debian_package, repo_root, target_dir};

/// Runs inside the chroot with the package at /root/canopy.deb. Prints `key=value` lines the
/// test reads; any failing command fails the script (and prints what it said).
const SCRIPT: &str = r#"
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
echo "release=$(. /etc/os-release; echo "$VERSION_ID")"
# apt resolves the package's dependencies (libelf1 and what else dpkg-shlibdeps found) from the
# release's archive, as on any machine.
apt-get update -q > /root/update.log 2>&1 || { cat /root/update.log; exit 1; }
apt-get install -y -q ./root/canopy.deb > /root/install.log 2>&1 \
  || { cat /root/install.log; exit 1; }
echo "installed=$(dpkg-query -W -f='${Version}' canopy)"
dpkg -L canopy | while read -r path; do [ -f "$path" ] && echo "$path"; done > /root/package-files
echo "files=$(wc -l < /root/package-files)"
echo "missing=$(while read -r path; do [ -e "$path" ] || echo "$path"; done < /root/package-files | tr '\n' ' ')"
echo "version=$(canopy --version)"
echo "group=$(getent group canopy | cut -d: -f1)"
echo "enabled=$(systemctl is-enabled canopy.service 2>&1 || true)"
# The conffile and every shipped policy pass the policy compiler on this release's libraries.
checked=0
for policy in /etc/canopy/policy.toml /usr/share/canopy/policies/*.toml; do
  canopy check "$policy" > /dev/null 2>&1 || { echo "check_failed=$policy"; canopy check "$policy"; exit 1; }
  checked=$((checked + 1))
done
echo "policies_checked=$checked"
apt-get purge -y -q canopy > /root/purge.log 2>&1 || { cat /root/purge.log; exit 1; }
echo "left_behind=$( {
  while read -r path; do [ -e "$path" ] && echo "$path"; done < /root/package-files
  for path in /etc/canopy /etc/systemd/system/multi-user.target.wants/canopy.service; do
    [ -e "$path" ] && echo "$path"
  done
  dpkg-query -W -f='${db:Status-Abbrev}' canopy 2>/dev/null | grep -v '^un' || true
} | tr '\n' ' ')"
"#;

/// A scratch root file system, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `key=value` lines of the script's output.
pub(crate) fn value<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// A fresh root file system of Debian @suite (`scripts/build-package-chroot.sh`'s cached tar,
/// unpacked under the target dir as @name), removed when the returned value drops.
pub(crate) fn unpacked_root(suite: &str, name: &str) -> anyhow::Result<Scratch> {
    let build = Command::new("bash")
        .arg(repo_root().join("scripts/build-package-chroot.sh"))
        .arg(suite)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/build-package-chroot.sh")?;
    if !build.status.success() {
        bail!(
            "scripts/build-package-chroot.sh {suite} failed ({})",
            build.status
        );
    }
    let tarball = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
    let root = Scratch(target_dir().join(format!("vm-work/{name}-{suite}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&root.0);
    std::fs::create_dir_all(&root.0)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root.0))?;
    // The host's resolver, for apt's downloads.
    std::fs::copy("/etc/resolv.conf", root.0.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the chroot")?;
    Ok(root)
}

fn install_and_purge_on(suite: &str) -> anyhow::Result<String> {
    let package = debian_package(1)?;
    let root = unpacked_root(suite, "package-chroot")?;
    std::fs::copy(&package, root.0.join("root/canopy.deb"))
        .with_context(|| format!("copying {}", package.display()))?;
    let script = root.0.join("root/check-package.sh");
    std::fs::write(&script, SCRIPT)?;
    let output = run(Command::new("chroot")
        .arg(&root.0)
        .args(["/bin/bash", "/root/check-package.sh"]))?;
    println!("{suite}:\n{output}");
    Ok(output)
}

/// Runs a command, its output or an error with all it printed.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{command:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{command:?} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

fn assert_installed_and_purged(output: &str, release: &str) {
    assert_eq!(value(output, "release"), Some(release), "{output}");
    assert!(
        value(output, "installed").is_some_and(|v| !v.is_empty()),
        "{output}"
    );
    assert!(
        value(output, "files").and_then(|n| n.parse::<u32>().ok()) > Some(10),
        "{output}"
    );
    assert_eq!(value(output, "missing"), Some(""), "{output}");
    assert!(
        value(output, "version").is_some_and(|v| v.starts_with("canopy ")),
        "{output}"
    );
    assert_eq!(value(output, "group"), Some("canopy"), "{output}");
    assert_eq!(value(output, "enabled"), Some("enabled"), "{output}");
    assert!(
        value(output, "policies_checked").and_then(|n| n.parse::<u32>().ok()) >= Some(2),
        "{output}"
    );
    assert_eq!(value(output, "left_behind"), Some(""), "{output}");
}

#[test]
fn the_package_installs_runs_and_purges_on_debian_12() -> anyhow::Result<()> {
    let output = install_and_purge_on("bookworm")?;
    assert_installed_and_purged(&output, "12");
    Ok(())
}
