"""Heat maps of one generated image: slice them like a cache, read one word, save and load them.

`HeatMaps` holds the recorder's sums for one image, per *site* (``"up.16x16"``, ``"down.32x32"``, or one
layer's full name with ``per_layer=True``), per time bin and (with ``per_head=True``) per head, plus the
coarse per-step trace. `filter` narrows any of those axes and returns another `HeatMaps`; `word` reduces
to one word's map:

1. per site, sum the selected bins and heads; add the sites up after bilinear upsampling to the finest
   selected grid, and divide by the number of single-head maps summed: a *mean attention probability*
   (each (layer, head, step) counts once);
2. sum the word's tokens (multi-token words: sum of their tokens);
3. upsample to the image size (bicubic, clipped at 0) → `WordHeatMap.raw`;
4. normalise by the word's own maximum → `WordHeatMap.array` in [0, 1] (0 stays "no attention").

    >>> import crossattn
    >>> from crossattn.generation import generate
    >>> image, maps = generate(crossattn.load_pipeline(), "a red circle left of a blue square", seed=0)
    >>> maps.words
    ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square']
    >>> sorted(maps.sites)
    ['down.16x16', 'down.8x8', 'mid.4x4', 'up.16x16', 'up.8x8']
    >>> late_up = maps.filter(steps=slice(10, 20), blocks=["up"], resolutions=[16])
    >>> late_up.steps == list(range(10, 20)), list(late_up.sites)
    (True, ['up.16x16'])
    >>> m = late_up.word("circle")
    >>> m.array.shape, float(m.array.max()), m.overlay(image).size
    ((64, 64), 1.0, (64, 64))
    >>> sorted(maps.placement(["circle", "square"]))
    ['circle', 'square']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import render
from .capture import Site
from .errors import InputError
from .words import Word, find_word, ref_name

# heatmaps.json's format: 2 added per-source word positions and the model family (crossattn 0.2).
FORMAT_VERSION = 2

if TYPE_CHECKING:  # placement and diagnosis sit downstream of heat maps: the methods below only forward to them
    from . import diagnosis, placement


@dataclass
class WordHeatMap:
    """One word's map. `array`: float32 (H, W) in [0, 1] at the image's pixel size."""

    word: str
    array: np.ndarray
    raw: np.ndarray  # mean attention probability (sum over the word's tokens) at image size, unnormalised
    latent: np.ndarray  # the same before upsampling, on the finest captured grid
    positions: tuple[int, ...]

    def overlay(self, image: Image.Image | np.ndarray, alpha: float = 0.5, cmap: str = "jet",
                size: int | None = None) -> Image.Image:
        """The map colour-mapped over `image` (a PIL image or an RGB array).

        With `size`, the picture is drawn with its long side at `size` pixels and the map is upsampled
        straight from the latent grid to that size (sharper than enlarging a small overlay afterwards).
        """
        if size is None:
            return render.overlay(image, self.array, alpha=alpha, cmap=cmap)
        peak = float(self.latent.max())
        heat = self.latent / peak if peak > 0 else np.zeros_like(self.latent)
        big = render.scale_to(Image.fromarray(render.as_rgb(image)), size)
        return render.overlay(big, np.clip(heat, 0, 1), alpha=alpha, cmap=cmap)

    def figure(self, image: Image.Image | np.ndarray, alpha: float = 0.5, cmap: str = "jet",
               tile: int = 384) -> Image.Image:
        """The overlay with the word as a title and a colour bar."""
        return render.with_colorbar(self.overlay(image, alpha, cmap, size=tile), self.word, cmap, tile)

    def __repr__(self) -> str:
        h, w = self.array.shape
        return (f"WordHeatMap({self.word!r}, {w}x{h}, tokens {list(self.positions)}, "
                f"peak mean probability {float(self.raw.max()):.4g})")

    def _repr_png_(self) -> bytes:
        """Jupyter shows the map itself with the word as title and a colour bar."""
        return render.png_bytes(render.with_colorbar(Image.fromarray(render.colorize(self.array)), self.word,
                                                     tile=256))


def _select_steps(steps, n_steps: int) -> list[int]:
    if steps is None:
        return list(range(n_steps))
    if isinstance(steps, slice):
        return list(range(n_steps))[steps]
    if isinstance(steps, int):
        steps = [steps]
    chosen = sorted({s + n_steps if s < 0 else s for s in steps})
    bad = [s for s in chosen if not 0 <= s < n_steps]
    if bad:
        raise InputError(f"steps {bad} out of range: this generation ran {n_steps} steps (0..{n_steps - 1})")
    return chosen


def _matches_resolution(site: Site, wanted: Iterable) -> bool:
    h, w = site.resolution
    for r in wanted:
        if isinstance(r, str) and r == f"{h}x{w}" or isinstance(r, int) and r in (h, w):
            return True
        if isinstance(r, tuple) and tuple(r) == (h, w):
            return True
    return False


@dataclass
class HeatMaps:
    """All captured maps of one image; index by word (`maps["circle"]`), slice with `filter`."""

    sums: dict[str, torch.Tensor]  # site -> (bins, heads, h, w, tokens) float32 sums
    counts: dict[str, np.ndarray]  # site -> (bins,) single-head maps summed into each head slot
    sites: dict[str, Site]
    bin_steps: list[list[int]]  # steps that went into each bin
    trace: torch.Tensor | None  # (steps, th, tw, tokens) sums at the coarsest resolution
    trace_counts: np.ndarray  # (steps,)
    word_info: list[Word]
    tokens: list[str]  # kept token strings, position 0 = start token
    image_size: tuple[int, int]  # (height, width) in pixels
    per_head: bool = False
    per_layer: bool = False
    meta: dict = field(default_factory=dict)
    concepts: HeatMaps | None = None  # maps of words the prompt need not say (trace(..., concepts=[...]))
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        steps = len(self.trace_counts)
        heads = f", {self.heads} heads" if self.per_head else ""
        return (f"HeatMaps({len(self.word_info)} words {self.words}, {len(self.sites)} sites {sorted(self.sites)}, "
                f"{steps} steps in {len(self.bin_steps)} bins{heads}, image {self.image_size[1]}x{self.image_size[0]}, "
                f"{self.meta.get('family', 'UNet')})")

    def _repr_png_(self) -> bytes:
        """Jupyter shows the labelled grid of every word's map (on a grey canvas: no image is stored here)."""
        canvas = np.full((*self.image_size, 3), 128, np.uint8)
        return render.png_bytes(self.grid(canvas, tile=160))

    # ---- what is in here ------------------------------------------------------------------------------
    @property
    def words(self) -> list[str]:
        """The prompt's words in order (repeats included; address them with `occurrence=`)."""
        return [w.text for w in self.word_info]

    @property
    def steps(self) -> list[int]:
        """Denoising steps covered by the selected time bins."""
        return sorted(s for b in self.bin_steps for s in b)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return sorted({s.resolution for s in self.sites.values()}, reverse=True)

    @property
    def blocks(self) -> list[str]:
        return sorted({s.block for s in self.sites.values()})

    @property
    def heads(self) -> int:
        """Head slots stored per site (1 when heads were summed during capture)."""
        return max(t.shape[1] for t in self.sums.values())

    @property
    def names(self) -> list[str]:
        """Every word of the prompt by the name statements and `placement` use: repeats as "a#1"."""
        return [ref_name(w.text, w.occurrence) for w in self.word_info]

    def __len__(self) -> int:
        return len(self.word_info)

    def __iter__(self) -> Iterator[WordHeatMap]:
        for w in self.word_info:
            yield self.word(w.text, w.occurrence)

    def __getitem__(self, word: str) -> WordHeatMap:
        return self.word(word)

    # ---- slicing ----------------------------------------------------------------------------------------
    def filter(self, steps=None, resolutions=None, blocks=None, heads=None, layers=None) -> HeatMaps:
        """A view restricted to some steps, resolutions, blocks, heads or layers (None keeps all).

        - steps: slice, int or ints. Full-resolution maps are kept per *time bin*, so a bin is kept when any
          of its steps is selected (`.steps` says which steps that covers); the per-step trace is exact.
        - resolutions: ints (match height or width, e.g. 16 for 16×16), "HxW" strings or (h, w) tuples.
        - blocks: "down", "mid", "up".  - heads: head indices (needs ``trace(pipe, per_head=True)``).
        - layers: substrings of layer names (needs ``trace(pipe, per_layer=True)``).
        """
        sites = dict(self.sites)
        if resolutions is not None:
            if not self.meta.get("resolution_sites", True):
                raise InputError(f"resolutions do not apply to {self.meta.get('family', 'this model')}: all its layers "
                                 f"work at {self.resolutions[0][0]}x{self.resolutions[0][1]}; filter by blocks "
                                 f"{self.blocks} or layers instead")
            sites = {k: s for k, s in sites.items() if _matches_resolution(s, resolutions)}
        if blocks is not None:
            unknown = set(blocks) - set(self.blocks)
            if unknown:
                raise InputError(f"unknown blocks {sorted(unknown)}; these maps have {self.blocks}")
            sites = {k: s for k, s in sites.items() if s.block in blocks}
        if layers is not None:
            if not self.per_layer:
                raise InputError("layers were summed during capture; use crossattn.trace(pipe, per_layer=True)")
            unknown = [p for p in layers if not any(k == p or k.startswith(p + ".") for k in self.sites)]
            if unknown:
                raise InputError(f"no layer named {unknown}; these maps have {sorted(self.sites)}")
            sites = {k: s for k, s in sites.items() if any(k == p or k.startswith(p + ".") for p in layers)}
        if not sites:
            raise InputError(
                f"no maps left after filtering; available resolutions {self.resolutions}, blocks {self.blocks}"
            )
        n_steps = len(self.trace_counts)
        chosen = set(_select_steps(steps, n_steps))
        keep_bins = [b for b, members in enumerate(self.bin_steps) if chosen & set(members)]
        if not keep_bins:
            raise InputError("no time bin covers the selected steps")
        sums = {k: self.sums[k][keep_bins] for k in sites}
        if heads is not None:
            if not self.per_head:
                raise InputError("heads were summed during capture; use crossattn.trace(pipe, per_head=True)")
            heads = list(heads)
            for k, t in sums.items():
                if max(heads) >= t.shape[1] or min(heads) < -t.shape[1]:
                    raise InputError(f"site {k} has {t.shape[1]} heads; asked for heads {heads}")
            sums = {k: t[:, heads] for k, t in sums.items()}
        trace_keep = sorted(chosen)
        concepts = None
        if self.concepts is not None:
            layers_kept = None if layers is None else [k for k in self.concepts.sites if k in sites]
            concepts = self.concepts.filter(steps, resolutions, blocks, None, layers_kept or layers)
        return replace(
            self,
            concepts=concepts,
            sums=sums,
            counts={k: self.counts[k][keep_bins] for k in sites},
            sites=sites,
            bin_steps=[self.bin_steps[b] for b in keep_bins],
            trace_counts=np.where(np.isin(np.arange(n_steps), trace_keep), self.trace_counts, 0),
            _cache={},
        )

    # ---- reductions -------------------------------------------------------------------------------------
    def token_maps(self) -> torch.Tensor:
        """Mean attention probability per token, (h, w, tokens) on the finest selected grid."""
        if "tokens" not in self._cache:
            target = max((s.resolution for s in self.sites.values()), key=lambda r: r[0] * r[1])
            total, n = None, 0.0
            for k, t in self.sums.items():
                summed = t.sum(dim=(0, 1)).permute(2, 0, 1)[None]  # (1, tokens, h, w)
                if summed.shape[-2:] != target:
                    summed = F.interpolate(summed, size=target, mode="bilinear", align_corners=False)
                total = summed if total is None else total + summed
                n += float(self.counts[k].sum()) * (t.shape[1] if self.per_head else 1)
            self._cache["tokens"] = (total[0] / max(n, 1e-12)).permute(1, 2, 0)
        return self._cache["tokens"]

    def word(self, word: str, occurrence: int = 0, source: str | None = None) -> WordHeatMap:
        """One word's map (case-insensitive; several words, e.g. "red circle", are merged).

        `source` picks one text encoder's positions where the model reads several ("clip", "t5": SD3);
        by default all of them count (the word's whole share of the attention).
        """
        sources = self.meta.get("sources") or []
        if source is not None and source not in sources:
            raise InputError(f"unknown source {source!r}; these maps have {sources or 'one source'}")
        matched = find_word(self.word_info, word, occurrence)
        positions = tuple(p for w in matched for p in w.in_source(source))
        latent = self.token_maps()[..., list(positions)].sum(-1).cpu().numpy().astype(np.float32)
        raw = render.upsample(latent, self.image_size)
        peak = float(raw.max())
        array = raw / peak if peak > 0 else np.zeros_like(raw)
        return WordHeatMap(" ".join(w.text for w in matched), array, raw, latent, positions)

    def concept(self, name: str) -> WordHeatMap:
        """A concept's map: per pixel, its share among the traced concepts (see `crossattn.concepts`), as a
        `WordHeatMap` (normalised to its peak in `.array`; the mean share in `.raw`)."""
        if self.concepts is None:
            raise InputError("no concepts were followed: use crossattn.trace(pipe, concepts=['sky', ...])")
        return self.concepts.word(name)

    def word_maps(self, words: list[str] | None = None) -> list[WordHeatMap]:
        """Maps of the given words, or of every word of the prompt (repeats included) when None or empty."""
        return [self.word(w) for w in words] if words else list(self)

    def timeline(self, word: str, occurrence: int = 0) -> np.ndarray:
        """The word's coarse map at every step, (steps, th, tw) mean probabilities; zeros for unselected steps."""
        if self.trace is None:
            raise InputError("no per-step trace was recorded")
        positions = [p for w in find_word(self.word_info, word, occurrence) for p in w.positions]
        per_step = self.trace[..., positions].sum(-1).cpu().numpy()
        counts = np.maximum(self.trace_counts, 1)[:, None, None]
        return np.where(self.trace_counts[:, None, None] > 0, per_step / counts, 0).astype(np.float32)

    # ---- placement (forwarded: `crossattn.placement` sits downstream of the maps) -------------------------
    def placement(self, words: list[str] | None = None, method: str = "relative",
                  tau: float | None = None) -> dict[str, placement.Placement]:
        """word -> Placement (centroid, bbox, area, region); all words by default.

        Repeated words get keys "cat", "cat#1", ...; a multi-word entry ("red circle") merges its words.
        """
        from . import placement

        return placement.placements(self, words, method, placement.DEFAULT_TAU if tau is None else tau)

    def check(self, statement: str, method: str = "relative", tau: float | None = None, margin: float = 0.05,
              min_iou: float = 0.3) -> placement.CheckResult:
        """Verdict on a layout statement: "circle left_of square" (right_of, above, below),
        "circle on the left" (right, top, bottom) or "circle in x0,y0,x1,y1" (normalised box)."""
        from . import placement

        return placement.check(self, statement, method, placement.DEFAULT_TAU if tau is None else tau, margin,
                               min_iou)

    def relations_from_prompt(self) -> list[str]:
        """Statements the prompt itself makes ("cat left_of dog", "moon at the top", ...)."""
        from . import placement

        return placement.prompt_relations(self)[0]

    def objects(self) -> list[str]:
        """The objects the prompt names, as phrases ("red circle", "cat#1")."""
        from . import placement

        return placement.objects(self)

    def segmentation(self, words: list[str] | None = None, background: float = 0.3) -> tuple[np.ndarray, list[str]]:
        """Who owns each pixel: (labels (H, W), names); label 0 = background, k = names[k - 1]."""
        from . import placement

        return placement.segmentation(self, words, background)

    def placement_timeline(self, word: str, occurrence: int = 0, tau: float | None = None,
                           tolerance: float = 0.1) -> placement.Timeline:
        """The word's centroid at every step and the step from which its position stays put."""
        from . import placement

        tau = placement.DEFAULT_TAU if tau is None else tau
        return placement.placement_timeline(self, ref_name(word, occurrence), tau, tolerance)

    def diagnose(self, objects: list[str] | None = None, steps=None) -> diagnosis.Diagnosis:
        """Why did this generation go wrong? Neglected objects, leaking attributes, merged objects, broken
        relations (`crossattn.diagnosis`). `objects`: phrases to diagnose (default: the prompt's); `steps`: only
        those steps (an early verdict)."""
        from . import diagnosis

        return diagnosis.diagnose(self, objects, steps)

    # ---- pictures ---------------------------------------------------------------------------------------
    def grid(self, image: Image.Image | np.ndarray, words: list[str] | None = None, alpha: float = 0.5,
             cmap: str = "jet", tile: int = 256, cols: int | None = None) -> Image.Image:
        """The image followed by one labelled overlay per word (all words by default)."""
        chosen = self.word_maps(words)
        tiles = [render.labelled(Image.fromarray(render.as_rgb(image)), "image", tile)]
        tiles += [render.labelled(m.overlay(image, alpha, cmap, size=tile), m.word, tile) for m in chosen]
        return render.grid(tiles, cols)

    # ---- files ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, fmt: str = "safetensors",
             diagnosis: diagnosis.Diagnosis | None = None) -> Path:
        """Write ``maps.safetensors`` (or ``maps.npz``) with the raw sums, ``heatmaps.json`` with the rest, and
        ``diagnosis.json`` (`diagnosis`, or `diagnose()` when not given); concept maps go to ``concepts/``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {f"sums/{k}": t.contiguous().cpu() for k, t in self.sums.items()}
        arrays |= {f"counts/{k}": torch.as_tensor(c, dtype=torch.int64) for k, c in self.counts.items()}
        arrays["trace_counts"] = torch.as_tensor(self.trace_counts, dtype=torch.int64)
        if self.trace is not None:
            arrays["trace"] = self.trace.contiguous().cpu()
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(arrays, out / "maps.safetensors")
            (out / "maps.safetensors").chmod(0o644)  # safetensors writes 0600; keep both files alike
        elif fmt == "npz":
            np.savez_compressed(out / "maps.npz", **{k: v.numpy() for k, v in arrays.items()})
        else:
            raise InputError(f"unknown format {fmt!r}; use 'safetensors' or 'npz'")
        info = {
            "format_version": FORMAT_VERSION,
            "maps_file": f"maps.{'npz' if fmt == 'npz' else 'safetensors'}",
            "words": [{"text": w.text, "token_indices": list(w.positions), "occurrence": w.occurrence,
                       "sources": {name: list(cols) for name, cols in w.sources}} for w in self.word_info],
            "tokens": self.tokens,
            "image_size": list(self.image_size),
            "per_head": self.per_head,
            "per_layer": self.per_layer,
            "bin_steps": self.bin_steps,
            "sites": {k: {"block": s.block, "resolution": list(s.resolution)} for k, s in self.sites.items()},
            **self.meta,
        }
        (out / "heatmaps.json").write_text(json.dumps(info, indent=1))
        if self.meta.get("kind") != "concepts":  # the diagnosis travels with the maps it was read from
            (out / "diagnosis.json").write_text(json.dumps((diagnosis or self.diagnose()).to_dict(), indent=1))
        if self.concepts is not None:
            self.concepts.save(out / "concepts", fmt)
        return out


def load_heat_maps(directory: str | Path) -> HeatMaps:
    """Read a folder written by `HeatMaps.save` back into a `HeatMaps`."""
    folder = Path(directory)
    info_file = folder / "heatmaps.json"
    if not info_file.exists():
        raise InputError(f"{info_file} not found: not a folder written by HeatMaps.save")
    info = json.loads(info_file.read_text())
    version = info.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise InputError(f"{info_file} has format version {version}; this crossattn reads versions 1 and "
                         f"{FORMAT_VERSION} (upgrade crossattn to read newer files)")
    path = folder / info["maps_file"]
    if path.suffix == ".npz":
        with np.load(path) as data:
            arrays = {k: torch.from_numpy(data[k]) for k in data.files}
    else:
        from safetensors.torch import load_file

        arrays = load_file(path)
    meta_keys = {"format_version", "maps_file", "words", "tokens", "image_size", "per_head", "per_layer",
                 "bin_steps", "sites"}
    concepts = load_heat_maps(folder / "concepts") if (folder / "concepts" / "heatmaps.json").exists() else None
    return HeatMaps(
        concepts=concepts,
        sums={k: arrays[f"sums/{k}"] for k in info["sites"]},
        counts={k: arrays[f"counts/{k}"].numpy() for k in info["sites"]},
        sites={k: Site(k, s["block"], tuple(s["resolution"])) for k, s in info["sites"].items()},
        bin_steps=info["bin_steps"],
        trace=arrays.get("trace"),
        trace_counts=arrays["trace_counts"].numpy(),
        word_info=[Word(w["text"], tuple(w["token_indices"]), w["occurrence"],
                        tuple((k, tuple(v)) for k, v in w.get("sources", {}).items())) for w in info["words"]],
        tokens=info["tokens"],
        image_size=tuple(info["image_size"]),
        per_head=info["per_head"],
        per_layer=info["per_layer"],
        meta={k: v for k, v in info.items() if k not in meta_keys},
    )
