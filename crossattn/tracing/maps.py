"""Reading a trace: one image's row of the recorder, with its words, facts and notes, as a `HeatMaps`.

The recorder holds sums per time bin and site for every recorded image (`crossattn.capture`); the words come from
the token ids the text encoders were given (or from the prompt the caller names), placed on the columns the
recorder kept (`Trace.kept_positions`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..capture import Recorder, Site
from ..errors import InputError
from ..heatmaps import HeatMaps, MapData, MapInfo
from ..rows import NEGATIVE, PROMPT
from ..words import Word, words_from_segments
from .configuration import skipped_steps_notes

if TYPE_CHECKING:
    from .tracer import Trace

TRUNCATION_NOTE = "the prompt fills all"  # how the note on a prompt the text encoder may have cut begins


def heat_maps(trace: Trace, image: int, negative: bool, prompt: str | None) -> HeatMaps:
    """`Trace.heat_maps`: the maps of image `image` of the latest generation (of its negative prompt's half with
    `negative`), the words named by `prompt` when the pipeline was given embeddings."""
    _check_captured(trace)
    image = _image_index(trace, image)
    row = _row(trace, image, negative)
    segments = _segments(trace, image, negative, prompt)
    column = {int(p): c for c, p in enumerate(trace._kept.tolist())}  # text position -> token column
    tokens = _tokens(segments, column)
    info = _info(trace, image, negative, prompt, segments)
    maps = _maps(trace, trace.recorder, row, words_from_segments(segments, column), tokens, info)
    if trace.concepts and not negative:
        maps.concepts = _concept_maps(trace, row, info)
    return maps


def _check_captured(trace: Trace) -> None:
    """Refuse when nothing was recorded, saying whether the pipeline ran outside the trace or its layers ran unseen."""
    if trace.recorder.sums:
        return
    silent = [n for n, v in trace.coverage()["recorded_calls"].items() if not v]
    if trace.recorder.step is not None and silent:
        raise RuntimeError(
            f"nothing was captured: {len(silent)} layer(s) of {type(trace.denoiser).__name__} ran, but their "
            "attention never reached torch's scaled_dot_product_attention; use the default ('native') "
            "attention backend / PyTorch SDPA processors while tracing")
    raise RuntimeError("nothing was captured: call the pipeline inside `with crossattn.trace(pipe):`")


def _image_index(trace: Trace, image: int) -> int:
    """`image` as an index in 0..n-1 (negative ones count from the end, as in a list)."""
    n = trace.n_images
    if not -n <= image < n:
        raise InputError(f"image {image} out of range: the latest call generated {n} image(s)")
    return image % n


def _row(trace: Trace, image: int, negative: bool) -> int:
    """The recorder's images-axis row of image `image`, of the prompt's or the negative prompt's half."""
    state = trace._rows_state
    if negative and not state.negatives_recorded:
        raise InputError("negative maps need crossattn.trace(pipe, capture_uncond=True) and a generation "
                         "with classifier-free guidance (guidance > 1)")
    return state.slot(NEGATIVE if negative else PROMPT).start + image * trace._batch_frames


def _segments(trace: Trace, image: int, negative: bool, prompt: str | None):
    """The text encoders' segments of image `image`'s prompt (`crossattn.words`): of `prompt` when given, else of
    the ids its encoders were called with."""
    family = trace.family
    if prompt is not None:
        calls = {name: [[ids]] for name, ids in family.prompt_ids(trace.pipe, prompt, trace._text_len).items()}
        return family.segments(trace.pipe, calls, 0, 0, trace._text_len)
    call = 1 if negative else 0
    prompts = trace.calls[family.encoders[0]]
    if len(prompts) <= call:
        raise InputError("no prompt tokens were captured (was the pipeline given prompt_embeds?); pass "
                         "heat_maps(prompt=...) with the prompt that produced the embeddings")
    per_prompt = max(1, trace.n_images // len(prompts[call]))
    return family.segments(trace.pipe, trace.calls, call, image // per_prompt, trace._text_len)


def _tokens(segments, column: dict[int, int]) -> list[str]:
    """Each kept column's token as its tokenizer spells it ("?" for a position no segment names)."""
    tokens = ["?"] * len(column)
    for segment in segments:
        strings = segment.tokenizer.convert_ids_to_tokens(segment.ids)
        for i, p in enumerate(segment.positions):
            if p in column:
                tokens[column[p]] = strings[i]
    return tokens


def _info(trace: Trace, image: int, negative: bool, prompt: str | None, segments) -> MapInfo:
    """What the maps are of and how they were made."""
    notes = _notes(trace, segments)
    return MapInfo(
        model=getattr(trace.pipe, "name_or_path", None) or type(trace.pipe).__name__,
        pipeline=type(trace.pipe).__name__,
        family=trace.family.name,
        resolution_sites=trace.family.resolution_sites,
        sources=[s.source for s in segments],
        mass=trace.recorder.mass,
        prompt=prompt if prompt is not None else _prompt_text(trace, image, negative, segments),
        image_index=image,
        negative=negative,
        steps=trace.recorder.step.total,
        timesteps=list(trace.recorder.timesteps),
        guidance_scale=_guidance_scale(trace.pipe),
        coverage=trace.coverage(),
        notes=notes,
        output_frames=trace.family.output_frames(trace.pipe, trace.recorder.step.frames * trace._batch_frames),
    )


def _notes(trace: Trace, segments) -> list[str]:
    """What a user must know about how these maps were made: from the trace's setup, this generation, the skipped
    steps and the recorder; first, a prompt the text encoder may have cut."""
    notes = trace._setup_notes + list(trace._notes) + skipped_steps_notes(trace.recorder) + trace.recorder.notes
    if any(s.truncated for s in segments[:1]):
        notes.insert(0, f"{TRUNCATION_NOTE} {len(segments[0].ids)} token positions of the text encoder and "
                     "may have been cut: maps cover only what the model saw")
    return notes


def _prompt_text(trace: Trace, image: int, negative: bool, segments) -> str:
    """Image `image`'s prompt as the pipeline was given it, else decoded from its first segment's token ids."""
    first = segments[0]
    return _typed_prompt(trace, image, negative) or \
        first.tokenizer.decode([t for i, t in enumerate(first.ids[: first.end + 1]) if i not in first.skip],
                               skip_special_tokens=True)


def _typed_prompt(trace: Trace, image: int, negative: bool) -> str | None:
    """Image `image`'s prompt as the pipeline was given it (None for negatives, or when given embeddings)."""
    typed = trace._prompts.typed
    if negative or typed is None:
        return None
    if isinstance(typed, str):
        return typed
    return typed[image // max(1, trace.n_images // len(typed))] if typed else None


def _guidance_scale(pipe) -> float | None:
    try:
        value = pipe.guidance_scale
    except AttributeError:
        return None
    return float(value) if isinstance(value, int | float) else None


def _concept_maps(trace: Trace, row: int, info: MapInfo) -> HeatMaps:
    """The concepts' maps of the same row: one "word" per concept, from the concept recorder."""
    words = [Word(c, (k,), 0) for k, c in enumerate(trace.concepts)]
    return _maps(trace, trace.concept_recorder, row, words, list(trace.concepts),
                 replace(info, kind="concepts", concepts=list(trace.concepts), concept_method=trace.concept_method))


def _maps(trace: Trace, rec: Recorder, row: int, words: list[Word], tokens: list[str], info: MapInfo) -> HeatMaps:
    """A `HeatMaps` of one image of a recorder: its images-axis row, or a video's frames when they are rows of their
    own (AnimateDiff: `row` and the next ones), stacked along the height as the maps keep a video's frames."""
    rows = range(row, row + trace._batch_frames)
    step_sums = [_step_sums(rec, r) for r in rows]
    step_sums = torch.cat(step_sums, 1) if all(s is not None for s in step_sums) else None
    frames = rec.step.frames * len(rows)  # frames in the sequence are stacked already: sites are one frame's size
    sites = {k: Site(s.name, s.block, (s.resolution[0] // rec.step.frames, s.resolution[1]))
             for k, s in rec.sites.items()}
    data = MapData(
        sums={k: torch.cat([t[:, r].unflatten(2, rec.sites[k].resolution) for r in rows], 2).cpu()
              for k, t in rec.sums.items()},
        counts={k: np.asarray(c, dtype=np.int64) for k, c in rec.counts.items()},
        sites=sites,
        bin_steps=_bin_steps(rec),
        step_sums=step_sums,
        step_counts=np.asarray(rec.step_counts, dtype=np.int64),
        words=words,
        per_head=rec.per_head,
        per_layer=rec.per_layer,
        frames=frames,
    )
    grid = (rec.step.grid[0] // rec.step.frames, rec.step.grid[1])
    return HeatMaps(data=data, tokens=tokens, info=info,
                    image_size=_image_size(trace, trace.family.vae_scale(trace.pipe), grid))


def _bin_steps(rec: Recorder) -> list[list[int]]:
    """Per time bin, the steps it holds: those that ran (all, unless the generation stopped early)."""
    total = rec.step.total
    bins = rec.bin_count(total)
    members = [[] for _ in range(bins)]
    for s in range(min(total, len(rec.timesteps))):
        members[rec.bin_of(s, total)].append(s)
    return members


def _step_sums(rec: Recorder, row: int) -> torch.Tensor | None:
    """The row's coarse per-step trace; None unless every step recorded one."""
    if rec.step_sums and all(t is not None for t in rec.step_sums):
        return torch.stack([t[row] for t in rec.step_sums]).cpu()
    return None


def _image_size(trace: Trace, scale: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The generated image's pixel size: token grid × patch × VAE factor (UNet: latent × VAE factor)."""
    patch = trace.family.patch(trace.denoiser)
    return grid[0] * patch * scale, grid[1] * patch * scale
