"""How often is `crossattn.diagnose(maps)` right? Validation on the shapes world, where the truth is in the pixels.

Failures are made likely on purpose — two- and three-object prompts, few denoising steps, low guidance — and
the truth is read from the generated pixels (`crossattn.shapes.evaluate`'s palette segmentation):

- **missing**: the object's colour is absent from the image (no blob of it covering ≥ 0.4 % of the pixels);
- **wrong colour**: the object's colour is present, but its largest blob is not the named shape, while the named
  shape is drawn in a colour that no named object of that shape has (the colours went to the wrong objects);
- **merged**: both objects' colours are present and their largest blobs touch (the world never draws objects
  closer than 2 px);
- **relation broken**: for "X <relation> Y" prompts with both objects drawn, the pixels' centroids break it.

Scores: neglect (per object) against missing; the leakage of the object's colour word against wrong colour; the
pair's mask IoU against merged; the attention verdict against broken relations. Thresholds are chosen on
*training* seeds (the lowest at which the verdict is right more often than not; none if there is none, and that
verdict is never issued) and written, with a calibration table (share of real failures per score range), to
``crossattn/assets/diagnosis.json``; the figures are then measured on *held-out* seeds, for the full run and
for the early verdict from the first 25 % and 50 % of the steps. ``--json FILE`` writes the summary (tables,
AUCs by model and setting, thresholds, calibration, the command) to FILE and every generation's truth and
scores beside it, gzipped (``diagnosis_eval.json`` → ``diagnosis_eval_items.json.gz``); ``--rescore FILE``
scores those again without generating.

    .venv/bin/python benchmarks/diagnosis_eval.py --model shapes-unet --model BASE_MODEL_FOLDER --n 1500 \
        --json benchmarks/results/diagnosis_eval.json --write-calibration
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crossattn  # noqa: E402
from crossattn.diagnosis import FAILURES, diagnose  # noqa: E402
from crossattn.generation import generate  # noqa: E402
from crossattn.models import asset_path  # noqa: E402
from crossattn.placement import relation_gap  # noqa: E402
from crossattn.shapes import evaluate as ev  # noqa: E402
from crossattn.shapes.world import HELD_OUT_SEED, parse_caption, sample_scene  # noqa: E402

TRAIN_SEED = 300_000_000  # scenes for choosing thresholds: a training-range stream no recipe uses
SETTINGS = [(3, 1.5), (4, 2.0), (6, 3.0), (8, 1.5), (12, 5.0)]  # (steps, guidance): failure-prone to normal
WINDOWS = {"full": None, "first 50 %": 0.5, "first 25 %": 0.25}


def prompts(start: int, n: int) -> list[str]:
    """n captions naming 2 or 3 objects (half each), from scene seeds start, start + 1, ..."""
    out, seed = [], start
    while len(out) < n:
        scene = sample_scene(seed, n_objects=2 + len(out) % 2)
        seed += 1
        out.append(scene.caption)
    return out


def truth(image: np.ndarray, caption: str) -> dict:
    """What the pixels say about each named object and pair."""
    masks = ev.colour_masks(image)
    pairs, relation = parse_caption(caption)
    blobs = {c: ev.largest_blob(masks[c]) for c, _ in pairs}
    present = {c: ev.drawn(b) for c, b in blobs.items()}
    drawn_shapes = {c: ev.classify_shape(b) for c, b in blobs.items() if present[c]}
    every = {c: ev.largest_blob(m) for c, m in masks.items()}
    shape_in_colour = {c: ev.classify_shape(b) for c, b in every.items() if ev.drawn(b)}
    objects = {}
    for colour, shape in pairs:
        wrong = present[colour] and drawn_shapes[colour] != shape and any(
            s == shape and (c, s) not in pairs for c, s in shape_in_colour.items() if c != colour)
        objects[f"{colour} {shape}"] = {"missing": not present[colour], "wrong_colour": bool(wrong)}
    merged = {}
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            a, b = pairs[i][0], pairs[j][0]
            touch = present[a] and present[b] and bool(
                (cv2.dilate(blobs[a].astype(np.uint8), np.ones((3, 3), np.uint8)) & blobs[b]).any())
            merged[f"{a} {pairs[i][1]} | {b} {pairs[j][1]}"] = touch  # the pair, keyed as diagnose's merging is
    broken = None
    if relation and len(pairs) == 2 and all(present[c] for c, _ in pairs):
        gap = relation_gap(ev.centroid(blobs[pairs[0][0]]), ev.centroid(blobs[pairs[1][0]]), relation)
        broken = bool(gap <= 0)
    return {"objects": objects, "merged": merged, "relation_broken": broken}


def collect(pipes: list, captions: list[str], label: str) -> list[dict]:
    """Per generation: the truth and the diagnosis scores for each window (the models take turns)."""
    rows = []
    for k, caption in enumerate(tqdm(captions, desc=label, unit="image")):
        steps, guidance = SETTINGS[k % len(SETTINGS)]
        model = k // len(SETTINGS) % len(pipes)
        image, maps = generate(pipes[model], caption, seed=k, steps=steps, guidance=guidance)
        objects = [f"{c} {s}" for c, s in parse_caption(caption)[0]]
        row = {"caption": caption, "model": model, "steps": steps, "guidance": guidance,
               "truth": truth(np.asarray(image), caption)}
        for window, share in WINDOWS.items():
            span = None if share is None else slice(0, max(1, round(share * steps)))
            d = diagnose(maps, objects, span)
            relation = crossattn.relations(maps)
            attention_says_broken = None
            if relation:
                window_maps = maps if span is None else maps.filter(steps=span)
                attention_says_broken = not crossattn.check(window_maps, relation[0]).passed
            row[window] = {
                "neglect": {o.name: o.neglect for o in d.objects},
                "leakage": {o.name: o.leakage.get(o.name.split()[0], 0.0) for o in d.objects},  # the colour word's
                "merging": {" | ".join(p): v for p, v in d.merging.items()},
                "relation_broken": attention_says_broken,
            }
        rows.append(row)
    return rows


def cases(rows: list[dict], kind: str, window: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, truths) of one failure kind across all generations."""
    scores, truths = [], []
    for row in rows:
        t, d = row["truth"], row[window]
        if kind == "neglect":
            for name, info in t["objects"].items():
                scores.append(d["neglect"][name])
                truths.append(info["missing"])
        elif kind == "leakage":
            for name, info in t["objects"].items():
                if not info["missing"]:
                    scores.append(d["leakage"][name])
                    truths.append(info["wrong_colour"])
        else:
            for pair, merged in t["merged"].items():
                scores.append(d["merging"][pair])
                truths.append(merged)
    return np.asarray(scores, float), np.asarray(truths, bool)


def auc(scores: np.ndarray, truths: np.ndarray) -> float | None:
    """ROC AUC by the rank statistic (ties count half)."""
    pos, neg = scores[truths], scores[~truths]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def precision_recall(scores, truths, threshold) -> tuple[float | None, float | None]:
    said = scores >= threshold
    tp = (said & truths).sum()
    return (float(tp / said.sum()) if said.sum() else None, float(tp / truths.sum()) if truths.sum() else None)


def best_threshold(scores: np.ndarray, truths: np.ndarray, precision: float = 0.5) -> float | None:
    """The lowest threshold whose verdict was right at least `precision` of the time on these (training) cases
    (the most recall a verdict that is right more often than not can have); None if there is none — that verdict
    is then never issued. (F1 chose an IoU of 0.002 for merging, a verdict right one time in ten.)"""
    for t in np.unique(scores):
        p, _ = precision_recall(scores, truths, t)
        if p is not None and p >= precision and (scores >= t).sum() >= 5:  # not 1 lucky case
            return float(t)
    return None


def calibration_bins(scores: np.ndarray, truths: np.ndarray, threshold: float | None,
                     n: int = 5) -> list[list[float]]:
    """Score ranges holding equal numbers of cases, split at the threshold (so the range a verdict quotes holds
    only scores that give it), each with its share of real failures."""
    edges = np.unique([*np.quantile(scores, np.linspace(0, 1, n + 1)), *([] if threshold is None else [threshold])])
    out = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (scores >= low) & ((scores < high) if high == threshold else (scores <= high))
        out.append([float(low), float(high), float(truths[inside].mean()) if inside.any() else 0.0])
    return out


def items_path(summary: Path) -> Path:
    """Where the per-generation rows of a summary file go: beside it, ``NAME_items.json.gz``."""
    return summary.with_name(f"{summary.stem}_items.json.gz")


def write_result(summary_file: Path, summary: dict, items: dict) -> None:
    """The summary as small indented JSON; every generation's truth and scores gzipped beside it (byte-stable:
    no time or name in the gzip header)."""
    summary_file.parent.mkdir(parents=True, exist_ok=True)
    rows = items_path(summary_file)
    summary = {**summary, "rescore": f".venv/bin/python benchmarks/diagnosis_eval.py --rescore {summary_file}",
               "items": rows.name}
    summary_file.write_text(json.dumps(summary, indent=1) + "\n")
    with rows.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as out:
        out.write(json.dumps(items, separators=(",", ":")).encode())


def read_result(summary_file: Path) -> tuple[dict, dict]:
    """(summary, {"held_out": rows, "training": rows}) of a run; also reads the single-file JSON of older runs."""
    summary = json.loads(summary_file.read_text())
    if "held_out" in summary:  # before the split: one compact file held everything
        return summary, summary
    with gzip.open(summary_file.parent / summary.get("items", items_path(summary_file).name), "rt") as f:
        return summary, json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="model(s) to generate with, taking turns (default: shapes-unet)")
    parser.add_argument("--n", type=int, default=600, help="generations for thresholds and as many held out")
    parser.add_argument("--json", default=None)
    parser.add_argument("--write-calibration", action="store_true",
                        help="write the chosen thresholds to crossattn/assets/diagnosis.json")
    parser.add_argument("--rescore", default=None, metavar="JSON",
                        help="score the generations saved in a previous run's JSON instead of generating")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/diagnosis_eval.py", *sys.argv[1:]])
    if args.rescore:
        saved, items = read_result(Path(args.rescore))
        args.model, args.n, train, held = saved["model"], saved["n"], items["training"], items["held_out"]
        command = saved.get("command", command)  # the run that generated the items
    else:
        args.model = args.model or ["shapes-unet"]
        pipes = [crossattn.load_pipeline(m) for m in args.model]
        for pipe in pipes:
            pipe.set_progress_bar_config(disable=True)
        train = collect(pipes, prompts(TRAIN_SEED, args.n), "training seeds")
        held = collect(pipes, prompts(HELD_OUT_SEED + 5_000_000, args.n), "held-out seeds")
    thresholds, bins = {}, {}
    for kind in FAILURES:
        s, t = cases(train, kind, "full")
        thresholds[kind] = best_threshold(s, t)
        bins[kind] = calibration_bins(s, t, thresholds[kind])
    table = []
    for kind in FAILURES:
        for window in WINDOWS:
            s, t = cases(held, kind, window)
            p, r = precision_recall(s, t, np.inf if thresholds[kind] is None else thresholds[kind])
            table.append({"kind": kind, "window": window, "cases": int(len(t)), "true": int(t.sum()),
                          "auc": auc(s, t), "precision": p, "recall": r, "threshold": thresholds[kind]})
    for window in WINDOWS:
        said = [r[window]["relation_broken"] for r in held if r["truth"]["relation_broken"] is not None]
        real = [r["truth"]["relation_broken"] for r in held if r["truth"]["relation_broken"] is not None]
        s, t = np.asarray(said, bool), np.asarray(real, bool)
        p, r = precision_recall(s.astype(float), t, 0.5)
        table.append({"kind": "misplacement", "window": window, "cases": int(len(t)), "true": int(t.sum()),
                      "auc": None, "precision": p, "recall": r, "threshold": None})
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("| failure | window | cases (true) | ROC AUC | precision | recall | threshold |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['kind']} | {row['window']} | {row['cases']} ({row['true']}) | {fmt(row['auc'])} | "
              f"{fmt(row['precision'])} | {fmt(row['recall'])} | {fmt(row['threshold'])} |")
    print("\nROC AUC of the full run by model and by (steps, guidance), held-out seeds:")
    groups = {f"model {m}": [r for r in held if r["model"] == i] for i, m in enumerate(args.model)}
    groups |= {f"{st} steps, guidance {g}": [r for r in held if (r["steps"], r["guidance"]) == (st, g)]
               for st, g in SETTINGS}
    by_group = {}
    for name, rows in groups.items():
        by_group[name] = {}
        for kind in FAILURES:
            s, t = cases(rows, kind, "full")
            by_group[name][kind] = {"cases": int(len(t)), "true": int(t.sum()), "auc": auc(s, t)}
        print(f"  {name}: " + ", ".join(f"{kind} {fmt(v['auc'])} ({v['true']} true)"
                                         for kind, v in by_group[name].items()))
    summary = {"command": command, "model": args.model, "n": args.n, "settings": SETTINGS, "windows": list(WINDOWS),
               "table": table, "by_group": by_group, "thresholds": thresholds, "bins": bins}
    if args.json:
        write_result(Path(args.json), summary, {"held_out": held, "training": train})
    if args.write_calibration:
        source = f"benchmarks/diagnosis_eval.py --model {' --model '.join(args.model)} --n {args.n} (training seeds)"
        asset_path("diagnosis.json").write_text(json.dumps(
            {"thresholds": thresholds, "bins": bins, "source": source}, indent=1))
        print(f"wrote {asset_path('diagnosis.json')}")


if __name__ == "__main__":
    main()
