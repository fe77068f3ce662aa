"""Prompts that reach the denoiser through an LLM's chat template (Flux.2, Qwen-Image, Z-Image).

The pipeline wraps the prompt in a template (a system message, role markers), tokenises the whole and gives the
denoiser the hidden states of its tokens (all of them, or the unpadded ones). Only the prompt's own tokens are
words: the template's tokens before it are `skip`ped (`template_skip` against the template rendered around an
empty prompt); the segment ends at the tokenizer's eos, which on Qwen's tokenizers is the end-of-turn
``<|im_end|>`` right after the prompt, or, without one (Mistral's ``[INST]…[/INST]``), at the last non-pad token,
the template's closing control token. Neither is a word; what follows is never kept.
"""

from __future__ import annotations

from .base import Segment, template_skip


def template_prefix(ids: list[int], template: list[int], pad: int | None) -> frozenset[int]:
    """`template_skip` after any left padding: the template's tokens before the prompt in `ids`, where `template`
    is the ids the pipeline makes of an empty prompt."""
    start = next((i for i, t in enumerate(ids) if t != pad), len(ids))
    return frozenset(start + i for i in template_skip(ids[start:], template))


def unpadded_positions(ids: list[int], pad: int | None, drop: int = 0, limit: int | None = None) -> list[int]:
    """Denoiser positions of `ids` when the pipeline keeps only the non-pad tokens (its attention mask) and drops
    the first `drop` of them: the k-th kept id sits at k - drop; padding, dropped ids and ids past `limit` (the
    denoiser's text length) never reach it (-1)."""
    limit = len(ids) if limit is None else limit
    positions, k = [], 0
    for t in ids:
        p = k - drop if t != pad else -1
        k += t != pad
        positions.append(p if 0 <= p < limit else -1)
    return positions


def chat_segment(source: str, tokenizer, ids: list[int], template: list[int],
                 positions: list[int] | None = None) -> Segment:
    """One chat-templated prompt; `positions` default: each id at its index (the whole padded sequence is used)."""
    return Segment(source, tokenizer, list(ids), list(range(len(ids))) if positions is None else positions,
                   template_prefix(ids, template, tokenizer.pad_token_id))


def qwen_chat_ids(tokenizer, prompt: str, thinking: bool) -> list[int]:
    """Ids of one user turn in Qwen3's chat template, as Flux.2 [klein] (thinking off) and Z-Image (on) build it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=thinking)
    return tokenizer(text).input_ids
