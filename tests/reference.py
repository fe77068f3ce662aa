"""An independent recomputation of text attention, for checking crossattn's maps on any family.

`record_attention(pipe, layer_paths)` wraps `torch.nn.functional.scaled_dot_product_attention` (what the
processors call) while the given attention modules run, and keeps, per call, the full probabilities
softmax(Q·Kᵀ·scale + mask) computed here in float64. `expected_token_maps` then cuts the image-query ×
text-key block itself (from the layout the test states), keeps the conditional rows and averages over heads,
layers and steps: the definition in the README, implemented without crossattn's code.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def record_attention(denoiser: torch.nn.Module, layer_paths: list[str]):
    calls: list[torch.Tensor] = []
    active: list[bool] = [False]
    original = F.scaled_dot_product_attention

    def wrapper(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        if active[0]:
            s = query.shape[-1] ** -0.5 if scale is None else scale
            scores = query.double() @ key.double().transpose(-1, -2) * s
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else \
                    scores + attn_mask.double()
            calls.append(scores.softmax(-1))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        **kw)

    hooks = []
    for path in layer_paths:
        module = denoiser.get_submodule(path)
        hooks.append(module.register_forward_pre_hook(lambda *_: active.__setitem__(0, True)))
        hooks.append(module.register_forward_hook(lambda *_: active.__setitem__(0, False)))
    F.scaled_dot_product_attention = wrapper
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original
        for h in hooks:
            h.remove()


def expected_token_maps(calls: list[torch.Tensor], rows: slice, images: slice, text: slice,
                        positions: list[int]) -> torch.Tensor:
    """Mean over calls and heads of the probabilities of `images` queries on text `positions`: (pixels, tokens)."""
    picked = [p[rows][:, :, images][..., [text.start + k for k in positions]] for p in calls]
    return torch.cat([p.flatten(0, 1) for p in picked]).mean(0).float()
