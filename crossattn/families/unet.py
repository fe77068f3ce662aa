"""Stable Diffusion 1.x / 2.x / XL and every pipeline built on their UNet (img2img, inpaint, ControlNet,
IP-Adapter, the embedded shapes model).

Layers: the UNet's cross-attention layers (``attn2`` in its transformer blocks), queries = the latent's pixels
at that level, keys = the 77 text positions (an IP-Adapter's extra image-prompt branch is a second attention
call with other keys: not recorded). Sites are (block, resolution) pairs ("up.16x16"); the per-step trace
comes from the coarsest level. Words: the first CLIP tokenizer (SDXL's two split a prompt identically; the
second only pads differently).
"""

from __future__ import annotations

import re

import torch

from ..capture import Layer
from ..words import tokenize_prompt
from .base import Family, Segment, whole


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


def unet_layers(denoiser: torch.nn.Module, kinds: dict[str, str]) -> dict[str, Layer]:
    """Layers of a UNet-shaped denoiser (module path → kind): sites are (block, resolution); the deepest level
    feeds the per-step trace."""
    n_down = len(getattr(denoiser, "down_blocks", [])) or 1
    deepest = max((depth_of(n, n_down) for n in kinds), default=0)
    return {n: Layer(n, block_of(n), kind, depth_of(n, n_down) == deepest) for n, kind in kinds.items()}


class UNetFamily(Family):
    name = "Stable Diffusion 1.x / 2.x / XL (UNet)"
    pipelines = ("StableDiffusion*",)  # 1.x, 2.x, XL; text2img, img2img, inpaint, ControlNet, IP-Adapter, PAG
    denoiser = "unet"
    resolution_sites = True

    def layers(self, denoiser: torch.nn.Module) -> dict[str, Layer]:
        # `vars`: a plain attribute of diffusers' `Attention`; `getattr` would raise and catch on every other module
        return unet_layers(denoiser, {n: "cross" for n, m in denoiser.named_modules()
                                      if vars(m).get("is_cross_attention", False)})

    def grid(self, denoiser, args, kwargs) -> tuple[int, int]:
        return tuple(self.first_input(args, kwargs).shape[-2:])

    def patch(self, denoiser) -> int:
        return 1

    def timestep(self, args, kwargs) -> float:
        value = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        return float(torch.as_tensor(value).flatten()[0]) if value is not None else 0.0

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        return {"text_encoder": tokenize_prompt(pipe.tokenizer, prompt)}

    def text_input(self, args, kwargs):
        return kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        return [whole("clip", pipe.tokenizer, calls["text_encoder"][call][prompt])]

    concept_methods = ("prompt", "attention")

    concept_engine = "cross"

    def encode_texts(self, pipe, texts: list[str]) -> torch.Tensor:
        device = getattr(pipe, "_execution_device", None) or pipe.device
        return pipe.encode_prompt(texts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]


class T5UNetFamily(UNetFamily):
    """A UNet of another kind that reads a T5 encoder (Kandinsky 3, DeepFloyd IF): UNet-like sites and timesteps,
    T5 ids padded to the text length when maps are asked of given embeddings, no concept maps yet."""

    prompt_ids = Family.prompt_ids
    segments = Family.segments  # its encoder's tokens, named "t5" (not the UNet family's "clip")
    concept_methods = Family.concept_methods
    concept_engine = Family.concept_engine


UNET = UNetFamily()
