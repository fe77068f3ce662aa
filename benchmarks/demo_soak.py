"""Demo soak: the server's memory (RSS) over many requests, each from a new visitor — does it level off?

    .venv/bin/python benchmarks/demo_soak.py                  # 200 requests; results/demo_soak.json
    .venv/bin/python benchmarks/demo_soak.py --requests 20    # a quick look

Starts ``crossattn demo`` in a subprocess (the embedded UNet, CPU), warms it up with `--warmup` requests, then
sends `--requests` requests, each from a new gradio_client session (a new browser tab: the worst case, since
the server keeps state per session): /generate at the native 64x64 with `--steps` steps (every 4th keeping every
layer and head, every 5th locating two other words), then /render. The server's RSS is read (psutil) after the
warm-up, half-way and every 50 requests; "growth per request" is (after - before) / requests, and over the second
half alone. Bounded memory shows as a curve that flattens once the server holds as many sessions as it keeps
(`crossattn.app.SESSIONS`): the second half's growth is then far below the first's.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import psutil
from gradio_client import Client

PROMPTS = ["a red circle left of a blue square", "a small green triangle above a yellow circle",
           "a large cyan square right of a red triangle", "a yellow square, a green circle and a blue triangle"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the demo at {url} did not answer within {timeout_s:.0f} s") from None
            time.sleep(1)


def visit(url: str, k: int, steps: int) -> None:
    """One new visitor: generate, then draw every view."""
    client = Client(url, verbose=False)
    client.predict(prompt=PROMPTS[k % len(PROMPTS)], seed=k, steps=steps, words="", expect="",
                   keep_heads=k % 4 == 0, concepts="sky, background" if k % 5 == 0 else "", api_name="/generate")
    client.predict(words="", expect="", selected=None, last_step=steps, step=steps, api_name="/render")


def mib(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_soak.json")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "crossattn", "demo", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(url)
        process = psutil.Process(server.pid)
        started = mib(process)
        for k in range(args.warmup):
            visit(url, k, args.steps)
        before = mib(process)
        curve = {0: before}
        begin = time.monotonic()
        for k in range(1, args.requests + 1):
            visit(url, args.warmup + k, args.steps)
            if k % 50 == 0 or k in (args.requests // 2, args.requests):
                curve[k] = mib(process)
                print(f"{k:4d} requests: RSS {curve[k]:.0f} MiB", flush=True)
        seconds = time.monotonic() - begin
    finally:
        server.terminate()
        server.wait(timeout=60)
    after, half = curve[args.requests], args.requests // 2
    result = {"date": date.today().isoformat(), "machine": platform.platform(), "requests": args.requests,
              "warmup": args.warmup, "steps": args.steps, "rss_mib_started": started, "rss_mib_before": before,
              "rss_mib_after": after, "growth_kib_per_request": round((after - before) * 1024 / args.requests, 1),
              "growth_kib_per_request_second_half": round((after - curve[half]) * 1024 / (args.requests - half), 1),
              "rss_mib_by_request": curve, "seconds": round(seconds, 1)}
    print(f"RSS: {started:.0f} MiB started, {before:.0f} MiB after {args.warmup} warm-up requests, {after:.0f} MiB "
          f"after {args.requests} more ({result['growth_kib_per_request']:.0f} KiB per request, "
          f"{result['growth_kib_per_request_second_half']:.0f} over the second half); {seconds:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
