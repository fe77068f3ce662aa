"""Concepts on UNet cross-attention (method "attention"): the concepts' keys in each traced layer."""

from __future__ import annotations

import torch

from ..capture import Layer, Recorder
from .base import ConceptEngine, attention_shares


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
