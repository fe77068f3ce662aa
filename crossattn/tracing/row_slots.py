"""Where the batch rows a generation records go: the recorder's images axis.

`crossattn.rows` says which rows of a denoiser call hold the prompt's text and which the negative prompt's; this
fixes, from the first call that shows them, how many images each kind has and in which order they sit on the
images axis (negatives first where each kind has its own call), and refuses any later call that does not fit.
"""

from __future__ import annotations

from ..errors import InputError
from ..rows import NEGATIVE, PROMPT, RowFinder


class RowState:
    """Where the rows this generation records go: the images axis, fixed by the first call that shows them."""

    def __init__(self, finder: RowFinder, with_negatives: bool):
        self.finder = finder
        self.with_negatives = with_negatives  # the images axis has room for the negatives' images
        self.n = 0  # images per kind (the prompt's images); 0 until the first recorded call
        self.negatives_first: bool | None = None
        self.negatives_recorded = False
        self.passes: list = []  # ((kind, text row), latent row) recorded at the current timestep

    @property
    def images(self) -> int:
        return self.n * (2 if self.with_negatives else 1)

    def slot(self, kind: str) -> slice:
        first = self.negatives_first is not False  # negatives first unless a batch showed the prompts first
        start = self.n if self.with_negatives and (kind == PROMPT) == first else 0
        return slice(start, start + self.n)

    def place(self, prompt: list[int], negative: list[int]) -> tuple[slice, slice, bool]:
        """(batch rows to record, their slot on the images axis, whether they include the prompt's) for a call
        whose recorded rows are `prompt` and `negative`."""
        if not prompt and not negative:
            return slice(0, 0), slice(0, 0), False
        for rows in (prompt, negative):
            if rows and rows != list(range(rows[0], rows[-1] + 1)):
                raise InputError(f"this batch's rows with the prompt's text ({rows}) are not one contiguous block: "
                                 "crossattn does not recognise the layout and will not guess it")
        n = len(prompt or negative)
        if self.n == 0:
            self.n = n
        if any(rows and len(rows) != self.n for rows in (prompt, negative)):
            raise InputError(f"a denoiser call held {len(prompt)} prompt and {len(negative)} negative rows after "
                             f"{self.n} image(s) per kind: crossattn does not recognise the layout")
        if negative:
            self.negatives_recorded = True
        if prompt and negative:
            order = negative[-1] + 1 == prompt[0]
            if not order and prompt[-1] + 1 != negative[0] or self.negatives_first not in (None, order):
                raise InputError("the negative and the prompt rows of a denoiser call are not side by side in a "
                                 "known order: crossattn does not recognise the layout")
            self.negatives_first = order
            start = min(prompt[0], negative[0])
            return slice(start, start + 2 * self.n), slice(0, 2 * self.n), True
        if self.negatives_first is None and self.with_negatives:
            self.negatives_first = True  # one call per kind: the images axis is [negatives, prompts]
        rows = prompt or negative
        return slice(rows[0], rows[-1] + 1), self.slot(PROMPT if prompt else NEGATIVE), bool(prompt)
