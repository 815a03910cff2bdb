#!/usr/bin/env bash
# Runs the cargo-fuzz targets for a bounded time each (default 60 s; FUZZ_SECONDS overrides).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Not part of CI.
# The seed corpus is the shipped policies and the golden test inputs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs a nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)" >&2
  exit 2
fi
mkdir -p corpus/policy corpus/schedqos
cp ../policies/*.toml ../crates/canopy-policy/tests/golden/*.toml corpus/policy/
cp ../tests/golden/schedqos-seed/app_configs/*.json corpus/schedqos/
for target in policy schedqos; do
  echo "fuzz/run.sh: fuzzing $target for ${seconds}s" >&2
  cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=65536
done
