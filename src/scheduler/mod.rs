// SPDX-License-Identifier: GPL-2.0-only
//! The BPF scheduler loader: canopy's root scheduler and its child schedulers.
pub mod bpf_intf;
pub mod skel;
