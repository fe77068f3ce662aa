"""Sweep throughput: items per second in-process and on Ray (1 and 2 actors), Ray's fixed start-up cost, peak
memory per worker, and the time to rebuild the report of 1,000 items.

    .venv/bin/python benchmarks/sweep_throughput.py           # 200 items per engine; results/sweep_throughput.json
    .venv/bin/python benchmarks/sweep_throughput.py --quick   # 10 items, a 100-item report: checks the script

Items: the first N distinct held-out shapes-world captions of ``crossattn eval-shapes`` (`held_out_prompts`), seed 0,
the embedded model, 20 steps; each engine writes a fresh folder, so nothing is skipped. Items per second count
the generation phase only, items / (wall time − start-up); the start-up is measured by `sweep.run` itself and
reported on its own: loading the pipeline in-process, ``ray.init`` + every actor's pipeline loaded on Ray (a
local runtime with this machine's CPUs; each actor gets an equal share of them as torch threads). Peak RSS
per worker: each actor's `Worker.peak_rss_mib` (getrusage) at the end; in-process it is this whole process.

The report: 1,000 item folders synthesised from the real items of the in-process run, each one a real item's
summary.json with a new seed and so a new id (`sweep.item_id`), and its files hard-linked (a finished item has
every file its summary lists); then `sweep.build_report` on them, min of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import ray
import torch

from crossattn import sweep
from crossattn.shapes.evaluate import held_out_prompts

SYNTHETIC_SEED = 1_000_000  # seeds of the synthesised items: far from the real ones, so every id is new
ENGINES = [("in-process", "local", None), ("Ray, 1 actor", "ray", 1), ("Ray, 2 actors", "ray", 2)]


def measure(prompts: list[str], out: Path, engine: str, workers: int | None, steps: int) -> dict:
    outcome = sweep.run(prompts, out, engine, steps=steps, workers=workers, report=False)
    assert outcome.ran == len(prompts) and outcome.errors == 0, outcome.describe()
    generating = outcome.seconds - outcome.startup_s
    return {"items": outcome.ran, "startup_s": round(outcome.startup_s, 2), "generate_s": round(generating, 2),
            "items_per_s": round(outcome.ran / generating, 3),
            "peak_rss_mib": [round(m) for m in outcome.peak_rss_mib]}


def synthesise(source: Path, target: Path, n: int) -> None:
    """`n` item folders from the finished items of `source` (summary with a new seed and id; files linked)."""
    real = [s for s in sweep.scan(source)[0].values() if s["status"] == "ok"]
    (target / "items").mkdir(parents=True)
    for k in range(n):
        original = real[k % len(real)]
        s = {**original, "seed": SYNTHETIC_SEED + k}
        settings = sweep.Settings(**{key: s[key] for key in sweep.Settings().identity()})
        s["id"] = sweep.item_id(sweep.Item(s["prompt"], s["seed"], tuple(s["expect"])), settings)
        folder = target / "items" / s["id"]
        folder.mkdir()
        for name in s["files"]:
            (folder / name).parent.mkdir(exist_ok=True)  # concepts/
            os.link(source / "items" / original["id"] / name, folder / name)
        (folder / sweep.SUMMARY).write_text(json.dumps(s, indent=1))


def time_report(folder: Path, repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sweep.build_report(folder)
        times.append(time.perf_counter() - start)
    return {"seconds_min": round(min(times), 3), "html_bytes": (folder / "report.html").stat().st_size}


def table(result: dict) -> str:
    rows = ["| engine | items | start-up (s) | generation (s) | items/s | peak RSS per worker (MiB) |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {r['engine']} | {r['items']} | {r['startup_s']} | {r['generate_s']} | {r['items_per_s']} | "
             f"{', '.join(map(str, r['peak_rss_mib']))} |" for r in result["engines"]]
    report = result["report"]
    return "\n".join([
        f"crossattn sweep throughput — {result['date']}, {result['cpus']} CPUs, torch {result['torch']}, "
        f"ray {result['ray']}, {result['steps']} steps, embedded model", "", *rows, "",
        f"speed-up, 2 actors vs 1: {result['speedup_2_vs_1']}×; 2 actors vs in-process: "
        f"{result['speedup_2_vs_local']}×; Ray start-up (ray.init + actors ready) is the start-up column",
        f"report of {report['items']} items: {report['seconds_min']} s (min of 3), report.html "
        f"{report['html_bytes']:,} bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 items and a 100-item report (prints only)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--report-items", type=int, default=1000)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/sweep_throughput.json "
                                                     "(none with --quick)")
    args = parser.parse_args()
    n, report_items = (10, 100) if args.quick else (args.items, args.report_items)
    prompts = list(dict.fromkeys(held_out_prompts(4 * n)))[:n]  # N distinct captions: one item each
    result = {"date": date.today().isoformat(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "ray": ray.__version__, "python": platform.python_version(), "steps": args.steps, "engines": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, engine, workers in ENGINES:
            row = measure(prompts, Path(tmp) / f"{engine}-{workers or 1}", engine, workers, args.steps)
            result["engines"].append({"engine": label, **row})
        synthesise(Path(tmp) / "local-1", Path(tmp) / "report", report_items)
        result["report"] = {"items": report_items, **time_report(Path(tmp) / "report")}
    speed = [r["items_per_s"] for r in result["engines"]]
    result["speedup_2_vs_1"] = round(speed[2] / speed[1], 2)
    result["speedup_2_vs_local"] = round(speed[2] / speed[0], 2)
    print(table(result))
    path = args.json or (None if args.quick else "benchmarks/results/sweep_throughput.json")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
