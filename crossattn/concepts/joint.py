"""Concepts on joint-attention transformers (SD3 and the embedded MMDiT): ConceptAttention (method "outputs"),
and the methods "prompt" and "attention" there."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ConceptEngine, ConceptTexts, attention_shares, prompt_shares


class JointConcepts(ConceptEngine):
    """ConceptAttention on SD3's joint blocks (see `crossattn.concepts`).

    Per denoiser call the concept tokens start as the transformer's own text projection of the concepts'
    text states. In each block they are modulated by the block's text-stream norm (with the block's time
    embedding), attend to [the block's image keys and values, their own keys and values], and are updated
    like the text stream (gated residual, the text feed-forward). The map of a block is, per image token,
    the softmax over concepts of (image attention output · concept attention output), both before their
    output projections (as ConceptAttention does on SD3); with method "attention", of (image query · concept
    key) instead.

    With method "prompt" each concept's whole text (start and padding tokens too) rides the text stream as a
    prompt of its own, attending to the block's image tokens and to its own text, and the map is the probability
    the image queries give its words under a softmax over [the block's image keys, its text's keys]: what the
    image would give the concept's words were it the prompt (exactly the prompt's own attention when the concept
    is the prompt).
    """

    def __init__(self, recorder, transformer, blocks: dict[str, torch.nn.Module], texts: ConceptTexts,
                 method: str = "prompt"):
        super().__init__(recorder)
        self.transformer, self.blocks, self.method, self.words = transformer, blocks, method, texts.words
        # (concepts, tokens, dim) for "prompt": whole texts; else (concepts, dim): one token each
        self.states = texts.states if method == "prompt" else texts.last_states()
        self.temb: dict[str, torch.Tensor] = {}
        self.concepts: torch.Tensor | None = None
        self.image = None

    def hooks(self) -> list:
        """Forward pre-hooks that keep each block's time embedding (the modulation the text stream gets)."""
        def keep(name):
            return lambda module, args, kwargs: self.temb.__setitem__(name, kwargs.get("temb", args[2] if len(
                args) > 2 else None))
        return [block.register_forward_pre_hook(keep(name), with_kwargs=True) for name, block in self.blocks.items()]

    def begin_call(self, rows: slice) -> None:
        self.rows = rows
        embed = self.transformer.context_embedder
        start = embed(self.states.to(embed.weight.device, embed.weight.dtype))
        self.concepts = start[None].expand(rows.stop - rows.start, *start.shape)
        if self.method == "prompt":  # one text per (row, concept): (rows · concepts, tokens, dim)
            self.concepts = self.concepts.flatten(0, 1)

    def attention(self, layer, query, key, value, out, rows, images, scale) -> None:
        self.image = (query[rows, :, images], key[rows, :, images], value[rows, :, images], out[rows, :, images],
                      scale)

    def layer_done(self, layer, module, output) -> None:
        block, attn = self.blocks[layer.name], module
        queries, keys, values, image_out, scale = self.image
        temb, c = self.temb[layer.name][self.rows], self.concepts
        texts = len(self.states) if self.method == "prompt" else 1
        if texts > 1:  # each concept's text beside each row's image
            temb, keys_c, values_c = (x.repeat_interleave(texts, 0) for x in (temb, keys, values))
        else:
            keys_c, values_c = keys, values

        def heads(x):
            return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        if block.context_pre_only:
            norm_c = block.norm1_context(c, temb)
        else:
            norm_c, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(c, emb=temb)
        q, k, v = heads(attn.add_q_proj(norm_c)), heads(attn.add_k_proj(norm_c)), heads(attn.add_v_proj(norm_c))
        if attn.norm_added_q is not None:
            q, k = attn.norm_added_q(q), attn.norm_added_k(k)
        # concepts attend to the image and to each other (with "prompt": each text to itself); nothing attends to
        # them
        concept_out = F.scaled_dot_product_attention(q, torch.cat([keys_c, k], 2), torch.cat([values_c, v], 2),
                                                     scale=scale)
        flat_image, flat_concepts = image_out.transpose(1, 2).flatten(2), concept_out.transpose(1, 2).flatten(2)
        if self.method == "prompt":
            per_concept = k.unflatten(0, (-1, texts)).transpose(0, 1)  # (concepts, rows, heads, tokens, d)
            shares = prompt_shares(queries, per_concept, self.words.to(queries.device), scale, extra=keys)
        elif self.method == "attention":
            shares = attention_shares(queries, k, scale)
        else:
            shares = torch.matmul(flat_image.float(), flat_concepts.float().transpose(-1, -2)).softmax(-1)
        self.record(layer, shares, flat_image.shape[1])  # (rows, pixels, concepts)
        if not block.context_pre_only:  # the text stream's update, for the next block
            c = c + gate_msa.unsqueeze(1) * attn.to_add_out(flat_concepts.to(c.dtype))
            norm = block.norm2_context(c) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            self.concepts = c + gate_mlp.unsqueeze(1) * block.ff_context(norm)
