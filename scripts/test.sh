#!/usr/bin/env bash
# Set up (with test tools) and run the checks: ruff, then the whole pytest suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
