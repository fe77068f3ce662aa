"""What every concept engine shares: the methods, the concepts' text states, and the hooks the tracer calls."""

from __future__ import annotations

import torch

from ..capture import Layer, Recorder
from ..errors import InputError
from ..words import words_from_ids

METHODS = ("outputs", "attention")  # see the module doc


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


def encode_concepts(pipe, concepts: list[str], encode) -> torch.Tensor:
    """One text state per concept: `encode(list of texts)` gives the pipeline's text states (concepts, tokens,
    dim) with the first tokenizer's positions first; each concept's state is the one at its last token, which
    has read the whole concept (CLIP is causal)."""
    if not concepts or any(not c.strip() for c in concepts):
        raise InputError(f"concepts must be non-empty words or phrases, got {concepts!r}")
    with torch.no_grad():
        states = encode(concepts)
    rows = []
    for k, concept in enumerate(concepts):
        ids = pipe.tokenizer(concept, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True).input_ids
        words = words_from_ids(pipe.tokenizer, ids)
        if not words:
            raise InputError(f"concept {concept!r} has no word the tokenizer can read")
        rows.append(states[k, words[-1].positions[-1]])
    return torch.stack(rows)
