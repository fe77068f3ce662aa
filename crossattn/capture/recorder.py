"""The recorder: fixed-size sums of the text attention probabilities of every observed attention call.

`Recorder.observe` runs one attention call unchanged and adds its probabilities (`kernels`) into sums per site and
time bin; the tracer describes each denoiser call first (`StepState`), a family each traced layer (`Layer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from .kernels import EXPLICIT, SDPA, attention_and_probabilities
from .observer import others_watching

# How a layer's attention call lays out text and image positions (see `Layer.kind`).
LAYOUTS = ("cross", "text_first", "text_last", "added_kv")
_UNSEEN = object()  # a cache's "not looked at yet" (None is an answer)


@dataclass(frozen=True)
class Site:
    """Where a map was captured: readable name, block, resolution (h, w) in token pixels."""

    name: str
    block: str
    resolution: tuple[int, int]


@dataclass(frozen=True)
class Layer:
    """One traced attention layer, as its family describes it.

    kind:
        ``"cross"``: queries are all image positions, keys all text positions (UNet ``attn2``, PixArt, Sana).
        ``"text_first"`` / ``"text_last"``: one joint sequence of text and image positions (Flux puts the
        text first, SD3 last); the text is the denoiser's text input, the image the generated image's tokens.
        ``"added_kv"``: queries are all image positions, keys the text positions then those same image positions
        (a UNet's added K/V attention: DeepFloyd IF).
    """

    name: str  # readable: "up_blocks.1.attentions.0.transformer_blocks.0.attn2", "double.3", "single.12", ...
    block: str  # what `filter(blocks=...)` selects: "down", "mid", "up", "joint", "double", "single", ...
    kind: str
    per_step: bool  # also feeds the per-step maps (the coarsest resolution)


@dataclass
class StepState:
    """What the tracer tells the recorder before each denoiser call."""

    index: int  # denoising step within this generation (0-based)
    total: int  # expected number of steps
    timestep: float
    rows: slice  # rows of the attention batch to record; empty: record nothing in this call
    slot: slice  # where those rows go in the recorder's images axis
    images: int  # size of the images axis (the call's images, and their negatives with capture_uncond)
    grid: tuple[int, int]  # (h, w) of the generated image's finest token grid; a video's: (frames·h, w)
    text_len: int  # length of the denoiser's text input (joint layers)
    kept: torch.Tensor  # text positions kept (the prompt's tokens up to its end token), long
    outside: torch.Tensor | None = None  # kept positions past this call's text (recorded as 0), bool; None: none
    count: bool = True  # the rows include the prompt's: count these maps (the negatives' rows share the count)
    batch: int = 0  # the denoiser call's batch size: `rows` index an attention call of this batch only
    frames: int = 1  # a video's latent frames, stacked along the grid's height (frame-major, as the tokens are)


class Listener(Protocol):
    """What follows the recorded attention on the side (`Recorder.listener`: a `concepts.ConceptEngine`). It is
    told of each denoiser call, each recorded attention call and each finished layer, and is handed the model's
    own tensors: what it computes stays on the side of the model's computation."""

    def begin_call(self, rows: slice) -> None:
        """A denoiser call starts; `rows` are the attention rows recorded in it (called by the tracer)."""

    def attention(self, layer: Layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  out: torch.Tensor, rows: slice, images: slice, scale: float) -> None:
        """One recorded attention call of `layer`: SDPA's inputs and output (batch, heads, sequence, dim), the
        recorded rows, the image query positions and the softmax scale."""

    def layer_done(self, layer: Layer, module: torch.nn.Module, output) -> None:
        """A traced layer finished, in a call with recorded rows, with its output. Called outside the observer,
        so attention the listener computes here is not seen."""


@dataclass
class Recorder:
    """Fixed-size accumulators of text attention probabilities, summed over heads, layers and steps.

    ``sums[site]`` has shape (time_bins, images, heads_kept, h*w, tokens); ``counts[site][bin]`` is how many
    single-head maps were added into each head slot, so ``sums / counts`` is a mean attention probability.
    ``coverage[layer]`` counts the calls each traced layer recorded, and the attention calls it skipped.
    """

    time_bins: int = 4
    per_head: bool = False
    per_layer: bool = False
    trace_size: int = 16
    mass: str = "raw"  # "raw": probability on each token; "text": renormalised over the text positions
    resolution_sites: bool = True  # site names carry the resolution ("up.16x16"); False: the block alone
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    step_sums: list[torch.Tensor | None] = field(default_factory=list)  # one (images, th, tw, tokens) per step
    step_counts: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    ran_steps: dict[str, set[int]] = field(default_factory=dict)  # layer -> the steps it recorded
    listener: Listener | None = None  # follows concepts on the side, if any
    # recorded calls by where their log-sum-exp came from: a fused kernel's name, or "explicit…" (see `notes`)
    lse_sources: dict[str, int] = field(default_factory=dict)
    step: StepState | None = None
    _views: dict = field(default_factory=dict, repr=False)  # (site, bin, slot) -> the sums' view to add to
    _plans: dict = field(default_factory=dict, repr=False)  # (layer, shapes, text, grid) -> spans and grid, or None
    _site_names: dict = field(default_factory=dict, repr=False)  # (layer, h, w) -> site name
    _call_cache: dict = field(default_factory=dict, repr=False)  # what is constant within one denoiser call

    def reset(self) -> None:
        for part in (self.sums, self.counts, self.sites, self.step_sums, self.step_counts, self.timesteps, self._views,
                     self.ran_steps, self.lse_sources, self._call_cache):
            part.clear()
        for counts in self.coverage.values():
            counts.update(recorded=0, skipped=0)
        self.step = None

    def begin_step(self, step: StepState) -> None:
        if self.step is None or step.index != self.step.index:
            self.timesteps.append(step.timestep)
            self.step_counts.append(0)
            self.step_sums.append(None)  # filled lazily by the per-step layers
        self.step = step
        self._call_cache.clear()

    def bin_count(self, total: int) -> int:
        """Time bins of this generation's sums: as many as the sums were allocated with (a generation that runs
        more steps than it said spreads them over as many); before that, the bins for `total` expected steps."""
        held = next(iter(self.sums.values()), None)
        return len(held) if held is not None else min(self.time_bins, max(total, 1))

    def bin_of(self, index: int, total: int) -> int:
        """Time bin of a step: bins split the expected steps into equal, contiguous ranges."""
        bins = self.bin_count(total)
        return min(index * bins // max(total, 1), bins - 1)

    @property
    def accumulator_bytes(self) -> int:
        """Bytes of the fixed-size sums (independent of the number of steps)."""
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    @property
    def step_bytes(self) -> int:
        """Bytes of the coarse per-step trace (grows by one small map per step)."""
        return sum(t.numel() * t.element_size() for t in self.step_sums if t is not None)

    @property
    def nbytes(self) -> int:
        return self.accumulator_bytes + self.step_bytes

    # ---- the attention call ---------------------------------------------------------------------------
    def observe(self, layer: Layer, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                scale=None, enable_gqa=False) -> torch.Tensor:
        """Run one `scaled_dot_product_attention` call of `layer` unchanged; record its text attention.

        This runs for every traced attention call, so what depends only on the layer and the call's shapes (its
        spans, grid and site) is worked out once and kept: on small models the cost of capture is Python and
        kernel launches, not arithmetic.
        """
        call = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        if enable_gqa:
            call["enable_gqa"] = True
        step = self.step
        if step is None:  # the denoiser runs outside a traced pipeline call
            return SDPA(query, key, value, **call)
        counts = self.coverage.get(layer.name)
        if counts is None:
            counts = self.coverage[layer.name] = {"recorded": 0, "skipped": 0}
        # An attention call over part of the batch (e.g. a PAG processor that attends for the unperturbed rows
        # only) cannot be mapped to the denoiser's rows: skipped, and counted as such in coverage.
        plan = None
        if query.ndim == 4 and dropout_p == 0 and query.shape[0] == step.batch:
            shapes = (layer.name, query.shape[2], key.shape[2], step.text_len, step.grid)
            plan = self._plans.get(shapes, _UNSEEN)
            if plan is _UNSEEN:
                spans = self._spans(layer, query.shape[2], key.shape[2])
                plan = self._plans[shapes] = None if spans is None else \
                    (*spans, *self.grid_of(spans[0].stop - spans[0].start))
        if plan is None:
            counts["skipped"] += 1
        if plan is None or step.rows.start == step.rows.stop:
            return SDPA(query, key, value, **call)
        images, text, h, w = plan
        renormalise = step.kept.to(query.device) if self.mass == "text" else None
        out, probs, source = attention_and_probabilities(query, key, value, call, step.rows, images,
                                                         self._wanted(text, query.device), renormalise,
                                                         watched=others_watching())
        self.lse_sources[source] = self.lse_sources.get(source, 0) + 1
        if step.outside is not None:
            probs[..., step.outside] = 0
        counts["recorded"] += 1
        ran = self.ran_steps.get(layer.name)
        if ran is None:
            ran = self.ran_steps[layer.name] = set()
        ran.add(step.index)
        self.record(layer, probs, h, w)
        if self.listener is not None:
            scale = query.shape[-1] ** -0.5 if call["scale"] is None else call["scale"]
            self.listener.attention(layer, query, key, value, out, step.rows, images, scale)
        return out

    def _wanted(self, text: slice, device: torch.device) -> slice | torch.Tensor:
        """The key positions whose probabilities are recorded: the kept text positions (all text positions with
        ``mass="text"``, which renormalises over them), as a slice when they are consecutive (a view of the keys,
        no gather), else an index tensor. Worked out once per denoiser call."""
        wanted = self._call_cache.get((text.start, device))
        if wanted is None:
            kept = self.step.kept.tolist()
            if self.mass == "text":
                wanted = text
            elif kept and kept == list(range(kept[0], kept[-1] + 1)):
                wanted = slice(text.start + kept[0], text.start + kept[-1] + 1)
            else:
                wanted = text.start + self.step.kept.to(device)
            self._call_cache[(text.start, device)] = wanted
        return wanted

    @property
    def notes(self) -> list[str]:
        """What a user must know about how these probabilities were computed (for `HeatMaps.notes`)."""
        explicit = {source: n for source, n in self.lse_sources.items() if source.startswith(EXPLICIT)}
        if not explicit:
            return []
        why = "; ".join(source.removeprefix(EXPLICIT).lstrip(": ") or "switched off" for source in explicit)
        return [f"the explicit float32 path was used for {sum(explicit.values())} of {sum(self.lse_sources.values())} "
                f"recorded attention calls (no fused kernel gave the log-sum-exp here: {why}): the maps are as exact, "
                "their cost is a second attention pass over all keys"]

    def _spans(self, layer: Layer, n_queries: int, n_keys: int) -> tuple[slice, slice] | None:
        """(image query positions, text key positions) of this call, or None when it is not text attention
        (e.g. an IP-Adapter's image-prompt branch, whose keys are image tokens)."""
        step = self.step
        if layer.kind == "cross":
            return (slice(0, n_queries), slice(0, n_keys)) if n_keys == step.text_len else None
        if layer.kind == "added_kv":
            return (slice(0, n_queries), slice(0, step.text_len)) if n_keys == step.text_len + n_queries else None
        pixels = step.grid[0] * step.grid[1]
        if n_queries != n_keys or n_keys < step.text_len + pixels:
            return None
        if layer.kind == "text_first":
            return slice(step.text_len, step.text_len + pixels), slice(0, step.text_len)
        return slice(0, pixels), slice(n_keys - step.text_len, n_keys)

    def grid_of(self, pixels: int) -> tuple[int, int]:
        """(h, w) of a layer working on `pixels` image positions: the image grid, downsampled evenly."""
        gh, gw = self.step.grid
        factor = math.sqrt(gh * gw / pixels)
        return round(gh / factor), round(gw / factor)

    # ---- accumulation ---------------------------------------------------------------------------------
    def record(self, layer: Layer, probs: torch.Tensor, h: int, w: int) -> None:
        """Add one layer's probabilities (recorded rows, heads, h*w, kept tokens) for the current step.

        This runs for every traced attention call, so it keeps to one kernel (the head sum and the add in one
        batched matrix product) and cached views: on small models the cost of capture is the number of kernel
        launches. Trace layers (one resolution) need the head sum itself, for the per-step trace too.
        """
        step = self.step
        # Counts are per images-axis row; a negatives-only call shares the count of the prompt's rows.
        rows, heads = probs.shape[:2]
        counted = heads if step.count else 0
        name = self._site_names.get((layer.name, h, w))
        if name is None:
            name = self._site_names[(layer.name, h, w)] = layer.name if self.per_layer else \
                f"{layer.block}.{h}x{w}" if self.resolution_sites else layer.block
        b = self.bin_of(step.index, step.total)
        target = self._views.get((name, b, step.slot.start))
        if target is None:
            sums = self.sums[name] if name in self.sums else self._allocate(name, layer.block, h, w, probs)
            view = sums[b, step.slot] if self.per_head else sums[b, step.slot, 0]
            target = self._views[(name, b, step.slot.start)] = view
        if self.per_head:
            target.add_(probs)
            self.counts[name][b] += counted > 0
        elif not layer.per_step:  # target (rows, pixels·tokens) += ones(heads) · probs (heads, pixels·tokens)
            ones = self._call_cache.get(("ones", rows, heads, probs.device))
            if ones is None:
                ones = self._call_cache["ones", rows, heads, probs.device] = probs.new_ones((rows, 1, heads))
            target.view(rows, 1, -1).baddbmm_(ones, probs.reshape(rows, heads, -1))
            self.counts[name][b] += counted
        if layer.per_step:
            summed = probs.sum(dim=1)  # (images, pixels, tokens)
            if not self.per_head:
                target.add_(summed)
                self.counts[name][b] += counted
            self._add_step(summed, h, w, counted)

    def _allocate(self, name: str, block: str, h: int, w: int, probs: torch.Tensor) -> torch.Tensor:
        bins = self.bin_count(self.step.total)
        self.sites[name] = Site(name, block, (h, w))
        _, heads, pixels, tokens = probs.shape
        shape = (bins, self.step.images, heads if self.per_head else 1, pixels, tokens)
        self.sums[name] = torch.zeros(shape, dtype=torch.float32, device=probs.device)
        self.counts[name] = [0] * bins
        return self.sums[name]

    def _add_step(self, summed: torch.Tensor, h: int, w: int, heads: int) -> None:
        grid = summed.unflatten(1, (h, w))  # (rows, h, w, tokens); a video's frames stacked along h
        frames = self.step.frames
        fh = h // frames
        if max(fh, w) > self.trace_size:  # keep the per-step maps coarse: they are the only part that grows
            scale = self.trace_size / max(fh, w)
            size = (max(1, round(fh * scale)), max(1, round(w * scale)))
            each = grid.unflatten(1, (frames, fh)).flatten(0, 1).permute(0, 3, 1, 2)  # pooled frame by frame
            pooled = F.adaptive_avg_pool2d(each, size).permute(0, 2, 3, 1)
            grid = pooled.unflatten(0, (grid.shape[0], frames)).flatten(1, 2)
        if self.step_sums[-1] is None:
            self.step_sums[-1] = grid.new_zeros((self.step.images,) + grid.shape[1:])
        if self.step_sums[-1].shape[1:] != grid.shape[1:]:  # a trace layer at another resolution: skip it
            return
        self.step_sums[-1][self.step.slot].add_(grid)
        self.step_counts[-1] += heads
