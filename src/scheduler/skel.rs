// SPDX-License-Identifier: GPL-2.0-only
//! The libbpf-rs skeletons build.rs generates from `bpf/*.bpf.c`. Only `include!`s.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

pub mod root {
    include!(concat!(env!("OUT_DIR"), "/canopy_root.skel.rs"));
}

pub mod child {
    include!(concat!(env!("OUT_DIR"), "/canopy_child.skel.rs"));
}

/// The cgroup move watcher (`bpf/canopy_moves.bpf.c`).
pub mod moves {
    include!(concat!(env!("OUT_DIR"), "/canopy_moves.skel.rs"));
}

/// Test fixture: a foreign sub-scheduler (`bpf/fixtures/foreign_fifo.bpf.c`).
pub mod foreign_fifo {
    include!(concat!(env!("OUT_DIR"), "/foreign_fifo.skel.rs"));
}

/// Test fixture: a root scheduler that asks for a restart (`bpf/fixtures/restart_once.bpf.c`).
pub mod restart_once {
    include!(concat!(env!("OUT_DIR"), "/restart_once.skel.rs"));
}
