// SPDX-License-Identifier: GPL-2.0-only
//! Scenario: the systemd guest itself (a real Debian 13 with systemd as PID 1, see
//! `canopy_vmtest::SystemdGuest`) comes up to `multi-user.target` with what canopy's Debian
//! scenarios rely on (sched_ext, cgroup2 with the cpu controller, a lingering user's manager),
//! answers SSH on a loopback port, and powers off cleanly. Boot and shutdown times are printed.

use std::time::Duration;

use canopy_vmtest::SystemdGuest;

#[test]
fn systemd_guest_boots_answers_ssh_and_powers_off() -> anyhow::Result<()> {
    let guest = SystemdGuest::new("systemd-guest-ssh")
        // A boot takes 25-30 s on a quiet host, over 100 s while other builds load it.
        .timeout(Duration::from_secs(240))
        .boot()?;
    let booted_in = guest.booted_in();
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
    let shutdown = guest.shutdown()?;
    println!(
        "systemd guest: SSH answered {:.1} s after qemu started, poweroff took {:.1} s",
        booted_in.as_secs_f64(),
        shutdown.as_secs_f64()
    );
    Ok(())
}
