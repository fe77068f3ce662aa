"""Kandinsky 3 (FLAN-UL2 / T5 encoder, its own UNet).

Every attention module of `Kandinsky3UNet` is built as cross-attention, but only some attend to the text:
``attentions.0`` of a block is image self-attention (its "context" is the image features), and
``add_time_condition`` pools the text into the time embedding with a single query. Traced: the text
cross-attention ``{down,up}_blocks.N.attentions.K.attention`` with K ≥ 1 in blocks that have a text context;
queries = the latent's pixels at that level, keys = the text. Sites are (block, resolution) like a UNet's.
Text: T5's positions; the pipeline cuts the encoder output to the longest prompt's real tokens + 1, so a longer
negative prompt's tokens past that never reach the UNet. Without a negative prompt the pipeline encodes none
(zeros instead): negative maps need a negative prompt.
"""

from __future__ import annotations

from ..capture import Layer
from .base import Segment
from .unet import T5UNetFamily, unet_layers


class Kandinsky3Family(T5UNetFamily):
    name = "Kandinsky 3"
    pipelines = ("Kandinsky3*",)

    def layers(self, denoiser) -> dict[str, Layer]:
        return unet_layers(denoiser, {f"{kind}.{i}.attentions.{k}.attention": "cross"
                                      for kind in ("down_blocks", "up_blocks")
                                      for i, block in enumerate(getattr(denoiser, kind))
                                      if block.context_dim is not None for k in range(1, len(block.attentions))})

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        ids = calls["text_encoder"][call][prompt]
        return [Segment("t5", pipe.tokenizer, ids, [i if i < text_len else -1 for i in range(len(ids))])]


KANDINSKY3 = Kandinsky3Family()
