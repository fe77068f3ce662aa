"""The shipped neglect verdicts on generations nobody chose a threshold on (issue 25, validation item 6, held out).

causal_eval.py chose the causal verdict's threshold on the same 300 shapes-unet objects it reports. This checks
both shipped verdicts end to end, as a user gets them, on a fresh stream of failure-prone generations (the
diagnosis eval's caption sampler and (steps, guidance) cycle, from a seed no other benchmark uses):
`crossattn.diagnose(maps)` (attention) and `crossattn.diagnose_causally(pipe, image, maps)` (one more generation
per object), each object's verdict against the pixels (missing: its colour absent from the image).

    .venv/bin/python benchmarks/causal_verdict.py --model shapes-unet --json benchmarks/results/causal_verdict.json
    .venv/bin/python benchmarks/causal_verdict.py --model shapes-mmdit --json benchmarks/results/causal_verdict.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnosis_eval import SETTINGS, auc, precision_recall, prompts  # noqa: E402

import crossattn  # noqa: E402
from crossattn.generation import generate  # noqa: E402
from crossattn.shapes import evaluate as ev  # noqa: E402
from crossattn.shapes.world import HELD_OUT_SEED  # noqa: E402

STREAM = HELD_OUT_SEED + 7_000_000  # held-out scenes no other benchmark draws from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes-unet")
    parser.add_argument("--n", type=int, default=150, help="failure-prone generations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="add this model's results to this JSON (others kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = crossattn.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    started, objects = time.perf_counter(), []
    for k, caption in enumerate(tqdm(prompts(STREAM, args.n), desc=f"{args.model}: verdicts", unit="image")):
        steps, guidance = SETTINGS[k % len(SETTINGS)]
        image, maps = generate(pipe, caption, seed=k, steps=steps, guidance=guidance)
        truth = ev.read_pixels(image, caption)
        named = [f"{colour} {shape}" for colour, shape in truth.pairs]  # the objects as the pixels name them
        attention = crossattn.diagnose(maps, named)
        causal = crossattn.diagnose_causally(pipe, image, maps, named)
        for a, c, pair in zip(attention.objects, causal.objects, truth.pairs, strict=True):
            objects.append({"caption": caption, "seed": k, "object": a.name,
                            "missing": pair not in truth.blobs, "attention_score": a.neglect,
                            "attention_says": a.missing, "causal_score": c.causal_neglect, "causal_says": c.missing})
    truths = np.array([o["missing"] for o in objects], bool)
    rows = {}
    for kind in ("attention", "causal"):
        scores = np.array([o[f"{kind}_score"] for o in objects], float)
        said = np.array([o[f"{kind}_says"] for o in objects], float)
        precision, recall = precision_recall(said, truths, 0.5)
        rows[kind] = {"auc": auc(scores, truths), "precision": precision, "recall": recall,
                      "said": int(said.sum())}
    result = {"model": args.model, "n": args.n, "objects": len(objects), "missing": int(truths.sum()),
              "minutes": (time.perf_counter() - started) / 60, "verdicts": rows, "records": objects}
    print(f"{args.model}: {args.n} generations, {len(objects)} objects, {int(truths.sum())} missing by the pixels")
    print("| verdict | ROC AUC of its score | said missing | precision | recall |\n|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for kind, r in rows.items():
        print(f"| {kind} | {fmt(r['auc'])} | {r['said']} | {fmt(r['precision'])} | {fmt(r['recall'])} |")
    if args.json:
        path = Path(args.json)
        # read just before writing: the other model's run may have written its part meanwhile
        results = {**(json.loads(path.read_text()) if path.exists() else {}), args.model: result}
        path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
