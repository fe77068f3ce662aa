"""Concept maps: where in the picture is the `sky`, the `circle`, the `background` — words the prompt need not say.

A concept is encoded on its own by the pipeline's text encoder(s) (`encode_concepts`) and follows the
generation on the side, never feeding back, so the image stays bit-identical to the untraced one:

- ``method="prompt"`` — the default: each concept is read as a prompt of its own. Per pixel, the map is the
  attention probability the concept's words would get, heads averaged, under a softmax over its whole text (start
  and padding tokens too, which take most of an image query's attention in CLIP-conditioned models, as the
  prompt's do) and, on joint blocks, over the block's image keys; there the concept's text rides the text stream
  as a prompt would, attending to the image and to itself. When the concept *is* the prompt the map is exactly
  the prompt's own attention on its words (tested). Why not a softmax over the concepts alone: without the text's
  other tokens to take the rest, a word the denoiser never saw on its own ("circle" in the shapes world always
  follows a colour) gets a near-uniform share, and the concepts that do fire (colours) crowd it out on its own
  object — measured: shape-concept mIoU 0.004 → 0.49 on the embedded UNet (README).
- ``method="outputs"`` — ConceptAttention (Helbling et al., 2025), on joint-attention transformers (SD3,
  the embedded MMDiT): the concept tokens go through every joint block with the text stream's own weights and
  modulation; they attend to the image tokens and to each other (image and prompt tokens never attend to them),
  and the map is, per pixel, the softmax over concepts of the dot products between the image's and the
  concepts' attention *outputs* (`JointConcepts`).
- ``method="attention"`` — each layer's image queries are scored against the concepts' keys (the layer's own
  key projection of each concept's last-word state), and the map is, per pixel, the softmax over concepts of
  those scores (heads averaged). On UNets and joint blocks. Cheapest: one Q·Kᵀ over a few keys, where "prompt"
  scores each concept's whole text (and on joint blocks carries those texts through the text stream).

Both accumulate like word maps (a second `Recorder`, one "token" per concept, one head), so a concept map is
a `WordHeatMap`: same rendering, placement and export (``maps.concept("sky")``).
"""

from __future__ import annotations

import torch

from ..capture import Layer, Recorder
from ..errors import InputError
from .base import METHODS, ConceptEngine, ConceptTexts, attention_shares, encode_concepts, prompt_shares, resolve_method
from .cross import CrossConcepts
from .joint import JointConcepts

__all__ = ["METHODS", "ConceptEngine", "ConceptTexts", "CrossConcepts", "JointConcepts", "attention_shares",
           "encode_concepts", "engine", "prompt_shares", "resolve_method"]


def engine(family, pipe, denoiser: torch.nn.Module, layers: dict[str, Layer], recorder: Recorder,
           concepts: list[str], method: str | None) -> ConceptEngine:
    """The engine that follows `concepts` on `family`'s traced `layers` (module path → Layer), recording into
    `recorder`. The family says which kind of engine its layers take (`Family.concept_engine`) and how its
    pipeline encodes a text on its own (`Family.encode_texts`); the concepts are encoded here, before any hook
    exists, so the prompt's capture never sees them."""
    if method is None or family.concept_engine is None:
        raise InputError(f"concept maps are not available for {family.name} yet: they work on UNet pipelines and "
                         "on joint-attention transformers (SD3 / the embedded MMDiT)")
    texts = encode_concepts(family, pipe, concepts)
    if family.concept_engine == "joint":  # the concepts ride the text stream of each joint block
        blocks = {layer.name: denoiser.get_submodule(path.removesuffix(".attn")) for path, layer in layers.items()}
        return JointConcepts(recorder, denoiser, blocks, texts, method)
    modules = {layer.name: denoiser.get_submodule(path) for path, layer in layers.items()}
    return CrossConcepts(recorder, modules, texts, method)
