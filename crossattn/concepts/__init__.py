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

from ..capture import Layer, Recorder
from ..errors import InputError
from .base import METHODS, ConceptEngine, attention_shares, encode_concepts, resolve_method
from .cross import CrossConcepts
from .joint import JointConcepts

__all__ = ["METHODS", "ConceptEngine", "CrossConcepts", "JointConcepts", "attention_shares", "encode_concepts",
           "engine", "resolve_method"]


def engine(family, pipe, denoiser: torch.nn.Module, layers: dict[str, Layer], recorder: Recorder,
           concepts: list[str], method: str | None) -> ConceptEngine:
    """The engine that follows `concepts` on `family`'s traced `layers` (module path → Layer), recording into
    `recorder`. The family says which kind of engine its layers take (`Family.concept_engine`) and how its
    pipeline encodes a text on its own (`Family.encode_texts`); the concepts are encoded here, before any hook
    exists, so the prompt's capture never sees them."""
    if method is None or family.concept_engine is None:
        raise InputError(f"concept maps are not available for {family.name} yet: they work on UNet pipelines and "
                         "on joint-attention transformers (SD3 / the embedded MMDiT)")
    states = encode_concepts(pipe, concepts, lambda texts: family.encode_texts(pipe, texts))
    if family.concept_engine == "joint":  # the concepts ride the text stream of each joint block
        blocks = {layer.name: denoiser.get_submodule(path.removesuffix(".attn")) for path, layer in layers.items()}
        return JointConcepts(recorder, denoiser, blocks, states, method)
    modules = {layer.name: denoiser.get_submodule(path) for path, layer in layers.items()}
    return CrossConcepts(recorder, modules, states)
