"""Concepts on UNet cross-attention (methods "prompt" and "attention"): the concepts' keys in each traced layer."""

from __future__ import annotations

import torch

from ..capture import Layer, Recorder
from .base import ConceptEngine, ConceptTexts, attention_shares, prompt_shares


class CrossConcepts(ConceptEngine):
    """UNet cross-attention, per pixel: with method "prompt", the probability each concept's words get under a
    softmax over its own text's keys; with "attention", the softmax over the concepts' last-word keys (see the
    module doc)."""

    def __init__(self, recorder: Recorder, modules: dict[str, torch.nn.Module], texts: ConceptTexts,
                 method: str = "prompt"):
        super().__init__(recorder)
        self.modules = modules  # layer name -> its Attention module
        self.method, self.words = method, texts.words
        # (concepts, tokens, context dim) for "prompt"; (1, concepts, context dim) for "attention"
        self.states = texts.states if method == "prompt" else texts.last_states()[None]
        self.keys: dict[str, torch.Tensor] = {}

    def _keys(self, layer: Layer, like: torch.Tensor) -> torch.Tensor:
        """The layer's key projection of the concepts' texts, (texts, heads, tokens, head dim), as its processor
        forms keys."""
        if layer.name not in self.keys:
            attn = self.modules[layer.name]
            with torch.no_grad():
                context = self.states.to(like.device, attn.to_k.weight.dtype)
                if attn.norm_cross:
                    context = attn.norm_encoder_hidden_states(context)
                key = attn.to_k(context)
                key = key.view(len(key), -1, attn.heads, key.shape[-1] // attn.heads).transpose(1, 2)
                if attn.norm_k is not None:
                    key = attn.norm_k(key)
            self.keys[layer.name] = key.float()
        return self.keys[layer.name]

    def attention(self, layer, query, key, value, out, rows, images, scale) -> None:
        keys = self._keys(layer, query)
        if self.method == "prompt":
            shares = prompt_shares(query[rows, :, images], keys[:, None], self.words.to(query.device), scale)
        else:
            shares = attention_shares(query[rows, :, images], keys[0], scale)
        self.record(layer, shares, images.stop - images.start)
