"""`crossattn generate`: one image and a heat map per word of the prompt (overlays, grid, the maps)."""

from __future__ import annotations

from pathlib import Path

from .. import diagnosis, pictures
from ..concepts import METHODS
from ..words import slug, split_list
from .common import _clear, _cmap, _generate, _output_folder, command, generation_args


def add(sub) -> None:
    g = command(sub, "generate", "generate an image and one heat map per prompt word")
    generation_args(g)
    g.add_argument("--words", default=None, help="comma-separated words to render (default: all)")
    g.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    g.add_argument("--cmap", type=_cmap, default="jet", help="colour map")
    g.add_argument("--format", choices=["safetensors", "npz"], default="safetensors", help="file format of the maps")
    g.add_argument("--concepts", default=None, help="comma-separated words to locate whether or not the prompt says "
                                                    "them (concept maps; default: none)")
    g.add_argument("--concept-method", choices=METHODS, default=None,
                   help="prompt (each concept read as a prompt of its own; the default), outputs "
                        "(ConceptAttention; joint transformers) or attention (a softmax over the concepts alone)")
    g.set_defaults(func=run)


def run(args) -> None:
    words = split_list(args.words) or None
    out = _output_folder(args)
    image, maps, _ = _generate(args, words, concepts=split_list(args.concepts) or None,
                               concept_method=args.concept_method, videos=True)
    _clear(out, args)
    if isinstance(image, list):  # a video pipeline: its frames
        written = write_video(out, image, maps, args, words)
    else:
        image.save(out / "image.png")
        written = ["image.png"] + write_maps(out, image, maps, args, words)
    print(f"wrote {out}: {', '.join(written)}")


def write_video(out: Path, frames: list, maps, args, words: list[str] | None = None) -> list[str]:
    """The video as a GIF, one overlay GIF per word (each decoded frame under its latent frame's map), the frames ×
    words grid and the maps themselves; returns what was written."""
    (out / "overlays").mkdir()
    pictures.save_gif(frames, out / "video.gif")
    names = words or maps.names
    for k, name in enumerate(names):
        pictures.save_gif(pictures.video_overlay(frames, maps, name, args.alpha, args.cmap),
                          out / "overlays" / f"{k:02d}_{slug(name)}.gif")
    pictures.frames_grid(frames, maps, names, args.alpha, args.cmap).save(out / "grid.png")
    maps.save(out, fmt=args.format)
    return ["video.gif", "grid.png (frames × words)", f"overlays/ ({len(names)} word GIFs)", f"maps.{args.format}",
            "heatmaps.json"]


def write_maps(out: Path, image, maps, args, words: list[str] | None = None) -> list[str]:
    """Overlays (one per word, then per concept), the grid and the maps themselves; returns what was written."""
    (out / "overlays").mkdir()
    chosen = [maps.word(w) for w in words] if words else list(maps)
    tile = max(256, *image.size)
    for k, m in enumerate(chosen):
        m.figure(image, alpha=args.alpha, cmap=args.cmap, tile=tile).save(
            out / "overlays" / f"{k:02d}_{slug(m.word)}.png")
    located = list(maps.concepts) if maps.concepts is not None else []
    for k, m in enumerate(located):
        m.figure(image, alpha=args.alpha, cmap=args.cmap, tile=tile).save(
            out / "overlays" / f"concept{k:02d}_{slug(m.word)}.png")
    maps.grid(image, words=words, alpha=args.alpha, cmap=args.cmap).save(out / "grid.png")
    maps.save(out, fmt=args.format, diagnosis=diagnosis.diagnose(maps))  # the verdict travels with its maps
    also = f" and {len(located)} concepts" if located else ""
    return ["grid.png", f"overlays/ ({len(chosen)} words{also})", f"maps.{args.format}", "heatmaps.json"] + \
        (["concepts/"] if located else [])
