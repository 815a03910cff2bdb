//! canopy-controller: the controller daemon's core.
//!
//! # Layout
//! - `policy_port`: the port onto a compiled policy, including THE decision function (the clamp).
//! - `event`: what happened (fork, exec, rename, exit, move, overrun, cgroups, focus).
//! - `controller`: tasks, groups, focus states, and the reaction to events; the one decision path.
//! - `backend`: the seams: `TaskSource` (reads facts) and `Backend` (applies decisions).
//! - `procfs`: the real `TaskSource`; `fallback`: sched_setattr + cgroup knobs; `scx`: BPF maps.
//! - `state_file`: the fallback backend's crash record of original attributes and knobs.
//! - `stats`: the one stats struct and its renderings (table, JSON, Prometheus).
//! - `protocol`, `auth`, `server`: the control API (JSON lines on a Unix socket, SO_PEERCRED).
//! - `daemon`: the tokio wiring: event sources, timers, signals, reload, sd_notify.
//! - `testing` (tests and the `testing` feature only, not in the release daemon): a small
//!   hand-built plan, a fake task source and a recording backend for tests and benchmarks;
//!   `fuzzing` (the `testing` feature): the fuzz entry points (control protocol, crash record).
//!
//! Outside tests `unwrap` and indexing or slicing that may panic are denied
//! (`clippy::unwrap_used`, `clippy::indexing_slicing`; the suite's clippy step in
//! `tests/run-all.sh` enforces it): each remaining index says why it holds.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod auth;
pub mod backend;
pub mod controller;
#[cfg(test)]
mod controller_tests;
pub mod daemon;
pub mod event;
pub mod fallback;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod policy_adapter;
pub mod policy_port;
pub mod procfs;
pub mod protocol;
pub mod scx;
pub mod sdnotify;
pub mod server;
pub mod state_file;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)] // test support, not in the release daemon
pub mod testing;
