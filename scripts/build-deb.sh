#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Builds the Debian package target/debian/canopy_<version>-1_amd64.deb in one command: the
# release binary, the man page and shell completions it generates (target/deb-assets/), then
# `cargo deb --no-build` with the metadata in Cargo.toml ([package.metadata.deb]). Installs
# cargo-deb (crates.io) when it is missing. Prints the package's path on stdout.
#   --from-test-build   package the binary the test profile built (target/debug/canopy, which
#                       `cargo test` builds) instead of building a release: the VM scenarios
#                       install the same package layout without a second, cold release build
#   --install-tool      only install cargo-deb when it is missing (tests/run-all.sh does this
#                       early, beside the workspace's compile), build nothing
# Other arguments go to cargo deb (e.g. --deb-revision 2).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
profile=release
if [ "${1:-}" = --from-test-build ]; then
  profile=dev
  shift
fi
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0 >&2
[ "${1:-}" = --install-tool ] && exit 0
if [ "$profile" = release ]; then
  cargo build --release --locked --bin canopy >&2
  binary=$target/release/canopy
else
  # Not built here: the running `cargo test` holds the build lock and has built it already.
  binary=$target/debug/canopy
  [ -x "$binary" ] || { echo "build-deb.sh: no $binary; run cargo build first" >&2; exit 1; }
fi
# Cargo.toml names these at target/deb-assets whatever CARGO_TARGET_DIR says.
assets=target/deb-assets
mkdir -p "$assets"
"$binary" man | gzip -9n > "$assets/canopy.1.gz"
"$binary" completions bash > "$assets/canopy.bash"
"$binary" completions zsh > "$assets/_canopy"
"$binary" completions fish > "$assets/canopy.fish"
# Stripped: the release profile keeps line tables for profiling, the package does not need them.
cargo deb --no-build --locked --strip --profile "$profile" --output "$target/debian/" "$@" | tail -n1
