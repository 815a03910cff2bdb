#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Gets ready, ahead of time, what the VM scenarios would otherwise make on first use inside
# `cargo test`: the test kernel (scripts/fetch-kernel.sh), the systemd guest's image
# (scripts/build-systemd-guest.sh), canopy-guest (scripts/build-guest.sh) and cargo-deb
# (scripts/build-deb.sh --install-tool). tests/run-all.sh runs this in the background while the
# workspace compiles, so the downloads and these builds overlap the compile instead of running
# with the VM lock held or beside timing scenarios. Each is idempotent and cached: on a warm
# machine this takes seconds. A failure here is only reported; the test that needs the piece
# runs the same script again and fails with its message.
# Prints one line per piece with its seconds; exits non-zero if any piece failed.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
timed() {
  local name=$1 start=$SECONDS
  shift
  if "$@"; then
    echo "prepare-vm-tests: $name ready in $((SECONDS - start)) s"
  else
    echo "prepare-vm-tests: $name FAILED after $((SECONDS - start)) s (the tests will retry it)"
    status=1
    return 1
  fi
}
image() {
  local kernel
  kernel=$(scripts/fetch-kernel.sh) && scripts/build-systemd-guest.sh "$kernel" >/dev/null
}
# The kernel and the image are mostly downloads: started first, beside the CPU-bound builds.
timed "kernel and systemd guest image" image &
image_job=$!
timed canopy-guest scripts/build-guest.sh
timed cargo-deb scripts/build-deb.sh --install-tool
wait "$image_job" || status=1
exit "$status"
