#!/usr/bin/env bash
# RUSTC_WRAPPER for fuzz/run.sh: adds the fuzzing flags (CANOPY_FUZZ_RUSTFLAGS: SanitizerCoverage
# and `--cfg fuzzing`) to canopy's own crates only: the libraries canopy-policy, canopy-controller
# and canopy-sys and the fuzz targets (package canopy-fuzz). Dependencies, build scripts and proc
# macros are compiled as cargo says (fuzz/Cargo.toml's release profile), uninstrumented.
# Cargo's fingerprints do not see these flags: fuzz/run.sh keys its build directory on them.
rustc=$1
shift
crate=
previous=
for arg in "$@"; do
  [[ $previous == --crate-name ]] && crate=$arg
  previous=$arg
done
case "${CARGO_PKG_NAME:-}:$crate" in
  *:build_script_*) ;;
  canopy-policy:* | canopy-controller:* | canopy-sys:* | canopy-fuzz:*)
    # shellcheck disable=SC2086 # one flag per word
    exec "$rustc" "$@" $CANOPY_FUZZ_RUSTFLAGS ;;
esac
exec "$rustc" "$@"
