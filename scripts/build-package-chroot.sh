#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Builds, once per Debian release, a minimal root file system to install canopy's package into
# (tests/vm/debian_releases.rs): mmdebstrap's minbase of SUITE plus systemd, which the package
# depends on, as a tar. No kernel and no boot: the package's install, files, maintainer scripts
# and purge are what a release can break, and they run in a chroot. Cached under
# ${CANOPY_CACHE:-~/.cache/canopy}/package-chroot/<suite>-<key>.tar, where the key hashes the
# package list and this script. Needs root (mmdebstrap --mode=root) and the network on the first
# run only (about 2 minutes for bookworm).
#
# Usage: build-package-chroot.sh SUITE     (e.g. bookworm)
# Prints the tar's path.
set -euo pipefail

suite=${1:?usage: build-package-chroot.sh SUITE}
cache=${CANOPY_CACHE:-$HOME/.cache/canopy}
mirror=http://deb.debian.org/debian
packages=(systemd)

die() { echo "build-package-chroot: $*" >&2; exit 1; }

[[ $suite =~ ^[a-z]+$ ]] || die "not a Debian suite name: $suite"
key=$( { printf '%s\n' "${packages[@]}" "$suite"; cat "$0"; } | sha256sum | cut -c1-16)
tarball=$cache/package-chroot/$suite-$key.tar
if [[ -s $tarball ]]; then
  echo "$tarball"; exit 0
fi
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing; run scripts/install-deps.sh"
[[ $(id -u) -eq 0 ]] || die "building a $suite root file system needs root (mmdebstrap --mode=root)"
mkdir -p "$cache/package-chroot"
# One builder at a time; a second one waits and then finds the tar.
exec 9>"$cache/package-chroot/.build.lock"
flock 9
if [[ -s $tarball ]]; then
  echo "$tarball"; exit 0
fi
partial=$(mktemp "$cache/package-chroot/.$suite.XXXXXX")
trap 'rm -f "$partial"' EXIT
include=$(IFS=,; echo "${packages[*]}")
# The tar's name must end in .tar for mmdebstrap to write a tar; the partial file is renamed.
mmdebstrap --quiet --mode=root --variant=minbase --include="$include" \
  "$suite" "$partial.tar" "deb $mirror $suite main" >&2 \
  || { rm -f "$partial.tar"; die "mmdebstrap of $suite failed (network or mirror problem?)"; }
mv "$partial.tar" "$tarball"
echo "$tarball"
