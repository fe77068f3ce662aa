#!/usr/bin/env bash
# Set up .venv with everything crossattn needs (CPU torch first, so pip never pulls a multi-GB CUDA build).
#   bash scripts/setup.sh          # library, CLI and demo
#   bash scripts/setup.sh --dev    # + test tools and the Chromium browser for the end-to-end demo test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
  # The peer tool, as a second independent oracle in tests/test_oracle.py and benchmarks/oracle.py. --no-deps:
  # its declared torchvision/accelerate are never imported on the capture path we use.
  .venv/bin/python -m pip install -q --no-deps attention-map-diffusers==1.0.0
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "setup: could not install chromium; the browser test will be skipped" >&2
    else
      echo "setup: chromium missing and apt-get unavailable (not root?); the browser test will be skipped" >&2
    fi
  fi
else
  .venv/bin/python -m pip install -q -e ".[demo]"
fi
