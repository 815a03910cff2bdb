#!/usr/bin/env bash
# Runs canopy's main job on this machine: installs what the build needs (idempotently: Debian
# packages, and a Rust toolchain by rustup where there is no cargo), builds
# the release binary, and runs the daemon in the foreground with a policy (default: the shipped
# conservative policies/default.toml). Mode `auto`: canopy's sched_ext schedulers where the
# kernel has sched_ext with cgroup sub-schedulers, else the sched_setattr + cgroup v2 fallback.
# Extra arguments go to `canopy run` (e.g. --mode fallback, --metrics-listen 127.0.0.1:9300).
# Needs root (sched_setattr on other users' tasks, cgroupfs, BPF). Ctrl-C stops it and puts
# every task back as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
# What building canopy needs (Debian packages; Rust through rustup when there is no cargo).
scripts/install-deps.sh --build
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
cargo build --release --locked --bin canopy
policy=policies/default.toml
if [[ ${1:-} == --policy ]]; then policy=$2; shift 2; fi
sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
exec "${sudo_cmd[@]}" target/release/canopy run --policy "$policy" "$@"
