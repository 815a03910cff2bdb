#!/usr/bin/env bash
# Runs every canopy test on a fresh Debian 12 machine: installs what is missing (apt packages; the
# test kernel is fetched and cached by the VM harness), then runs the whole cargo test suite,
# VM scenarios included, then fuzzes the untrusted inputs for a bounded time (fuzz/run.sh, about
# 50 s on 2 cores plus its build). This is the README's test command and what .ci/run runs.
#   --host-only   everything but the VM scenarios (no qemu boots, no test kernel): what a fresh
#                 machine's run proves about the install, the build, the host tests and fuzzing
#                 (tests/vm/fresh_system.rs runs it on a fresh Debian 13)
set -euo pipefail
cd "$(dirname "$0")/.."
host_only=false
if [[ ${1:-} == --host-only ]]; then host_only=true; shift; fi
[[ $# -eq 0 ]] || { echo "usage: tests/run-all.sh [--host-only]" >&2; exit 2; }
scripts/install-deps.sh
# Where install-deps.sh installed Rust (a fresh machine has no cargo).
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
bpf/vmlinux/check.sh
# Clippy lints as the workspace compiles, instead of in a `cargo clippy` pass of its own:
# clippy-driver (what `cargo clippy` runs) is the compiler of the workspace's own crates
# (cargo's RUSTC_WORKSPACE_WRAPPER; dependencies still go to rustc), so one build both lints
# and makes the test binaries, and any clippy or rustc warning in the workspace, tests and VM
# scenarios included, fails it. `cargo clippy --all-targets` checked every dependency a
# second time (metadata only) before the test build compiled them: 81 s of CI's 2 cores. Set
# before anything compiles, so every later cargo call (the VM harness's canopy-guest build,
# the tests' own) finds the same fingerprints and rebuilds nothing.
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
[[ -x $RUSTC_WORKSPACE_WRAPPER ]] || { echo "run-all: no clippy-driver (rustup component add clippy)" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# What the VM scenarios need besides the workspace (kernel, systemd guest image, canopy-guest,
# cargo-deb) is made in the background while the workspace compiles (seconds when cached).
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
run_started=$(date +%s)
prepare=
$host_only || { scripts/prepare-vm-tests.sh > "$target/prepare-vm-tests.log" 2>&1 & prepare=$!; }
# First the shipped feature set (the test build turns on canopy-controller's `testing` through
# the dev-dependencies), where canopy-controller and canopy-sys deny unwrap and panicking
# indexing (their lib.rs); then every target of the workspace. A few minutes on a fresh clone,
# seconds warm. (By hand: `cargo clippy --workspace --all-targets -- -D warnings` and
# `cargo clippy -p canopy -p canopy-controller -p canopy-sys -- -D warnings` lint the same.)
cargo build -p canopy -p canopy-controller -p canopy-sys --locked
cargo test --workspace --locked --no-run
built_at=$(date +%s)
if [[ -n $prepare ]]; then
  wait "$prepare" || echo "run-all: preparing the VM tests failed (see below); the tests retry it" >&2
  grep '^prepare-vm-tests:' "$target/prepare-vm-tests.log" >&2 || tail -n 20 "$target/prepare-vm-tests.log" >&2
fi
# --host-only: every test of the VM scenarios' binary is skipped by its exact name (the list
# is the binary's own, so a new scenario is skipped too); every other test binary runs whole.
test_filter=()
if $host_only; then
  mapfile -t vm_tests < <(cargo test --locked --test vm -- --list --format terse | sed -n 's/: test$//p')
  ((${#vm_tests[@]})) || { echo "run-all: could not list the VM scenarios" >&2; exit 1; }
  test_filter=(-- --exact)
  for name in "${vm_tests[@]}"; do test_filter+=(--skip "$name"); done
  echo "run-all: --host-only: skipping the ${#vm_tests[@]} VM scenarios" >&2
fi
# Every test; then, when some failed, their names and messages once more at the very end: CI
# shows the head and the tail of the output, and a failing test's message otherwise sits in the
# middle, before the results of the test binaries that ran after it.
log="$target/test-output.log"
status=0
cargo test --workspace --locked --no-fail-fast "${test_filter[@]}" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "run-all: cargo test failed (exit $status); the failing tests and their messages:" >&2
  awk '
    /^---- .* ----$/ { section = $0; shown = 0; next }
    /^thread .* panicked at / || /^Error: / { print section; shown = 30 }
    shown > 0 { print; shown--; if (/^note: run with/) shown = 0 }
    /^test .* \.\.\. FAILED$/ { failed[++count] = $0 }
    END { for (i = 1; i <= count; i++) print failed[i] }
  ' "$log" >&2 || true
fi
# Coverage-guided fuzzing, bounded (fuzz/run.sh: stable toolchain, libFuzzer): the control
# protocol and crash-record adoption 30 s each, the policy parsers 20 s each (two targets at a
# time, one per CPU), after the tests so it does not share the CPUs with the VM scenarios. A
# crash, hang or OOM fails the run.
tested_at=$(date +%s)
fuzz_status=0
# (Its own workspace and toolchain choice: built by rustc, not linted here.)
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
# The fuzz targets' build is cached beside the test kernel (fuzz/run.sh says why).
export CANOPY_FUZZ_BUILD_DIR=${CANOPY_FUZZ_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/canopy/fuzz-build}
FUZZ_SECONDS=${CANOPY_CI_FUZZ_SECONDS:-30} fuzz/run.sh control crash_record || fuzz_status=$?
if [ "$fuzz_status" -eq 0 ]; then
  FUZZ_SECONDS=${CANOPY_CI_FUZZ_SECONDS:-20} fuzz/run.sh policy schedqos || fuzz_status=$?
fi
if [ "$fuzz_status" -ne 0 ]; then
  echo "run-all: fuzzing failed (exit $fuzz_status); see fuzz/run.sh's lines above" >&2
  [ "$status" -ne 0 ] || status=$fuzz_status
fi
# Where this run's time went (issue 12: CI's budget): each VM scenario's hold of the VM, longest
# first, and the systemd guest's steps (appended by canopy-vmtest; earlier runs' rows skipped).
if [ -s "$target/vm-logs/timings.tsv" ]; then
  echo "run-all: VM time by scenario (seconds holding the VM), this run:" >&2
  awk -F'\t' -v since="$run_started" '$1 >= since { held[$2] += $3; total += $3; runs++ }
    END { for (name in held) printf "  %7.1f  %s\n", held[name], name
          printf "  %7.1f  all %d runs\n", total, runs }' "$target/vm-logs/timings.tsv" \
    | sort -rn | head -n 16 >&2
fi
if [ -s "$target/vm-logs/steps.tsv" ]; then
  echo "run-all: the systemd guest's steps (seconds), this run:" >&2
  awk -F'\t' -v since="$run_started" '$1 >= since { printf "  %7.1f  %s: %s\n", $4, $2, $3 }' \
    "$target/vm-logs/steps.tsv" >&2
fi
echo "run-all: phases (wall seconds): install and build $((built_at - run_started)), tests $((tested_at - built_at)), fuzzing with its build $(($(date +%s) - tested_at))" >&2
exit "$status"
