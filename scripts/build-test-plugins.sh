#!/usr/bin/env bash
# Builds the Proxy-Wasm compatibility corpus (tests/plugins, a workspace of its own) for
# wasm32-wasip1. The modules land in target/test-plugins/wasm32-wasip1/release/test_<name>.wasm,
# which this script prints at the end. Run from anywhere; extra arguments go to cargo.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

export CARGO_TARGET_DIR="$repo/target/test-plugins"
cargo build --locked --release --target wasm32-wasip1 \
  --manifest-path "$repo/tests/plugins/Cargo.toml" "$@"

echo "$CARGO_TARGET_DIR/wasm32-wasip1/release"
