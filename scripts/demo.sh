#!/usr/bin/env bash
# Builds Portico and its plugins, and runs it with config/demo.yaml. Then, in another terminal:
#   curl -i localhost:8080/            curl -i localhost:8080/api/hello
#   curl -i localhost:8080/docs/intro  curl -s localhost:9901/metrics | grep portico_
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "Portico needs a Rust toolchain (rustup) first" >&2; exit 1; }
cargo build --locked --release -p portico
# The first-party plugins the demo routes use (adds the wasm32-wasip1 target if missing).
bash scripts/build-plugins.sh >/dev/null
exec ./target/release/portico run --config config/demo.yaml "$@"
