"""Lumina-Image 2.0 (Gemma 2): text and image refined apart, then one joint sequence per row.

Layers: the joint blocks ``layers.N.attn`` (site "joint"): each row is [its caption's real tokens, the image
tokens, padding], text first. The ``context_refiner`` blocks (text only) and ``noise_refiner`` blocks (image
only) never attend image→text and are not traced. The caption's length is that of its attention mask, not
the padded encoder output, so the image starts right after the prompt's last real token.
Text: Gemma's positions; the pipeline puts its system prompt and " <Prompt Start> " before the prompt (not
before the negative prompt): those tokens are kept but are never words (with the pipeline's own
``system_prompt``; a custom one's words would count as words). Guidance runs two calls per step, prompt first.

Limitation: in one call, prompts of different token counts start their image at different positions; those
calls are not recorded (coverage lists them as skipped). One prompt (any number of images) is fine.
"""

from __future__ import annotations

import torch

from .base import Family, Segment
from .chat import chat_segment


class Lumina2Family(Family):
    name = "Lumina-Image 2.0"
    pipelines = ("Lumina2*",)

    layer_rules = {r"layers\.(\d+)\.attn": ("joint", "text_first")}

    def timestep(self, args, kwargs) -> float:
        # the pipeline passes 1 - t/1000 (rising); the tracer expects falling timesteps
        return 1.0 - float(torch.as_tensor(kwargs["timestep"]).flatten()[0])

    def text_len(self, args, kwargs) -> int:
        lengths = set(kwargs["encoder_attention_mask"].sum(1).tolist())
        if len(lengths) == 1:
            return int(lengths.pop())
        # rows of different caption lengths: no single layout; a length no call can hold makes the recorder
        # skip these calls rather than read image tokens at the wrong positions
        return int(kwargs["encoder_hidden_states"].shape[1]) + 1

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids = calls["text_encoder"][call][prompt]
        template = pipe.tokenizer.encode(pipe.system_prompt + " <Prompt Start> ")
        return [chat_segment("gemma", pipe.tokenizer, ids, template)]


LUMINA2 = Lumina2Family()
