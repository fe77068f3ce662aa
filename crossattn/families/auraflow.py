"""AuraFlow (UMT5): MMDiT joint blocks, then single-stream blocks, text first in both.

Layers: ``joint_transformer_blocks.N.attn`` (site "joint": text and image streams, concatenated text first)
and ``single_transformer_blocks.N.attn`` (site "single": one sequence, text first). The transformer puts 8
learned register tokens before the text: they are text positions of the attention, but no prompt's tokens,
so they are never kept. Text: UMT5's positions after them.
"""

from __future__ import annotations

from .base import Family, Segment, whole

REGISTERS = 8  # AuraFlowTransformer2DModel.register_tokens: (1, 8, dim), fixed in its code


class AuraFlowFamily(Family):
    name = "AuraFlow"
    pipelines = ("AuraFlow*",)

    layer_rules = {r"joint_transformer_blocks\.(\d+)\.attn": ("joint", "text_first"),
                   r"single_transformer_blocks\.(\d+)\.attn": ("single", "text_first")}

    def text_len(self, args, kwargs) -> int:
        return REGISTERS + super().text_len(args, kwargs)

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        return [whole("umt5", pipe.tokenizer, calls["text_encoder"][call][prompt], offset=REGISTERS)]

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        return super().prompt_ids(pipe, prompt, text_len - REGISTERS)


AURAFLOW = AuraFlowFamily()
