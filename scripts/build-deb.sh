#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
# Builds the Debian package target/debian/canopy_<version>-1_amd64.deb in one command: the
# release binary, the man page and shell completions it generates (target/deb-assets/), then
# `cargo deb --no-build` with the metadata in Cargo.toml ([package.metadata.deb]). Installs
# cargo-deb (crates.io) when it is missing. Prints the package's path on stdout.
# Extra arguments go to cargo deb (e.g. --deb-revision 2).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0 >&2
cargo build --release --locked --bin canopy >&2
# Cargo.toml names these at target/deb-assets whatever CARGO_TARGET_DIR says.
assets=target/deb-assets
mkdir -p "$assets"
"$target/release/canopy" man | gzip -9n > "$assets/canopy.1.gz"
"$target/release/canopy" completions bash > "$assets/canopy.bash"
"$target/release/canopy" completions zsh > "$assets/_canopy"
"$target/release/canopy" completions fish > "$assets/canopy.fish"
# Stripped: the release profile keeps line tables for profiling, the package does not need them.
cargo deb --no-build --locked --strip --output "$target/debian/" "$@" | tail -n1
