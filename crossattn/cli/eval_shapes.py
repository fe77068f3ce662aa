"""`crossattn eval-shapes`: score a shapes-world model against the pixels' truth."""

from __future__ import annotations

from ..concepts import METHODS
from ..generation import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..models import DEFAULT_MODEL, EMBEDDED
from .common import _device, _load, command, device_help


def add(sub) -> None:
    e = command(sub, "eval-shapes", "score a shapes-world model: fidelity and heat-map IoU")
    e.add_argument("--model", default=None, help=f"{', '.join(EMBEDDED)} or a pipeline folder (default: "
                                                 f"{DEFAULT_MODEL})")
    e.add_argument("--n", type=int, default=100, help="held-out prompts")
    e.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps")
    e.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    e.add_argument("--json", default=None, help="write the scores here (default: print only)")
    e.add_argument("--samples", default=None, help="write a PNG of example images with their overlays (default: "
                                                   "none)")
    e.add_argument("--samples-n", type=int, default=6, help="examples in --samples")
    e.add_argument("--concepts", action="store_true",
                   help="also score concept maps of the world's words and the absent-shape control")
    e.add_argument("--concept-method", choices=METHODS, default=None,
                   help="how concepts are located (default: the model's; see crossattn.trace)")
    e.add_argument("--device", type=_device, default=None, help=device_help())
    e.set_defaults(func=run)


def run(args) -> None:
    from .. import render
    from ..shapes import evaluate as ev
    from ..shapes.world import parse_caption

    pipe = _load(args)
    result, examples = ev.evaluate(pipe, n=args.n, steps=args.steps, guidance=args.guidance, show=args.samples_n,
                                   concepts=args.concepts, concept_method=args.concept_method)
    result["model"] = args.model or DEFAULT_MODEL
    print(ev.format_table(result))
    if args.json:
        ev.save(result, args.json)
        print(f"wrote {args.json}")
    if args.samples:
        rows = []
        for image, maps, _ in examples:
            words = [f"{c} {s}" for c, s in parse_caption(maps.info.prompt)[0]]
            rows.append(maps.grid(image, words=words + ["left" if "left" in maps.words else maps.words[-1]],
                                  tile=160, cols=4))
        render.grid(rows, cols=1, pad=0).save(args.samples)
        print(f"wrote {args.samples}")
