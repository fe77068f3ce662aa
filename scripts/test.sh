#!/usr/bin/env bash
# Set up (with test tools) and run the checks. CI runs exactly this, with no arguments:
#   bash scripts/test.sh           ruff, the whole pytest suite, the modules' examples (doctests), the wheel check
#   bash scripts/test.sh --quick   ruff and the tests not marked slow (a few minutes: no browser, no long runs)
# Other arguments go to pytest (e.g. tests/test_capture.py -k cfg), without the doctests and the wheel check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
if [ "${1:-}" = "--quick" ]; then
  shift
  .venv/bin/python -m pytest -m "not slow" "$@"
elif [ "$#" -gt 0 ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest
  .venv/bin/python -m pytest --doctest-modules crossattn
  bash scripts/check_wheel.sh
fi
