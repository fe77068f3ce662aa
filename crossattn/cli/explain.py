"""`crossattn explain`: per-word maps of an image the user brings."""

from __future__ import annotations

import json

from .. import pictures, placement, reports
from ..concepts import METHODS
from ..explain import SITES, explain, read_image
from ..words import split_list
from .common import MODEL_HELP, _clear, _cmap, _device, _load, _note, _output_folder, _seed, command, device_help
from .generate import write_maps


def add(sub) -> None:
    n = command(sub, "explain", "per-word maps of an image you bring: where does the model see each caption word?")
    n.add_argument("image", help="an image file (PNG, JPEG, …)")
    n.add_argument("caption", help="what the image shows")
    n.add_argument("--model", default=None, help=MODEL_HELP)
    n.add_argument("--seed", type=_seed, default=0, help="seed of the noise added to the image")
    n.add_argument("--levels", default=None, help="comma-separated noise levels in [0, 1] (default: the model's, "
                                                   "see crossattn.explain)")
    n.add_argument("--concepts", default=None, help="comma-separated words to locate whether or not the caption "
                                                    "says them (default: none)")
    n.add_argument("--concept-method", choices=METHODS, default=None, help="see crossattn.trace (default: the "
                                                                             "model's)")
    n.add_argument("--sites", choices=SITES, default="finest",
                   help="finest: on UNets only the finest cross-attention sites (they read a given image best); all: "
                        "every site")
    n.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    n.add_argument("--cmap", type=_cmap, default="jet", help="colour map")
    n.add_argument("--format", choices=["safetensors", "npz"], default="safetensors", help="file format of the maps")
    n.add_argument("--out", default="out/explain", help="output folder; one that holds another run's results is "
                                                        "refused")
    n.add_argument("--overwrite", action="store_true", help="replace whatever results --out holds")
    n.add_argument("--device", type=_device, default=None, help=device_help())
    n.set_defaults(func=run)


def run(args) -> None:
    picture, said = read_image(args.image)  # unreadable files fail here, before the model loads
    for note in said:  # what reading it converted (transparency, 16-bit, rotation ...)
        _note(note)
    args.prompt = args.caption  # what the output folder's record names
    out = _output_folder(args)
    pipe = _load(args)
    levels = [float(x) for x in split_list(args.levels)] if args.levels else None
    maps = explain(pipe, picture, args.caption, noise_levels=levels, seed=args.seed,
                   concepts=split_list(args.concepts) or None, concept_method=args.concept_method,
                   sites=args.sites)
    for note in maps.notes:
        if note not in said:
            _note(note)
    _clear(out, args)
    picture.save(out / "image.png")
    written = ["image.png"] + write_maps(out, picture, maps, args)
    data = placement.report(maps, [], from_prompt=True)
    if data["words"]:
        labels, names = placement.segmentation(maps)
        pictures.segmentation_picture(picture, labels, names).save(out / "segmentation.png")
        written.append("segmentation.png")
    (out / "placement.json").write_text(json.dumps(data, indent=1))
    print(reports.format_report(data))
    print(f"\nwrote {out}: {', '.join(written + ['placement.json'])}")
