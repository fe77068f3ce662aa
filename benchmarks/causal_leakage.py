"""Does a causal signal find leaking colours better than the attention does? (issue 25, validation item 6)

A leak is rare — 15 of 1,593 drawn objects of shapes-unet's held-out diagnosis generations took another object's
shape (`diagnosis_eval.truth`: "wrong colour") — so scoring random generations would need thousands of them. This
is a case-control check instead: every generation of the diagnosis eval (both of its seed streams, shapes-unet's
turns) where a drawn object's colour went wrong, and as many other generations again × `--controls`, drawn at
random. ROC AUC does not depend on how many cases of each kind were drawn. Each generation is made again (same
caption, seed, steps and guidance; its truth is checked against the stored one), diagnosed, and generated again
once per object with attention taken away (`crossattn.intervene`, scale 0, all steps, same seed):

- ``words``: the object's colour + shape (the ablation `diagnose_causally` already makes for neglect: no extra cost);
- ``colour``: its colour word alone (one more generation per object).

Scores per drawn object (its attention region: `diagnose`'s mask; the other objects' regions theirs):

- attention: ``diagnose(maps)[obj].leakage[colour]`` — the share of the colour word's attention on other objects;
- causal ``share``: the largest mean pixel change on another object's region, over that plus the mean change on its
  own — a colour that went to another object changes that object when it is taken away.

    .venv/bin/python benchmarks/causal_leakage.py --json benchmarks/results/causal_leakage.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnosis_eval import SETTINGS, TRAIN_SEED, auc, prompts, read_result, truth  # noqa: E402

import crossattn  # noqa: E402
from crossattn.diagnosis import diagnose  # noqa: E402
from crossattn.effects import change_map  # noqa: E402
from crossattn.generation import generate  # noqa: E402
from crossattn.intervention import intervene  # noqa: E402
from crossattn.shapes.world import HELD_OUT_SEED  # noqa: E402

STREAMS = {"held_out": HELD_OUT_SEED + 5_000_000, "training": TRAIN_SEED}  # diagnosis_eval's two seed streams
ABLATED = {"words": lambda name: name, "colour": lambda name: name.split()[0]}


def chosen(items: dict, controls: float, seed: int) -> list[tuple[str, int]]:
    """(stream, index) of every shapes-unet generation with a wrong colour, and `controls` × as many others."""
    cases, others = [], []
    for stream, rows in items.items():
        for k, row in enumerate(rows):
            if row["model"] != 0:  # the diagnosis eval's models take turns; 0 is shapes-unet
                continue
            wrong = any(o["wrong_colour"] for o in row["truth"]["objects"].values())
            (cases if wrong else others).append((stream, k))
    return cases + random.Random(seed).sample(others, round(controls * len(cases)))


def share(change: np.ndarray, own: np.ndarray | None, rest: list[np.ndarray]) -> float:
    """The largest mean change on another object's region over that plus the mean change on the object's own (0
    with no regions)."""
    inside = float(change[own].mean()) if own is not None and own.any() else 0.0
    others = [float(change[m].mean()) for m in rest if m is not None and m.any()]
    outside = max(others, default=0.0)  # the one object it leaked onto
    return outside / (inside + outside) if inside + outside > 0 else 0.0


def score(pipe, caption: str, k: int, stored: dict) -> list[dict]:
    """Per drawn object of one generation: the truth, the attention score and the causal scores."""
    steps, guidance = SETTINGS[k % len(SETTINGS)]
    image, maps = generate(pipe, caption, seed=k, steps=steps, guidance=guidance)
    now = truth(np.asarray(image), caption)
    d = diagnose(maps, list(now["objects"]))
    masks = {o.name: o.mask for o in d.objects}
    rows = []
    for o in d.objects:
        if now["objects"][o.name]["missing"]:  # leakage is judged on drawn objects (as the diagnosis eval does)
            continue
        row = {"caption": caption, "seed": k, "object": o.name, "wrong_colour": now["objects"][o.name]["wrong_colour"],
               "same_as_stored": now == stored, "attention": o.leakage.get(o.name.split()[0], 0.0)}
        for name, words in ABLATED.items():
            with intervene(pipe, {words(o.name): 0.0}):
                ablated, _ = generate(pipe, caption, seed=k, steps=steps, guidance=guidance)
            row[name] = share(change_map(image, ablated), masks[o.name], [m for n, m in masks.items() if n != o.name])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", default="benchmarks/results/diagnosis_eval.json",
                        help="the diagnosis eval whose generations are scored again")
    parser.add_argument("--controls", type=float, default=3.0, help="generations without a leak per one with it")
    parser.add_argument("--seed", type=int, default=0, help="of the random choice of controls")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, items = read_result(Path(args.items))
    pipe = crossattn.load_pipeline("shapes-unet")
    pipe.set_progress_bar_config(disable=True)
    picked = chosen(items, args.controls, args.seed)
    captions = {s: prompts(start, len(items[s])) for s, start in STREAMS.items()}
    started, rows = time.perf_counter(), []
    for stream, k in tqdm(picked, desc="leakage cases", unit="image"):
        assert captions[stream][k] == items[stream][k]["caption"], "the diagnosis eval's captions changed"
        rows += score(pipe, captions[stream][k], k, items[stream][k]["truth"])
    truths = np.array([r["wrong_colour"] for r in rows], bool)
    aucs = {s: auc(np.array([r[s] for r in rows], float), truths) for s in ("attention", *ABLATED)}
    result = {"command": " ".join([".venv/bin/python", "benchmarks/causal_leakage.py", *sys.argv[1:]]),
              "images": len(picked), "objects": len(rows), "wrong_colour": int(truths.sum()),
              "same_as_stored": sum(r["same_as_stored"] for r in rows), "auc": aucs,
              "generations_per_object": {"attention": 0, "words": 1, "colour": 1},
              "minutes": (time.perf_counter() - started) / 60, "records": rows}
    print(f"{len(picked)} generations, {len(rows)} drawn objects, {int(truths.sum())} with a wrong colour "
          f"({result['same_as_stored']} objects' generations identical to the diagnosis eval's)")
    print("| leakage score | extra generations per object | ROC AUC |\n|---|---|---|")
    labels = {"attention": "attention: share of the colour word's attention on other objects",
              "words": "causal: change on other objects when its words are ablated (share)",
              "colour": "causal: change on other objects when its colour word is ablated (share)"}
    for s, label in labels.items():
        print(f"| {label} | {result['generations_per_object'][s]} | "
              f"{'-' if aucs[s] is None else f'{aucs[s]:.3f}'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
