#!/usr/bin/env bash
# Coverage-guided fuzzing of canopy's untrusted inputs with libFuzzer, on the stable toolchain:
# the policy parser and compiler (`policy`, `schedqos`), the control protocol (`control`: parse +
# authorize + handle) and crash-record adoption (`crash_record`), each for a bounded time.
#   fuzz/run.sh                        # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=30 fuzz/run.sh control crash_record
#   FUZZ_JOBS=1 fuzz/run.sh            # one target at a time (default: as many as CPUs)
#   CANOPY_FUZZ_BUILD_DIR=DIR fuzz/run.sh   # build the targets there (default <target dir>/fuzz/build)
# tests/run-all.sh (CI) runs every target for a short time; a crash, a timeout or an OOM of any
# target fails the run. No nightly and no cargo-fuzz: stable cargo builds the targets in
# fuzz/Cargo.toml's release profile with fuzz/rustc-wrapper.sh as RUSTC_WRAPPER, which gives
# canopy's own crates alone (canopy-policy, canopy-controller, canopy-sys and the targets) the
# coverage instrumentation libFuzzer reads (SanitizerCoverage: inline 8-bit edge counters, the PC
# table, comparison tracing) and the `fuzzing` cfg; those crates are built at opt-level 2 with
# debug assertions and overflow checks. Dependencies, build scripts and proc macros are built
# plain: their edges are not what we fuzz (nothing canopy uses reads `cfg(fuzzing)` in them), and
# uninstrumented they run faster. Against instrumenting every crate (RUSTFLAGS, before
# 2026-12-04), same seconds, same seeds: policy 20-25 k exec/s instead of 12-15 k, schedqos 73-84 k
# instead of 49-54 k, and the corpora reach as many of canopy's edges or more (policy ~5,150 instead
# of ~4,850 in 20 s). The `libfuzzer-sys` crate builds and links libFuzzer itself, with its
# memcmp/strcmp interceptors, which still see comparisons made in the dependencies. The cold
# build (control and crash_record, nice 19, idle 2-core host, 2026-12-04) takes 58-59 s, the
# same as with every crate instrumented (58.7-59.1 s; 112-114 CPU-s both): it is mostly the
# dependencies at opt-level >= 2 and libFuzzer's C++, not the instrumentation. Beside another
# engineer's VMs (load ~4) it took about 2 min, at load ~11 about 10 min (session 9); run-all.sh's
# second call builds in 2 s. What nightly would add is a sanitizer (`-Zsanitizer=address`),
# which only matters for `unsafe` code: the fuzzed paths have none but two `geteuid()` calls.
# (cargo-fuzz would need nightly or RUSTC_BOOTSTRAP for its default ASan.)
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
# tests/run-all.sh keeps this build under ~/.cache/canopy/fuzz-build: its dependencies are
# built once per machine, so a clean clone compiles only canopy's crates and the targets (20 s
# instead of 65 s, 2026-12-05). Cargo keeps each clone's crates apart (their paths differ).
build="${CANOPY_FUZZ_BUILD_DIR:-$out/build}"

# Only canopy's own crates are instrumented (fuzz/rustc-wrapper.sh adds these flags to them); the
# release profile of fuzz/Cargo.toml builds the dependencies, build scripts and proc macros plain.
flags=(
  --cfg fuzzing
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
)
export CANOPY_FUZZ_RUSTFLAGS="${flags[*]}"
export RUSTC_WRAPPER="$PWD/rustc-wrapper.sh"
unset RUSTC_WORKSPACE_WRAPPER RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
# Cargo's fingerprints do not see what the wrapper adds: a build made with other flags or another
# wrapper (or by the old run.sh, all of it instrumented) is removed rather than reused.
stamp=$(printf '%s\n' "$CANOPY_FUZZ_RUSTFLAGS" | cat - rustc-wrapper.sh | sha256sum | cut -c1-16)
if [[ -d $build && $(cat "$build/canopy-fuzz-flags" 2>/dev/null) != "$stamp" ]]; then
  rm -rf "$build"
fi
mkdir -p "$build"
echo "$stamp" > "$build/canopy-fuzz-flags"
bins=()
for target in "${targets[@]}"; do bins+=(--bin "$target"); done
echo "fuzz/run.sh: building ${targets[*]} (stable, SanitizerCoverage on canopy's crates) in $build" >&2
cargo build --release --locked --target-dir "$build" "${bins[@]}"

seed() {
  case "$1" in
    policy) cp "$root"/policies/*.toml "$root"/crates/canopy-policy/tests/golden/*.toml "$2"/ ;;
    schedqos) cp "$root"/tests/golden/schedqos-seed/app_configs/*.json "$2"/ ;;
    *) cp seeds/"$1"/* "$2"/ ;;
  esac
}

# One target: its corpus seeded, libFuzzer for FUZZ_SECONDS, its exit status in $out/<target>.status.
fuzz_one() {
  local target=$1 status=0
  local corpus="$out/corpus/$target" artifacts="$out/artifacts/$target"
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a leak or a huge allocation.
  "$build/release/$target" "$corpus" -max_total_time="$seconds" \
    -max_len=65536 -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$artifacts/" \
    -print_final_stats=1 2> "$out/$target.log" || status=$?
  echo "$status" > "$out/$target.status"
}

# The targets run side by side, at most FUZZ_JOBS at a time (default: one per CPU). On an idle
# 2-core host each still gets a whole CPU for its FUZZ_SECONDS, and run-all.sh's fuzzing takes
# 52-53 s instead of 104 s (2026-12-04, exec/s per target within the run-to-run spread: control
# 263-267 k side by side, 255-275 k alone; policy 21-28 k, 23-25 k; schedqos 78-89 k, 100-103 k).
# On a host kept busy by others they share what is left: FUZZ_JOBS=1 runs them one at a time.
parallel=${FUZZ_JOBS:-$(nproc)}
running=0
for target in "${targets[@]}"; do
  mkdir -p "$out/corpus/$target" "$out/artifacts/$target"
  seed "$target" "$out/corpus/$target"
  rm -f "$out/$target.status"
  if ((running >= parallel)); then
    wait -n || true
    running=$((running - 1))
  fi
  echo "fuzz/run.sh: fuzzing $target for ${seconds}s (corpus $out/corpus/$target)" >&2
  fuzz_one "$target" &
  running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
  artifacts="$out/artifacts/$target"
  if [[ $(cat "$out/$target.status" 2>/dev/null) != 0 ]]; then
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
  echo "fuzz/run.sh: crashed: ${failed[*]} (reproduce: $build/release/<target> <input>)" >&2
  exit 1
fi
echo "fuzz/run.sh: ${targets[*]}: no crash in ${seconds}s each" >&2
