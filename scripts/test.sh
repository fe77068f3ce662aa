#!/usr/bin/env bash
# Set up (with test tools) and run the checks: ruff, the whole pytest suite, then the installed-wheel check.
# CI runs exactly this. Arguments go to pytest; with any (e.g. -m "not slow" for a quick run) the wheel check
# is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/check_wheel.sh
fi
