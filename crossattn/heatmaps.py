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
import math
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError

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


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Sorted integers as (first, last) runs of consecutive values: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


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
    _image: Image.Image | None = field(default=None, repr=False, compare=False)  # the generated image, where known

    def __repr__(self) -> str:
        heads = f", {self.heads} heads" if self.per_head else ""
        notes = f", notes {self.notes}" if self.notes else ""
        return (f"HeatMaps({len(self.word_info)} words {self.words}, {len(self.sites)} sites {sorted(self.sites)}, "
                f"{self._steps_text()}{heads}, image {self.image_size[1]}x{self.image_size[0]}, "
                f"{self.meta.get('family', 'UNet')}{notes})")

    def _steps_text(self) -> str:
        """Like "20 steps in 4 bins", or after `filter`, what is left: "steps 0-4 (5 of 20) in 1 bin"."""
        steps, total, bins = self.steps, len(self.trace_counts), len(self.bin_steps)
        in_bins = f"in {bins} bin{'s' if bins != 1 else ''}"
        if len(steps) == total:
            return f"{total} steps {in_bins}"
        ranges = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in _runs(steps))
        return f"steps {ranges} ({len(steps)} of {total}) {in_bins}"

    def _repr_html_(self) -> str:
        """Jupyter shows the maps as an explorable view (`crossattn.notebook`): over the generated image when the
        maps know it, else on grey; `crossattn.notebook.explore(maps, image)` shows them over a given image."""
        from . import notebook

        return notebook.explore(self, self._image).html

    def _repr_png_(self) -> bytes:
        """Where HTML is not shown (an untrusted notebook), Jupyter shows the labelled grid of every word's map
        (over the generated image when the maps know it, else on grey)."""
        canvas = self._image if self._image is not None else np.full((*self.image_size, 3), 128, np.uint8)
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
    def notes(self) -> list[str]:
        """What the user should know about these maps (a prompt cut by the text encoder, ...): ``meta["notes"]``."""
        return list(self.meta.get("notes", []))

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


# Bounds on what a saved folder may ask for: a word's map is drawn at the image size, and the finest grid kept is
# at least 1/128 of the image side in every family (after a filter, perhaps only a UNet's coarsest: 1/64).
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_IMAGE_SCALE = 128
MAX_INFO_BYTES = 64 << 20
# heatmaps.json keys that become `meta` and are read by crossattn: (the types each may have, in words)
META_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "prompt": ((str, type(None)), "a string or null"), "negative_prompt": ((str, type(None)), "a string or null"),
    "notes": ((list,), "a list of strings"), "sources": ((list,), "a list of strings"),
    "concepts": ((list,), "a list of strings"), "steps": ((int, type(None)), "an integer or null"),
    "family": ((str,), "a string"), "kind": ((str,), "a string"), "resolution_sites": ((bool,), "true or false"),
}


class _Reader:
    """Checks one file of a saved folder; every complaint is an `InputError` naming the file."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.file}: {what} (not a folder written by HeatMaps.save, or damaged)")

    def get(self, data: dict, key: str, kinds: type | tuple[type, ...], what: str):
        if key not in data:
            raise self.fail(f"{key!r} is missing")
        value = data[key]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(f"{key!r} must be {what}, got {_short(value)}")
        return value

    def ints(self, value, what: str, low: int = 0, high: float = math.inf, length: int | None = None) -> list[int]:
        """A list of ints in [low, high), of `length` items when given."""
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or (length is not None and len(value) != length) or not all(low <= v < high for v in value):
            size = f"{length} " if length is not None else ""
            raise self.fail(f"{what} must be a list of {size}integers in [{low}, {high}), got {_short(value)}")
        return value


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inside(folder: Path, name, reader: _Reader, what: str) -> Path:
    """`folder / name`, refused unless it is a plain relative name that stays inside `folder` (symlinks resolved)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise reader.fail(f"{what} must be a file name inside the folder, got {_short(name)}")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise reader.fail(f"{what} {name!r} leads outside the folder")
    return path


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype kind "f"/"i"/"u"/"b") of every array in a maps file, read without loading the data."""
    if path.suffix == ".npz":
        out = {}
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f"{member}: unsupported .npy version {version}")
                    shape, _, dtype = read_header(f)
                out[member.removesuffix(".npy")] = (tuple(shape), dtype.kind)
        return out
    from safetensors import safe_open

    kinds = {"F": "f", "B": "f", "I": "i", "U": "u"}  # F32, BF16, I64, U8, ... by their first letter
    with safe_open(path, "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), kinds.get(f.get_slice(k).get_dtype()[0], "?")) for k in f.keys()}


def _load_arrays(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(data[k]) for k in names}
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in names}


def load_heat_maps(directory: str | Path) -> HeatMaps:
    """Read a folder written by `HeatMaps.save` back into a `HeatMaps`.

    Everything is checked before use: a damaged or crafted folder raises `InputError` naming the file and what is
    wrong (types, missing keys, shapes against the JSON, a maps file outside the folder, sizes out of bounds).
    """
    folder = Path(directory)
    info_file = folder / "heatmaps.json"
    reader = _Reader(info_file)
    if not info_file.is_file():
        raise InputError(f"{info_file} not found: not a folder written by HeatMaps.save")
    if info_file.stat().st_size > MAX_INFO_BYTES:
        raise reader.fail(f"{info_file.stat().st_size} bytes, more than the {MAX_INFO_BYTES} a saved folder holds")
    try:
        info = json.loads(info_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise reader.fail(f"not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise reader.fail(f"must hold a JSON object, got {_short(info)}")
    version = info.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise InputError(f"{info_file} has format version {_short(version)}; this crossattn reads versions 1 and "
                         f"{FORMAT_VERSION} (upgrade crossattn to read newer files)")
    meta = {k: v for k, v in info.items() if k not in _SAVED_KEYS}
    for key, (kinds, what) in META_TYPES.items():
        if key in meta:
            reader.get(meta, key, kinds, what)
    for key in ("notes", "sources", "concepts"):
        if key in meta and not all(isinstance(v, str) for v in meta[key]):
            raise reader.fail(f"{key!r} must be a list of strings, got {_short(meta[key])}")
    tokens = reader.get(info, "tokens", list, "a list of token strings")
    if not all(isinstance(t, str) for t in tokens):
        raise reader.fail(f"'tokens' must be a list of strings, got {_short(tokens)}")
    words = [_read_word(w, reader, len(tokens)) for w in reader.get(info, "words", list, "a list of words")]
    height, width = reader.ints(reader.get(info, "image_size", list, "[height, width]"), "'image_size'", 1,
                                length=2)
    if height * width > MAX_IMAGE_PIXELS:
        raise reader.fail(f"'image_size' {height}x{width} is more than {MAX_IMAGE_PIXELS:,} pixels")
    per_head = reader.get(info, "per_head", bool, "true or false")
    per_layer = reader.get(info, "per_layer", bool, "true or false")
    sites = {}
    for name, s in reader.get(info, "sites", dict, "an object of sites").items():
        if not isinstance(s, dict):
            raise reader.fail(f"site {name!r} must be an object with 'block' and 'resolution', got {_short(s)}")
        block = reader.get(s, "block", str, "a block name")
        resolution = reader.ints(reader.get(s, "resolution", list, "[height, width]"), f"site {name!r}'s resolution",
                                 1, length=2)
        sites[name] = Site(name, block, tuple(resolution))
    if not sites:
        raise reader.fail("'sites' is empty")
    finest = max((s.resolution for s in sites.values()), key=lambda r: r[0] * r[1])
    if not all(g <= side <= MAX_IMAGE_SCALE * g for g, side in zip(finest, (height, width))):
        raise reader.fail(f"'image_size' {height}x{width} does not fit the finest attention grid "
                          f"{finest[0]}x{finest[1]} (1 to {MAX_IMAGE_SCALE} pixels per grid cell)")
    raw_bins = reader.get(info, "bin_steps", list, "a list of lists of steps")
    if not raw_bins:
        raise reader.fail("'bin_steps' is empty")
    path = _inside(folder, reader.get(info, "maps_file", str, "a file name"), reader, "'maps_file'")
    arrays = _read_arrays(path, sites, len(raw_bins), len(tokens), per_head)
    n_steps = len(arrays["trace_counts"])
    bin_steps = [reader.ints(b, "each of 'bin_steps'", 0, n_steps) for b in raw_bins]
    concepts = None
    if (folder / "concepts" / "heatmaps.json").exists():
        _inside(folder, "concepts", reader, "the concepts folder")
        concepts = load_heat_maps(folder / "concepts")
        if concepts.image_size != (height, width):
            raise InputError(f"{folder / 'concepts' / 'heatmaps.json'}: image size {concepts.image_size} differs from "
                             f"the maps' {(height, width)}")
    return HeatMaps(
        concepts=concepts,
        sums={k: arrays[f"sums/{k}"].float() for k in sites},
        counts={k: arrays[f"counts/{k}"].numpy().astype(np.int64) for k in sites},
        sites=sites,
        bin_steps=bin_steps,
        trace=arrays["trace"].float() if "trace" in arrays else None,
        trace_counts=arrays["trace_counts"].numpy().astype(np.int64),
        word_info=words,
        tokens=tokens,
        image_size=(height, width),
        per_head=per_head,
        per_layer=per_layer,
        meta=meta,
    )


_SAVED_KEYS = {"format_version", "maps_file", "words", "tokens", "image_size", "per_head", "per_layer", "bin_steps",
               "sites"}


def _read_word(data, reader: _Reader, n_tokens: int) -> Word:
    if not isinstance(data, dict):
        raise reader.fail(f"each of 'words' must be an object, got {_short(data)}")
    text = reader.get(data, "text", str, "a string")
    positions = reader.ints(reader.get(data, "token_indices", list, "a list of token indices"),
                            f"{text!r}'s token_indices", 0, n_tokens)
    occurrence = reader.get(data, "occurrence", int, "an integer")
    if occurrence < 0:
        raise reader.fail(f"{text!r}'s occurrence must be 0 or more, got {occurrence}")
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise reader.fail(f"{text!r}'s sources must be an object, got {_short(sources)}")
    by_source = tuple((k, tuple(reader.ints(v, f"{text!r}'s {k} positions", 0, n_tokens))) for k, v in sources.items())
    return Word(text, tuple(positions), occurrence, by_source)


_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "O": "object"}  # numpy dtype kinds
# What reading a damaged maps file raises: zipfile, zlib, numpy's .npy reader and safetensors each their own.
_FILE_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, SafetensorError)


def _read_arrays(path: Path, sites: dict[str, Site], n_bins: int, n_tokens: int,
                 per_head: bool) -> dict[str, torch.Tensor]:
    """The arrays of a maps file, each checked against what heatmaps.json says before any is read."""
    reader = _Reader(path)
    if path.suffix not in (".npz", ".safetensors"):
        raise reader.fail("the maps file must be .safetensors or .npz")
    if not path.is_file():
        raise reader.fail("not found")
    try:
        headers = _array_headers(path)
    except _FILE_ERRORS as e:  # a damaged archive or header: zipfile, numpy and safetensors each raise their own
        raise reader.fail(f"cannot be read ({type(e).__name__}: {e})") from None

    def expect(name: str, kind: str, shape: tuple[int | None, ...], what: str) -> tuple[int, ...]:
        if name not in headers:
            raise reader.fail(f"has no array {name!r}")
        found, found_kind = headers[name]
        fits = len(found) == len(shape) and all(want is None or want == got for want, got in zip(shape, found))
        if not fits or found_kind not in kind:
            wanted = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
            raise reader.fail(f"array {name!r} is {_KINDS.get(found_kind, 'other')} {found}, heatmaps.json says "
                              f"{_KINDS[kind[0]]} {wanted} {what}")
        return found

    floats, ints = "f", "iu"
    n_steps = expect("trace_counts", ints, (None,), "(steps)")[0]
    for k, site in sites.items():
        heads = expect(f"sums/{k}", floats, (n_bins, None if per_head else 1, *site.resolution, n_tokens),
                       "(bins, heads, height, width, tokens)")[1]
        if heads < 1:
            raise reader.fail(f"array 'sums/{k}' has no heads")
        expect(f"counts/{k}", ints, (n_bins,), "(bins)")
    names = ["trace_counts"] + [f"{kind}/{k}" for k in sites for kind in ("sums", "counts")]
    if "trace" in headers:
        expect("trace", floats, (n_steps, None, None, n_tokens), "(steps, height, width, tokens)")
        names.append("trace")
    try:
        arrays = _load_arrays(path, names)
    except _FILE_ERRORS as e:  # data cut short or corrupt behind a sound header
        raise reader.fail(f"cannot be read ({type(e).__name__}: {e})") from None
    for name, t in arrays.items():
        if not torch.isfinite(t.float()).all() or (t < 0).any():
            raise reader.fail(f"array {name!r} holds negative, NaN or infinite values")
    return arrays
