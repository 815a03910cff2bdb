#!/usr/bin/env bash
# Runs canopy's main job on this machine: installs what the build needs (idempotently), builds
# the release binary, and runs the daemon in the foreground with a policy (default: the shipped
# conservative policies/default.toml). Mode `auto`: canopy's sched_ext schedulers where the
# kernel has sched_ext with cgroup sub-schedulers, else the sched_setattr + cgroup v2 fallback.
# Extra arguments go to `canopy run` (e.g. --mode fallback, --metrics-listen 127.0.0.1:9300).
# Needs root (sched_setattr on other users' tasks, cgroupfs, BPF). Ctrl-C stops it and puts
# every task back as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || {
  echo "run-canopy: cargo is missing; install a Rust toolchain (rustup, 1.85 or newer) first" >&2
  exit 1
}
scripts/install-deps.sh
cargo build --release --locked --bin canopy
policy=policies/default.toml
if [[ ${1:-} == --policy ]]; then policy=$2; shift 2; fi
sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
exec "${sudo_cmd[@]}" target/release/canopy run --policy "$policy" "$@"
