#!/usr/bin/env bash
# Installs, idempotently, the Debian packages canopy's build and tests need. Safe to run often:
# it asks apt only for what is missing.
set -euo pipefail
packages=(
  clang-22 llvm-22 libelf-dev zlib1g-dev pkg-config   # BPF build (arena programs need clang-22)
  qemu-system-x86 busybox-static cpio zstd bpftool   # VM test harness
  rt-tests stress-ng                                 # workloads run inside the guest
  mmdebstrap e2fsprogs openssh-client                # the systemd guest (Debian 13 image, SSH)
  dpkg-dev lintian                                   # the Debian package (dpkg-shlibdeps, checks)
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
fi
