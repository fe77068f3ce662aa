"""Chroma: Flux.1's transformer layout with T5 as the only text encoder.

Layers: as Flux.1 (`FluxFamily`): ``transformer_blocks.N.attn`` (double stream) and
``single_transformer_blocks.N.attn`` (single stream), one sequence [text, image], text first; grid from
``img_ids``. Text: T5's positions as they are, padded to ``max_sequence_length``; the pipeline masks the padding
after the first pad token, so the image attends to the prompt's tokens, ``</s>`` and that one pad token only.
True CFG (``guidance_scale`` > 1) runs the prompt and the negative as two calls per step, prompt first.
"""

from __future__ import annotations

from .flux import FluxFamily


class ChromaFamily(FluxFamily):
    name = "Chroma"
    pipelines = ("ChromaPipeline",)
    encoders = ("text_encoder",)


CHROMA = ChromaFamily()
