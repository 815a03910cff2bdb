// SPDX-License-Identifier: GPL-2.0-only
//! Scenario (a), boot: the test kernel boots to /init, reports its release, and sched_ext is
//! present but no BPF scheduler is loaded (`/sys/kernel/sched_ext/state` = `disabled`).

use std::time::Duration;

#[test]
fn boot_reports_kernel_and_sched_ext_disabled() -> anyhow::Result<()> {
    let outcome = crate::scenario("boot")
        .script("canopy-guest sched-ext-state\ncanopy --version || true\n")
        .timeout(Duration::from_secs(180))
        .run()?;
    println!("{}", outcome.summary());

    let boot = outcome.result("boot")?;
    let release = boot["kernel_release"].as_str().unwrap_or_default();
    assert!(!release.is_empty(), "no kernel release in {boot}");
    let kernel = canopy_vmtest::kernel()?;
    assert_eq!(
        release, kernel.release,
        "the guest runs a different kernel than the harness fetched"
    );
    assert_eq!(boot["sched_ext_state"], "disabled", "boot result: {boot}");
    assert!(
        boot["cgroup_subtree_control"]
            .as_str()
            .unwrap_or_default()
            .contains("cpu"),
        "{boot}"
    );

    let state = outcome.result("sched-ext-state")?;
    assert_eq!(state["present"], true, "{state}");
    assert_eq!(state["state"], "disabled", "{state}");
    println!(
        "kernel {release}: /sys/kernel/sched_ext/state = {}",
        state["state"]
    );
    Ok(())
}
