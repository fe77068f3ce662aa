"""Concept maps: where in the picture is the `sky`, the `circle`, the `background` — words the prompt need not say.

A concept is encoded on its own by the pipeline's text encoder(s) (`encode_concepts`) and follows the
generation on the side, never feeding back, so the image stays bit-identical to the untraced one:

- ``method="outputs"`` — ConceptAttention (Helbling et al., 2025), on joint-attention transformers (SD3,
  the embedded MMDiT) and their default: the concept tokens go through every joint block with the text
  stream's own weights and modulation; they attend to the image tokens and to each other (image and prompt
  tokens never attend to them), and the map is, per pixel, the softmax over concepts of the dot products
  between the image's and the concepts' attention *outputs* (`JointConcepts` in ``families/sd3.py``).
- ``method="attention"`` — each layer's image queries are scored against the concepts' keys (the layer's own
  key projection of the concept's text state), and the map is, per pixel, the softmax over concepts of those
  scores (heads averaged): the attention the concepts would get if they alone were the prompt. The only
  method on UNet cross-attention (`CrossConcepts`), where a concept has keys but no output stream; on joint
  blocks the keys come from the concept tokens as they stand in that block. Exact and cheap: one Q·Kᵀ over a
  few concept keys for the recorded rows. It measures what the image asks of the text, where "outputs"
  measures what the concepts read from the image: a model trained to place prompt words (the embedded
  ones) localises through the first; ConceptAttention's claim is about large models whose text stream
  learned to read the image.

Both accumulate like word maps (a second `Recorder`, one "token" per concept, one head), so a concept map is
a `WordHeatMap`: same rendering, placement and export (``maps.concept("sky")``).
"""

from __future__ import annotations

import torch

from .capture import Layer, Recorder
from .errors import InputError
from .words import words_from_ids

METHODS = ("outputs", "attention")  # see the module doc


def resolve_method(family, method: str | None) -> str | None:
    """The concept method a model family uses: `method`, or the family's default when None."""
    if method is None:
        return next(iter(family.concept_methods), None)
    if method not in family.concept_methods:
        offered = (f"it offers {', '.join(family.concept_methods)}" if family.concept_methods
                   else "it has no concept maps")
        raise InputError(f"concept method {method!r} is not available for {family.name}: {offered} "
                         f"(methods: {', '.join(METHODS)})")
    return method


def attention_shares(query: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Per image row, the concepts' shares of an attention over the concepts alone, heads averaged: queries
    (rows, heads, pixels, d), concept keys (heads or rows × heads, concepts, d) → (rows, pixels, concepts)."""
    return (torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scale).softmax(-1).mean(1)


class ConceptEngine:
    """What the tracer calls while concepts are followed (all on the side of the model's computation)."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def hooks(self) -> list:
        """Extra (read-only) hooks the engine needs on the model; removed with the trace's."""
        return []

    def begin_call(self, rows: slice) -> None:
        """A denoiser call starts; `rows` are the attention rows recorded in it."""

    def attention(self, layer: Layer, query, key, value, out, rows: slice, images: slice, scale: float) -> None:
        """One observed attention call of a traced layer: SDPA's inputs and output (batch, heads, seq, dim)."""

    def layer_done(self, layer: Layer, module: torch.nn.Module, output) -> None:
        """A traced layer finished, with its output."""

    def record(self, layer: Layer, shares: torch.Tensor, pixels: int) -> None:
        """Add per-pixel concept shares (rows, pixels, concepts) for the current step."""
        h, w = self.recorder._grid(pixels)
        self.recorder.record(layer, shares[:, None].float(), h, w)


def encode_concepts(pipe, concepts: list[str], encode) -> torch.Tensor:
    """One text state per concept: `encode(list of texts)` gives the pipeline's text states (concepts, tokens,
    dim) with the first tokenizer's positions first; each concept's state is the one at its last token, which
    has read the whole concept (CLIP is causal)."""
    if not concepts or any(not c.strip() for c in concepts):
        raise InputError(f"concepts must be non-empty words or phrases, got {concepts!r}")
    with torch.no_grad():
        states = encode(concepts)
    rows = []
    for k, concept in enumerate(concepts):
        ids = pipe.tokenizer(concept, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True).input_ids
        words = words_from_ids(pipe.tokenizer, ids)
        if not words:
            raise InputError(f"concept {concept!r} has no word the tokenizer can read")
        rows.append(states[k, words[-1].positions[-1]])
    return torch.stack(rows)


class CrossConcepts(ConceptEngine):
    """UNet cross-attention: per pixel, the softmax over the concepts' keys (see the module doc)."""

    def __init__(self, recorder: Recorder, modules: dict[str, torch.nn.Module], states: torch.Tensor):
        super().__init__(recorder)
        self.modules = modules  # layer name -> its Attention module
        self.states = states  # (concepts, context dim)
        self.keys: dict[str, torch.Tensor] = {}

    def _keys(self, layer: Layer, like: torch.Tensor) -> torch.Tensor:
        """The layer's key projection of the concepts, (heads, concepts, head dim), as its processor forms keys."""
        if layer.name not in self.keys:
            attn = self.modules[layer.name]
            with torch.no_grad():
                context = self.states.to(like.device, attn.to_k.weight.dtype)[None]
                if attn.norm_cross:
                    context = attn.norm_encoder_hidden_states(context)
                key = attn.to_k(context)
                key = key.view(1, -1, attn.heads, key.shape[-1] // attn.heads).transpose(1, 2)
                if attn.norm_k is not None:
                    key = attn.norm_k(key)
            self.keys[layer.name] = key[0].float()
        return self.keys[layer.name]

    def attention(self, layer, query, key, value, out, rows, images, scale) -> None:
        shares = attention_shares(query[rows, :, images], self._keys(layer, query), scale)
        self.record(layer, shares, images.stop - images.start)
