#!/usr/bin/env bash
# The package as users install it: build the wheel, install it alone into a fresh venv, and from a folder
# outside the checkout run `crossattn generate` (both embedded models), `crossattn diagnose` and a short request
# to `crossattn demo`.
#   bash scripts/check_wheel.sh        (scripts/test.sh runs it; needs scripts/setup.sh --dev first)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'kill $DEMO 2>/dev/null || true; rm -rf "$WORK"' EXIT
DEMO=""

.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . 2>&1 | grep -v "^WARNING: Location" || true
WHEEL=$(ls "$WORK"/dist/crossattn-*.whl)
echo "wheel: $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
if unzip -l "$WHEEL" | grep -qE " (demo|tests)/"; then echo "the wheel must not ship demo/ or tests/" >&2; exit 1; fi

"${PYTHON:-python3}" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$WORK/venv/bin/python" -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[demo]" gradio_client 2>&1 | grep -v "^WARNING: Location" || true

cd "$WORK"  # nothing of the checkout is importable from here
"$WORK/venv/bin/python" -c "import crossattn, sys; assert '$ROOT' not in crossattn.__file__, crossattn.__file__"
"$WORK/venv/bin/crossattn" generate "a red circle left of a blue square" --steps 4 --out out
test -s out/heatmaps.json && test -s out/grid.png && test -s out/diagnosis.json
"$WORK/venv/bin/crossattn" generate "a red circle left of a blue square" --model shapes-mmdit --steps 4 --out mmdit
test -s mmdit/heatmaps.json && test -s mmdit/grid.png
"$WORK/venv/bin/crossattn" generate "a red circle left of a blue square" --model shapes-video --frames 4 --steps 4 \
  --out video
test -s video/video.gif && test -s video/grid.png && test -s video/heatmaps.json
status=0
"$WORK/venv/bin/crossattn" diagnose "a red circle left of a blue square" --steps 4 --out diag >/dev/null || status=$?
[ "$status" = 0 ] || [ "$status" = 3 ] || { echo "diagnose exited with $status" >&2; exit 1; }

PORT=$("$WORK/venv/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$WORK/venv/bin/crossattn" demo --port "$PORT" > demo.log 2>&1 &
DEMO=$!
"$WORK/venv/bin/python" "$ROOT/scripts/demo_request.py" "http://127.0.0.1:$PORT/"
echo "wheel check passed"
