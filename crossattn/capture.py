"""Inside the denoiser: a cross-attention processor that records its attention, and the accumulator it feeds.

Data flows one way: `CaptureProcessor` (one per cross-attention layer) → `Recorder` (fixed-size sums).
Nothing here knows about words, pictures or pipelines; `crossattn.tracing` wires it to a pipeline.

Why a processor and not a hook: the attention probabilities exist only inside the processor (SDPA
never returns them). The processor computes the layer output with the very same SDPA call as diffusers'
`AttnProcessor2_0`, so traced outputs are bit-identical to untraced ones, and forms the probabilities
only for the rows it records (the conditional half under CFG) and the prompt's tokens: on the CPU from the
flash kernel's log-sum-exp (one small Q·Kᵀ, no softmax), elsewhere with an explicit softmax.

Memory: the recorder never stores per-step full-resolution maps. Per image it holds
``time_bins × Σ_sites (h·w) × heads_kept × tokens × 4 bytes`` (a *site* is a (block, resolution) pair,
or a single layer with ``per_layer=True``; ``heads_kept`` is 1 unless ``per_head=True``; ``tokens`` is the
prompt's tokens up to and including the end token, not the padding), plus a coarse per-step trace of
``steps × (≤ trace_size²) × tokens × 4 bytes`` at the lowest captured resolution.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Site:
    """Where a map was captured: readable name, UNet block, resolution (h, w) in latent pixels."""

    name: str
    block: str
    resolution: tuple[int, int]


def block_of(layer: str) -> str:
    """'up_blocks.1.attentions.0.transformer_blocks.0.attn2' -> 'up'; 'mid_block…' -> 'mid'."""
    head = layer.split(".", 1)[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(head, head)


def depth_of(layer: str, n_down: int) -> int:
    """How many times the latent was halved before this layer (UNet2DConditionModel layout); 0 if unknown."""
    if m := re.match(r"down_blocks\.(\d+)\.", layer):
        return int(m.group(1))
    if layer.startswith("mid_block."):
        return n_down - 1
    if m := re.match(r"up_blocks\.(\d+)\.", layer):
        return n_down - 1 - int(m.group(1))
    return 0


@dataclass
class StepState:
    """What the tracer tells the recorder before each denoiser call."""

    index: int  # denoiser call number within this generation (0-based)
    total: int  # expected number of calls (the pipeline's step count)
    timestep: float
    rows: slice  # rows of the denoiser batch to record (the conditional half under CFG)
    latent_hw: tuple[int, int]


@dataclass
class Recorder:
    """Fixed-size accumulators of cross-attention probabilities, summed over heads, layers and steps.

    ``sums[site]`` has shape (time_bins, images, heads_kept, h*w, tokens); ``counts[site][bin]`` is how many
    single-head maps were added into each head slot, so ``sums / counts`` is a mean attention probability.
    """

    time_bins: int = 4
    per_head: bool = False
    per_layer: bool = False
    trace_size: int = 16
    n_tokens: int = 77  # tokens kept per map: the tracer lowers it to the prompt's length
    trace_depth: int = 0  # sites at this depth also feed the per-step trace
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    trace: list[torch.Tensor | None] = field(default_factory=list)  # one (images, th, tw, tokens) per step
    trace_counts: list[int] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    step: StepState | None = None
    _names: dict = field(default_factory=dict, repr=False)
    _views: dict = field(default_factory=dict, repr=False)

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.sites.clear()
        self.trace.clear()
        self.trace_counts.clear()
        self.timesteps.clear()
        self._names.clear()
        self._views.clear()
        self.step = None

    def begin_step(self, step: StepState) -> None:
        self.step = step
        self.timesteps.append(step.timestep)
        self.trace_counts.append(0)
        self.trace.append(None)  # filled lazily by the trace-depth sites

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

    def _site(self, layer: str, pixels: int) -> tuple[str, int, int]:
        """(site name, h, w) of a layer's map with `pixels` positions; cached, it is asked every call."""
        key = (layer, pixels, self.step.latent_hw)
        if key not in self._names:
            lh, lw = self.step.latent_hw
            factor = math.sqrt(lh * lw / pixels)
            h, w = round(lh / factor), round(lw / factor)
            self._names[key] = (layer if self.per_layer else f"{block_of(layer)}.{h}x{w}", h, w)
        return self._names[key]

    def record(self, layer: str, depth: int, probs: torch.Tensor) -> None:
        """Add one layer's probabilities (recorded rows, heads, h*w, kept tokens) for the current step.

        This runs for every cross-attention call, so it keeps to two kernels (head sum, in-place add) and
        cached views: on small models the cost of capture is the number of kernel launches.
        """
        step = self.step
        heads, pixels = probs.shape[1], probs.shape[2]
        name, h, w = self._site(layer, pixels)
        b = self.bin_of(step.index, step.total)
        target = self._views.get((name, b))
        if target is None:
            sums = self.sums[name] if name in self.sums else self._allocate(name, layer, h, w, probs)
            target = self._views[(name, b)] = sums[b] if self.per_head else sums[b, :, 0]
        if self.per_head:
            target.add_(probs)
            self.counts[name][b] += 1
        if depth == self.trace_depth or not self.per_head:
            summed = probs.sum(dim=1)  # (images, pixels, tokens)
            if not self.per_head:
                target.add_(summed)
                self.counts[name][b] += heads
            if depth == self.trace_depth:
                self._trace(summed, h, w, heads)

    def _allocate(self, name: str, layer: str, h: int, w: int, probs: torch.Tensor) -> torch.Tensor:
        bins = min(self.time_bins, max(self.step.total, 1))
        self.sites[name] = Site(name, block_of(layer), (h, w))
        images, heads, pixels, tokens = probs.shape
        shape = (bins, images, heads if self.per_head else 1, pixels, tokens)
        self.sums[name] = torch.zeros(shape, dtype=torch.float32, device=probs.device)
        self.counts[name] = [0] * bins
        return self.sums[name]

    def _trace(self, summed: torch.Tensor, h: int, w: int, heads: int) -> None:
        grid = summed.unflatten(1, (h, w))  # (images, h, w, tokens)
        if max(h, w) > self.trace_size:  # keep the per-step trace coarse: it is the only part that grows
            scale = self.trace_size / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            grid = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
        if self.trace[-1] is None:
            self.trace[-1] = grid.clone()
        else:
            self.trace[-1].add_(grid)
        self.trace_counts[-1] += heads


class CaptureProcessor:
    """AttnProcessor2_0's computation, plus the attention probabilities of the recorded rows.

    Honours the `Attention` contract: spatial/group norm, norm_cross, attention_mask, q/k norms,
    residual_connection and rescale_output_factor. Probabilities are formed in float32 with SDPA's scale
    (1/√head_dim) and mask: the weights the output is computed with.

    ``exact=True`` keeps diffusers' SDPA call for the output (bit-identical to untraced) and forms the
    probabilities of the recorded rows on the side. ``exact=False`` forms the probabilities once for the whole
    batch and reuses them for the output (probs @ V): no second Q·Kᵀ, so cheaper where attention calls are
    small and many, at the price of float rounding (~1e-6 relative) against SDPA's blocked kernel.
    """

    def __init__(self, recorder: Recorder, layer: str, depth: int, exact: bool = True):
        self.recorder = recorder
        self.layer = layer
        self.depth = depth
        self.exact = exact

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
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
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        step = self.recorder.step  # None when the denoiser runs outside a traced pipeline call
        if step is None:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        elif self.exact:
            hidden_states, probs = _attention_and_probabilities(query, key, value, attention_mask, step.rows,
                                                                self.recorder.n_tokens)
            self.recorder.record(self.layer, self.depth, probs)
        else:
            probs = _probabilities(query, key, attention_mask)
            hidden_states = torch.matmul(probs.to(value.dtype), value)
            self.recorder.record(self.layer, self.depth, probs[step.rows, ..., : self.recorder.n_tokens])

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _attention_and_probabilities(query, key, value, mask, rows: slice, n_tokens: int):
    """SDPA's output, bit for bit, and the float32 probabilities of `rows` for the first `n_tokens` keys.

    On the CPU, when SDPA would pick its flash kernel anyway, we call that kernel directly: it also returns
    each query's log-sum-exp over all keys, so the kept tokens' probabilities are exp(q·k/√d − lse) — a
    Q·Kᵀ over the prompt's ~10 tokens instead of all 77 and no softmax. Elsewhere (CUDA, masks SDPA
    routes to other kernels) the output comes from SDPA and the probabilities from an explicit softmax.
    """
    flash = int(torch.backends.cuda.SDPBackend.FLASH_ATTENTION.value)
    if query.device.type == "cpu" and torch._fused_sdp_choice(query, key, value, mask, 0.0, False) == flash:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=mask)
        q, k = query[rows].float().flatten(0, 1), key[rows, :, :n_tokens].float().flatten(0, 1)
        # one fused kernel for q·kᵀ/√d − lse; few kernels matter: on small models dispatch dominates
        scores = torch.baddbmm(lse[rows].float().flatten(0, 1).unsqueeze(-1), q, k.transpose(-1, -2), beta=-1,
                               alpha=q.shape[-1] ** -0.5).unflatten(0, lse[rows].shape[:2])
        if mask is not None:
            scores += mask[rows, ..., :n_tokens].float()
        return out, scores.exp_()
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return out, _probabilities(query[rows], key[rows], None if mask is None else mask[rows])[..., :n_tokens]


def _probabilities(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q·Kᵀ/√d + mask) in float32, as SDPA computes it (bool masks: True = attend)."""
    scale = query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), (key.float() * scale).transpose(-1, -2))
    if mask is not None and mask.dtype == torch.bool:
        scores.masked_fill_(~mask, float("-inf"))
    elif mask is not None:
        scores += mask.float()
    return scores.softmax(dim=-1)
