#!/usr/bin/env bash
# The "Writing a plugin" tutorial of docs/plugins.md, taken literally: its Cargo.toml fragment,
# its plugin and its test are copied out of the document into a new crate, which must pass its
# test, build for wasm32-wasip1, be `runnable: yes` for `portico plugin inspect`, pass
# `portico check` with the tutorial's YAML, and answer as the tutorial says once loaded. So the
# document cannot drift from the SDK. Called by scripts/test.sh after the `portico` binary is
# built.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
portico="$repo/target/debug/portico"
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

# The n-th fenced block of `lang` in the tutorial (from "## Writing a plugin" to the next
# "### " heading), without its fences.
block() {
  awk -v lang="$1" -v want="$2" '
    /^## Writing a plugin/ { on = 1; next }
    on && /^### / { exit }
    on && !inside && $0 == "```" lang { n++; inside = 1; next }
    on && inside && $0 == "```" { inside = 0; next }
    on && inside && n == want { print }
  ' "$repo/docs/plugins.md"
}

crate="$work/my-plugin"
mkdir -p "$crate/src"
toml="$(block toml 1)"
lib="$(block rust 1)"
tests="$(block rust 2)"
yaml="$(block yaml 1)"
for part in toml lib tests yaml; do
  if [ -z "${!part}" ]; then
    echo "tutorial: no $part block found in docs/plugins.md" >&2
    exit 1
  fi
done
{
  printf '[package]\nname = "my-plugin"\nversion = "0.1.0"\nedition = "2024"\n\n'
  # The tutorial's SDK path is relative to where its reader checked Portico out.
  printf '%s\n' "$toml" | sed "s|\"../portico/plugin-sdk\"|\"$repo/plugin-sdk\"|"
  printf '\n[workspace]\n'
} > "$crate/Cargo.toml"
printf '%s\n\n%s\n' "$lib" "$tests" > "$crate/src/lib.rs"

cd "$crate"
export CARGO_TARGET_DIR="$repo/target/scaffold"
# The tutorial's own test must run, not only compile.
out=$(cargo test 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
if ! grep -q 'test result: ok\. [1-9]' <<<"$out"; then
  printf '%s\n' "$out" >&2
  echo "tutorial: its test did not run" >&2
  exit 1
fi
cargo build --quiet --target wasm32-wasip1 --release
wasm="$CARGO_TARGET_DIR/wasm32-wasip1/release/my_plugin.wasm"
"$portico" plugin inspect "$wasm" | grep -q '^runnable: yes' || {
  "$portico" plugin inspect "$wasm" >&2
  exit 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
# The tutorial's upstream, on a port nothing listens on.
closed=$(free_port)
printf '%s\n' "$yaml" | sed -e "s|my-plugin/target/wasm32-wasip1/release/my_plugin.wasm|$wasm|" \
  -e "s|127.0.0.1:8080|127.0.0.1:$port|" -e "s|127.0.0.1:9000|127.0.0.1:$closed|" > portico.yaml
"$portico" check --config portico.yaml
"$portico" run --config portico.yaml >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
# The upstream is not running: a request the plugin lets through gets the proxy's 502, one it
# refuses the plugin's 401.
refused=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-token: guess' "http://127.0.0.1:$port/")
passed=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-token: s3cret' "http://127.0.0.1:$port/")
if [ "$refused" != 401 ] || [ "$passed" != 502 ]; then
  echo "tutorial plugin: expected 401 and 502, got $refused and $passed" >&2
  cat "$work/log" >&2
  exit 1
fi
echo "tutorial plugin (docs/plugins.md): tests pass, builds, loads, answers 401 and lets the token through"
