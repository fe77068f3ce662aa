"""CogView4 (GLM-4 text encoder): one joint sequence per block, text first.

Layers: ``transformer_blocks.N.attn1`` (site "joint"): the processor concatenates [text, image] and runs one
attention over both. Text: the GLM tokens as the pipeline feeds them: ``[gMASK] <sop>`` and the prompt, padded
on the left to a multiple of 16 (the pad tokens are attended, no mask, so they are kept, but are no words);
byte-level BPE words ("Ġ" starts one). Guidance runs two calls per step, prompt first; the negative prompt pads
to its own length, so each call has its own text length.
"""

from __future__ import annotations

from .base import Family, Segment


class CogView4Family(Family):
    name = "CogView4"
    pipelines = ("CogView4*",)

    layer_rules = {r"transformer_blocks\.(\d+)\.attn1": ("joint", "text_first")}

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids = calls["text_encoder"][call][prompt]
        pads = next((i for i, t in enumerate(ids) if t != pipe.tokenizer.pad_token_id), len(ids))
        # the left padding is skipped: GLM's pad token is also its end token, which would end the prompt at once
        return [Segment("glm", pipe.tokenizer, ids, list(range(len(ids))), frozenset(range(pads)))]


COGVIEW4 = CogView4Family()
