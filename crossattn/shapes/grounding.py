"""An optional grounding loss for training the shapes model: each object word should attend to its object.

Why: the shapes model learned to draw the right objects, yet its cross-attention for
the *second* object of a caption spread over the background (CLIP's text encoder is causal, so later
tokens carry the whole caption and the UNet read layout from them). Real Stable Diffusion's per-word maps
do localise objects, and the embedded model is meant to stand in for it, so training adds, for every
colour and shape word of every object, ``1 - (share of that token's attention mass inside its object's
mask)``, averaged over heads and cross-attention layers (the token loss of TokenCompose, Wang et al. 2024);
from ``coverage_start`` on, the total-variation distance to a uniform spread over the object instead, so
the whole object is covered, not just its centre.

This shapes the *model*; it does not touch the tool. The heat-map evaluation therefore measures whether
crossattn recovers attention that is known to localise, and the README says so next to the figures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..words import words_from_ids
from .world import Scene


class AttentionStore:
    """Image→text attention probabilities of one training forward pass, kept with their gradients.

    Each entry is (rows, heads, pixels, 77): for every image position, its attention on each of the 77 CLIP
    positions, for the first `rows` items of the batch (all when None). Processors add to it only while
    `active` (the grounding loss is on from a given step).
    """

    def __init__(self, rows: int | None = None) -> None:
        self.probs: list[torch.Tensor] = []
        self.active = False
        self.rows = rows


class GroundingProcessor:
    """Training-time UNet cross-attention with explicit probabilities, kept in the store while it is active."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (batch*heads, pixels, tokens)
        if self.store.active:
            self.store.probs.append(probs.unflatten(0, (batch, attn.heads))[: self.store.rows])
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class JointTrainingProcessor:
    """Training-time SD3 joint attention (diffusers' JointAttnProcessor2_0) on a shortened text sequence.

    Without T5 the pipeline's text sequence is 77 CLIP rows followed by 256 rows of zeros. Those zero rows are
    identical, and stay identical through every block (the text stream has no position embedding and works
    per token), so their 256 equal keys and values weigh exactly as much as one such key whose logit is
    raised by ln 256. Training feeds one zero row and adds that offset (`sink_logit`): the same function as
    the pipeline's, for 334 instead of 589 tokens. While the store is active, the attention of the store's
    first `rows` items is formed explicitly (SDPA keeps no probabilities, and explicit attention costs twice
    as much) and their image rows' probabilities on the 77 CLIP positions are kept for the grounding loss.
    """

    def __init__(self, store: AttentionStore, sink_logit: float):
        self.store = store
        self.sink_logit = sink_logit

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, pixels = hidden_states.shape[:2]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(
            attn.to_v(hidden_states))
        text_q, text_k = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
        text_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.norm_added_q is not None:
            text_q, text_k = attn.norm_added_q(text_q), attn.norm_added_k(text_k)
        query, key, value = (torch.cat(pair, dim=2) for pair in ((query, text_q), (key, text_k), (value, text_v)))
        bias = torch.zeros(key.shape[2], dtype=query.dtype, device=query.device)
        bias[-1] = self.sink_logit  # the last text row stands for all the zero rows (see the class doc)
        n = (self.store.rows or batch) if self.store.active else 0
        out = F.scaled_dot_product_attention(query[n:], key[n:], value[n:], attn_mask=bias.expand(query.shape[2], -1))
        if n:
            probs = (query[:n] @ key[:n].transpose(-1, -2) * key.shape[-1] ** -0.5 + bias).softmax(-1)
            self.store.probs.append(probs[:, :, :pixels, pixels : pixels + 77])
            out = torch.cat([probs @ value[:n], out])
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        image, text = out[:, :pixels], out[:, pixels:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


def install(denoiser, sink_logit: float | None = None, rows: int | None = None) -> AttentionStore:
    """Give the denoiser's text-attending layers a training processor; returns the shared store.

    UNet: the cross-attention layers (``attn2``) get a `GroundingProcessor`. SD3 transformer (`sink_logit`
    given): every joint attention layer gets a `JointTrainingProcessor`.
    """
    store = AttentionStore(rows)
    processors = {}
    for name, proc in denoiser.attn_processors.items():
        if sink_logit is not None:
            processors[name] = JointTrainingProcessor(store, sink_logit)
        else:
            processors[name] = GroundingProcessor(store) if ".attn2." in name else proc
    denoiser.set_attn_processor(processors)
    return store


def token_masks(scenes: list[Scene], captions: list[str], tokenizer) -> torch.Tensor:
    """(batch, 77, H, W) masks: token t of caption b gets the mask of the object its word names (else 0).

    Objects appear in captions in scene order; a repeated colour or shape word belongs to the objects in turn.
    Captions dropped for classifier-free guidance ("") get no masks.
    """
    size = scenes[0].image.shape[0]
    out = torch.zeros(len(scenes), 77, size, size)
    for b, (scene, caption) in enumerate(zip(scenes, captions)):
        if not caption:
            continue
        ids = tokenizer(caption, padding="max_length", max_length=77, truncation=True).input_ids
        words = words_from_ids(tokenizer, ids)
        seen: dict[str, int] = {}  # word -> objects already given it
        for obj, mask in zip(scene.objects, scene.masks):
            owned = []
            for text in (obj.colour, obj.shape):
                owned += [w for w in words if w.text == text and w.occurrence == seen.get(text, 0)]
                seen[text] = seen.get(text, 0) + 1
            for word in owned:
                out[b, list(word.positions)] = torch.from_numpy(mask).float()
    return out


def grounding_loss(probs: list[torch.Tensor], masks: torch.Tensor, coverage: bool = False) -> torch.Tensor:
    """Mean over object tokens and layers of 1 - (attention mass inside the token's object).

    `probs`: (batch, heads, pixels, 77) per layer. With `coverage`, the total-variation distance between the
    token's attention distribution and the uniform distribution over its object instead: 1 - Σ min(a, u).
    It also penalises attention piled on part of the object (a map peaked at the centre satisfies the mass
    term but covers the object badly).
    """
    has_object = masks.flatten(2).amax(-1) > 0  # (batch, 77)
    if not has_object.any():
        return masks.new_zeros(())
    pooled: dict[int, torch.Tensor] = {}
    terms = []
    for layer in probs:
        side = round(layer.shape[2] ** 0.5)
        if side not in pooled:
            pooled[side] = F.adaptive_avg_pool2d(masks, side).flatten(2).transpose(1, 2)  # (batch, pixels, 77)
        spread = layer.mean(1)
        spread = spread / spread.sum(1, keepdim=True).clamp_min(1e-8)  # each token's distribution over pixels
        mask = pooled[side]
        if coverage:
            uniform = mask / mask.sum(1, keepdim=True).clamp_min(1e-8)
            inside = torch.minimum(spread, uniform).sum(1)  # (batch, 77)
        else:
            inside = (spread * mask).sum(1)
        terms.append(1 - inside[has_object])
    return torch.cat(terms).mean()
