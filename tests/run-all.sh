#!/usr/bin/env bash
# Runs every canopy test on a fresh Debian 12 machine: installs what is missing (apt packages; the
# test kernel is fetched and cached by the VM harness), then runs the whole cargo test suite,
# VM scenarios included. This is the README's test command and what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
bpf/vmlinux/check.sh
# canopy-controller and canopy-sys deny unwrap and panicking indexing outside tests (their
# lib.rs); any clippy warning there fails the run (about 90 s on a fresh clone, seconds warm).
cargo clippy -p canopy-controller -p canopy-sys --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
