#!/usr/bin/env bash
# Installs, idempotently, the Debian packages canopy's build and tests need. Safe to run often:
# it asks apt only for what is missing.
set -euo pipefail
packages=(
  clang-22 llvm-22 libelf-dev zlib1g-dev pkg-config   # BPF build (arena programs need clang-22)
  g++                                                # libFuzzer, built by libfuzzer-sys (fuzz/run.sh)
  qemu-system-x86 busybox-static cpio zstd bpftool   # VM test harness
  rt-tests stress-ng                                 # workloads run inside the guest
  mmdebstrap e2fsprogs openssh-client                # the systemd guest (Debian 13 image, SSH)
  dpkg-dev lintian                                   # the Debian package (dpkg-shlibdeps, checks)
  prometheus tmux                                    # fleet tests: promtool + a server; canopy top
  ansible ansible-lint                               # fleet tests: the Ansible role
  python3-venv                                       # fleet tests: kubernetes-validate (below)
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
  # The tests run their own Prometheus on 127.0.0.1; the package's services (all interfaces)
  # stay off where systemd would have started them.
  if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    "${sudo_cmd[@]}" systemctl disable --now prometheus.service prometheus-node-exporter.service || true
  fi
fi
# The Kubernetes API schema validator (PyPI), in a venv of its own; tests/fleet.rs runs it.
tools=/opt/canopy-test-tools
kubernetes_validate=1.37.0
if ! "$tools/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$kubernetes_validate"; then
  echo "install-deps: installing kubernetes-validate $kubernetes_validate in $tools" >&2
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" /usr/bin/python3 -m venv "$tools"
  "${sudo_cmd[@]}" "$tools/bin/pip" install -q "kubernetes-validate==$kubernetes_validate"
fi
# The suite's lint step (tests/run-all.sh) runs clippy.
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
