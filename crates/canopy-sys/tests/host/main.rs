//! canopy-sys against the live host kernel: real /proc, real sched_setattr, a real cgroup2
//! directory, the real proc connector and inotify. No mocks; needs root (as CI runs).
//! Every test cleans up what it creates, also when it fails (guards in `support`).
//! `fake_trees` checks that the same readers work on made-up /proc and cgroupfs trees.

mod cgroup;
mod fake_trees;
mod peer;
mod proc_events;
mod procfs;
mod sched;
mod support;
mod watch;
