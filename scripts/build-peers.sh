#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Builds and caches the sched_ext peers the scheduler benchmark compares canopy with (issue 14),
# outside the repository, under ${CANOPY_CACHE:-~/.cache/canopy}/peers/:
#   - scx_bpfland, scx_lavd, scx_cosmos, scx_flash, scx_layered: `cargo install` from crates.io
#     at their newest versions (asked with `cargo info`), each in peers/<name>-<version>/bin;
#   - scx_flatcg, scx_simple: built from tools/sched_ext of Debian's linux-source-<major.minor>
#     for the test kernel (same private apt state as scripts/fetch-kernel.sh), in
#     peers/kernel-<source version>/.
# Idempotent: a peer already built at that version is not built again. A peer that fails to
# build gets peers/<name>-<version>.error with the build's last lines (the benchmark prints it).
# Prints one line per peer: `name version path-or-error-file`, and writes them to
# peers/manifest.tsv, which the benchmark (tests/vm/sched_benchmark.rs) reads.
# Builds are heavy: they run under `nice -n 19`, one at a time. Not part of CI's test run.
# CANOPY_PEERS_CACHED_ONLY=1 builds nothing: peers without a cached build get an error line.
set -uo pipefail
cached_only=${CANOPY_PEERS_CACHED_ONLY:-0}

cache=${CANOPY_CACHE:-$HOME/.cache/canopy}
peers=$cache/peers
crates=(${CANOPY_PEER_CRATES:-scx_bpfland scx_lavd scx_cosmos scx_flash scx_layered})
kernel_tools=(scx_simple scx_flatcg)
mkdir -p "$peers/toolbin"
# The crates' build scripts call `clang`; BPF needs clang-22 here (TESTBED.md).
ln -sf "$(command -v clang-22)" "$peers/toolbin/clang"
export PATH=$peers/toolbin:$PATH
export CARGO_TARGET_DIR=$peers/target
manifest=$(mktemp "$peers/.manifest.XXXXXX")

say() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$manifest"; }

for crate in "${crates[@]}"; do
  version=
  # Cached-only asks no registry (and never waits on a running build's package cache lock).
  [[ $cached_only == 1 ]] \
    || version=$(cargo info "$crate" 2>/dev/null | sed -n 's/^version: \([^ ]*\).*/\1/p' | head -n1)
  if [[ -z $version ]]; then
    # Offline: reuse the newest cached build.
    cached=$(ls -d "$peers/$crate"-*/bin/"$crate" 2>/dev/null | sort -V | tail -n1)
    if [[ -n $cached ]]; then
      say "$crate" "$(basename "$(dirname "$(dirname "$cached")")" | sed "s/^$crate-//")" "$cached"
    else
      say "$crate" unknown "error: not built yet, or cargo info $crate failed and nothing is cached"
    fi
    continue
  fi
  root=$peers/$crate-$version
  if [[ $cached_only == 1 && ! -x $root/bin/$crate ]]; then
    say "$crate" "$version" "error: not built yet (scripts/build-peers.sh builds it)"
    continue
  fi
  if [[ ! -x $root/bin/$crate && ! -s $root.error ]]; then
    echo "build-peers: cargo install $crate $version (nice 19)" >&2
    if ! nice -n 19 cargo install --quiet --root "$root" --version "$version" "$crate" > "$root.log" 2>&1; then
      tail -n 20 "$root.log" > "$root.error"
    fi
  fi
  if [[ -x $root/bin/$crate ]]; then
    say "$crate" "$version" "$root/bin/$crate"
  else
    say "$crate" "$version" "error: build failed: $(grep -m1 -E '^error' "$root.error" 2>/dev/null || tail -n1 "$root.error")"
  fi
done

# The kernel's example schedulers, from the linux-source package matching the test kernel.
kernel_dir=$(bash "$(dirname "$0")/fetch-kernel.sh") || kernel_dir=
release=$(cat "$kernel_dir/version" 2>/dev/null)
series=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<< "$release")
apt_state=$cache/apt
apt_options=(
  -o "Dir::Etc::SourceList=$apt_state/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache=$apt_state/cache"
  -o Dir::State::status=/var/lib/dpkg/status -o APT::Sandbox::User=root
)
source_version=$(apt-cache "${apt_options[@]}" show "linux-source-$series" 2>/dev/null \
  | sed -n 's/^Version: //p' | sort -V | tail -n1)
if [[ -z $series || -z $source_version ]]; then
  for tool in "${kernel_tools[@]}"; do
    say "$tool" unknown "error: no linux-source-$series in $apt_state (run scripts/fetch-kernel.sh first)"
  done
else
  dir=$peers/kernel-$source_version
  if [[ ! -d $dir/build && ! -s $dir.error && $cached_only != 1 ]]; then
    echo "build-peers: tools/sched_ext from linux-source-$series $source_version (nice 19)" >&2
    work=$(mktemp -d "$peers/.kernel.XXXXXX")
    # `set -e` does nothing in a subshell on the left of `||`: every step says so itself. The
    # build lands in build/ only when both binaries were made (a half build is never cached).
    (
      cd "$work" || exit 1
      apt-get "${apt_options[@]}" -qq download "linux-source-$series=$source_version" || exit 1
      dpkg -x linux-source-*.deb root || exit 1
      tar -xaf root/usr/src/linux-source-"$series".tar.* || exit 1
      src=$(ls -d "$work"/linux-source-"$series") || exit 1
      # vmlinux.h comes from the test kernel's BTF (the host's own kernel may lack sched_ext's
      # types), and the skeletons from the bpftool the source tree builds for itself: Debian
      # 12's bpftool writes skeletons without the struct_ops members these tools use
      nice -n 19 make -C "$src/tools/sched_ext" CLANG=clang-22 LLVM_STRIP=llvm-strip-22 \
        VMLINUX_BTF="$kernel_dir/vmlinux" -j1 scx_simple scx_flatcg || exit 1
      mkdir -p "$work/build" || exit 1
      cp "$src/tools/sched_ext/build/bin/scx_simple" "$src/tools/sched_ext/build/bin/scx_flatcg" \
        "$work/build/" || exit 1
      mkdir -p "$dir" && mv "$work/build" "$dir/build"
    ) > "$dir.log" 2>&1 || tail -n 20 "$dir.log" > "$dir.error"
    rm -rf "$work"
  fi
  for tool in "${kernel_tools[@]}"; do
    if [[ -x $dir/build/$tool ]]; then
      say "$tool" "linux-source-$series $source_version" "$dir/build/$tool"
    elif [[ ! -e $dir.error ]]; then
      say "$tool" "linux-source-$series $source_version" "error: not built yet (scripts/build-peers.sh builds it)"
    else
      say "$tool" "linux-source-$series $source_version" "error: build failed: $(grep -m1 -E 'error' "$dir.error" 2>/dev/null || tail -n1 "$dir.error")"
    fi
  done
fi
mv "$manifest" "$peers/manifest.tsv"
