#!/usr/bin/env bash
# Coverage-guided fuzzing of canopy's untrusted inputs with libFuzzer, on the stable toolchain:
# the policy parser and compiler (`policy`, `schedqos`), the control protocol (`control`: parse +
# authorize + handle) and crash-record adoption (`crash_record`), each for a bounded time.
#   fuzz/run.sh                        # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=30 fuzz/run.sh control crash_record
# tests/run-all.sh (CI) runs every target for a short time; a crash, a timeout or an OOM of any
# target fails the run. No nightly and no cargo-fuzz: the targets are built by stable cargo with
# the coverage instrumentation libFuzzer reads (SanitizerCoverage: inline 8-bit edge counters, the
# PC table, comparison tracing), the `fuzzing` cfg, debug assertions and overflow checks; the
# `libfuzzer-sys` crate builds and links libFuzzer itself. What nightly would add is a sanitizer
# (`-Zsanitizer=address`), which only matters for `unsafe` code: the fuzzed paths have none but
# two `geteuid()` calls. (cargo-fuzz would need nightly or RUSTC_BOOTSTRAP for its default ASan.)
# Seeds: the shipped policies and the golden test inputs, fuzz/seeds/<target>/ for control and
# crash_record. The corpus grows under the target dir and is kept between runs; a crashing input
# is written to <target dir>/fuzz/artifacts/<target>/ and its path printed.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
((${#targets[@]})) || targets=(policy schedqos control crash_record)
root=$(cd .. && pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$target_dir/fuzz"
host=$(rustc -vV | sed -n 's/^host: //p')

# The instrumentation only for the targets' code (with --target, RUSTFLAGS skip build scripts
# and proc macros, which would not link against libFuzzer's callbacks otherwise).
flags=(
  --cfg fuzzing
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cdebug-assertions
  -Coverflow-checks
  -Copt-level=2
)
bins=()
for target in "${targets[@]}"; do bins+=(--bin "$target"); done
echo "fuzz/run.sh: building ${targets[*]} (stable, SanitizerCoverage) in $out/build" >&2
RUSTFLAGS="${flags[*]}" cargo build --release --locked --target "$host" \
  --target-dir "$out/build" "${bins[@]}"

seed() {
  case "$1" in
    policy) cp "$root"/policies/*.toml "$root"/crates/canopy-policy/tests/golden/*.toml "$2"/ ;;
    schedqos) cp "$root"/tests/golden/schedqos-seed/app_configs/*.json "$2"/ ;;
    *) cp seeds/"$1"/* "$2"/ ;;
  esac
}

failed=()
for target in "${targets[@]}"; do
  corpus="$out/corpus/$target"
  artifacts="$out/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  seed "$target" "$corpus"
  echo "fuzz/run.sh: fuzzing $target for ${seconds}s (corpus $corpus)" >&2
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a leak or a huge allocation.
  if ! "$out/build/$host/release/$target" "$corpus" -max_total_time="$seconds" \
      -max_len=65536 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" \
      -print_final_stats=1 2> "$out/$target.log"; then
    failed+=("$target")
    tail -n 40 "$out/$target.log" >&2
    echo "fuzz/run.sh: $target FAILED; the input: $(ls -t "$artifacts" | head -n 1 | sed "s|^|$artifacts/|")" >&2
  else
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$out/$target.log" \
      | sed "s/^/fuzz\/run.sh: $target: /" >&2 || true
    grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9/]*[a-zA-Z]*' "$out/$target.log" | tail -n 1 \
      | sed "s/^/fuzz\/run.sh: $target: /" >&2 || true
  fi
done
if ((${#failed[@]})); then
  echo "fuzz/run.sh: crashed: ${failed[*]} (reproduce: $out/build/$host/release/<target> <input>)" >&2
  exit 1
fi
echo "fuzz/run.sh: ${targets[*]}: no crash in ${seconds}s each" >&2
