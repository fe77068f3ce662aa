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


class GroundingProcessor:
    """Training-time cross-attention with explicit probabilities kept (with gradients) in `store`."""

    def __init__(self, store: list[torch.Tensor]):
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
        self.store.append(probs.unflatten(0, (batch, attn.heads)))
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet) -> list[torch.Tensor]:
    """Give the UNet's cross-attention layers a GroundingProcessor; returns the shared store."""
    store: list[torch.Tensor] = []
    processors = {name: (GroundingProcessor(store) if ".attn2." in name else proc)
                  for name, proc in unet.attn_processors.items()}
    unet.set_attn_processor(processors)
    return store


# Position and relation words ("a red circle on the left", "a red circle left of a blue square") can be
# grounded on the object they place: the only object, or the first one. Why: CLIP's text encoder is causal,
# so the first object's own tokens never see the relation that follows them; the relation word is the
# first token that knows both the object and where it goes.
PLACING_WORDS = {"left", "right", "top", "bottom", "above", "below"}


def token_masks(scenes: list[Scene], captions: list[str], tokenizer, placing: bool = False) -> torch.Tensor:
    """(batch, 77, H, W) masks: token t of caption b gets the mask of the object its word names (else 0).

    Objects appear in captions in scene order; a repeated shape word belongs to the objects in turn. With
    `placing`, position and relation words get the mask of the object they place (see PLACING_WORDS).
    Captions dropped for classifier-free guidance ("") get no masks.
    """
    size = scenes[0].image.shape[0]
    out = torch.zeros(len(scenes), 77, size, size)
    for b, (scene, caption) in enumerate(zip(scenes, captions)):
        if not caption:
            continue
        ids = tokenizer(caption, padding="max_length", max_length=77, truncation=True).input_ids
        words = words_from_ids(tokenizer, ids)
        seen_shapes: dict[str, int] = {}
        for obj, mask in zip(scene.objects, scene.masks):
            occurrence = seen_shapes.get(obj.shape, 0)
            seen_shapes[obj.shape] = occurrence + 1
            owned = [w for w in words if w.text == obj.colour]
            owned += [w for w in words if w.text == obj.shape and w.occurrence == occurrence]
            for word in owned:
                out[b, list(word.positions)] = torch.from_numpy(mask).float()
        if placing and len(scene.objects) <= 2:
            for word in words:
                if word.text in PLACING_WORDS:
                    out[b, list(word.positions)] = torch.from_numpy(scene.masks[0]).float()
    return out


def grounding_loss(store: list[torch.Tensor], masks: torch.Tensor, coverage: bool = False,
                   pixel: bool = False) -> torch.Tensor:
    """Mean over object tokens and layers of 1 - (attention mass inside the token's object).

    With `coverage`, the total-variation distance between the token's attention distribution and the
    uniform distribution over its object instead: 1 - Σ min(a, u). It also penalises attention piled on
    part of the object (a map peaked at the centre satisfies the mass term but covers the object badly).

    With `pixel`, plus a per-pixel term (TokenCompose's pixel loss, summed over an object's tokens): a pixel
    inside an object should give most of its attention to that object's tokens, a background pixel little
    to any object token. Why: the token term only says where a token's attention goes, not how much of a
    pixel's attention it gets, and the base model (stage 1 of the README's recipe) sent ~95 % of every pixel's
    attention to the padding tokens, about the same everywhere, so no single word can steer where anything is drawn.
    """
    has_object = masks.flatten(2).amax(-1) > 0  # (batch, 77)
    if not has_object.any():
        return masks.new_zeros(())
    pooled: dict[int, torch.Tensor] = {}
    terms, pixel_terms = [], []
    for probs in store:  # (batch, heads, pixels, 77)
        side = round(probs.shape[2] ** 0.5)
        if side not in pooled:
            pooled[side] = F.adaptive_avg_pool2d(masks, side).flatten(2).transpose(1, 2)  # (batch, pixels, 77)
        spread = probs.mean(1)
        spread = spread / spread.sum(1, keepdim=True).clamp_min(1e-8)  # each token's distribution over pixels
        mask = pooled[side]
        if coverage:
            uniform = mask / mask.sum(1, keepdim=True).clamp_min(1e-8)
            inside = torch.minimum(spread, uniform).sum(1)  # (batch, 77)
        else:
            inside = (spread * mask).sum(1)
        terms.append(1 - inside[has_object])
        if pixel:
            rows = has_object.any(1)  # captions with objects
            per_pixel, mask, any_object = probs.mean(1)[rows], mask[rows], has_object[rows].float()
            covered = mask.amax(-1)  # (batch', pixels): share of the pixel inside some object
            own = (per_pixel * mask).sum(-1)  # attention the pixel gives to its own object's tokens
            on_objects = (per_pixel * any_object[:, None, :]).sum(-1)  # ... and to any object's tokens
            bce = -(covered * own.clamp_min(1e-6).log() + (1 - covered) * (1 - on_objects).clamp_min(1e-6).log())
            pixel_terms.append(bce.flatten())
    loss = torch.cat(terms).mean()
    return loss + torch.cat(pixel_terms).mean() if pixel_terms else loss
