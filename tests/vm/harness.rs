// SPDX-License-Identifier: GPL-2.0-only
//! The harness's own failure paths, in a real guest: a failing script, a hung guest and a
//! kernel panic are errors that name the cause and carry the guest log's tail, and qemu is
//! gone afterwards; kernel warnings hidden from the quiet console still reach the outcome. Scheduler scenarios depend on these (a broken BPF scheduler can hang or
//! crash the guest).

use std::time::Duration;

use canopy_vmtest::Error;

/// True while some process's command line mentions the scenario's log stem (its initramfs).
fn qemu_still_running(log_path: &std::path::Path) -> bool {
    let stem = log_path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&stem))
                .unwrap_or(false)
        })
}

#[test]
fn failing_script_is_an_error_with_the_log_tail() {
    let error = crate::scenario("harness-fail")
        .script("echo before-the-failure\nfalse\necho never-printed\n")
        .timeout(Duration::from_secs(180))
        .run()
        .expect_err("a script that fails must fail the scenario");
    match &error {
        Error::Guest {
            reason,
            log_tail,
            log_path,
            ..
        } => {
            assert!(reason.contains("exited with status 1"), "{error}");
            assert!(log_tail.contains("before-the-failure"), "{error}");
            assert!(!log_tail.contains("never-printed"), "{error}");
            assert!(!qemu_still_running(log_path));
        }
        other => panic!("expected Error::Guest, got {other}"),
    }
}

#[test]
fn hung_guest_times_out_and_qemu_is_killed() {
    // The script's own limit starts at the guest's `boot` result, so a slow boot on a loaded
    // host (over 15 s at load 40) does not count; the whole run's limit is the default. This
    // scenario held the VM for 45 s with a 45 s limit from qemu's start, about 10 s now.
    let error = crate::scenario("harness-timeout")
        .script("echo about-to-hang\nsleep 600\n")
        .script_timeout(Duration::from_secs(5))
        .run()
        .expect_err("a hung guest must time out");
    match &error {
        Error::Timeout {
            log_tail,
            log_path,
            timeout,
            ..
        } => {
            assert_eq!(*timeout, Duration::from_secs(5), "{error}");
            assert!(log_tail.contains("about-to-hang"), "{error}");
            assert!(!qemu_still_running(log_path), "qemu survived the timeout");
        }
        other => panic!("expected Error::Timeout, got {other}"),
    }
}

#[test]
fn kernel_panic_is_reported() {
    let error = crate::scenario("harness-panic")
        .script("echo c > /proc/sysrq-trigger\nsleep 60\n")
        .timeout(Duration::from_secs(180))
        .run()
        .expect_err("a kernel panic must fail the scenario");
    match &error {
        Error::Guest {
            reason, log_path, ..
        } => {
            assert!(reason.contains("kernel panic"), "{error}");
            assert!(!qemu_still_running(log_path));
        }
        other => panic!("expected Error::Guest, got {other}"),
    }
}

#[test]
fn kernel_warnings_reach_the_outcome() -> anyhow::Result<()> {
    // A WARN splat (KERN_WARNING) is hidden from the `quiet` console but must be reported.
    let outcome = crate::scenario("harness-warn")
        .script("echo 'WARNING: CPU: 0 PID: 1 at canopy-test' > /dev/kmsg\n")
        .timeout(Duration::from_secs(180))
        .run()?;
    let warnings = outcome.kernel_warnings();
    assert!(
        warnings.iter().any(|line| line.contains("canopy-test")),
        "{warnings:?}"
    );
    Ok(())
}
