"""Stable Diffusion 3 / 3.5 (MMDiT; the embedded shapes MMDiT too).

Layers: the joint attention of each `JointTransformerBlock` (``transformer_blocks.N.attn``), one sequence of
image positions then text positions. SD3.5's extra ``attn2`` layers attend image to image only and are not
traced. Sites: "joint" (or "joint.N" per layer). Text: 77 CLIP positions (both CLIP encoders, concatenated
along the features, so one set of positions: source "clip"), then T5's positions (source "t5"); without T5
those are rows of zeros and hold no words.
"""

from __future__ import annotations

import torch

from ..words import tokenize_prompt
from .base import Family, Segment, whole


class SD3Family(Family):
    name = "Stable Diffusion 3 / 3.5 (MMDiT)"
    pipelines = ("StableDiffusion3*",)
    encoders = ("text_encoder", "text_encoder_3")

    layer_rules = {r"transformer_blocks\.(\d+)\.attn": ("joint", "text_last")}
    concept_methods = ("prompt", "outputs", "attention")
    concept_engine = "joint"

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        clip = calls["text_encoder"][call][prompt]
        parts = [whole("clip", pipe.tokenizer, clip)]
        if getattr(pipe, "text_encoder_3", None) is not None and len(calls.get("text_encoder_3", [])) > call:
            parts.append(whole("t5", pipe.tokenizer_3, calls["text_encoder_3"][call][prompt], offset=len(clip)))
        return parts

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        ids = {"text_encoder": tokenize_prompt(pipe.tokenizer, prompt)}
        if getattr(pipe, "text_encoder_3", None) is not None:
            ids["text_encoder_3"] = pipe.tokenizer_3(prompt, padding="max_length", max_length=text_len - 77,
                                                     truncation=True).input_ids
        return ids

    def encode_texts(self, pipe, texts: list[str]) -> torch.Tensor:
        device = getattr(pipe, "_execution_device", None) or pipe.device
        return pipe.encode_prompt(texts, None, None, device=device, do_classifier_free_guidance=False)[0]


SD3 = SD3Family()
