#!/usr/bin/env bash
# The whole test suite: unit tests, the end-to-end suite (real proxy, real TLS, real clients),
# and `portico check` on every configuration under config/. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the tests use that a fresh machine may lack.
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  else
    echo "note: curl is missing (tests that need it will say so)" >&2
  fi
fi

# Every test binary, and with them target/debug/portico, in one build: `cargo build --bins` alone
# resolves features without the dev-dependencies (tokio's `process`, wasmtime's `wat`), so it
# would compile a second copy of tokio, hyper, wasmtime and the proxy.
cargo test --locked --workspace --no-run

# The Proxy-Wasm test plugins the end-to-end suite loads (tests/plugins/README.md).
bash scripts/build-test-plugins.sh
# The first-party plugins and the SDK example (target/plugins/*.wasm), which config/demo.yaml
# and the end-to-end suite load.
bash scripts/build-plugins.sh

for f in config/*.yaml; do
  case "$f" in
    *.schema.yaml) continue ;;
  esac
  ./target/debug/portico check --config "$f"
done

cargo test --locked --workspace "$@"

# A newcomer's first plugin: `portico plugin new`, built, tested, loaded and curled.
bash scripts/test-scaffold.sh
# The same by hand, as docs/plugins.md's tutorial writes it, copied out of the document.
bash scripts/test-tutorial.sh
