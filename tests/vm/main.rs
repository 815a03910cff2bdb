// SPDX-License-Identifier: GPL-2.0-only
//! canopy's VM scenarios: each test boots Debian's sched_ext kernel under qemu (see
//! `tests/vm/README.md`) with the `canopy` binary and `canopy-guest` in the initramfs, runs a
//! shell script in the guest and asserts on the `CANOPY-RESULT` objects it printed. Tests run
//! one VM at a time (the harness holds a lock); each prints the kernel it ran on.

mod boot;
mod canopy_cli;
mod daemon_fallback;
mod daemon_storm;
mod debian_package;
mod fair_baseline;
mod harness;
mod systemd_guest;
mod workloads;

use std::time::Duration;

use canopy_vmtest::Scenario;

/// A scenario with the `canopy` binary at `/bin/canopy` in the guest.
pub fn scenario(name: &str) -> Scenario {
    Scenario::new(name)
        .with_binary(env!("CARGO_BIN_EXE_canopy"), "canopy")
        .timeout(Duration::from_secs(180))
}
