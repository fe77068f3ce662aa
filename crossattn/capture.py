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
the recorded rows' image queries on the prompt's text keys: on the CPU from the flash kernel's log-sum-exp
(the same kernel SDPA would pick, called directly because it also returns the log-sum-exp), elsewhere with
an explicit float32 softmax over all keys, chunked over heads.

Memory: the recorder never stores per-step full-resolution maps. Per image it holds
``time_bins × Σ_sites (h·w) × heads_kept × tokens × 4 bytes`` (a *site* is a group of layers summed
together — (block, resolution) on a UNet, a block kind on a transformer — or a single layer with
``per_layer=True``; ``heads_kept`` is 1 unless ``per_head=True``; ``tokens`` are the prompt's text positions
up to its end token, never the padding), plus a coarse per-step trace of
``steps × (≤ trace_size²) × tokens × 4 bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# How a layer's attention call lays out text and image positions (see `Layer.kind`).
KINDS = ("cross", "text_first", "text_last", "added_kv")
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
    step: StepState | None = None
    _views: dict = field(default_factory=dict, repr=False)

    def reset(self) -> None:
        for part in (self.sums, self.counts, self.sites, self.trace, self.trace_counts, self.timesteps, self._views,
                     self.ran_steps):
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
        """Run one `scaled_dot_product_attention` call of `layer` unchanged; record its text attention."""
        call = dict(attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        if enable_gqa:
            call["enable_gqa"] = True
        step = self.step
        if step is None:  # the denoiser runs outside a traced pipeline call
            return _SDPA(query, key, value, **call)
        counts = self.coverage.setdefault(layer.name, {"recorded": 0, "skipped": 0})
        # An attention call over part of the batch (e.g. a PAG processor that attends for the unperturbed rows
        # only) cannot be mapped to the denoiser's rows: skipped, and counted as such in coverage.
        spans = self._spans(layer, query.shape[2], key.shape[2]) \
            if query.ndim == 4 and dropout_p == 0 and query.shape[0] == step.batch else None
        if spans is None:
            counts["skipped"] += 1
        if spans is None or step.rows.start == step.rows.stop:
            return _SDPA(query, key, value, **call)
        images, text = spans
        out, probs = _attention_and_probabilities(query, key, value, call, step.rows, images, text, step.kept,
                                                  self.mass == "text")
        if step.outside is not None:
            probs[..., step.outside] = 0
        counts["recorded"] += 1
        self.ran_steps.setdefault(layer.name, set()).add(step.index)
        h, w = self._grid(images.stop - images.start)
        self.record(layer, probs, h, w)
        if self.listener is not None:
            scale = query.shape[-1] ** -0.5 if call["scale"] is None else call["scale"]
            self.listener.attention(layer, query, key, value, out, step.rows, images, scale)
        return out

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

        This runs for every traced attention call, so it keeps to two kernels (head sum, in-place add) and
        cached views: on small models the cost of capture is the number of kernel launches.
        """
        step = self.step
        # Counts are per images-axis row; a negatives-only call shares the count of the prompt's rows.
        heads = probs.shape[1] if step.count else 0
        if self.per_layer:
            name = layer.name
        else:
            name = f"{layer.block}.{h}x{w}" if self.resolution_sites else layer.block
        b = self.bin_of(step.index, step.total)
        target = self._views.get((name, b, step.slot.start))
        if target is None:
            sums = self.sums[name] if name in self.sums else self._allocate(name, layer.block, h, w, probs)
            view = sums[b, step.slot] if self.per_head else sums[b, step.slot, 0]
            target = self._views[(name, b, step.slot.start)] = view
        if self.per_head:
            target.add_(probs)
            self.counts[name][b] += heads > 0
        if layer.trace or not self.per_head:
            summed = probs.sum(dim=1)  # (images, pixels, tokens)
            if not self.per_head:
                target.add_(summed)
                self.counts[name][b] += heads
            if layer.trace:
                self._trace(summed, h, w, heads)

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
        self.trace[-1][self.step.slot] += grid
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
        kwargs = kwargs or {}
        if func is not _SDPA:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
        return self.recorder.observe(self.layer, **dict(zip(names, args)), **kwargs)


def _attention_and_probabilities(query, key, value, call: dict, rows: slice, images: slice, text: slice,
                                 kept: torch.Tensor, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's output, bit for bit, and the float32 probabilities (rows, heads, image queries, kept tokens).

    On the CPU, when SDPA would pick its flash kernel anyway, that kernel is called directly: it also returns
    each query's log-sum-exp over all keys, so the kept tokens' probabilities are exp(q·k·scale − lse): a
    Q·Kᵀ over the prompt's few tokens instead of all keys, and no softmax. Elsewhere (CUDA, masks SDPA
    routes to other kernels) the output comes from SDPA and the log-sum-exp from an explicit float32 pass.
    """
    mask, scale = call["attn_mask"], call["scale"]
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    q = query[rows, :, images].float()
    k = key[rows].float()
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    wanted = text.start + kept.to(query.device) if not renormalise else torch.arange(text.start, text.stop,
                                                                                       device=query.device)
    m = None
    if mask is not None:
        m = mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])[rows][:, :, images]
    lse = None
    if query.device.type == "cpu" and not call.get("enable_gqa") and _flash_lse_available() and \
            torch._fused_sdp_choice(query, key, value, mask, 0.0, call["is_causal"], scale=call["scale"]) == \
            int(torch.backends.cuda.SDPBackend.FLASH_ATTENTION.value):
        out, full_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, call["is_causal"], attn_mask=mask, scale=call["scale"])
        lse = full_lse[rows, :, images].float()
    else:
        out = _SDPA(query, key, value, **call)
    probs = torch.empty(q.shape[:3] + (len(wanted),), dtype=torch.float32, device=query.device)
    # heads per pass: the explicit path forms (rows, heads, queries, all keys) scores, kept under 2^26 floats
    step = q.shape[1] if lse is not None else max(1, 2**26 // max(1, q.shape[0] * q.shape[2] * k.shape[2]))
    for h in range(0, q.shape[1], step):
        hs = slice(h, h + step)
        mask_h = None if m is None else m[:, hs]
        if lse is None:  # explicit pass over all keys: the log-sum-exp the output was normalised with
            scores = torch.matmul(q[:, hs], k[:, hs].transpose(-1, -2)) * scale
            scores = _masked(scores, mask_h, call["is_causal"], images)
            probs[:, hs] = (scores[..., wanted] - scores.logsumexp(-1, keepdim=True)).exp_()
        else:
            scores = torch.matmul(q[:, hs], k[:, hs][:, :, wanted].transpose(-1, -2)) * scale
            scores = _masked(scores, None if mask_h is None else mask_h[..., wanted], call["is_causal"], images,
                             wanted)
            probs[:, hs] = (scores - lse[:, hs, :, None]).exp_()
    if renormalise:  # share of the text attention: divide by each query's total on the text positions
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        probs = probs[..., kept.to(query.device)]
    return out, probs


def _masked(scores: torch.Tensor, mask: torch.Tensor | None, causal: bool, images: slice,
            keys: torch.Tensor | None = None) -> torch.Tensor:
    """Apply SDPA's mask semantics (bool: True = attend; float: added) and causality to float32 scores."""
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.float()
    if causal:
        qpos = torch.arange(images.start, images.stop, device=scores.device)[:, None]
        kpos = keys[None, :] if keys is not None else torch.arange(scores.shape[-1], device=scores.device)[None]
        scores = scores.masked_fill(kpos > qpos, float("-inf"))
    return scores


_FLASH_LSE: bool | None = None


def _flash_lse_available() -> bool:
    """Whether torch's CPU flash-attention op exists with the signature used above (a private op: probed
    once on a tiny input and compared with SDPA; when missing or changed, the explicit path is used)."""
    global _FLASH_LSE
    if _FLASH_LSE is None:
        try:
            q = torch.randn(1, 2, 3, 8, generator=torch.Generator().manual_seed(0))
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q, 0.0, False, attn_mask=None,
                                                                                   scale=None)
            reference = _SDPA(q, q, q)
            expected = torch.logsumexp(q @ q.transpose(-1, -2) * 8**-0.5, -1)
            _FLASH_LSE = torch.equal(out, reference) and torch.allclose(lse, expected, atol=1e-5)
        except (AttributeError, RuntimeError, TypeError, ValueError):
            _FLASH_LSE = False
    return _FLASH_LSE


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
