"""HunyuanDiT (bilingual BERT + mT5): one cross-attention layer per block over both texts.

Layers: ``blocks.N.attn2`` (site "blocks"), queries = the image tokens, keys = the text: the transformer
concatenates the BERT output (77 positions) and the projected mT5 output (256 positions) into one sequence,
padding replaced by a learned vector (not masked). ``attn1`` is image self-attention. Text sources "bert"
(WordPiece: "##" continues a word) and "mt5" ("▁" starts one); a word's map sums both by default.
"""

from __future__ import annotations

from .base import Family, Segment, whole
from .unet import UNetFamily

BERT_LEN, MT5_LEN = 77, 256  # what HunyuanDiTPipeline pads each encoder's prompt to


class HunyuanDiTFamily(Family):
    name = "HunyuanDiT"
    pipelines = ("HunyuanDiT*",)
    encoders = ("text_encoder", "text_encoder_2")
    timestep = UNetFamily.timestep  # same call as a UNet's: (latent, timestep, ...)

    layer_rules = {r"blocks\.(\d+)\.attn2": ("blocks", "cross")}

    def text_len(self, args, kwargs) -> int:
        return int(kwargs["encoder_hidden_states"].shape[1] + kwargs["encoder_hidden_states_t5"].shape[1])

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        bert = calls["text_encoder"][call][prompt]
        parts = [whole("bert", pipe.tokenizer, bert)]
        if len(calls["text_encoder_2"]) > call:
            parts.append(whole("mt5", pipe.tokenizer_2, calls["text_encoder_2"][call][prompt], offset=len(bert)))
        return parts

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        return {name: tok(prompt, padding="max_length", max_length=n, truncation=True).input_ids
                for name, tok, n in (("text_encoder", pipe.tokenizer, BERT_LEN),
                                     ("text_encoder_2", pipe.tokenizer_2, MT5_LEN))}


HUNYUANDIT = HunyuanDiTFamily()
