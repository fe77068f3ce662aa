"""What every concept engine shares: the methods, the concepts' text states, and the hooks the tracer calls."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..capture import Layer, Recorder
from ..errors import InputError
from ..words import words_from_segments

METHODS = ("prompt", "outputs", "attention")  # see the module doc


def resolve_method(family, method: str | None) -> str | None:
    """The concept method a model family uses: `method`, or the family's default when None."""
    if method is None:
        return next(iter(family.concept_methods), None)
    if method not in family.concept_methods:
        offered = (f"it offers {', '.join(family.concept_methods)}" if family.concept_methods
                   else "it has no concept maps")
        raise InputError(f"concept method {method!r} is not available for {family.name}: {offered} "
                         f"(methods: {', '.join(METHODS)})")
    return method


def attention_shares(query: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Per image row, the concepts' shares of an attention over the concepts alone, heads averaged: queries
    (rows, heads, pixels, d), concept keys (heads or rows × heads, concepts, d) → (rows, pixels, concepts)."""
    return (torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scale).softmax(-1).mean(1)


class ConceptEngine:
    """What the tracer calls while concepts are followed (all on the side of the model's computation): a
    `capture.Listener` of the concepts' own recorder."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def hooks(self) -> list:
        """Extra (read-only) hooks the engine needs on the model; removed with the trace's."""
        return []

    def begin_call(self, rows: slice) -> None:
        """A denoiser call starts; `rows` are the attention rows recorded in it."""

    def attention(self, layer: Layer, query, key, value, out, rows: slice, images: slice, scale: float) -> None:
        """One observed attention call of a traced layer: SDPA's inputs and output (batch, heads, seq, dim)."""

    def layer_done(self, layer: Layer, module: torch.nn.Module, output) -> None:
        """A traced layer finished, with its output."""

    def record(self, layer: Layer, shares: torch.Tensor, pixels: int) -> None:
        """Add per-pixel concept shares (rows, pixels, concepts) for the current step."""
        h, w = self.recorder.grid_of(pixels)
        self.recorder.record(layer, shares[:, None].float(), h, w)


class ConceptTexts(NamedTuple):
    """The concepts, each encoded as a prompt of its own (`encode_concepts`)."""

    states: torch.Tensor  # (concepts, tokens, dim): text states laid out as the denoiser's text input
    words: torch.Tensor  # (concepts, tokens) bool: the concept's word positions in every encoder's segment
    last: torch.Tensor  # (concepts,) long: its last word position in the first encoder's segment

    def last_states(self) -> torch.Tensor:
        """One state per concept, (concepts, dim): the one at its last word, which has read the whole concept
        (CLIP is causal) — what the methods "attention" and "outputs" score."""
        return self.states[torch.arange(len(self.states), device=self.states.device), self.last]


def encode_concepts(family, pipe, concepts: list[str]) -> ConceptTexts:
    """Each concept encoded as a prompt of its own by `family`'s text path (`Family.encode_texts`), with its word
    positions found by the family's own rules for the prompt's words (start, end and padding tokens left out)."""
    if not concepts or any(not c.strip() for c in concepts):
        raise InputError(f"concepts must be non-empty words or phrases, got {concepts!r}")
    with torch.no_grad():
        states = family.encode_texts(pipe, concepts)
    text_len = states.shape[1]
    words, last = torch.zeros(states.shape[:2], dtype=torch.bool), []
    for k, concept in enumerate(concepts):
        calls = {encoder: [[ids]] for encoder, ids in family.prompt_ids(pipe, concept, text_len).items()}
        segments = family.segments(pipe, calls, 0, 0, text_len)
        found = words_from_segments(segments, {p: p for p in range(text_len)})
        first = [p for word in found for p in word.in_source(segments[0].source)]
        if not first:
            raise InputError(f"concept {concept!r} has no word the tokenizer can read")
        words[k, [p for word in found for p in word.positions]] = True
        last.append(first[-1])
    return ConceptTexts(states, words.to(states.device), torch.tensor(last, device=states.device))


def prompt_shares(query: torch.Tensor, keys: torch.Tensor, words: torch.Tensor, scale: float,
                  extra: torch.Tensor | None = None, budget: int = 1 << 24) -> torch.Tensor:
    """Method "prompt": per image row and pixel, the attention probability each concept's words would get if the
    concept's own text were the prompt, heads averaged. Queries (rows, heads, pixels, d); the concepts' keys
    (concepts, rows or 1, heads, tokens, d), all the positions of their texts (start and padding tokens too, as
    the prompt's); `words` (concepts, tokens) the concepts' word positions; `extra` (rows, heads, n, d): keys the
    image also attends to in that call (a joint block's image tokens). → (rows, pixels, concepts).

    Pixels are taken a chunk at a time so that the probabilities held at once stay under `budget` elements (one
    float32 softmax per concept over its text: small models in one go, any image size in bounded memory)."""
    query, keys = query.float(), keys.float()
    if extra is not None:
        keys = torch.cat([keys.expand(-1, len(query), -1, -1, -1), extra.float()[None].expand(len(keys), -1, -1, -1,
                                                                                                -1)], 3)
    mask = torch.zeros(len(keys), keys.shape[3], dtype=query.dtype, device=query.device)
    mask[:, : words.shape[1]] = words.to(query.dtype)
    mask = mask[:, None, None, None]  # (concepts, 1, 1, 1, keys)
    rows, heads, pixels, _ = query.shape
    chunk = max(1, budget // (len(keys) * rows * heads * keys.shape[3]))
    out = query.new_empty(rows, pixels, len(keys))
    for start in range(0, pixels, chunk):
        logits = torch.matmul(query[None, :, :, start:start + chunk], keys.transpose(-1, -2)) * scale
        on_words = (logits.softmax(-1) * mask).sum(-1).mean(2)  # (concepts, rows, chunk)
        out[:, start:start + chunk] = on_words.permute(1, 2, 0)
    return out
