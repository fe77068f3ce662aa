"""Can the shapes model learn relations at the step that picks the layout? A focused fine-tune, measured.

`position_probe.py` showed the base model's (stage 1 in the README) t = 999 prediction obeying "X left of Y"
no more often than chance, while the mean of true layouts, which that prediction should approach, obeys it
90 % of the time.
This script trains only that step, to find out whether the model *can* learn it and how fast:

- every batch holds two-object (relation) captions only, all at t ≥ 950, with the posterior-mean target over
  `--layouts` layouts of each caption (`Trainer.denoiser_loss` with `reference_layouts`; the project's own loss);
- every `--check-every` steps it prints the probe's figure: the share of 40 held-out relation prompts whose
  decoded t = 999 prediction (guidance 5) puts the first colour on the stated side of the second.

Only the noisiest steps are trained, so the lower-noise steps drift: this measures learnability, it does
not make a model to ship. About 1.7 s a step on this project's 2-core CPU.

    .venv/bin/python benchmarks/relation_focus.py --steps 1200 --check-every 300 \\
        [--init-from PIPELINE] [--export DIR] [--json FILE]

PIPELINE (default: the shipped shapes-unet) is an embedded model's name or a pipeline folder, such as a
training stage's export (``runs/base-export``; no run folder is in the repository: docs/shapes.md gives the
commands that make them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from position_probe import layout_step_relation

from crossattn.shapes.model import MODEL_DIR
from crossattn.shapes.train import Recipe, Trainer, to_tensor
from crossattn.shapes.world import Scene, sample_scene


def relation_scenes(start_seed: int, n: int) -> tuple[list[Scene], int]:
    """The next n two-object scenes from `start_seed` on (training seeds: below the held-out 10⁹)."""
    scenes, seed = [], start_seed
    while len(scenes) < n:
        scene = sample_scene(seed)
        seed += 1
        if scene.relation is not None:
            scenes.append(scene)
    return scenes, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init-from", default=str(MODEL_DIR), help="pipeline folder or embedded model to "
                        "start from (default: the shipped shapes-unet)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--check-every", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--layouts", type=int, default=6, help="other layouts per caption in the target")
    parser.add_argument("--export", default=None, help="save the fine-tuned pipeline here")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    recipe = Recipe(init_from=args.init_from, grounding_weight=0.0, weighting="clamped", high_noise_share=1.0,
                    high_noise_from=950, reference_layouts=args.layouts)  # clamped: weight 1 at t ≥ 950
    with tempfile.TemporaryDirectory() as run:  # a Trainer keeps a run folder; nothing here is resumable
        trainer = Trainer(run, recipe)
    trainer.load_starting_weights()
    params = [p for m in trainer.parts.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr)
    pipe = trainer.live

    def check(step: int, loss: float | None) -> dict:
        for m in trainer.parts.values():
            m.eval()
        row = {"step": step, "loss": loss, **layout_step_relation(pipe)}
        for m in trainer.parts.values():
            m.train()
        shown = "     –" if loss is None else f"{loss:.4f}"
        print(f"step {step:>5}  loss {shown}  t=999 prediction obeys the relation: {row['model']:.2f} "
              f"(mean of true layouts {row['mean of true layouts']:.2f}; {time.time() - start:.0f} s)", flush=True)
        return row

    start, seed, losses = time.time(), 0, []
    rows = [check(0, None)]
    for step in range(args.steps):
        scenes, seed = relation_scenes(seed, args.batch)
        trainer.step = step
        gen = torch.Generator(trainer.device).manual_seed(step)
        loss, _ = trainer.denoiser_loss(to_tensor(np.stack([s.image for s in scenes])), [s.caption for s in scenes],
                                        gen, scenes=scenes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.check_every == 0 or step + 1 == args.steps:
            rows.append(check(step + 1, float(np.mean(losses[-args.check_every:]))))
    if args.export:
        pipe.save_pretrained(args.export, safe_serialization=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        settings = {"init_from": args.init_from, "batch": args.batch, "lr": args.lr, "layouts": args.layouts}
        Path(args.json).write_text(json.dumps({**settings, "checks": rows}, indent=1))


if __name__ == "__main__":
    main()
