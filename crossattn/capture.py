"""Inside the denoiser: watch each text-attending layer's attention call, and accumulate what it attended to.

Data flows one way: `AttentionObserver` (one per traced layer) → `Recorder` (fixed-size sums). Nothing here
knows about words, pictures, pipelines or model families: `crossattn.families` says which layers to watch
and how their sequences are laid out (a `Layer`), `crossattn.tracing` wires it all to a pipeline.

Why observe the attention call and not replace the processor: every model family has its own processor
(rotary embeddings, q/k norms, joint text+image sequences, added K/V, IP-Adapter branches), and a copy of
"plain attention" would reach only the plainest. Instead the layer keeps its own processor; while it runs,
a `TorchFunctionMode` (torch's public hook into every torch call) sees the final query, key, value and mask
that reach `F.scaled_dot_product_attention`, lets that very call produce the layer's output (so traced
outputs are bit-identical to untraced ones, by construction) and forms on the side the probabilities of
the recorded rows' image queries on the prompt's text keys, exp(q·k·scale − lse): the log-sum-exp comes from
the fused kernel SDPA would pick (CPU flash; CUDA flash, memory-efficient or cuDNN: `KERNELS`), called
directly as SDPA calls it because it also returns the log-sum-exp, and verified against SDPA on the first call
of each signature; where no kernel gives it (or one is rejected), from an explicit float32 pass over all keys,
chunked over heads, and `Recorder.notes` says so.

Memory: the recorder never stores per-step full-resolution maps. Per image it holds
``time_bins × Σ_sites (h·w) × heads_kept × tokens × 4 bytes`` (a *site* is a group of layers summed
together — (block, resolution) on a UNet, a block kind on a transformer — or a single layer with
``per_layer=True``; ``heads_kept`` is 1 unless ``per_head=True``; ``tokens`` are the prompt's text positions
up to its end token, never the padding), plus a coarse per-step trace of
``steps × (≤ trace_size²) × tokens × 4 bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

# How a layer's attention call lays out text and image positions (see `Layer.kind`).
KINDS = ("cross", "text_first", "text_last", "added_kv")
_UNSEEN = object()  # a cache's "not looked at yet" (None is a verdict)
# The attention function the observer watches for, bound once: a library that wraps
# `F.scaled_dot_product_attention` later still reaches this builtin, and is then seen through it.
_SDPA = F.scaled_dot_product_attention


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
    trace: bool  # also feeds the per-step trace (the coarsest resolution)


@dataclass
class StepState:
    """What the tracer tells the recorder before each denoiser call."""

    index: int  # denoising step within this generation (0-based)
    total: int  # expected number of steps
    timestep: float
    rows: slice  # rows of the attention batch to record; empty: record nothing in this call
    slot: slice  # where those rows go in the recorder's images axis
    images: int  # size of the images axis (the call's images, and their negatives with capture_uncond)
    grid: tuple[int, int]  # (h, w) of the generated image's finest token grid
    text_len: int  # length of the denoiser's text input (joint layers)
    kept: torch.Tensor  # text positions kept (the prompt's tokens up to its end token), long
    outside: torch.Tensor | None = None  # kept positions past this call's text (recorded as 0), bool; None: none
    count: bool = True  # the rows include the prompt's: count these maps (the negatives' rows share the count)
    batch: int = 0  # the denoiser call's batch size: `rows` index an attention call of this batch only


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
    trace: list[torch.Tensor | None] = field(default_factory=list)  # one (images, th, tw, tokens) per step
    trace_counts: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    ran_steps: dict[str, set[int]] = field(default_factory=dict)  # layer -> the steps it recorded
    listener: object | None = None  # a `concepts.ConceptEngine` following concepts on the side, if any
    # recorded calls by where their log-sum-exp came from: a fused kernel's name, or "explicit…" (see `notes`)
    lse_sources: dict[str, int] = field(default_factory=dict)
    step: StepState | None = None
    _views: dict = field(default_factory=dict, repr=False)  # (site, bin, slot) -> the sums' view to add to
    _plans: dict = field(default_factory=dict, repr=False)  # (layer, shapes, text, grid) -> spans and grid, or None
    _site_names: dict = field(default_factory=dict, repr=False)  # (layer, h, w) -> site name
    _call_cache: dict = field(default_factory=dict, repr=False)  # what is constant within one denoiser call

    def reset(self) -> None:
        for part in (self.sums, self.counts, self.sites, self.trace, self.trace_counts, self.timesteps, self._views,
                     self.ran_steps, self.lse_sources, self._call_cache):
            part.clear()
        for counts in self.coverage.values():
            counts.update(recorded=0, skipped=0)
        self.step = None

    def begin_step(self, step: StepState) -> None:
        if self.step is None or step.index != self.step.index:
            self.timesteps.append(step.timestep)
            self.trace_counts.append(0)
            self.trace.append(None)  # filled lazily by the trace layers
        self.step = step
        self._call_cache.clear()

    def bin_of(self, index: int, total: int) -> int:
        """Time bin of a step: bins split the expected steps into equal, contiguous ranges."""
        bins = min(self.time_bins, max(total, 1))
        return min(index * bins // max(total, 1), bins - 1)

    @property
    def accumulator_bytes(self) -> int:
        """Bytes of the fixed-size sums (independent of the number of steps)."""
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    @property
    def trace_bytes(self) -> int:
        """Bytes of the coarse per-step trace (grows by one small map per step)."""
        return sum(t.numel() * t.element_size() for t in self.trace if t is not None)

    @property
    def nbytes(self) -> int:
        return self.accumulator_bytes + self.trace_bytes

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
            return _SDPA(query, key, value, **call)
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
                    (*spans, *self._grid(spans[0].stop - spans[0].start))
        if plan is None:
            counts["skipped"] += 1
        if plan is None or step.rows.start == step.rows.stop:
            return _SDPA(query, key, value, **call)
        images, text, h, w = plan
        renormalise = step.kept.to(query.device) if self.mass == "text" else None
        out, probs, source = _attention_and_probabilities(query, key, value, call, step.rows, images,
                                                          self._wanted(text, query.device), renormalise)
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

    def _grid(self, pixels: int) -> tuple[int, int]:
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
        elif not layer.trace:  # target (rows, pixels·tokens) += ones(heads) · probs (heads, pixels·tokens)
            ones = self._call_cache.get(("ones", rows, heads, probs.device))
            if ones is None:
                ones = self._call_cache["ones", rows, heads, probs.device] = probs.new_ones((rows, 1, heads))
            target.view(rows, 1, -1).baddbmm_(ones, probs.reshape(rows, heads, -1))
            self.counts[name][b] += counted
        if layer.trace:
            summed = probs.sum(dim=1)  # (images, pixels, tokens)
            if not self.per_head:
                target.add_(summed)
                self.counts[name][b] += counted
            self._trace(summed, h, w, counted)

    def _allocate(self, name: str, block: str, h: int, w: int, probs: torch.Tensor) -> torch.Tensor:
        bins = min(self.time_bins, max(self.step.total, 1))
        self.sites[name] = Site(name, block, (h, w))
        _, heads, pixels, tokens = probs.shape
        shape = (bins, self.step.images, heads if self.per_head else 1, pixels, tokens)
        self.sums[name] = torch.zeros(shape, dtype=torch.float32, device=probs.device)
        self.counts[name] = [0] * bins
        return self.sums[name]

    def _trace(self, summed: torch.Tensor, h: int, w: int, heads: int) -> None:
        grid = summed.unflatten(1, (h, w))  # (rows, h, w, tokens)
        if max(h, w) > self.trace_size:  # keep the per-step trace coarse: it is the only part that grows
            scale = self.trace_size / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            grid = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
        if self.trace[-1] is None:
            self.trace[-1] = grid.new_zeros((self.step.images,) + grid.shape[1:])
        if self.trace[-1].shape[1:] != grid.shape[1:]:  # a trace layer at another resolution: skip it
            return
        self.trace[-1][self.step.slot].add_(grid)
        self.trace_counts[-1] += heads


class AttentionObserver(TorchFunctionMode):
    """Active while one traced layer runs: passes every torch call through, and hands the layer's
    `scaled_dot_product_attention` calls to the recorder (which runs them unchanged)."""

    def __init__(self, recorder: Recorder, layer: Layer):
        super().__init__()
        self.recorder = recorder
        self.layer = layer
        self.on = False
        self.calls = 0  # forward calls of the layer in this generation (did it run at all?)

    def switch_on(self, module, args) -> None:  # forward pre-hook of the layer (returns None: inputs untouched)
        self.calls += 1
        self.__enter__()
        self.on = True

    def switch_off(self, module, args, output) -> None:  # forward hook, registered with always_call=True
        self.close()
        rec = self.recorder
        if rec.listener is not None and rec.step is not None and rec.step.rows.stop > rec.step.rows.start and \
                output is not None:
            rec.listener.layer_done(self.layer, module, output)  # outside the mode: its own attention is not seen

    def close(self) -> None:
        """Switch off, if on. The trace's exit calls this too: torch runs ``always_call`` hooks after an
        `Exception`, not after a KeyboardInterrupt, which would leave the mode on for the rest of the process."""
        if self.on:
            self.on = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # every torch call of the layer passes here: kept to one comparison (`observe` takes SDPA's arguments)
        if func is _SDPA:
            return self.recorder.observe(self.layer, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _attention_and_probabilities(query, key, value, call: dict, rows: slice, images: slice,
                                 wanted: slice | torch.Tensor, renormalise: torch.Tensor | None
                                 ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """SDPA's output, bit for bit; the float32 probabilities (rows, heads, image queries, wanted keys); and where
    the log-sum-exp that normalised them came from (`_output_and_lse`).

    The probabilities are exp(q·k·scale + mask − lse) over the wanted keys only: one small Q·Kᵀ, no softmax.
    `renormalise`: divide by each query's total over the wanted keys (all text positions), then keep these.
    """
    scale = query.shape[-1] ** -0.5 if call["scale"] is None else call["scale"]
    q = query[rows, :, images]
    k = key[rows]
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    mask = call["attn_mask"]
    m = None if mask is None else \
        mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])[rows, :, images]
    out, lse, source = _output_and_lse(query, key, value, call, rows, images, q, k, m, scale)
    kw = k[:, :, wanted] if isinstance(wanted, slice) else k.index_select(2, wanted)
    r, h, n, d = q.shape
    q3, k3t = q.float().reshape(r * h, n, d), kw.float().reshape(r * h, -1, d).mT
    bias = _bias(m, call["is_causal"], images, wanted, kw.shape[2], query.device)
    if bias is None:  # scale·q·k − lse, in one kernel
        probs = torch.baddbmm(lse.reshape(r * h, n, 1), q3, k3t, beta=-1, alpha=scale)
    else:
        probs = torch.baddbmm((bias - lse[..., None]).reshape(r * h, n, -1), q3, k3t, alpha=scale)
    probs = probs.exp_().view(r, h, n, -1)
    if renormalise is not None:  # share of the text attention: divide by each query's total on the text positions
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        probs = probs.index_select(-1, renormalise)
    return out, probs, source


def _output_and_lse(query, key, value, call: dict, rows: slice, images: slice, q, k, mask, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(SDPA's output, the float32 log-sum-exp (rows, heads, image queries) it was normalised with, its source).

    When SDPA would pick a fused kernel of `KERNELS`, that kernel is called directly, as SDPA's own composite
    calls it: the same computation, which also returns the log-sum-exp. Its calling conventions are private and
    may change with torch, so each (kernel, device, dtype, shapes, strides, mask) signature is verified on its
    first real call (`_verify`) and the verdict kept for the process. Otherwise SDPA gives the output and an
    explicit float32 pass over all keys the log-sum-exp (an "explicit…" source, reported in `Recorder.notes`).
    """
    if not _FLASH_LSE:
        why = EXPLICIT
    elif call.get("enable_gqa"):  # the direct ops take no such flag
        why = f"{EXPLICIT}: grouped-query attention"
    elif any(isinstance(mode, AttentionObserver) for mode in _get_current_function_mode_stack()):
        # another trace or an intervention watches this layer too: it must see the SDPA call, not a private op
        why = f"{EXPLICIT}: another trace or intervention watches the same layers"
    else:
        choice = torch._fused_sdp_choice(query, key, value, call["attn_mask"], 0.0, call["is_causal"],
                                         scale=call["scale"])
        kernel = KERNELS.get((query.device.type, choice))
        if kernel is None:
            why = f"{EXPLICIT}: SDPA picks its {_BACKENDS.get(choice, choice)} kernel on {query.device.type}"
        else:
            full = call["attn_mask"]
            signature = (kernel.name, query.device, query.dtype, query.shape, key.shape, value.shape, query.stride(),
                         key.stride(), value.stride(), call["is_causal"], call["scale"],
                         None if full is None else (full.dtype, full.shape, full.stride()))
            verdict = _VERDICTS.get(signature, _UNSEEN)
            if verdict is None:
                out, lse = kernel(query, key, value, call)
                return out, lse[rows, :, images].float(), kernel.name
            if verdict is _UNSEEN:
                return _verify(kernel, signature, query, key, value, call, rows, images, q, k, mask, scale)
            why = f"{EXPLICIT}: {verdict}"
    return _SDPA(query, key, value, **call), _explicit_lse(q, k, mask, call["is_causal"], images, scale), why


def _verify(kernel: FusedKernel, signature: tuple, query, key, value, call: dict, rows: slice, images: slice,
            q, k, mask, scale: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first call of a signature: SDPA's output and the kernel's must be equal (`torch.equal`), and the
    kernel's log-sum-exp must match an explicit float32 one within the input precision's rounding; any exception
    rejects the kernel too. The verdict is kept in `_VERDICTS`; a rejected signature takes the explicit path."""
    out = _SDPA(query, key, value, **call)
    expected = _explicit_lse(q, k, mask, call["is_causal"], images, scale)
    # 16-bit inputs: the kernels' float32 scores still come from exactly representable products, but their
    # accumulation order and fast exp() differ from ours; a wrong convention (base 2, unscaled, padded rows)
    # is off by far more than either tolerance
    tolerance = 1e-4 if query.element_size() <= 2 else 1e-5
    verdict, lse = None, expected
    try:
        fused_out, fused_lse = kernel(query, key, value, call)
        fused_lse = fused_lse[rows, :, images].float()
        if not torch.equal(fused_out, out):
            verdict = f"{kernel.name} did not reproduce SDPA's output"
        elif fused_lse.shape != expected.shape or not torch.allclose(fused_lse, expected, rtol=tolerance,
                                                                       atol=tolerance):
            verdict = f"{kernel.name} gave another log-sum-exp"
        else:
            lse = fused_lse
    except Exception as error:  # a private op: missing, renamed or called otherwise by this torch
        verdict = f"{kernel.name} failed ({type(error).__name__})"
    _VERDICTS[signature] = verdict
    return out, lse, kernel.name if verdict is None else f"{EXPLICIT}: {verdict}"


def _explicit_lse(q, k, mask, causal: bool, images: slice, scale: float) -> torch.Tensor:
    """Float32 log-sum-exp of the scores of `q` (rows, heads, image queries, dim) over all keys `k`, chunked over
    heads so that the scores of one pass stay under 2^26 floats."""
    q, k = q.float(), k.float()
    r, h, n, _ = q.shape
    lse = q.new_empty((r, h, n))
    step = max(1, 2**26 // max(1, r * n * k.shape[2]))
    for start in range(0, h, step):
        heads = slice(start, start + step)
        scores = torch.matmul(q[:, heads], k[:, heads].mT) * scale
        bias = _bias(None if mask is None else mask[:, heads], causal, images, slice(0, k.shape[2]), k.shape[2],
                     q.device)
        lse[:, heads] = (scores if bias is None else scores + bias).logsumexp(-1)
    return lse


def _bias(mask, causal: bool, images: slice, keys: slice | torch.Tensor, n_keys: int, device: torch.device
          ) -> torch.Tensor | None:
    """SDPA's mask semantics (bool: True = attend; float: added) and causality, as a float32 additive bias on
    the scores of the image queries on `keys` (`n_keys` of them); None when there is nothing to add."""
    bias = None
    if mask is not None:
        mask = mask[..., keys] if isinstance(keys, slice) else mask.index_select(-1, keys)
        bias = torch.zeros(mask.shape, device=device).masked_fill_(~mask, -math.inf) \
            if mask.dtype == torch.bool else mask.float()
    if causal:
        positions = torch.arange(keys.start, keys.start + n_keys, device=device) if isinstance(keys, slice) else keys
        later = positions[None, :] > torch.arange(images.start, images.stop, device=device)[:, None]
        causal_bias = torch.zeros(later.shape, device=device).masked_fill_(later, -math.inf)
        bias = causal_bias if bias is None else bias + causal_bias
    return bias


# ---- fused kernels that return the log-sum-exp ---------------------------------------------------------------
EXPLICIT = "explicit"  # the source of a log-sum-exp from the explicit float32 pass (`Recorder.lse_sources`)
_BACKENDS = {int(b.value): name for b, name in ((SDPBackend.MATH, "math"), (SDPBackend.FLASH_ATTENTION, "flash"),
                                               (SDPBackend.EFFICIENT_ATTENTION, "memory-efficient"),
                                               (SDPBackend.CUDNN_ATTENTION, "cuDNN"),
                                               (SDPBackend.OVERRIDEABLE, "overrideable"))}


@dataclass(frozen=True)
class FusedKernel:
    """A fused SDPA kernel that also returns each query's log-sum-exp.

    ``call(query, key, value, mask, is_causal, scale)`` calls the private op as SDPA's composite calls it
    (torch's ``aten/src/ATen/native/transformers/attention.cpp``: the same mask conversion, padding and scale),
    and returns (output, log-sum-exp of shape (batch, heads, ≥ queries, …)).
    """

    name: str
    call: Callable

    def __call__(self, query, key, value, call: dict) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = self.call(query, key, value, call["attn_mask"], call["is_causal"], call["scale"])
        return out, lse.flatten(2)  # cuDNN's has a trailing 1; memory-efficient pads the queries (never read)


def _additive(mask, dtype: torch.dtype, masked: float):
    """SDPA's `convert_boolean_attn_mask`: a bool mask becomes 0 / `masked` in the inputs' dtype."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask.logical_not(), masked, torch.scalar_tensor(0.0, dtype=dtype, device=mask.device))


def _cpu_flash(query, key, value, mask, causal, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, causal, attn_mask=_additive(mask, query.dtype, -math.inf), scale=scale)


def _cuda_flash(query, key, value, mask, causal, scale):
    # SDPA pads the head dim to a multiple of 8, scales by the unpadded one and cuts the output back (no masks)
    d = query.shape[-1]
    padded = [F.pad(x, (0, -d % 8)) if d % 8 else x for x in (query, key, value)]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        *padded, 0.0, causal, False, scale=1.0 / math.sqrt(d) if scale is None else scale)[:2]
    return out[..., :d], lse


def _cuda_efficient(query, key, value, mask, causal, scale):
    bias = _additive(mask, query.dtype, -math.inf)
    if bias is not None:  # SDPA's preprocess_mask: 4-D, last dim padded to 16 (and cut back), 16-aligned strides
        s = key.shape[2]
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], s)
        if s % 16:
            bias = F.pad(bias, (0, 16 - s % 16))[..., :s]
        elif any(stride % 16 for stride in bias.stride()[:3]):
            bias = bias.contiguous()
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, bias, True, 0.0, causal,
                                                                  scale=scale)[:2]


def _cuda_cudnn(query, key, value, mask, causal, scale):
    # SDPA's convert_boolean_attn_mask_cudnn: a finite large negative instead of -inf
    return torch.ops.aten._scaled_dot_product_cudnn_attention(
        query, key, value, _additive(mask, query.dtype, -65504.0), True, 0.0, causal, False, scale=scale)[:2]


# (device type, the backend `torch._fused_sdp_choice` picks) -> the kernel to call instead of SDPA
KERNELS: dict[tuple[str, int], FusedKernel] = {
    ("cpu", int(SDPBackend.FLASH_ATTENTION.value)): FusedKernel("cpu flash", _cpu_flash),
    ("cuda", int(SDPBackend.FLASH_ATTENTION.value)): FusedKernel("cuda flash", _cuda_flash),
    ("cuda", int(SDPBackend.EFFICIENT_ATTENTION.value)): FusedKernel("cuda memory-efficient", _cuda_efficient),
    ("cuda", int(SDPBackend.CUDNN_ATTENTION.value)): FusedKernel("cuda cuDNN", _cuda_cudnn),
}
# signature -> None (the kernel reproduced SDPA and its log-sum-exp) or why it was rejected (`_verify`)
_VERDICTS: dict[tuple, str | None] = {}
# False: every call takes the explicit float32 pass (`benchmarks/cuda.py --explicit` measures that path)
_FLASH_LSE = True


def _flash_lse_available() -> bool:
    """Whether the fused path is on and this torch's CPU flash kernel passes `_verify` (on a small call)."""
    q = torch.randn(1, 2, 3, 8, generator=torch.Generator().manual_seed(0))
    call = dict(attn_mask=None, dropout_p=0.0, is_causal=False, scale=None)
    everything = slice(0, 3)
    *_, source = _output_and_lse(q, q, q, call, slice(0, 1), everything, q, q, None, 8**-0.5)
    return source == KERNELS["cpu", int(SDPBackend.FLASH_ATTENTION.value)].name


class PlainSDPAProcessor:
    """`AttnProcessor2_0`'s computation with the layer's own softmax scale, for cross-attention layers whose
    processor computes plain attention without SDPA (`AttnProcessor`, `SlicedAttnProcessor`,
    `XFormersAttnProcessor`): the trace puts this in their place, so their attention becomes observable.
    Equal to theirs within float rounding (SDPA's blocked softmax); the originals come back on exit.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, context_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=attn.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
