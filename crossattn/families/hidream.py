"""HiDream-I1 (two CLIPs, T5, Llama 3.1).

Layers: every block's attention attends image → text, and all of its text keys come from prompt tokens:
- double-stream blocks (``double_stream_blocks.N.block.attn1``): [image tokens, text tokens] in one call;
- single-stream blocks (``single_stream_blocks.N.block.attn1``): the same sequence, concatenated before the call.
Both are "text_last" (image first; a non-square image is padded to ``max_seq`` tokens, its real tokens first).
Text, in every block: [T5 (source "t5"), the last Llama layer's states carried through the double blocks
("llama"), this block's own Llama layer (``llama_layers[N]``, "llama_layer")], so each Llama token sits at two
positions and a word's map sums T5's, the carried Llama's and the block's Llama's share. Positions are T5's and
Llama's token indices as padded (HiDream masks no text padding: the image also attends to the pads, which are not
kept); Llama's padding is its eos, so its segment ends at the first pad.
Not mapped to words: the two CLIP encoders, which give only their pooled vectors (added to the timestep
embedding, no positions any layer attends to). Timestep kwarg ``timesteps``.
"""

from __future__ import annotations

import torch

from .base import Family, Segment, whole


class HiDreamFamily(Family):
    name = "HiDream-I1"
    pipelines = ("HiDreamImagePipeline",)
    encoders = ("text_encoder_3", "text_encoder_4")  # T5, Llama; the CLIPs (1, 2) give only pooled vectors

    layer_rules = {rf"{kind}_stream_blocks\.(\d+)\.block\.attn1": (kind, "text_last")
                   for kind in ("double", "single")}

    def timestep(self, args, kwargs) -> float:
        return float(torch.as_tensor(kwargs["timesteps"]).flatten()[0])

    def text_input(self, args, kwargs):
        return kwargs["encoder_hidden_states_t5"]  # its rows are the prompt's or the negative's, as the Llama's

    def text_len(self, args, kwargs) -> int:
        llama = kwargs["encoder_hidden_states_llama3"]  # (layers, batch, tokens, features)
        return kwargs["encoder_hidden_states_t5"].shape[1] + 2 * llama.shape[2]

    def segments(self, pipe, calls, call, prompt, text_len) -> list[Segment]:
        t5, llama = calls["text_encoder_3"][call][prompt], calls["text_encoder_4"][call][prompt]
        return [whole("t5", pipe.tokenizer_3, t5), whole("llama", pipe.tokenizer_4, llama, len(t5)),
                whole("llama_layer", pipe.tokenizer_4, llama, len(t5) + len(llama))]

    def prompt_ids(self, pipe, prompt, text_len) -> dict[str, list[int]]:
        length = text_len // 3  # both encoders padded to max_sequence_length (within their tokenizers' limits)
        return {name: tok(prompt, padding="max_length", max_length=min(length, tok.model_max_length),
                          truncation=True).input_ids
                for name, tok in (("text_encoder_3", pipe.tokenizer_3), ("text_encoder_4", pipe.tokenizer_4))}


HIDREAM = HiDreamFamily()
