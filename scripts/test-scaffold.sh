#!/usr/bin/env bash
# A newcomer's first plugin, end to end: `portico plugin new`, then the scaffold's own unit
# tests, its wasm32-wasip1 build, `portico plugin inspect`, `portico check` (which runs the
# plugin's configure step) and a real request through `portico run`. Called by scripts/test.sh
# after the `portico` binary is built.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
portico="$repo/target/debug/portico"
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

"$portico" plugin new first-plugin --dir "$work" >/dev/null
cd "$work/first-plugin"
# One target directory across runs, so CI compiles the SDK once.
export CARGO_TARGET_DIR="$repo/target/scaffold"
cargo test --quiet 2>&1 | tail -3
cargo build --quiet --target wasm32-wasip1 --release
wasm="$CARGO_TARGET_DIR/wasm32-wasip1/release/first_plugin.wasm"
"$portico" plugin inspect "$wasm" | tail -1

# The scaffold's portico.yaml names the module relative to itself; point it at the shared
# target directory and a free port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|target/wasm32-wasip1/release/first_plugin.wasm|$wasm|" \
    -e "s|127.0.0.1:8080|127.0.0.1:$port|" portico.yaml > run.yaml
"$portico" check --config run.yaml
"$portico" run --config run.yaml >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
ok=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
blocked=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-block: 1' "http://127.0.0.1:$port/")
if [ "$ok" != 200 ] || [ "$blocked" != 403 ]; then
  echo "scaffolded plugin: expected 200 and 403, got $ok and $blocked" >&2
  cat "$work/log" >&2
  exit 1
fi
echo "scaffolded plugin: builds, tests, loads, answers 200 and 403"
