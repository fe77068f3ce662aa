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
    >>> maps["circle#0"].word, len(maps.over_steps("circle"))
    ('circle', 20)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import notebook, render
from .capture import Site
from .errors import InputError
from .words import Word, find_word, ref_name, word_ref

# heatmaps.json's format: 2 added per-source word positions and the model family (crossattn 0.2).
FORMAT_VERSION = 2



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
class MapData:
    """What the recorder summed for one image (or one video), as `HeatMaps.save` writes it: the raw material of
    every map.

    A video's maps hold its frames stacked along the height axis, frame after frame: a site of one frame's
    resolution (h, w) has sums of (bins, heads, frames·h, w, tokens), and the per-step maps (steps, frames·th, tw,
    tokens). `frame(i)` cuts one frame out; `merged()` is the mean over frames (sums added, counts × frames: every
    frame was summed the same number of times, so that is each frame's own normalisation, averaged).
    """

    sums: dict[str, torch.Tensor]  # site -> (bins, heads, frames·h, w, tokens) float32 sums
    counts: dict[str, np.ndarray]  # site -> (bins,) single-head maps summed into each head slot (per frame)
    sites: dict[str, Site]  # one frame's resolution
    bin_steps: list[list[int]]  # steps that went into each bin
    step_sums: torch.Tensor | None  # (steps, frames·th, tw, tokens) sums at the coarsest resolution, per step
    step_counts: np.ndarray  # (steps,) single-head maps summed into each step
    words: list[Word]  # the prompt's words and the token positions each covers
    per_head: bool = False
    per_layer: bool = False
    frames: int = 1
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def heads(self) -> int:
        """Head slots stored per site (1 when heads were summed during capture)."""
        return max(t.shape[1] for t in self.sums.values())

    def token_maps(self) -> torch.Tensor:
        """Mean attention probability per token, (h, w, tokens) on the finest grid (a video: the mean over its
        frames)."""
        if self.frames > 1:
            return self.merged().token_maps()
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

    def frame(self, i: int) -> MapData:
        """Frame `i`'s data (0 ≤ i < frames)."""
        if self.frames == 1:
            return self
        sums = {k: t.narrow(2, i * self.sites[k].resolution[0], self.sites[k].resolution[0])
                for k, t in self.sums.items()}
        steps = None
        if self.step_sums is not None:
            th = self.step_sums.shape[1] // self.frames
            steps = self.step_sums.narrow(1, i * th, th)
        return replace(self, sums=sums, step_sums=steps, frames=1, _cache={})

    def merged(self) -> MapData:
        """The mean over frames, as the data of one frame."""
        if self.frames == 1:
            return self
        if "merged" not in self._cache:
            n = self.frames
            sums = {k: t.unflatten(2, (n, self.sites[k].resolution[0])).sum(2) for k, t in self.sums.items()}
            steps = None if self.step_sums is None else self.step_sums.unflatten(1, (n, -1)).sum(1)
            self._cache["merged"] = replace(self, sums=sums, counts={k: c * n for k, c in self.counts.items()},
                                            step_sums=steps, step_counts=self.step_counts * n, frames=1, _cache={})
        return self._cache["merged"]


@dataclass
class MapInfo:
    """Where the maps came from: filled by the trace (model, family, steps …), then by the generation or the
    explanation that made them (prompt, seed …). Saved beside the arrays and read back by `load_heat_maps`."""

    prompt: str | None = None
    negative_prompt: str | None = None
    model: str | None = None  # the name the pipeline was loaded by (hub id, folder or embedded name)
    pipeline: str | None = None  # its class
    family: str = "UNet"
    kind: str = "words"  # or "concepts": maps of words the prompt need not say
    resolution_sites: bool = True  # sites are named by resolution ("up.16x16"); False: by block ("joint")
    sources: list[str] = field(default_factory=list)  # the text encoders whose positions the words cover
    mass: str = "raw"
    image_index: int = 0
    negative: bool = False
    steps: int | None = None  # the denoising steps the pipeline was asked for
    timesteps: list[float] = field(default_factory=list)
    seed: int | None = None
    guidance_scale: float | None = None
    size: list[int] | None = None  # (width, height) asked for
    coverage: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know (a prompt cut by the encoder …)
    concepts: list[str] = field(default_factory=list)
    concept_method: str | None = None
    explained: bool = False  # maps of an existing image (`crossattn.explain`), not of a generation
    noise_levels: list[float] | None = None
    model_size: list[int] | None = None
    output_frames: list[list[int]] | None = None  # a video: the decoded frames each map frame covers

    def to_dict(self) -> dict:
        return asdict(self)


INFO_FIELDS = {f.name for f in fields(MapInfo)}


@dataclass
class HeatMaps:
    """All captured maps of one image; index by word (`maps["circle"]`), slice with `filter`."""

    data: MapData
    tokens: list[str]  # kept token strings, position 0 = start token
    image_size: tuple[int, int]  # (height, width) in pixels
    info: MapInfo = field(default_factory=MapInfo)
    concepts: HeatMaps | None = None  # maps of words the prompt need not say (trace(..., concepts=[...]))
    _image: Image.Image | None = field(default=None, repr=False, compare=False)  # the generated image, where known

    def __repr__(self) -> str:
        heads = f", {self.data.heads} heads" if self.data.per_head else ""
        notes = f", notes {self.notes}" if self.notes else ""
        frames = f", {self.frames} frames" if self.frames > 1 else ""
        return (f"HeatMaps({len(self)} words {self.words}, {len(self.sites)} sites {sorted(self.sites)}, "
                f"{self._steps_text()}{heads}, image {self.image_size[1]}x{self.image_size[0]}{frames}, "
                f"{self.info.family}{notes})")

    def _steps_text(self) -> str:
        """Like "20 steps in 4 bins", or after `filter`, what is left: "steps 0-4 (5 of 20) in 1 bin"."""
        steps, total, bins = self.steps, len(self.data.step_counts), len(self.data.bin_steps)
        in_bins = f"in {bins} bin{'s' if bins != 1 else ''}"
        if len(steps) == total:
            return f"{total} steps {in_bins}"
        ranges = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in _runs(steps))
        return f"steps {ranges} ({len(steps)} of {total}) {in_bins}"

    def _repr_html_(self) -> str:
        """Jupyter shows the maps as an explorable view (`crossattn.notebook`): over the generated image when the
        maps know it, else on grey; `crossattn.notebook.explore(maps, image)` shows them over a given image."""
        flat = self if self.frames == 1 else replace(self, data=self.data.merged(), concepts=None)
        return notebook.explore(flat, self._image).html

    def _repr_png_(self) -> bytes:
        """Where HTML is not shown (an untrusted notebook), Jupyter shows the labelled grid of every word's map
        (over the generated image when the maps know it, else on grey)."""
        canvas = self._image if self._image is not None else np.full((*self.image_size, 3), 128, np.uint8)
        return render.png_bytes(self.grid(canvas, tile=160))

    # ---- what is in here ------------------------------------------------------------------------------
    @property
    def words(self) -> list[str]:
        """The prompt's words in order (repeats included; address them as "cat#1" or with `occurrence=`)."""
        return [w.text for w in self.data.words]

    @property
    def names(self) -> list[str]:
        """Every word of the prompt by the name statements and `placement` use: repeats as "a#1"."""
        return [ref_name(w.text, w.occurrence) for w in self.data.words]

    @property
    def steps(self) -> list[int]:
        """Denoising steps covered by the selected time bins."""
        return sorted(s for b in self.data.bin_steps for s in b)

    @property
    def sites(self) -> dict[str, Site]:
        """Where maps were summed: "up.16x16" (UNets), "joint" (transformers), or one layer each with per_layer."""
        return self.data.sites

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return sorted({s.resolution for s in self.sites.values()}, reverse=True)

    @property
    def blocks(self) -> list[str]:
        return sorted({s.block for s in self.sites.values()})

    @property
    def notes(self) -> list[str]:
        """What the user should know about these maps (a prompt cut by the text encoder, ...): `info.notes`."""
        return list(self.info.notes)

    def __len__(self) -> int:
        return len(self.data.words)

    def __iter__(self) -> Iterator[WordHeatMap]:
        for w in self.data.words:
            yield self.word(w.text, w.occurrence)

    def __getitem__(self, word: str) -> WordHeatMap:
        return self.word(word)

    # ---- slicing ----------------------------------------------------------------------------------------
    def filter(self, steps=None, resolutions=None, blocks=None, heads=None, layers=None) -> HeatMaps:
        """A view restricted to some steps, resolutions, blocks, heads or layers (None keeps all).

        - steps: slice, int or ints. Full-resolution maps are kept per *time bin*, so a bin is kept when any
          of its steps is selected (`.steps` says which steps that covers); the per-step maps are exact.
        - resolutions: ints (match height or width, e.g. 16 for 16×16), "HxW" strings or (h, w) tuples
          (UNets; transformers work at one resolution).
        - blocks: block names, as `blocks` lists them ("down", "mid", "up" on UNets; "joint", "single", … on
          transformers).
        - heads: head indices (needs ``trace(pipe, per_head=True)``).
        - layers: layer names or their prefixes, as `sites` lists them (needs ``trace(pipe, per_layer=True)``).
        """
        d = self.data
        sites = self._kept_sites(resolutions, blocks, layers)
        n_steps = len(d.step_counts)
        chosen = set(_select_steps(steps, n_steps))
        keep_bins = [b for b, members in enumerate(d.bin_steps) if chosen & set(members)]
        if not keep_bins:
            raise InputError("no time bin covers the selected steps")
        sums = {k: d.sums[k][keep_bins] for k in sites}
        if heads is not None:
            sums = {k: t[:, _heads(heads, d.per_head, k, t.shape[1])] for k, t in sums.items()}
        concepts = None
        if self.concepts is not None:
            layers_kept = None if layers is None else [k for k in self.concepts.sites if k in sites]
            concepts = self.concepts.filter(steps, resolutions, blocks, None, layers_kept or layers)
        data = replace(d, _cache={}, sums=sums, counts={k: d.counts[k][keep_bins] for k in sites}, sites=sites,
                       bin_steps=[d.bin_steps[b] for b in keep_bins],
                       step_counts=np.where(np.isin(np.arange(n_steps), sorted(chosen)), d.step_counts, 0))
        return replace(self, data=data, concepts=concepts)

    def _kept_sites(self, resolutions, blocks, layers) -> dict[str, Site]:
        """The sites `filter` keeps (each criterion checked against what these maps have)."""
        sites = dict(self.sites)
        if resolutions is not None:
            if not self.info.resolution_sites:
                raise InputError(f"resolutions do not apply to {self.info.family}: all its layers work at "
                                 f"{self.resolutions[0][0]}x{self.resolutions[0][1]}; filter by blocks "
                                 f"{self.blocks} or layers instead")
            sites = {k: s for k, s in sites.items() if _matches_resolution(s, resolutions)}
        if blocks is not None:
            unknown = set(blocks) - set(self.blocks)
            if unknown:
                raise InputError(f"unknown blocks {sorted(unknown)}; these maps have {self.blocks}")
            sites = {k: s for k, s in sites.items() if s.block in blocks}
        if layers is not None:
            if not self.data.per_layer:
                raise InputError("layers were summed during capture; use crossattn.trace(pipe, per_layer=True)")
            unknown = [p for p in layers if not any(k == p or k.startswith(p + ".") for k in self.sites)]
            if unknown:
                raise InputError(f"no layer named {unknown}; these maps have {sorted(self.sites)}")
            sites = {k: s for k, s in sites.items() if any(k == p or k.startswith(p + ".") for p in layers)}
        if not sites:
            raise InputError(
                f"no maps left after filtering; available resolutions {self.resolutions}, blocks {self.blocks}"
            )
        return sites

    # ---- frames (videos) --------------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        """Frames of a video's maps (1 for an image). Every map of a video (`word`, `over_steps`, `grid`, …) is the
        mean over its frames; `frame(i)` gives one frame's maps, and ``info.output_frames[i]`` the frames of the
        decoded video that frame covers (a latent frame covers several when the model compresses time)."""
        return self.data.frames

    def frame(self, i: int) -> HeatMaps:
        """Frame `i`'s maps (negative counts from the end): a `HeatMaps` every image API works on."""
        n = self.data.frames
        if not isinstance(i, int) or not -n <= i < n:
            raise InputError(f"frame {i!r} out of range: these maps have {n} frame{'s' if n != 1 else ''}")
        i %= n
        concepts = None if self.concepts is None else self.concepts.frame(i)
        return replace(self, data=self.data.frame(i), concepts=concepts)

    # ---- reductions -------------------------------------------------------------------------------------
    def word(self, word: str, occurrence: int | None = None, source: str | None = None) -> WordHeatMap:
        """One word's map (case-insensitive; several words, e.g. "red circle", are merged; the second "cat" is
        "cat#1" or ``occurrence=1``).

        `source` picks one text encoder's positions where the model reads several ("clip", "t5": SD3);
        by default all of them count (the word's whole share of the attention).
        """
        text, occurrence = word_ref(word) if occurrence is None else (word, occurrence)
        sources = self.info.sources
        if source is not None and source not in sources:
            raise InputError(f"unknown source {source!r}; these maps have {sources or 'one source'}")
        matched = find_word(self.data.words, text, occurrence)
        positions = tuple(p for w in matched for p in w.in_source(source))
        latent = self.data.token_maps()[..., list(positions)].sum(-1).cpu().numpy().astype(np.float32)
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

    def over_steps(self, word: str, occurrence: int | None = None) -> np.ndarray:
        """The word's coarse map at every step, (steps, th, tw) mean probabilities; zeros for unselected steps."""
        d = self.data.merged()
        if d.step_sums is None:
            raise InputError("no per-step maps were recorded")
        text, occurrence = word_ref(word) if occurrence is None else (word, occurrence)
        positions = [p for w in find_word(d.words, text, occurrence) for p in w.positions]
        per_step = d.step_sums[..., positions].sum(-1).cpu().numpy()
        counts = np.maximum(d.step_counts, 1)[:, None, None]
        return np.where(d.step_counts[:, None, None] > 0, per_step / counts, 0).astype(np.float32)

    # ---- pictures ---------------------------------------------------------------------------------------
    def grid(self, image: Image.Image | np.ndarray, words: list[str] | None = None, alpha: float = 0.5,
             cmap: str = "jet", tile: int = 256, cols: int | None = None) -> Image.Image:
        """The image followed by one labelled overlay per word (all words of the prompt by default)."""
        chosen = [self.word(w) for w in words] if words else list(self)
        tiles = [render.labelled(Image.fromarray(render.as_rgb(image)), "image", tile)]
        tiles += [render.labelled(m.overlay(image, alpha, cmap, size=tile), m.word, tile) for m in chosen]
        return render.grid(tiles, cols)

    # ---- files ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, fmt: str = "safetensors", diagnosis=None) -> Path:
        """Write ``maps.safetensors`` (or ``maps.npz``) with the raw sums and ``heatmaps.json`` with the rest;
        concept maps go to ``concepts/``. A `diagnosis` (`crossattn.diagnose(maps)`) travels with the maps it
        was read from, as ``diagnosis.json``. `crossattn.load_heat_maps` reads the folder back."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        d = self.data
        arrays = {f"sums/{k}": t.contiguous().cpu() for k, t in d.sums.items()}
        arrays |= {f"counts/{k}": torch.as_tensor(c, dtype=torch.int64) for k, c in d.counts.items()}
        arrays["trace_counts"] = torch.as_tensor(d.step_counts, dtype=torch.int64)  # file names kept from 0.2
        if d.step_sums is not None:
            arrays["trace"] = d.step_sums.contiguous().cpu()
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(arrays, out / "maps.safetensors")
            (out / "maps.safetensors").chmod(0o644)  # safetensors writes 0600; keep both files alike
        elif fmt == "npz":
            np.savez_compressed(out / "maps.npz", **{k: v.numpy() for k, v in arrays.items()})
        else:
            raise InputError(f"unknown format {fmt!r}; use 'safetensors' or 'npz'")
        saved = {
            "format_version": FORMAT_VERSION,
            "maps_file": f"maps.{'npz' if fmt == 'npz' else 'safetensors'}",
            "words": [{"text": w.text, "token_indices": list(w.positions), "occurrence": w.occurrence,
                       "sources": {name: list(cols) for name, cols in w.sources}} for w in d.words],
            "tokens": self.tokens,
            "image_size": list(self.image_size),
            "per_head": d.per_head,
            "per_layer": d.per_layer,
            "frames": d.frames,
            "bin_steps": d.bin_steps,
            "sites": {k: {"block": s.block, "resolution": list(s.resolution)} for k, s in d.sites.items()},
            **self.info.to_dict(),
        }
        (out / "heatmaps.json").write_text(json.dumps(saved, indent=1))
        if diagnosis is not None:
            (out / "diagnosis.json").write_text(json.dumps(diagnosis.to_dict(), indent=1))
        if self.concepts is not None:
            self.concepts.save(out / "concepts", fmt)
        return out


def _heads(heads, per_head: bool, site: str, n: int) -> list[int]:
    """Head indices `filter` keeps at one site, checked."""
    if not per_head:
        raise InputError("heads were summed during capture; use crossattn.trace(pipe, per_head=True)")
    heads = list(heads)
    if max(heads) >= n or min(heads) < -n:
        raise InputError(f"site {site} has {n} heads; asked for heads {heads}")
    return heads
