// SPDX-License-Identifier: GPL-2.0-only
//! Scenario: everything canopy claims on a real Debian 13 with systemd as PID 1 (the systemd
//! guest, `canopy_vmtest::SystemdGuest`), in one boot: a boot of this guest costs 25-135 s of
//! TCG time and a clean poweroff 6-18 s, so the steps share it, in an order where each leaves
//! the guest as the next one needs it:
//! 1. the guest itself: `multi-user.target` with what the other steps rely on (sched_ext,
//!    cgroup2 with the cpu controller), answering SSH on a loopback port;
//! 2. the Debian package's whole life, ending purged (`debian_package.rs`);
//! 3. the Ansible role installing it again, from an apt repository and from a .deb path, rolling
//!    policies out and back (`ansible_rollout.rs`);
//! 4. a desktop session of a lingering user with the installed package (`debian_desktop.rs`);
//!
//! and a clean poweroff. Boot, step and shutdown times are printed. Each step starts as well
//! on a freshly booted guest as after the step before it (the desktop step installs the
//! package when the Ansible step has not), so the emulator's fault costs one step.

use std::path::Path;
use std::time::Duration;

use canopy_vmtest::{debian_package, GuestStep, RunningGuest, SystemdGuest};

/// Step 1: what the guest is.
fn guest_is_debian_with_systemd_sched_ext_and_cpu_controller(
    guest: &RunningGuest,
) -> anyhow::Result<()> {
    let facts = guest.ssh(
        "set -e; cat /proc/1/comm; systemctl is-system-running --wait || true; \
         cat /sys/kernel/sched_ext/state; cat /sys/fs/cgroup/cgroup.controllers; \
         systemctl show -P ActiveState multi-user.target",
    )?;
    let text = String::from_utf8_lossy(&facts.stdout).into_owned();
    assert!(
        facts.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&facts.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"systemd"), "PID 1: {text}");
    assert_eq!(lines.get(1), Some(&"running"), "system state: {text}");
    assert_eq!(lines.get(2), Some(&"disabled"), "sched_ext state: {text}");
    assert!(
        lines
            .get(3)
            .is_some_and(|line| line.split(' ').any(|c| c == "cpu")),
        "{text}"
    );
    assert_eq!(lines.get(4), Some(&"active"), "{text}");
    Ok(())
}

/// `canopy check` accepts a policy the guest will run (a typo fails here, not in the guest).
fn checked(policy: &str) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), policy).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canopy"))
        .arg("check")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    policy.to_string()
}

#[test]
fn debian_system_package_ansible_and_desktop_in_one_boot() -> anyhow::Result<()> {
    let first = debian_package(1)?;
    let second = debian_package(2)?;
    crate::debian_package::lintian_reports_no_errors(&first)?;
    let name = |path: &Path| path.file_name().unwrap().to_string_lossy().into_owned();
    let poweroff = SystemdGuest::new("debian-system")
        .with_file(&first, &format!("/root/{}", name(&first)))
        .with_file(&second, &format!("/root/{}", name(&second)))
        .with_file_contents(
            crate::debian_desktop::POLICY_PATH,
            checked(crate::debian_desktop::POLICY),
            0o644,
        )
        .with_file_contents(
            crate::debian_package::EMULATED_GUEST_DROP_IN_PATH,
            crate::debian_package::EMULATED_GUEST_DROP_IN.to_string(),
            0o644,
        )
        // A boot takes 25-30 s on a quiet host, over 100 s while other builds load it.
        .timeout(Duration::from_secs(300))
        // Each step starts as well on a fresh boot as after the one before it: a step the
        // emulator's fault struck runs again on a new boot (`run_steps`).
        .run_steps(&[
            GuestStep {
                name: "guest facts",
                run: &guest_is_debian_with_systemd_sched_ext_and_cpu_controller,
            },
            GuestStep {
                name: "Debian package",
                run: &crate::debian_package::install_reload_stop_kill_upgrade_purge,
            },
            GuestStep {
                name: "Ansible",
                run: &|guest| {
                    crate::ansible_rollout::rolls_out_refuses_a_broken_policy_and_rolls_back(
                        guest, &second,
                    )
                },
            },
            GuestStep {
                name: "desktop session",
                run: &crate::debian_desktop::focus_kwin_hook_and_build_load,
            },
        ])?;
    println!("systemd guest: poweroff: {:.1} s", poweroff.as_secs_f64());
    Ok(())
}
