"""Command line: ``crossattn generate "PROMPT"`` and friends. Bad input → one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tqdm import tqdm

from .generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, check_inputs, generate, native_size, parse_size


def _slug(word: str) -> str:
    return re.sub(r"[^\w-]+", "_", word).strip("_") or "word"


def _load(args):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .models import load_pipeline

    diffusers_logging.disable_progress_bar()  # loading bars would bury the one bar that matters
    transformers_logging.disable_progress_bar()
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)  # our own tqdm bar below
    return pipe


def cmd_generate(args) -> None:
    pipe = _load(args)
    size = parse_size(args.size) if args.size else native_size(pipe)
    words = [w.strip() for w in args.words.split(",") if w.strip()] if args.words else None
    check_inputs(pipe, args.prompt, size, args.steps, args.guidance, words)  # fail before generating
    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:
        image, maps = generate(pipe, args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                               size=size, negative_prompt=args.negative, on_step=lambda i, n: bar.update(1))
    maps.meta["model"] = args.model or "embedded:shapes-model"
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    image.save(out / "image.png")
    chosen = [maps.word(w) for w in words] if words else list(maps)
    tile = max(256, *image.size)
    for k, m in enumerate(chosen):
        picture = m.figure(image, alpha=args.alpha, cmap=args.cmap, tile=tile)
        picture.save(out / "overlays" / f"{k:02d}_{_slug(m.word)}.png")
    maps.grid(image, words=words, alpha=args.alpha, cmap=args.cmap).save(out / "grid.png")
    maps.save(out, fmt=args.format)
    print(f"wrote {out}: image.png, grid.png, overlays/ ({len(chosen)} words), maps.{args.format}, heatmaps.json")


def cmd_train_shapes(args) -> None:
    from .shapes.train import Recipe, Trainer, train

    recipe = Recipe(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps)
    if args.export:
        path = Trainer(args.run, recipe, args.device).export(args.export)
        print(f"exported {path}")
    else:
        train(args.run, recipe, args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossattn", description="Per-word cross-attention heat maps.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate an image and one heat map per prompt word")
    g.add_argument("prompt")
    g.add_argument("--model", default=None, help="hub id or local folder (default: embedded shapes model)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    g.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    g.add_argument("--negative", default=None, help="negative prompt")
    g.add_argument("--words", default=None, help="comma-separated words to render (default: all)")
    g.add_argument("--out", default="out")
    g.add_argument("--alpha", type=float, default=0.5)
    g.add_argument("--cmap", default="jet")
    g.add_argument("--format", choices=["safetensors", "npz"], default="safetensors")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train-shapes", help="train (or resume) the embedded shapes-world model")
    t.add_argument("--run", default="runs/shapes", help="run folder (checkpoints, log.txt, samples)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--vae-steps", type=int, default=2000)
    t.add_argument("--unet-steps", type=int, default=12000)
    t.add_argument("--device", default=None)
    t.add_argument("--export", default=None, help="write the trained EMA pipeline to this folder and exit")
    t.set_defaults(func=cmd_train_shapes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("crossattn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"crossattn: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

