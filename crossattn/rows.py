"""Which rows of the denoiser's batch hold the prompt: found from the text the denoiser is given.

A pipeline batches the prompt's rows with others: the negative prompt's (classifier-free guidance), a perturbed
pass with the prompt's text again (PAG), one call per pass (true CFG, skip-layer guidance). The batch size alone
does not say which is which — PAG's [negative, prompt, perturbed] and MultiDiffusion's [negative, prompt] per
view defeat any rule on it — so the rows are read off the data: the trace keeps what the pipeline's
`encode_prompt` returned (its first text batch is the prompt's, any later one a negative's), and each denoiser
row is matched, bit for bit, against those rows. A row with the prompt's text and the same latent as a row
already recorded at this timestep is a further *pass* (perturbed, skipped layers), not a new image: not
recorded, and said in the notes. Rows holding neither text are not recorded either; a batch whose prompt rows
are not one contiguous block is refused — a layout not recognised with certainty is never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InputError

PROMPT, NEGATIVE = "prompt", "negative"


def text_batches(value) -> list[list[torch.Tensor]]:
    """The text batches in what `encode_prompt` returned, in order, each as its rows: a (batch, tokens, features)
    tensor, or a list of (tokens, features) tensors (one per prompt, Z-Image). Masks, pooled vectors, ids and
    per-layer stacks have other ranks and are left out."""
    if isinstance(value, torch.Tensor):
        return [list(value.unbind(0))] if value.ndim == 3 else []
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, torch.Tensor) and v.ndim == 2 for v in value):
            return [list(value)]
        return [batch for v in value for batch in text_batches(v)]
    return []


@dataclass
class RowFinder:
    """Classifies the rows of each denoiser call; one per generation (see the module's docstring)."""

    prompt: list[torch.Tensor] = field(default_factory=list)  # the prompt's text rows
    others: list[torch.Tensor] = field(default_factory=list)  # rows of every later text batch (negatives)
    _cache: dict = field(default_factory=dict)

    @classmethod
    def from_encoded(cls, returned: list) -> RowFinder:
        batches = [b for value in returned for b in text_batches(value)]
        if not batches:
            raise InputError("crossattn cannot tell which rows of the denoiser's batch hold the prompt: the "
                             "pipeline's encode_prompt was not called inside the trace (call the pipeline itself, "
                             "not its denoiser, inside `with crossattn.trace(pipe):`)")
        return cls(batches[0], [row for b in batches[1:] for row in b])

    @property
    def may_have_negatives(self) -> bool:
        return bool(self.others)

    def kinds(self, text) -> list[tuple[str, int] | None]:
        """Per row of the denoiser's text input (a (batch, tokens, features) tensor or a list of rows): (PROMPT,
        index of the prompt row it equals), (NEGATIVE, index), or None (neither)."""
        parts = list(text) if isinstance(text, list | tuple) else [text]
        # Pipelines pass the same text every step: reuse the answer while the very same tensors, unchanged, come
        # back (held here, so their memory cannot be reused by another tensor meanwhile).
        versions = [p._version for p in parts]
        if self._cache and len(self._cache["parts"]) == len(parts) and versions == self._cache["versions"] and \
                all(a is b for a, b in zip(self._cache["parts"], parts)):
            return self._cache["kinds"]
        rows = parts if isinstance(text, list | tuple) else list(text.unbind(0))
        self._cache = {"parts": parts, "versions": versions, "kinds": [self._kind(r) for r in rows]}
        return self._cache["kinds"]

    def _kind(self, row: torch.Tensor) -> tuple[str, int] | None:
        for kind, candidates in ((PROMPT, self.prompt), (NEGATIVE, self.others)):
            for i, c in enumerate(candidates):
                if c.shape == row.shape and torch.equal(c.to(row.device, row.dtype), row):
                    return kind, i
        return None
