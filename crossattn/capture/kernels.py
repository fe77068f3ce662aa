"""The text attention probabilities of one attention call, formed on the side of SDPA's own call.

The probabilities of the recorded rows' image queries on the wanted keys are exp(q·k·scale + mask − lse): one small
Q·Kᵀ, no softmax. The log-sum-exp (lse) comes from the fused kernel SDPA would pick (CPU flash; CUDA flash,
memory-efficient or cuDNN: `KERNELS`), called directly as SDPA calls it because it also returns the log-sum-exp,
and verified against SDPA on the first call of each signature (`_verify`). Where no kernel gives it (switched
off, none for this backend, one rejected, or another observer must see the SDPA call), it comes from an explicit
float32 pass over all keys, chunked over heads: an `EXPLICIT` source, which `Recorder.notes` reports. Either way
the layer's output is SDPA's, bit for bit. Nothing here knows about layers or steps: the recorder calls
`attention_and_probabilities`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

# The attention function, bound once: a library that wraps `F.scaled_dot_product_attention` later still reaches
# this builtin, and is then seen through it (the observer watches for this very object).
SDPA = F.scaled_dot_product_attention
EXPLICIT = "explicit"  # the source of a log-sum-exp from the explicit float32 pass (`Recorder.lse_sources`)
# False: every call takes the explicit float32 pass (`benchmarks/cuda.py --explicit` measures that path)
_FLASH_LSE = True
_UNSEEN = object()  # `_VERDICTS`' "not verified yet" (None is a verdict)


def attention_and_probabilities(query, key, value, call: dict, rows: slice, images: slice,
                                wanted: slice | torch.Tensor, renormalise: torch.Tensor | None, *,
                                watched: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """SDPA's output, bit for bit; the float32 probabilities (rows, heads, image queries, wanted keys), a
    transposed view; and where the log-sum-exp that normalised them came from (`_output_and_lse`).

    `renormalise`: divide by each query's total over the wanted keys (all text positions), then keep these.
    `watched`: another trace or intervention also watches this call, so it must see SDPA called, not a private op.
    """
    scale = query.shape[-1] ** -0.5 if call["scale"] is None else call["scale"]
    q = query[rows, :, images]
    k = key[rows]
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    mask = call["attn_mask"]
    m = None if mask is None else \
        mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])[rows, :, images]
    out, lse, source = _output_and_lse(query, key, value, call, rows, images, q, k, m, scale, watched)
    kw = k[:, :, wanted] if isinstance(wanted, slice) else k.index_select(2, wanted)
    r, h, n, d = q.shape
    w = kw.shape[2]
    # keys × queries, then transposed back (a view): a product whose short side is the few wanted keys runs
    # several times slower than the same product with the queries as its long side (BLAS packs the other way)
    k3, q3t = _f32(kw).reshape(r * h, w, d), _f32(q).reshape(r * h, n, d).mT
    bias = _bias(m, call["is_causal"], images, wanted, w, query.device)
    if bias is None:  # scale·k·q − lse, in one kernel
        probs = torch.baddbmm(lse.reshape(r * h, 1, n), k3, q3t, beta=-1, alpha=scale)
    else:
        probs = torch.baddbmm((bias.mT - lse[..., None, :]).reshape(r * h, w, n), k3, q3t, alpha=scale)
    probs = probs.exp_().view(r, h, w, n).mT
    if renormalise is not None:  # share of the text attention: divide by each query's total on the text positions
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        probs = probs.index_select(-1, renormalise)
    return out, probs, source


def _output_and_lse(query, key, value, call: dict, rows: slice, images: slice, q, k, mask, scale: float,
                    watched: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
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
    elif watched:
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
                return out, _f32(lse[rows, :, images]), kernel.name
            if verdict is _UNSEEN:
                return _verify(kernel, signature, query, key, value, call, rows, images, q, k, mask, scale)
            why = f"{EXPLICIT}: {verdict}"
    return SDPA(query, key, value, **call), _explicit_lse(q, k, mask, call["is_causal"], images, scale), why


def _verify(kernel: FusedKernel, signature: tuple, query, key, value, call: dict, rows: slice, images: slice,
            q, k, mask, scale: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first call of a signature: SDPA's output and the kernel's must be equal (`torch.equal`), and the
    kernel's log-sum-exp must match an explicit float32 one within the input precision's rounding; any exception
    rejects the kernel too. The verdict is kept in `_VERDICTS`; a rejected signature takes the explicit path."""
    out = SDPA(query, key, value, **call)
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


def _f32(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 (itself when it already is: on small models every torch call saved is time saved)."""
    return x if x.dtype == torch.float32 else x.float()


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
        # cuDNN's has a trailing 1; memory-efficient pads the queries (never read)
        return out, lse if lse.ndim == 3 else lse.flatten(2)


def _additive(mask, dtype: torch.dtype, masked: float):
    """SDPA's `convert_boolean_attn_mask`: a bool mask becomes 0 / `masked` in the inputs' dtype."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask.logical_not(), masked, torch.scalar_tensor(0.0, dtype=dtype, device=mask.device))


def _cpu_flash(query, key, value, mask, causal, scale):
    # torch's own binding of the op (a few µs faster per call than `torch.ops.aten`'s)
    return torch._scaled_dot_product_flash_attention_for_cpu(
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


def _flash_lse_available() -> bool:
    """Whether the fused path is on and this torch's CPU flash kernel passes `_verify` (on a small call)."""
    q = torch.randn(1, 2, 3, 8, generator=torch.Generator().manual_seed(0))
    call = dict(attn_mask=None, dropout_p=0.0, is_causal=False, scale=None)
    everything = slice(0, 3)
    *_, source = _output_and_lse(q, q, q, call, slice(0, 1), everything, q, q, None, 8**-0.5, False)
    return source == KERNELS["cpu", int(SDPBackend.FLASH_ATTENTION.value)].name
