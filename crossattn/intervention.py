"""`crossattn.intervene(pipe, {"circle": 0.0})`: change how much the picture attends to a word, then look.

A scale ``s`` on a word multiplies the attention probability of every image query on each of the word's text
positions by ``s`` and renormalises over all keys: the same as adding ``log s`` to those logits (``s = 0``
removes them). It applies to the prompt's rows only (found as the trace finds them, `crossattn.rows`), in steps
``[start, stop)`` and in the named layers. The model keeps its processors and its SDPA kernel: the intervention
is a bias added to the attention call's mask, seen by the same observer as capture (`capture/observer.py`). A scale of 1
leaves the call untouched, so the output is bit-identical to no intervention.

Combined with a trace (in either order), the trace records the attention as the intervention made it:

    >>> import torch, crossattn
    >>> pipe = crossattn.load_pipeline()
    >>> prompt = "a red circle left of a blue square"
    >>> with crossattn.trace(pipe) as tr, crossattn.intervene(pipe, {"circle": 0.0}):
    ...     image = pipe(prompt, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0]
    >>> float(tr.heat_maps().word("circle").raw.max())
    0.0

Besides words and phrases (``"red circle"``, ``"cat#1"`` for a repeated word), a scale can name the end token
and the padding after the prompt (``"<end>"``), every position after a word (``"<after:circle>"``: where a
causal text encoder such as CLIP carries the word's meaning on), or one text position by number.
"""

from __future__ import annotations

import math
import re

import torch

from .capture import _SDPA, Layer, Recorder
from .errors import InputError
from .tracing import Trace
from .words import Segment, find_word, word_ref, words_from_segments

END = "<end>"
AFTER = re.compile(r"<after:(.+)>")


class Editor(Recorder):
    """A `Recorder` that records nothing: it biases the attention calls of the prompt's rows instead."""

    def __init__(self, layers: set[str] | None, steps: tuple[int, int | None]):
        super().__init__(time_bins=1)
        self.only = layers  # layer or block names; None: every traced layer
        self.start, self.stop = steps
        self.bias: dict[int, float] = {}  # text position -> log scale, for the current generation

    def observe(self, layer: Layer, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                scale=None, enable_gqa=False) -> torch.Tensor:
        call = dict(dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        if enable_gqa:
            call["enable_gqa"] = True
        step = self.step
        if step is not None:  # seen attending, edited or not (the trace's check that layers are observable)
            counts = self.coverage.setdefault(layer.name, {"recorded": 0, "skipped": 0})
        wanted = step is not None and self.bias and step.rows.stop > step.rows.start and not is_causal and \
            self.start <= step.index < (self.stop if self.stop is not None else math.inf) and \
            (self.only is None or layer.name in self.only or layer.block in self.only)
        spans = self._spans(layer, query.shape[2], key.shape[2]) \
            if wanted and query.ndim == 4 and query.shape[0] == step.batch else None
        if spans is None:
            return _SDPA(query, key, value, attn_mask=attn_mask, **call)
        images, text = spans
        inside = {p: b for p, b in self.bias.items() if p < text.stop - text.start}
        if layer.kind == "cross" and sum(math.isinf(b) for b in inside.values()) == text.stop - text.start:
            raise InputError("these scales remove every text position of a cross-attention layer: the image would "
                             "have nothing to attend to (scale some positions above 0)")
        # (batch, 1, queries or 1, keys): cross-attention queries are all image positions, so one row serves all
        joint = layer.kind in ("text_first", "text_last")
        bias = query.new_zeros((query.shape[0], 1, query.shape[2] if joint else 1, key.shape[2]))
        columns = torch.tensor([text.start + p for p in inside], device=query.device)
        values = torch.tensor(list(inside.values()), dtype=query.dtype, device=query.device)
        bias[step.rows, :, images if joint else slice(None), columns] = values
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(~attn_mask, -math.inf)
        counts["recorded"] += 1  # edited
        return _SDPA(query, key, value, attn_mask=bias if attn_mask is None else attn_mask + bias, **call)


class Intervention(Trace):
    """Biases the prompt's attention on chosen words while the pipeline runs; use through `crossattn.intervene`."""

    on_top = True

    def __init__(self, pipe, scales: dict[str | int, float], *, steps: tuple[int, int | None] = (0, None),
                 layers: list[str] | None = None):
        super().__init__(pipe, time_bins=1)
        self.scales = _checked_scales(scales)
        self.steps = _checked_steps(steps)
        self.recorder = Editor(_checked_layers(layers, self.layers.values()), self.steps)
        self.positions: dict[str | int, list[int]] = {}  # each scale's text positions in the latest generation

    def _start_generation(self, x, args, kwargs) -> None:
        super()._start_generation(x, args, kwargs)
        start, stop = self.steps
        total = self._expected_steps()
        if total and (start >= total or (stop is not None and stop > total)):
            raise InputError(f"step range {start}:{'' if stop is None else stop} is outside this generation's "
                             f"{total} steps (start in 0..{total - 1}, stop in 1..{total})")
        prompts = self.calls[self.family.encoders[0]][:1]
        if not prompts:
            raise InputError("no prompt tokens were seen (was the pipeline given prompt_embeds?): intervene needs "
                             "the prompt itself to find its words")
        if len({tuple(ids) for ids in prompts[0]}) > 1:
            raise InputError("intervene works on one prompt at a time (any number of images of it)")
        segments = self.family.segments(self.pipe, self.calls, 0, 0, self._text_len)
        bias: dict[int, float] = {}
        self.positions = {}
        for key, s in self.scales.items():
            self.positions[key] = _positions(key, segments, self._text_len)
            for p in self.positions[key]:  # scales on the same position multiply
                bias[p] = bias.get(p, 0.0) + (math.log(s) if s > 0 else -math.inf)
        self.recorder.bias = {p: b for p, b in bias.items() if b != 0}  # a scale of 1 changes nothing

    def heat_maps(self, *args, **kwargs):
        raise InputError("an intervention records no maps: combine it with crossattn.trace(pipe) to see them")


def _checked_scales(scales) -> dict[str | int, float]:
    if not isinstance(scales, dict) or not scales:
        raise InputError("scales must be a non-empty dict {word: scale}, e.g. {'circle': 0.0}")
    out = {}
    for key, value in scales.items():
        if not isinstance(key, str | int) or isinstance(key, bool) or (isinstance(key, str) and not key.strip()):
            raise InputError(f"bad scale key {key!r}: use a word or phrase of the prompt, '{END}', "
                             "'<after:WORD>' or a text position (int)")
        try:
            s = float(value)
        except (TypeError, ValueError):
            raise InputError(f"the scale of {key!r} must be a number >= 0, got {value!r}") from None
        if not math.isfinite(s) or s < 0:
            raise InputError(f"the scale of {key!r} must be a finite number >= 0 (0 removes the word), got {value!r}")
        out[key.strip() if isinstance(key, str) else key] = s
    return out


def _checked_steps(steps) -> tuple[int, int | None]:
    try:
        start, stop = steps
    except (TypeError, ValueError):
        raise InputError(f"steps must be (start, stop) with stop None for the end, got {steps!r}") from None
    if not isinstance(start, int) or start < 0 or (stop is not None and (not isinstance(stop, int) or stop <= start)):
        raise InputError(f"bad step range {steps!r}: start >= 0 and stop > start (or None for the end)")
    return start, stop


def _checked_layers(layers, known: list[Layer]) -> set[str] | None:
    if layers is None:
        return None
    allowed = sorted({layer.name for layer in known} | {layer.block for layer in known})
    chosen = {layers} if isinstance(layers, str) else set(layers)
    unknown = sorted(chosen - set(allowed))
    if unknown or not chosen:
        raise InputError(f"unknown layer(s) {unknown or '(none given)'}: this model's are {', '.join(allowed)}")
    return chosen


def _positions(key: str | int, segments: list[Segment], text_len: int) -> list[int]:
    """The text positions a scale's key names (every source's, where the model reads several encoders)."""
    if isinstance(key, int):
        if not 0 <= key < text_len:
            raise InputError(f"text position {key} is outside the denoiser's {text_len} text positions")
        return [key]
    if key == END:  # the end token and the padding after it, in every segment
        return [p for s in segments for p in s.positions[s.end:] if p >= 0]
    after = AFTER.fullmatch(key)
    name, occurrence = word_ref(after.group(1) if after else key)
    words = words_from_segments(segments, {p: p for s in segments for p in s.positions if p >= 0})
    matched = find_word(words, name, occurrence)
    positions = [p for w in matched for p in w.positions]
    if not after:
        return positions
    out = []
    for s in segments:  # in each segment: every position past the word's last token there
        mine = [i for i, p in enumerate(s.positions) if p in positions]
        if mine:
            out.extend(p for p in s.positions[max(mine) + 1:] if p >= 0)
    return out


def intervene(pipe, scales: dict[str | int, float], *, steps: tuple[int, int | None] = (0, None),
              layers: list[str] | None = None) -> Intervention:
    """Scale the prompt's attention on words (or phrases, ``"<end>"``, ``"<after:WORD>"``, text positions) while
    `pipe` generates; use as a context manager, alone or with `crossattn.trace`.

    Args:
        pipe: a pipeline `crossattn.trace` supports.
        scales: {word: scale}; 0 removes the word's attention, 2 doubles its probability (renormalised), 1 changes
            nothing. Scales on the same position multiply.
        steps: (start, stop) step indices, stop None for the last step: only these steps are changed.
        layers: layer names (``"joint.3"``, a UNet's full ``attn2`` path) or blocks (``"up"``, ``"double"``); None:
            every layer that attends to the text.

    Example:
        >>> import torch, crossattn
        >>> pipe = crossattn.load_pipeline()
        >>> with crossattn.intervene(pipe, {"red circle": 2.0}, steps=(0, 2)):
        ...     image = pipe("a red circle left of a blue square", num_inference_steps=4,
        ...                  generator=torch.Generator().manual_seed(0)).images[0]
        >>> image.size
        (64, 64)
    """
    return Intervention(pipe, scales, steps=steps, layers=layers)
