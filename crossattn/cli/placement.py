"""`crossattn placement`: where each object landed, and checks of an intended layout."""

from __future__ import annotations

import json

from .. import geometry, pictures, placement, reports
from ..geometry import DEFAULT_TAU
from .common import _clear, _generate, _output_folder, command, generation_args


def add(sub) -> None:
    p = command(sub, "placement", "where did each object land; check an intended layout")
    generation_args(p)
    p.add_argument("--expect", action="append", default=[], metavar="STATEMENT",
                   help='"circle left_of square" (right_of, above, below), "circle on the left", '
                        '"circle in x0,y0,x1,y1" (normalised); repeatable (default: the relations the prompt states)')
    p.add_argument("--from-prompt", action="store_true", help="also check relations stated in the prompt")
    p.add_argument("--method", choices=["relative", "otsu"], default="relative", help="how a map becomes a mask")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="relative threshold (share of the peak)")
    p.set_defaults(func=run)


def run(args) -> None:
    named = [w for s in args.expect for w in placement.statement_words(s)]  # unreadable statements fail here
    out = _output_folder(args)
    image, maps, _ = _generate(args, named)
    data = placement.report(maps, args.expect, from_prompt=args.from_prompt, method=args.method, tau=args.tau)
    data |= {"seed": args.seed, "model": maps.info.model, "steps": args.steps}
    _clear(out, args)
    image.save(out / "image.png")
    written = ["image.png"]
    if data["words"]:  # no object to segment or follow (an emoji-only prompt: its note said so)
        labels, names = placement.segmentation(maps)
        pictures.segmentation_picture(image, labels, names).save(out / "segmentation.png")
        lines = [geometry.Track.from_dict(t) for t in data["timelines"]]
        pictures.track_picture(image, lines).save(out / "timeline.png")
        written += ["segmentation.png", "timeline.png"]
    (out / "placement.json").write_text(json.dumps(data, indent=1))
    print(reports.format_report(data))
    print(f"\nwrote {out}: {', '.join(written)}, placement.json")
