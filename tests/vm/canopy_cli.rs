// SPDX-License-Identifier: GPL-2.0-only
//! The `canopy` binary under test runs in the guest (its shared libraries resolved by the
//! harness). The pattern for scheduler and daemon scenarios: run `canopy <subcommand>` through
//! `canopy-guest exec`, which reports exit status, duration and output (parsed when JSON).
//! It runs in the boot of `boot.rs` (part `canopy-cli`).

#[test]
fn canopy_binary_runs_in_guest() -> anyhow::Result<()> {
    let outcome = crate::boot::boot_part("canopy-cli")?;
    let help = outcome.result("canopy-help")?;
    assert_eq!(help["success"], true, "{help}");
    assert!(
        !help["stdout"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "{help}"
    );
    Ok(())
}
