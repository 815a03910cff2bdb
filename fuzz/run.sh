#!/usr/bin/env bash
# Runs the cargo-fuzz targets for a bounded time each (default 60 s; FUZZ_SECONDS overrides).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Not part of CI: CI runs
# the control and crash_record entry points bounded, coverage-free, in `cargo test`
# (crates/canopy-controller/tests/fuzz.rs). Seeds: the shipped policies and the golden test
# inputs; fuzz/seeds/<target>/ for control and crash_record.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs a nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
  exit 2
fi
mkdir -p corpus/policy corpus/schedqos corpus/control corpus/crash_record
cp ../policies/*.toml ../crates/canopy-policy/tests/golden/*.toml corpus/policy/
cp ../tests/golden/schedqos-seed/app_configs/*.json corpus/schedqos/
cp seeds/control/* corpus/control/
cp seeds/crash_record/* corpus/crash_record/
for target in policy schedqos control crash_record; do
  echo "fuzz/run.sh: fuzzing $target for ${seconds}s" >&2
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=65536
done
