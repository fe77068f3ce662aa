"""Z-Image (Qwen3 text encoder; a single-stream transformer).

Layers: the main layers' attention (``layers.N.attention``), one unified sequence per image: [image tokens, text
tokens], each part padded to a multiple of 32 with a learned pad token (not masked), then batch padding (masked).
So the text starts after the *padded* image part: the family's text length is the padded text part, and the
layout is "text_last" (text = the sequence's last ``text_len`` positions). The refiner layers before it attend
image to image (``noise_refiner``) or text to text (``context_refiner``) only and are not traced. Site "single".
Inputs are lists (one latent, one caption per image); the grid is the latent's size over ``patch_size``.
Text: a Qwen3 user turn (thinking on); the pipeline keeps the hidden states of the unpadded tokens, so the k-th
unpadded token sits at k; the template's user prefix is never a word and the segment ends at ``<|im_end|>``.
CFG: one batch [prompts, negatives] (prompts first). The transformer's timestep rises, (1000 - t) / 1000: the
family reports t / 1000. With ``cfg_truncation`` < 1 the late steps run without the negatives: the prompts' maps
cover every step; ``capture_uncond``'s negative maps count those steps with nothing added.
"""

from __future__ import annotations

import math

import torch

from .base import Family, Segment
from .chat import chat_segment, qwen_chat_ids, unpadded_positions


class ZImageFamily(Family):
    name = "Z-Image"
    pipelines = ("ZImagePipeline",)

    layer_rules = {r"layers\.(\d+)\.attention": ("single", "text_last")}

    def patch(self, denoiser) -> int:
        return denoiser.config.all_patch_size[0]  # what the pipeline uses (it never passes patch_size)

    def first_input(self, args, kwargs) -> torch.Tensor:
        return torch.stack(_latents(args, kwargs))

    def timestep(self, args, kwargs) -> float:
        value = kwargs.get("t", args[1] if len(args) > 1 else None)
        return 1.0 - float(torch.as_tensor(value).flatten()[0])

    def grid(self, denoiser, args, kwargs) -> tuple[int, int]:
        latent = _latents(args, kwargs)[0]  # (channels, frames, h, w)
        patch = kwargs.get("patch_size", self.patch(denoiser))
        return latent.shape[-2] // patch, latent.shape[-1] // patch

    def text_input(self, args, kwargs) -> list[torch.Tensor]:
        return kwargs.get("cap_feats", args[2] if len(args) > 2 else None)  # one (tokens, features) per image

    def text_len(self, args, kwargs) -> int:
        # imported here, so that `import crossattn` does not import diffusers
        from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF
        return max(math.ceil(len(c) / SEQ_MULTI_OF) * SEQ_MULTI_OF for c in self.text_input(args, kwargs))

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids, tok = calls["text_encoder"][call][prompt], pipe.tokenizer
        template = qwen_chat_ids(tok, "", thinking=True)
        return [chat_segment("qwen3", tok, ids, template, unpadded_positions(ids, tok.pad_token_id))]

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        return {"text_encoder": qwen_chat_ids(pipe.tokenizer, prompt, thinking=True)}


def _latents(args, kwargs) -> list[torch.Tensor]:
    """The transformer's first input: one latent per image of the batch."""
    return kwargs.get("x", args[0] if args else None)


Z_IMAGE = ZImageFamily()
