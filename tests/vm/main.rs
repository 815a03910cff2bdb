// SPDX-License-Identifier: GPL-2.0-only
//! canopy's VM scenarios: each test boots Debian's sched_ext kernel under qemu (see
//! `tests/vm/README.md`) with the `canopy` binary and `canopy-guest` in the initramfs, runs a
//! shell script in the guest and asserts on the `CANOPY-RESULT` objects it printed. Tests run
//! one VM at a time (the harness holds a lock); each prints the kernel it ran on.
// The gates write `!(x <= limit)` on purpose: a NaN figure (a measurement that did not happen)
// fails them, where `x > limit` would pass it.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod ansible_rollout;
mod boot;
mod canopy_cli;
mod contract_benchmark;
mod cpu_contract;
mod daemon_fallback;
mod daemon_reload;
mod daemon_scx;
mod daemon_storm;
mod debian_desktop;
mod debian_package;
mod debian_releases;
mod fair_baseline;
mod fresh_system;
mod harness;
mod kubernetes_policy;
mod sched_benchmark;
mod sched_children;
mod sched_classes;
mod sched_root;
mod sched_run_schedulers;
mod sched_shares;
mod scx_bounds;
mod scx_faults;
mod support;
mod systemd_guest;
mod workloads;

pub use support::scenario;
