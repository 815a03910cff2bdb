#!/usr/bin/env bash
# Installs, idempotently, what canopy's build and tests need on Debian 12 or 13: the Debian
# packages that are missing, and, when there is no cargo, a Rust toolchain (rustup's installer
# from static.rust-lang.org, checked against its published SHA-256; Rust 1.95.0, what CI builds
# with). A fresh Debian has no cargo, and Debian 12's own is older than canopy's rust-version.
# Safe to run often: it asks apt only for what is missing.
#   --build   only what building and running canopy needs (scripts/run-canopy.sh); without it,
#             also what the tests need (tests/run-all.sh)
set -euo pipefail
build_packages=(
  clang-22 llvm-22 libelf-dev zlib1g-dev pkg-config   # BPF build (arena programs need clang-22)
  gcc libc6-dev make curl ca-certificates             # Rust's linker and rustup's download
)
test_packages=(
  g++                                                # libFuzzer, built by libfuzzer-sys (fuzz/run.sh)
  busybox-static cpio zstd bpftool                   # VM test harness (qemu: below)
  rt-tests stress-ng                                 # workloads run inside the guest
  mmdebstrap e2fsprogs openssh-client                # the systemd guest (Debian 13 image, SSH)
  dpkg-dev lintian                                   # the Debian package (dpkg-shlibdeps, checks)
  prometheus tmux                                    # fleet tests: promtool + a server; canopy top
  ansible ansible-lint                               # fleet tests: the Ansible role
  ansible-mitogen                                    # ... its runs in the emulated guest, 3x faster
  python3-venv                                       # fleet tests: kubernetes-validate (below)
)
build_only=false
[[ ${1:-} == --build ]] && build_only=true
packages=("${build_packages[@]}")
$build_only || packages+=("${test_packages[@]}")
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
# qemu 10 for the VM tests. bookworm's 7.2 keeps running stale translated code after the guest
# patches its kernel text (static keys, which sched_ext flips at every scheduler enable and
# disable): the guest dies of an `Oops: int3`. Flipping one key 3,000 times beside a busy load
# killed every 7.2 guest within about a second (4 of 4), and 2 of 7 qemu 10.0 guests, after
# about 3,300 and 4,500 flips (2026-12-05, tests/vm/README.md "The emulator's `Oops: int3`"). bookworm gets
# it from Debian's bookworm-backports; trixie has it.
if ! $build_only; then
  qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [[ -z $qemu_version ]] || dpkg --compare-versions "$qemu_version" lt 1:10.0; then
    sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    release=()
    if [[ $codename == bookworm ]]; then
      if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "install-deps: adding Debian's bookworm-backports (for qemu 10)" >&2
        echo 'deb http://deb.debian.org/debian bookworm-backports main' \
          | "${sudo_cmd[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
      fi
      release=(-t bookworm-backports)
    fi
    echo "install-deps: installing qemu-system-x86 ${release[*]} (have: ${qemu_version:-none})" >&2
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${release[@]}" qemu-system-x86
  fi
fi
# Rust, where there is none: rustup's installer for this architecture, verified, into ~/.cargo.
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH=$HOME/.cargo/bin:$PATH
if ! command -v cargo >/dev/null; then
  echo "install-deps: installing a Rust toolchain with rustup (no cargo on this machine)" >&2
  rustup_url=https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init
  download=$(mktemp -d)
  curl --proto '=https' --tlsv1.2 -sSf -o "$download/rustup-init" "$rustup_url"
  curl --proto '=https' --tlsv1.2 -sSf -o "$download/rustup-init.sha256" "$rustup_url.sha256"
  (cd "$download" && echo "$(cut -d' ' -f1 rustup-init.sha256)  rustup-init" | sha256sum -c --quiet)
  chmod +x "$download/rustup-init"
  # The toolchain CI builds and lints with: a newer stable may bring lints that the suite's
  # `clippy -D warnings` turns into failures (1.99 deprecates a method 1.95 has no successor for).
  "$download/rustup-init" -y -q --profile minimal --default-toolchain 1.95.0 -c clippy -c rustfmt
  rm -rf "$download"
  echo "install-deps: Rust is in ~/.cargo/bin; new shells get it from ~/.profile (or: . ~/.cargo/env)" >&2
fi
$build_only && exit 0
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
