// SPDX-License-Identifier: GPL-2.0-only
//! Scenario (a), boot: the test kernel boots to /init, reports its release, and sched_ext is
//! present but no BPF scheduler is loaded (`/sys/kernel/sched_ext/state` = `disabled`).

use std::sync::OnceLock;
use std::time::Duration;

use canopy_vmtest::Outcome;

use crate::support::{part, parts_script, shared_run};

/// The boot this test and `canopy_cli.rs` share (`boot`): parts `boot` and `canopy-cli`.
pub fn boot_part(name: &str) -> anyhow::Result<Outcome> {
    static SHARED: OnceLock<Result<Outcome, String>> = OnceLock::new();
    let outcome = shared_run(&SHARED, || {
        let parts = [
            (
                "boot",
                "canopy-guest sched-ext-state\ncanopy --version || true\n".to_string(),
            ),
            (
                "canopy-cli",
                "canopy-guest exec --check --kind canopy-help -- canopy --help\n".to_string(),
            ),
        ];
        crate::scenario("boot")
            .script(parts_script(&parts))
            .timeout(Duration::from_secs(180))
            .run()
            .map_err(anyhow::Error::from)
    })?;
    println!("{}", outcome.summary());
    part(outcome, name)
}

#[test]
fn boot_reports_kernel_and_sched_ext_disabled() -> anyhow::Result<()> {
    let outcome = boot_part("boot")?;

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
