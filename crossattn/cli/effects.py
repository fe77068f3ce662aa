"""`crossattn effects`: what each word causes: regenerate without it (same seed) and map what changed."""

from __future__ import annotations

import json

from ..errors import InputError
from ..words import slug, split_list
from .common import _clear, _output_folder, _pipe_and_options, command, generation_args


def add(sub) -> None:
    x = command(sub, "effects", "what does each word cause? regenerate without it (same seed) and map what changed")
    generation_args(x)
    x.add_argument("--words", default=None, help="comma-separated words or phrases (default: the prompt's objects)")
    x.add_argument("--how", choices=("prompt", "attention"), default="prompt",
                   help="prompt: delete the word and re-encode; attention: scale its attention (crossattn.intervene)")
    x.add_argument("--scale", type=float, default=0.0, help="attention scale for --how attention (0: removed)")
    x.add_argument("--window", default="0:", help="steps START:STOP the attention scale applies in (--how attention)")
    x.set_defaults(func=run)


def run(args) -> None:
    from ..causal import effects
    from ..pictures import effect_picture

    words = split_list(args.words) or None
    window = _window(args.window)
    if args.how == "prompt" and (args.scale != 0.0 or args.window != "0:"):
        raise InputError("--scale and --window apply to --how attention; --how prompt deletes the word outright")
    out = _output_folder(args)
    pipe, options = _pipe_and_options(args)
    eff = effects(pipe, args.prompt, words, how=args.how, scale=args.scale, steps=window, seed=args.seed,
                  **options)
    _clear(out, args)
    (out / "effects").mkdir()
    eff.image.save(out / "image.png")
    for k, effect in enumerate(eff):
        effect_picture(eff, effect.word).save(out / "effects" / f"{k:02d}_{slug(effect.word)}.png")
        effect.image.save(out / "effects" / f"{k:02d}_{slug(effect.word)}_counterfactual.png")
    import numpy as np

    np.savez_compressed(out / "changes.npz", **{f"{k:02d}_{slug(e.word)}": e.change for k, e in enumerate(eff)})
    (out / "effects.json").write_text(json.dumps(eff.to_dict(), indent=1))
    for e in eff:
        r = "n/a" if e.agreement is None else f"{e.agreement:+.2f}"
        print(f"{e.word:<20} mean change {e.change.mean():.3f}  max {e.change.max():.3f}  agreement r {r}")
    print(f"\nwrote {out}: image.png, effects/ ({len(eff.words)} words), changes.npz, effects.json")


def _window(text: str) -> tuple[int, int | None]:
    """'0:10' -> (0, 10); '5:' -> (5, None): a step window as Python writes a slice."""
    try:
        start, stop = text.split(":")
        return int(start or 0), int(stop) if stop.strip() else None
    except ValueError:
        raise InputError(f"bad --window {text!r}: write START:STOP (stop left out: to the end), e.g. 0:10") from None
