"""HunyuanVideo text-to-video (`HunyuanVideoPipeline`).

Layers: the double-stream blocks' joint attention (``transformer_blocks.N.attn``: the processor concatenates the
video's queries and keys with the text's, from ``add_q/k/v_proj``) and the single-stream blocks' attention
(``single_transformer_blocks.N.attn``: the block concatenates the two streams into one sequence). Both put the
video first: [video (F, H, W) patch tokens (1×2×2), text], so both are "text_last"; sites "double" and "single".
The text's padding is masked (a bool key mask). The text refiner (``context_embedder.token_refiner``) runs text-only
self-attention before the blocks and is not traced.
Text: Llama's positions (source "llama"; CLIP gives only the pooled vector). The pipeline wraps the prompt in its
prompt template, encodes the whole and drops the first ``crop_start`` rows (the system prompt and the user header), so
the denoiser's text is [the prompt's tokens, the template's closing ``<|eot_id|>``, padding]: the encoder's ids sit
at index − crop_start, where crop_start = ids given to the encoder − the denoiser's text length; the template's
tokens are never words, and nothing after the closing ``<|eot_id|>`` is kept.
Guidance-distilled: one call per step (the scale is embedded); with ``true_cfg_scale`` > 1 and a negative prompt,
two calls per step, prompt first.
"""

from __future__ import annotations

from .base import Segment, template_skip
from .video import VideoFamily

CLOSING = "<|eot_id|>"  # the token the pipeline's template puts right after the prompt


def default_template() -> str:
    # imported here, so that `import crossattn` does not import diffusers
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE["template"]


class HunyuanVideoFamily(VideoFamily):
    name = "HunyuanVideo"
    pipelines = ("HunyuanVideoPipeline",)
    source = "llama"

    layer_rules = {r"transformer_blocks\.(\d+)\.attn": ("double", "text_last"),
                   r"single_transformer_blocks\.(\d+)\.attn": ("single", "text_last")}


    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids = list(calls["text_encoder"][call][prompt])
        crop = len(ids) - text_len  # the pipeline's crop_start: the ids it gave the encoder past the denoiser's text
        # the template's tokens before the prompt: those cropped, and any a smaller crop_start left in
        skip = frozenset(range(crop)) | template_skip(ids, pipe.tokenizer(default_template().format("")).input_ids)
        closing = pipe.tokenizer.convert_tokens_to_ids(CLOSING)
        end = next((i for i in range(len(ids)) if ids[i] == closing and i not in skip), len(ids) - 1)
        positions = [i - crop if crop <= i <= end else -1 for i in range(len(ids))]
        return [Segment(self.source, pipe.tokenizer, ids, positions, skip)]

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        """The ids for the pipeline's default template, cropped where the template's own tokens end."""
        tokenizer, template = pipe.tokenizer, default_template()
        crop = len(template_skip(tokenizer(template.format(prompt)).input_ids,
                                 tokenizer(template.format("")).input_ids))
        ids = tokenizer(template.format(prompt), padding="max_length", max_length=crop + text_len,
                        truncation=True).input_ids
        return {"text_encoder": ids}


HUNYUANVIDEO = HunyuanVideoFamily()
