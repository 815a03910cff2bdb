#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Builds, once, the disk image of the systemd guest: a Debian 13 (trixie) root file system made
# by mmdebstrap from Debian's packages, with the test kernel's modules (udev needs virtio_net),
# an SSH key for root, DHCP on the virtio NIC and canopy-scenario.service, which runs the
# scenario a boot's payload disk carries (see crates/canopy-vmtest/src/systemd_guest.rs).
# The image is an ext4 file system made with `mkfs.ext4 -d` (no loop mounts). Cached under
# ${CANOPY_CACHE:-~/.cache/canopy}/systemd-guest/<key>/, where the key hashes the package list,
# this script and the kernel release, so changing any of them builds a new image. Needs root
# (mmdebstrap --mode=root) and the network on the first run only.
#
# Usage: build-systemd-guest.sh KERNEL_DIR   (the directory scripts/fetch-kernel.sh printed)
# Prints the image directory:  rootfs.img  id_ed25519  id_ed25519.pub  packages  build-seconds
set -euo pipefail

kernel_dir=${1:?usage: build-systemd-guest.sh KERNEL_DIR}
cache=${CANOPY_CACHE:-$HOME/.cache/canopy}
suite=trixie
mirror=http://deb.debian.org/debian
# What the guest is for: systemd as PID 1 with user sessions (dbus-user-session, libpam-systemd,
# systemd-container for machinectl), SSH for host-driven tests, python3 and python3-apt for
# Ansible (its apt module installs packages through python3-apt, as on any Debian it manages), apt for
# installing canopy's package, and the tools the scenarios call.
packages=(
  systemd systemd-sysv dbus dbus-user-session libpam-systemd systemd-container udev
  openssh-server python3 python3-apt sudo iproute2 procps kmod ca-certificates
  attr make
)

die() { echo "build-systemd-guest: $*" >&2; exit 1; }

release=$(cat "$kernel_dir/version" 2>/dev/null) || die "$kernel_dir has no version file; run scripts/fetch-kernel.sh"
key=$( { printf '%s\n' "${packages[@]}" "$release" "$suite"; cat "$0"; } | sha256sum | cut -c1-16)
image_dir=$cache/systemd-guest/$key
if [[ -s $image_dir/rootfs.img && -s $image_dir/id_ed25519 ]]; then
  echo "$image_dir"; exit 0
fi

command -v mmdebstrap >/dev/null || die "mmdebstrap is missing; run scripts/install-deps.sh"
[[ $(id -u) -eq 0 ]] || die "building the systemd guest's root file system needs root (mmdebstrap --mode=root)"
started=$(date +%s)
mkdir -p "$cache/systemd-guest"
# One builder at a time; a second one waits and then finds the image.
exec 9>"$cache/systemd-guest/.build.lock"
flock 9
if [[ -s $image_dir/rootfs.img && -s $image_dir/id_ed25519 ]]; then
  echo "$image_dir"; exit 0
fi
work=$(mktemp -d "$cache/systemd-guest/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

include=$(IFS=,; echo "${packages[*]}")
mmdebstrap --quiet --mode=root --variant=minbase --include="$include" \
  "$suite" "$rootfs" "deb $mirror $suite main" >&2 \
  || die "mmdebstrap of $suite failed (network or mirror problem?)"

# The kernel's modules, from the same private apt state fetch-kernel.sh keeps.
apt_state=$cache/apt
apt_options=(
  -o "Dir::Etc::SourceList=$apt_state/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache"
  -o Dir::State::status=/var/lib/dpkg/status -o APT::Sandbox::User=root
)
modules_package=linux-modules-$release
(cd "$work" && apt-get "${apt_options[@]}" -qq download "$modules_package" >&2) || {
  apt-get "${apt_options[@]}" -qq update >&2
  (cd "$work" && apt-get "${apt_options[@]}" -qq download "$modules_package" >&2)
} || die "could not download $modules_package"
dpkg -x "$work"/linux-modules-*.deb "$rootfs"
depmod -b "$rootfs" "$release"
# As an installed Debian system has it (libbpf-based schedulers read it for __kconfig externs).
mkdir -p "$rootfs/boot"
cp "$kernel_dir/config" "$rootfs/boot/config-$release"

echo canopy-guest > "$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 canopy-guest\n' > "$rootfs/etc/hosts"
printf '/dev/nvme0n1 / ext4 rw,errors=remount-ro 0 1\n' > "$rootfs/etc/fstab"
# Root logs in on the serial console without a password (vm-shell --systemd) and over SSH with
# the image's key.
sed -i 's/^root:[^:]*:/root::/' "$rootfs/etc/shadow"
ssh-keygen -q -t ed25519 -N '' -C canopy-systemd-guest -f "$work/id_ed25519"
install -d -m 700 "$rootfs/root/.ssh"
install -m 600 "$work/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
cat > "$rootfs/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
EOF
# No waiting for a network that may be absent (scenarios without SSH boot with no NIC).
systemctl --root="$rootfs" mask systemd-networkd-wait-online.service >/dev/null 2>&1
systemctl --root="$rootfs" enable systemd-networkd.service >/dev/null 2>&1
# Apt inside the guest installs local .deb files only; it has no network.
rm -f "$rootfs"/etc/apt/sources.list.d/* "$rootfs/etc/apt/sources.list"

install -m 755 /dev/stdin "$rootfs/usr/local/sbin/canopy-scenario-runner" <<'EOF'
#!/bin/bash
# Hands this boot to its payload: the NVMe disk with serial "canopy-payload" is a tar, unpacked
# into /run/canopy-payload, whose `run` (written by crates/canopy-vmtest) does the rest. Without
# a payload disk it does nothing (a boot by hand).
for controller in /sys/class/nvme/nvme*; do
  if [[ $(tr -d ' ' < "$controller/serial") == canopy-payload ]]; then
    mkdir -p /run/canopy-payload
    tar -xf "/dev/${controller##*/}n1" -C /run/canopy-payload
    exec bash /run/canopy-payload/run
  fi
done
EOF
cat > "$rootfs/etc/systemd/system/canopy-scenario.service" <<'EOF'
[Unit]
Description=canopy test harness: run this boot's scenario
After=multi-user.target
[Service]
Type=exec
ExecStart=/usr/local/sbin/canopy-scenario-runner
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
systemctl --root="$rootfs" enable canopy-scenario.service >/dev/null 2>&1
# journald forwards the runner's output to the console; the kernel's own messages stay quiet.
mkdir -p "$rootfs/etc/systemd/journald.conf.d"
printf '[Journal]\nForwardToConsole=no\nStorage=volatile\n' > "$rootfs/etc/systemd/journald.conf.d/canopy.conf"

printf '%s\n' "${packages[@]}" > "$work/packages"
# -q does not silence "Creating regular file": stdout is only for the image path.
mkfs.ext4 -q -F -L sysroot -d "$rootfs" "$work/rootfs.img" 3G >&2
echo $(( $(date +%s) - started )) > "$work/build-seconds"
rm -rf "$rootfs"
rm -rf "$image_dir"
mv "$work" "$image_dir"
trap - EXIT
echo "$image_dir"
