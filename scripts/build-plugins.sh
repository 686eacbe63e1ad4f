#!/usr/bin/env bash
# Builds the first-party plugins (plugins/) and the SDK's examples for wasm32-wasip1 with the
# `plugin` profile, and copies them to target/plugins/<name>.wasm, which the demo config and
# the end-to-end tests load. Run from anywhere; extra arguments go to cargo.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

plugins=(jwt rate-limit auth header-rewrite)
args=()
for p in "${plugins[@]}"; do args+=(-p "portico-$p"); done
cargo build --locked --profile plugin --target wasm32-wasip1 "${args[@]}" "$@"
cargo build --locked --profile plugin --target wasm32-wasip1 -p portico-plugin-sdk \
  --example hello --example probe "$@"

out="$repo/target/plugins"
mkdir -p "$out"
for p in "${plugins[@]}"; do
  cp "target/wasm32-wasip1/plugin/portico_${p//-/_}.wasm" "$out/$p.wasm"
done
for e in hello probe; do
  cp "target/wasm32-wasip1/plugin/examples/$e.wasm" "$out/$e.wasm"
done
# The jwt plugin as a plugin for any Proxy-Wasm host: with the SDK's in-guest verification
# (`crypto-fallback`) for hosts without `portico.verify_signature`. Its end-to-end test and
# the first-party micro-benchmark run it in Portico with that foreign function denied.
cargo build --locked --profile plugin --target wasm32-wasip1 -p portico-jwt \
  --features crypto-fallback "$@"
cp target/wasm32-wasip1/plugin/portico_jwt.wasm "$out/jwt-fallback.wasm"
ls -l "$out"/*.wasm | awk '{print $5, $9}'
