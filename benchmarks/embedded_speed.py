"""The two embedded models side by side: one 64 px image with all its maps, on the same host in one run.

Each repeat generates one image (20 steps, guidance 5) under `crossattn.trace`, then renders every word's
overlay and the labelled grid: what the demo and the CLI do for one request. The models alternate, so a change in
the host's speed hits both alike. Min and median over the repeats, after one warm-up each.

    .venv/bin/python benchmarks/embedded_speed.py --repeats 10 --json benchmarks/results/embedded_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crossattn  # noqa: E402
from crossattn.generation import generate  # noqa: E402

PROMPT = "a red circle left of a blue square"
MODELS = ("shapes-unet", "shapes-mmdit")


def one_request(pipe, seed: int) -> float:
    start = time.perf_counter()
    image, maps = generate(pipe, PROMPT, seed=seed)
    for m in maps:
        m.overlay(image, size=256)
    maps.grid(image)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    pipes = {name: crossattn.load_pipeline(name) for name in MODELS}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        one_request(pipe, 0)  # warm-up
    times = {name: [] for name in MODELS}
    for k in range(args.repeats):
        for name, pipe in pipes.items():
            times[name].append(one_request(pipe, k))
    result = {"prompt": PROMPT, "steps": 20, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "models": {n: {"min_s": min(t), "median_s": statistics.median(t), "runs": t} for n, t in times.items()}}
    print("| model | one 64 px image with all its maps: min / median (s) |\n|---|---|")
    for name, r in result["models"].items():
        print(f"| {name} | {r['min_s']:.2f} / {r['median_s']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
