"""Flux.1 (dev, schnell, Kontext, Fill, ...) and Chroma-style double/single-stream transformers.

Layers: the double-stream blocks' joint attention (``transformer_blocks.N.attn``: text stream and image stream,
text first) and the single-stream blocks' attention (``single_transformer_blocks.N.attn``: one sequence, text
first). Both attend image→text, so both are traced: sites "double" and "single". The image grid comes from
``img_ids`` (row and column of each packed latent token; a Kontext reference image has its own ids, marked 1 in
the first column, and comes after the generated image). Text: T5's positions (CLIP only gives the pooled
vector). True CFG (``true_cfg_scale``) runs the prompt and the negative as two calls per step, prompt first.
"""

from __future__ import annotations

from .base import Family


class FluxFamily(Family):
    name = "Flux.1"
    pipelines = ("Flux*",)
    encoders = ("text_encoder_2",)

    layer_rules = {r"transformer_blocks\.(\d+)\.attn": ("double", "text_first"),
                   r"single_transformer_blocks\.(\d+)\.attn": ("single", "text_first")}

    def patch(self, denoiser) -> int:
        return 2  # the pipeline packs 2×2 latent pixels into one token

    def grid(self, denoiser, args, kwargs) -> tuple[int, int]:
        ids = kwargs["img_ids"]
        ids = ids[0] if ids.ndim == 3 else ids
        own = ids[ids[:, 0] == 0]  # the generated image's tokens (a reference image is marked 1)
        return int(own[:, 1].max()) + 1, int(own[:, 2].max()) + 1


FLUX = FluxFamily()
