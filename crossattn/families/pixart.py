"""PixArt-α / PixArt-Σ (T5) and Sana (Gemma 2): transformers with a separate cross-attention layer per block.

Layers: ``transformer_blocks.N.attn2``, queries = the image tokens, keys = the text tokens (padding masked by
the pipeline). Sites "blocks" (or "blocks.N"). PixArt: T5's positions as they are. Sana prepends a "complex
human instruction" to the prompt (not to the negative prompt) and keeps output rows [0] + the last
``max_sequence_length - 1`` of the encoder, so where each prompt token sits is read from that selection: the
instruction is cut but for its last token, which has merged with the prompt's first ("▁" + "a") or is skipped.
That skip knows the default instruction only: a custom one's last token may show as a word.
"""

from __future__ import annotations

import inspect

from .base import Family, Segment, template_skip


class PixArtFamily(Family):
    name = "PixArt-α / PixArt-Σ"
    pipelines = ("PixArt*",)

    layer_rules = {r"transformer_blocks\.(\d+)\.attn2": ("blocks", "cross")}


class SanaFamily(PixArtFamily):
    name = "Sana"
    pipelines = ("Sana*",)

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids = calls["text_encoder"][call][prompt]
        # the pipeline keeps output rows [0] + [-(text_len - 1):] of the encoder (text_len: max_sequence_length)
        positions = [-1] * len(ids)
        positions[0] = 0
        for j, i in enumerate(range(len(ids) - (text_len - 1), len(ids))):
            positions[i] = j + 1
        return [Segment("gemma", pipe.tokenizer, ids, positions, template_skip(ids, _instruction_tokens(pipe)))]


def _instruction_tokens(pipe) -> list[int]:
    """Token ids of the pipeline's default complex human instruction (what Sana puts before every prompt)."""
    default = inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default
    return pipe.tokenizer.encode("\n".join(default)) if default else []


PIXART = PixArtFamily()
SANA = SanaFamily()
