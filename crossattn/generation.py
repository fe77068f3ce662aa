"""One traced generation with validated inputs: what the CLI, the demo and the evaluations call.

    >>> import crossattn
    >>> from crossattn.generation import generate
    >>> pipe = crossattn.load_pipeline()
    >>> image, maps = generate(pipe, "a red circle left of a blue square", seed=0)
    >>> image.size, maps.words[:3]
    ((64, 64), ['a', 'red', 'circle'])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from .heatmaps import HeatMaps
from .tracing import trace
from .words import find_word, prompt_words

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this: VAE factor × the UNet's total downsampling."""
    levels = len(getattr(pipe.unet.config, "block_out_channels", (0,)))
    return pipe.vae_scale_factor * 2 ** (levels - 1)


def native_size(pipe) -> tuple[int, int]:
    """(width, height) the model was built for."""
    side = pipe.unet.config.sample_size
    side = side if isinstance(side, int) else side[0]
    return side * pipe.vae_scale_factor, side * pipe.vae_scale_factor


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) as (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"bad size {text!r}: write WIDTHxHEIGHT, e.g. 512x512") from None
    return w, h


def check_inputs(pipe, prompt: str, size: tuple[int, int], steps: int, guidance: float,
                 words: list[str] | None = None) -> None:
    """Raise ValueError (UnknownWordError for words) with a specific message before any compute is spent."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: type what the image should show")
    m = size_multiple(pipe)
    w, h = size
    if w <= 0 or h <= 0 or w % m or h % m:
        raise ValueError(f"bad size {w}x{h}: width and height must be positive multiples of {m} for this model")
    if w * h > 4096 * 4096:
        raise ValueError(f"bad size {w}x{h}: at most 4096x4096 pixels")
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps must be between 1 and 1000, got {steps}")
    if not 0 <= guidance <= 50:
        raise ValueError(f"guidance must be between 0 and 50, got {guidance}")
    known = prompt_words(pipe.tokenizer, prompt)
    for word in words or []:
        find_word(known, word)


def generate(
    pipe,
    prompt: str,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    size: tuple[int, int] | None = None,
    negative_prompt: str | None = None,
    on_step: Callable[[int, int], None] | None = None,
    **trace_options,
) -> tuple[Image.Image, HeatMaps]:
    """Generate one image of `prompt` under `crossattn.trace` and return it with its heat maps.

    `size` is (width, height), default the model's native size; `on_step(done, total)` is called after
    every denoising step (progress bars); `trace_options` go to `crossattn.trace`.
    """
    size = size or native_size(pipe)
    check_inputs(pipe, prompt, size, steps, guidance)

    def callback(pipeline, i, t, kwargs):
        if on_step is not None:
            on_step(i + 1, steps)
        return kwargs

    device = pipe.device if pipe.device.type != "mps" else "cpu"
    generator = torch.Generator(device).manual_seed(seed)
    with trace(pipe, **trace_options) as tr:
        image = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=size[0],
            height=size[1],
            generator=generator,
            callback_on_step_end=callback,
        ).images[0]
    maps = tr.heat_maps()
    maps.meta.update(prompt=prompt, negative_prompt=negative_prompt, seed=seed, guidance_scale=guidance,
                     size=list(size))
    return image, maps
