#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Builds canopy-guest, the binary every VM scenario puts in its guest: a stripped release build
# in its own target directory (default ${CARGO_TARGET_DIR:-target}/guest), so it never waits on
# the build lock of a running `cargo test`. The one definition of that build: the VM harness
# runs it (crates/canopy-vmtest/src/guest_build.rs, once per test process) and tests/run-all.sh
# starts it early, beside the workspace's compile, so the harness then finds it up to date.
# Prints nothing on stdout; cargo's messages go to stderr.
#   Usage: build-guest.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-${CARGO_TARGET_DIR:-target}/guest}
# Small, fast-to-pack binary: the initramfs is rebuilt for every scenario.
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true
exec "${CARGO:-cargo}" build --release --locked --package canopy-guest --bin canopy-guest \
  --target-dir "$target" >&2
