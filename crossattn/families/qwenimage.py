"""Qwen-Image (Qwen2.5-VL text encoder).

Layers: the joint attention of each dual-stream block (``transformer_blocks.N.attn``), one sequence [text, image],
text first; site "joint". The grid comes from ``img_shapes`` (frames, h, w) of the first image.
Text: the pipeline wraps the prompt in a system-prompt template, keeps the hidden states of the unpadded tokens and
drops the first ``prompt_template_encode_start_idx`` of them (the template's prefix, 34 tokens with the real
tokenizer); so the k-th unpadded token sits at k - drop, the prefix never reaches the denoiser, and the segment
ends at ``<|im_end|>`` after the prompt (`crossattn.families.chat`). Prompts of a batch are padded to the longest
and masked. True CFG (``true_cfg_scale`` > 1 and a negative prompt) runs the prompt and the negative as two calls
per step, prompt first; their texts may differ in length (columns past a call's text are recorded as 0).
"""

from __future__ import annotations

from .base import Family, Segment
from .chat import chat_segment, unpadded_positions


class QwenImageFamily(Family):
    name = "Qwen-Image"
    pipelines = ("QwenImagePipeline",)

    layer_rules = {r"transformer_blocks\.(\d+)\.attn": ("joint", "text_first")}

    def grid(self, denoiser, args, kwargs) -> tuple[int, int]:
        _, h, w = kwargs["img_shapes"][0][0]
        return h, w

    def render(self, pipe, prompt: str) -> list[int]:
        return pipe.tokenizer(pipe.prompt_template_encode.format(prompt)).input_ids

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids, tok = calls["text_encoder"][call][prompt], pipe.tokenizer
        positions = unpadded_positions(ids, tok.pad_token_id, pipe.prompt_template_encode_start_idx, text_len)
        return [chat_segment("qwen2.5-vl", tok, ids, self.render(pipe, ""), positions)]

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        return {"text_encoder": self.render(pipe, prompt)}


QWEN_IMAGE = QwenImageFamily()
