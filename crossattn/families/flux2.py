"""Flux.2 [dev] (Mistral 3 text encoder) and Flux.2 [klein] (Qwen3 text encoder).

Layers: as Flux.1 (`FluxFamily`): the double-stream blocks' joint attention (``transformer_blocks.N.attn``) and
the single-stream blocks' attention (``single_transformer_blocks.N.attn``), one sequence [text, generated image,
reference images], text first; the grid comes from ``img_ids`` (T, H, W, L; reference images have T > 0).
Text: the whole chat-templated sequence, padded to ``max_sequence_length``. [dev] wraps the prompt as
``<s>[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]prompt[/INST]``, [klein] as a Qwen3 user turn (thinking off). A token's
features are the hidden states of several encoder layers side by side (``text_encoder_out_layers``), so every
token keeps one position. The template's tokens before the prompt are never words (`crossattn.families.chat`).
CFG: [dev] is guidance-distilled (one call); [klein] runs true CFG against "" as a second call per step.
Not covered: Flux2KleinKVPipeline (its reference tokens sit between text and image, and are cached) and
Flux2KleinInpaintPipeline (not checked).
"""

from __future__ import annotations

from .base import Segment
from .chat import chat_segment, qwen_chat_ids
from .flux import FluxFamily


class Flux2Family(FluxFamily):
    name = "Flux.2 [dev]"
    pipelines = ("Flux2Pipeline",)
    encoders = ("text_encoder",)
    source = "mistral"

    def tokenizer(self, pipe, encoder: str):
        tokenizer = super().tokenizer(pipe, encoder)
        return getattr(tokenizer, "tokenizer", tokenizer)  # [dev] has a Pixtral processor around its tokenizer

    def render(self, pipe, prompt: str) -> list[int]:
        """The ids the pipeline makes of `prompt`, before padding."""
        # imported here, so that `import crossattn` does not import diffusers and transformers
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        messages = format_input([prompt], system_message=pipe.system_message)
        return pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True,
                                                  return_dict=True)["input_ids"][0]

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids = calls["text_encoder"][call][prompt]
        return [chat_segment(self.source, self.tokenizer(pipe, "text_encoder"), ids, self.render(pipe, ""))]

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        return {"text_encoder": self.render(pipe, prompt)[:text_len]}


class Flux2KleinFamily(Flux2Family):
    name = "Flux.2 [klein]"
    pipelines = ("Flux2KleinPipeline",)
    source = "qwen3"

    def render(self, pipe, prompt: str) -> list[int]:
        return qwen_chat_ids(pipe.tokenizer, prompt, thinking=False)


FLUX2 = Flux2Family()
FLUX2_KLEIN = Flux2KleinFamily()
