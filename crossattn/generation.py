"""One traced generation with validated inputs: what the CLI, the demo, sweeps and the evaluations call.

    >>> import crossattn
    >>> from crossattn.generation import generate
    >>> pipe = crossattn.load_pipeline()
    >>> image, maps = generate(pipe, "a red circle left of a blue square", seed=0)
    >>> image.size, maps.words[:3]
    ((64, 64), ['a', 'red', 'circle'])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from PIL import Image

from .concepts import resolve_method
from .diagnosis import early_stop
from .errors import InputError
from .families import Family, family_of
from .heatmaps import HeatMaps
from .tracing import TRUNCATION_NOTE, trace
from .words import find_word, prompt_words, truncation, word_ref

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
MAX_SEED = 2**63 - 1  # torch generators take a signed 64-bit seed
MAX_STEPS = 1000
MAX_PIXELS = 4096 * 4096
# Not an error: the image is still made (emoji, punctuation), only there is nothing to draw a map of.
NO_WORDS = "The prompt has no words to map (no letters or digits): here is the image, without heat maps."
TRUNCATED = "The prompt is longer than the"


def size_multiple(pipe, family: Family | None = None) -> int:
    """Image sides must be multiples of this: VAE factor × the UNet's total downsampling (or × the patch)."""
    family = family or family_of(pipe)
    model = getattr(pipe, family.denoiser)
    if family.denoiser == "unet":
        levels = len(getattr(model.config, "block_out_channels", (0,)))
        return family.vae_scale(pipe) * 2 ** (levels - 1)
    return family.vae_scale(pipe) * family.patch(model)


def max_side(pipe, family: Family | None = None) -> int | None:
    """The longest image side (px) the denoiser can make, from its config; None when it sets no limit.

    Transformers that learn a table of positions cannot go past it: SD3 crops a `pos_embed_max_size` ×
    `pos_embed_max_size` table of tokens, AuraFlow selects from `pos_embed_max_size` positions laid out as a
    square. Models with rotary or computed positions (Flux, PixArt, CogView4 …) and UNets have no such limit."""
    family = family or family_of(pipe)
    model = getattr(pipe, family.denoiser)
    positions = getattr(model.config, "pos_embed_max_size", None)
    table = getattr(model, "pos_embed", None)
    if not positions or getattr(table, "pos_embed_max_size", None) != positions:
        return None  # the field without a table that uses it (CogView4 embeds positions with rotary embeddings)
    tokens = math.isqrt(positions) if hasattr(table, "pe_selection_index_based_on_dim") else positions
    return tokens * size_multiple(pipe, family)


def native_size(pipe, family: Family | None = None) -> tuple[int, int]:
    """(width, height) the model was built for."""
    return (family or family_of(pipe)).native_size(pipe)


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) as (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"bad size {text!r}: write WIDTHxHEIGHT, e.g. 512x512") from None
    return w, h


def size_limit(max_pixels: int, multiple: int) -> str:
    """'at most 16,384 pixels here (e.g. 128x128)': the largest size served, with a square that fits."""
    side = math.isqrt(max_pixels) // multiple * multiple
    return f"at most {max_pixels:,} pixels here (e.g. {side}x{side})"


def size_hint(pipe, max_pixels: int = MAX_PIXELS) -> str:
    """The sizes served here for this model, naming only a size it can make: its own side limit when that
    binds before the pixel budget (shapes-mmdit: 'at most 64x64 for this model'), else `size_limit`."""
    family = family_of(pipe)
    multiple, largest = size_multiple(pipe, family), max_side(pipe, family)
    if largest is not None and largest < math.isqrt(max_pixels) // multiple * multiple:
        return f"at most {largest}x{largest} for this model"
    return size_limit(max_pixels, multiple)


def check_settings(steps: int, guidance: float, seed: int = 0, max_steps: int = MAX_STEPS) -> None:
    """The checks that need no pipeline (a sweep makes them before it loads one)."""
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be a whole number from 0 to {MAX_SEED} (2**63 - 1), got {seed}")
    if not 1 <= steps <= max_steps:
        raise InputError(f"steps must be between 1 and {max_steps}, got {steps}")
    if not 0 <= guidance <= 50:
        raise InputError(f"guidance must be between 0 and 50, got {guidance}")


def check_size(pipe, family: Family, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a size the model cannot make or the caller does not serve."""
    m = size_multiple(pipe, family)
    w, h = size
    if w <= 0 or h <= 0 or w % m or h % m:
        raise InputError(f"bad size {w}x{h}: width and height must be positive multiples of {m} for this model")
    if w * h > max_pixels:
        raise InputError(f"bad size {w}x{h}: {size_limit(max_pixels, m)}")
    largest = max_side(pipe, family)
    if largest is not None and max(w, h) > largest:  # its position table has no entries past that
        raise InputError(f"bad size {w}x{h}: this model makes images of at most {largest} px a side "
                         f"(e.g. {largest}x{largest})")


def prompt_notes(family: Family, pipe, prompt: str, words: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Refuse an empty prompt or a named word it does not hold; return notes for the user (which words of an
    over-long prompt the model will not see, a prompt with nothing to map)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty: type what the image should show")
    tokenizer = family.word_tokenizer(pipe)
    known = prompt_words(tokenizer, prompt)
    for word in words:  # words or phrases, repeats named "cat#1"
        find_word(known, *word_ref(word))
    notes = [] if known else [NO_WORDS]
    cut = truncation(tokenizer, prompt)
    if cut:
        notes.append(f"{TRUNCATED} {tokenizer.model_max_length} tokens the text encoder reads; the model does not "
                     f"see: “{cut}”")
    return notes


@dataclass(frozen=True)
class Request:
    """One generation, validated once (`Request.make`): what the CLI, the demo and sweeps hand to `run`.

    Nothing in it is checked again or changed afterwards; its values become the maps' `info` (prompt, seed,
    model …) as they are, so no caller patches the maps after the call.
    """

    pipe: object = field(repr=False, compare=False)
    family: Family = field(repr=False, compare=False)
    prompt: str
    seed: int
    steps: int
    guidance: float
    size: tuple[int, int]  # (width, height)
    negative_prompt: str | None = None
    words: tuple[str, ...] = ()  # words or phrases the caller will ask the maps for (checked against the prompt)
    model: str | None = None  # the name the pipeline was loaded by, for the maps' info
    concepts: tuple[str, ...] = ()
    concept_method: str | None = None
    notes: tuple[str, ...] = ()  # for the user, found while validating
    frames: int | None = None  # a video pipeline's frame count; None for images

    @classmethod
    def make(cls, pipe, prompt: str, *, seed: int = 0, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             size: tuple[int, int] | None = None, negative_prompt: str | None = None,
             words: list[str] | None = None, model: str | None = None, concepts: list[str] | None = None,
             concept_method: str | None = None, max_pixels: int = MAX_PIXELS, max_steps: int = MAX_STEPS,
             frames: int | None = None) -> Request:
        """Check everything before any compute is spent (an `InputError` says what is wrong and what is allowed).

            >>> import crossattn
            >>> from crossattn.generation import Request
            >>> r = Request.make(crossattn.load_pipeline(), "a red circle", seed=3, steps=4)
            >>> r.size, r.steps, r.notes
            ((64, 64), 4, ())
        """
        family = family_of(pipe)
        check_settings(steps, guidance, seed, max_steps)
        size = tuple(size) if size else native_size(pipe, family)
        check_size(pipe, family, size, max_pixels)
        method = resolve_method(family, concept_method)
        notes = prompt_notes(family, pipe, prompt, tuple(words or ()))
        if family.video:
            frames = family.default_frames(pipe) if frames is None else frames
            family.check_frames(pipe, frames)
        elif frames is not None:
            raise InputError(f"frames apply to video pipelines; {type(pipe).__name__} makes images")
        return cls(pipe, family, prompt, seed, steps, guidance, size, negative_prompt or None, tuple(words or ()),
                   model, tuple(concepts or ()), method, tuple(notes), frames)


def check_inputs(pipe, prompt: str, size: tuple[int, int], steps: int, guidance: float,
                 words: list[str] | None = None, seed: int = 0, max_pixels: int = MAX_PIXELS,
                 max_steps: int = MAX_STEPS, concept_method: str | None = None) -> list[str]:
    """`Request.make`'s checks alone: raise `InputError` before any compute is spent, else return its notes."""
    return list(Request.make(pipe, prompt, seed=seed, steps=steps, guidance=guidance, size=size, words=words,
                             concept_method=concept_method, max_pixels=max_pixels, max_steps=max_steps).notes)


def run(request: Request, *, on_step: Callable[[int, int], None] | None = None, stop_early_at: int | None = None,
        **trace_options) -> tuple[Image.Image | list[Image.Image], HeatMaps]:
    """Generate one image of a validated request under `crossattn.trace`; return it with its heat maps (a video
    pipeline: its frames, a list of images, and maps with `frames`).

    `on_step(done, total)` is called after every denoising step (progress bars, cancellation: it may raise);
    with `stop_early_at` = k, the steps so far are diagnosed after step k and a doomed generation raises
    `diagnosis.StoppedEarly`; `trace_options` go to `crossattn.trace`.
    """
    pipe, (width, height) = request.pipe, request.size
    device = pipe.device if pipe.device.type != "mps" else "cpu"
    options = dict(num_inference_steps=request.steps, guidance_scale=request.guidance, width=width, height=height,
                   generator=torch.Generator(device).manual_seed(request.seed))
    if request.negative_prompt:
        options["negative_prompt"] = request.negative_prompt
    if request.frames is not None:
        options |= {"num_frames": request.frames, "output_type": "pil"}
    accepted = inspect.signature(pipe.__call__).parameters
    if "use_resolution_binning" in accepted:  # PixArt/Sana would silently resize to a trained aspect ratio
        options["use_resolution_binning"] = False
    if request.concepts:
        trace_options |= {"concepts": list(request.concepts), "concept_method": request.concept_method}
    with trace(pipe, **trace_options) as tr:
        stop = None if stop_early_at is None else early_stop(tr, stop_early_at)

        def after_step(i: int) -> None:
            if on_step is not None:
                on_step(i + 1, request.steps)
            if stop is not None:
                stop(pipe, i, None, {})

        if "callback_on_step_end" in accepted:
            options["callback_on_step_end"] = lambda pipeline, i, t, kwargs: (after_step(i), kwargs)[1]
        elif "callback" in accepted:  # older pipelines (PixArt): callback(step, t, latents)
            options["callback"] = lambda i, t, latents: after_step(i)
        out = pipe(prompt=request.prompt, **options)  # by name: Flux.2's first argument is `image`
        image = out.images[0] if request.frames is None else list(out.frames[0])
    maps = tr.heat_maps()
    maps.info = replace(maps.info, prompt=request.prompt, negative_prompt=request.negative_prompt, seed=request.seed,
                        guidance_scale=request.guidance, size=list(request.size),
                        model=request.model or maps.info.model,
                        notes=merged_notes(list(request.notes), maps.info.notes))
    return image, maps


def generate(pipe, prompt: str, *, seed: int = 0, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             size: tuple[int, int] | None = None, negative_prompt: str | None = None,
             on_step: Callable[[int, int], None] | None = None, stop_early_at: int | None = None,
             words: list[str] | None = None, model: str | None = None, concepts: list[str] | None = None,
             concept_method: str | None = None, frames: int | None = None,
             **trace_options) -> tuple[Image.Image | list[Image.Image], HeatMaps]:
    """Generate one image of `prompt` under `crossattn.trace` and return it with its heat maps: `Request.make`
    then `run`, for a caller that has no request yet.

    `size` is (width, height), default the model's native size; `words` (words or phrases the caller will ask
    the maps for) are checked against the prompt with the rest, before any compute; `concepts` are followed on
    the side (`crossattn.concepts`); `on_step`, `stop_early_at` and `trace_options` as in `run`.
    """
    request = Request.make(pipe, prompt, seed=seed, steps=steps, guidance=guidance, size=size,
                           negative_prompt=negative_prompt, words=words, model=model, concepts=concepts,
                           concept_method=concept_method, frames=frames)
    return run(request, on_step=on_step, stop_early_at=stop_early_at, **trace_options)


def merged_notes(said: list[str], traced: list[str]) -> list[str]:
    """The input's notes, then the trace's, each once; where the input's already names what the text encoder cut,
    the trace's vaguer "may have been cut" would say it a second time."""
    if any(n.startswith(TRUNCATED) for n in said):
        traced = [n for n in traced if not n.startswith(TRUNCATION_NOTE)]
    return list(dict.fromkeys(said + traced))
