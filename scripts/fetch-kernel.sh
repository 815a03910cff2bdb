#!/usr/bin/env bash
# Fetches Debian's newest 7.3-or-later cloud kernel (or CANOPY_KERNEL_VERSION, e.g. 7.3.4+deb13)
# through a private apt state, so the system's own sources stay untouched; caches it under
# ${CANOPY_CACHE:-~/.cache/canopy}/kernels/<version>/; checks that its config has what canopy
# needs; extracts vmlinux (with BTF) from the zstd payload of vmlinuz. Idempotent: a cached,
# checked kernel is reused without touching the network. Prints the kernel directory on stdout.
#
# Layout of the kernel directory:
#   vmlinuz  config  vmlinux  version
set -euo pipefail

cache=${CANOPY_CACHE:-$HOME/.cache/canopy}
apt_state=$cache/apt
suite=${CANOPY_KERNEL_SUITE:-trixie-backports}
required_config=(CONFIG_SCHED_CLASS_EXT CONFIG_EXT_SUB_SCHED CONFIG_EXT_GROUP_SCHED CONFIG_DEBUG_INFO_BTF)

die() { echo "fetch-kernel: $*" >&2; exit 1; }

apt_options=(
  -o "Dir::Etc::SourceList=$apt_state/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache"
  -o Dir::State::status=/var/lib/dpkg/status -o APT::Sandbox::User=root
)

# A pinned version that is already cached needs no network at all.
if [[ -n ${CANOPY_KERNEL_VERSION:-} && -s $cache/kernels/$CANOPY_KERNEL_VERSION-cloud-amd64/vmlinux ]]; then
  echo "$cache/kernels/$CANOPY_KERNEL_VERSION-cloud-amd64"; exit 0
fi

refresh_lists() {
  mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    > "$apt_state/sources.list"
  apt-get "${apt_options[@]}" -qq update >&2 \
    || die "apt-get update of $suite failed (network or mirror problem); retry, or set CANOPY_KERNEL_VERSION to a cached kernel"
}

if [[ -n ${CANOPY_KERNEL_VERSION:-} ]]; then
  version=$CANOPY_KERNEL_VERSION
else
  # Reuse lists younger than a day; otherwise refresh them.
  if [[ -z $(find "$apt_state/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1) ]]; then
    refresh_lists
  fi
  version=$(apt-cache "${apt_options[@]}" search --names-only '^linux-binary-[0-9.]+\+deb[0-9]+-cloud-amd64$' 2>/dev/null \
    | sed -E 's/^linux-binary-([^ ]+)-cloud-amd64 .*/\1/' \
    | awk -F. '$1 > 7 || ($1 == 7 && $2 >= 3)' | sort -V | tail -n1)
  if [[ -z $version ]]; then
    # The cache may still hold a usable kernel from an earlier run.
    cached=$(ls -d "$cache"/kernels/*-cloud-amd64 2>/dev/null | sort -V | tail -n1)
    [[ -n $cached && -s $cached/vmlinux ]] && { echo "$cached"; exit 0; }
    die "no linux-binary-7.3+ cloud kernel found in $suite; set CANOPY_KERNEL_VERSION (e.g. 7.3.4+deb13)"
  fi
fi

kernel_dir=$cache/kernels/$version-cloud-amd64
if [[ ! -s $kernel_dir/vmlinux ]]; then
  [[ -d $apt_state/lists ]] || refresh_lists
  mkdir -p "$cache/kernels"
  work=$(mktemp -d "$cache/kernels/.fetch.XXXXXX"); trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get "${apt_options[@]}" -qq download \
      "linux-binary-$version-cloud-amd64" "linux-base-$version-cloud-amd64" >&2) \
    || die "could not download linux-binary-$version-cloud-amd64 from $suite; check the version or the network"
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
  modules=$(ls -d "$work"/root/usr/lib/modules/*/ | head -n1)
  [[ -f $modules/vmlinuz && -f $modules/config ]] || die "package for $version has no vmlinuz or config"
  mkdir -p "$work/out"
  cp "$modules/vmlinuz" "$modules/config" "$work/out/"
  # vmlinuz carries vmlinux as a zstd stream: try each zstd magic until one decompresses to ELF.
  for offset in $(grep -abo $'\x28\xb5\x2f\xfd' "$work/out/vmlinuz" | cut -d: -f1); do
    tail -c +$((offset + 1)) "$work/out/vmlinuz" | zstdcat > "$work/out/vmlinux" 2>/dev/null || true
    head -c 4 "$work/out/vmlinux" | grep -q $'\x7fELF' && break
  done
  head -c 4 "$work/out/vmlinux" | grep -q $'\x7fELF' || die "could not extract vmlinux from $version's vmlinuz"
  basename "$modules" > "$work/out/version"
  rm -rf "$kernel_dir"; mv "$work/out" "$kernel_dir"
fi

for option in "${required_config[@]}"; do
  grep -q "^$option=y" "$kernel_dir/config" \
    || die "kernel $version lacks $option=y, so it cannot run canopy's tests; pin another with CANOPY_KERNEL_VERSION"
done
echo "$kernel_dir"
