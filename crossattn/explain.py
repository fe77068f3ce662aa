"""`crossattn.explain(pipe, image, caption)`: per-word heat maps of an image the user brings.

The image is encoded by the pipeline's own VAE, noised at a few noise levels with a fixed seed, and the
denoiser is called once per level with the caption — no sampling loop, no guidance — under the same
`crossattn.trace` a generation uses. The caption goes through the pipeline's own ``encode_prompt`` inside the
trace, so the trace sees the token ids and the embeddings exactly as in a generation and finds the caption's
rows the same way (`crossattn.rows`). The levels are called from high noise to low and the trace is told how
many calls make the "generation" (`Trace.expected_steps`), so the result is a `HeatMaps` like any other: word,
phrase and concept maps, placement, segmentation, diagnosis, save and load.

A noise level ℓ in [0, 1] is the denoiser's timestep as a fraction of its training range: on UNet-style
(DDPM) schedulers timestep t = ℓ·T and x_t = √ᾱ_t·x₀ + √(1-ᾱ_t)·ε (the forward process every DDPM-family
scheduler's ``add_noise`` implements, and what an Euler scheduler's scaled model input equals); on flow-matching
schedulers (SD3, Flux, Sana) σ = ℓ, x_σ = (1-σ)·x₀ + σ·ε and the timestep is σ·T, as those pipelines pass it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .families import FLUX, PIXART, SANA, SD3, UNET, family_of
from .families.unet import depth_of
from .generation import NO_WORDS, check_inputs, max_side, merged_notes, native_size, size_multiple
from .heatmaps import HeatMaps
from .saved import MAX_IMAGE_PIXELS, MAX_IMAGE_SCALE
from .tracing import trace

# Chosen on benchmarks/explain_eval.py (drawn shapes-world scenes with exact masks): `explain`'s docstring has
# the figures behind them.
DEFAULT_LEVELS = (0.3, 0.1)
SITES = ("finest", "all")  # which sites a UNet's maps of a given image keep (see `explain`)
MAX_LEVELS = 50
EXIF_ORIENTATION = 0x0112
FLOW_SCHEDULERS = ("FlowMatch",)  # scheduler class names that noise by flow matching (others: by their config)


# ---- the image ---------------------------------------------------------------------------------------------
def read_image(image: str | Path | Image.Image | np.ndarray) -> tuple[Image.Image, list[str]]:
    """The picture `explain` reads, as a new 8-bit RGB PIL image, and notes on what was converted.

    Accepts a file path, a PIL image or an array ((H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8, uint16,
    bool, or floats in [0, 1]). Transparency is flattened onto white, greyscale and 16-bit pictures become 8-bit
    RGB, an EXIF rotation is applied, an animation gives its first frame — each with a note. The caller's image
    is never modified. The maps of `explain` are over this picture (front ends draw overlays on it).
    """
    notes: list[str] = []
    if isinstance(image, str | Path):
        picture = _open(Path(image), notes)
    elif isinstance(image, Image.Image):
        _check_pixels(*image.size)
        picture = image.copy()
    elif isinstance(image, np.ndarray):
        picture = _from_array(image, notes)
    else:
        raise InputError(f"cannot read an image from a {type(image).__name__}: give a file path, a PIL image or a "
                         "numpy array (H, W[, 1|3|4])")
    if picture.getexif().get(EXIF_ORIENTATION, 1) != 1:
        notes.append("the image was turned as its EXIF orientation says (as viewers show it)")
        picture = ImageOps.exif_transpose(picture)
    return _to_rgb(picture, notes), notes


def _check_pixels(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InputError(f"the image is empty ({width}x{height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        side = math.isqrt(MAX_IMAGE_PIXELS)
        raise InputError(f"the image is {width}x{height}: too large to explain; at most {MAX_IMAGE_PIXELS:,} pixels "
                         f"(e.g. {side}x{side})")


def _open(path: Path, notes: list[str]) -> Image.Image:
    try:
        with Image.open(path) as opened:
            _check_pixels(*opened.size)  # from the header, before decoding
            if getattr(opened, "n_frames", 1) > 1:
                notes.append(f"the image has {opened.n_frames} frames: the first is explained")
            opened.load()
            picture = opened.copy()
    except FileNotFoundError:
        raise InputError(f"cannot read the image {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read the image {str(path)!r}: it is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise InputError(f"{str(path)!r} is not an image this tool can read: give a PNG, JPEG, WebP, BMP, GIF or "
                         "TIFF file") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read the image {str(path)!r}: {exc}") from None
    return picture


def _from_array(array: np.ndarray, notes: list[str]) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[-1] in (3, 4)):
        raise InputError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape "
                         f"{tuple(array.shape)}")
    _check_pixels(array.shape[1], array.shape[0])
    if array.dtype == np.uint16:
        notes.append("16-bit image converted to 8 bits per channel")
        array = (array.astype(np.float64) / 257).round().astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError("a float image array must hold values in [0, 1] (NaN and infinities are not allowed), "
                             f"got values from {np.nanmin(array):.3g} to {np.nanmax(array):.3g}")
        array = (array * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InputError(f"an image array must be uint8, uint16, bool or float in [0, 1], got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(picture: Image.Image, notes: list[str]) -> Image.Image:
    mode = picture.mode
    if mode == "P":  # a palette is lossless: look through it, keeping any transparency
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
        mode = picture.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit greyscale (PNG): PIL's own convert would clip
        notes.append("16-bit greyscale image converted to 8-bit RGB")
        values = np.asarray(picture, dtype=np.float64) / (257 if mode != "I" or picture.getextrema()[1] > 255 else 1)
        return Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        raise InputError("a 32-bit float image file is not supported: save it as 8- or 16-bit PNG, or pass an "
                         "array of floats in [0, 1]")
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        notes.append("the image has transparency: transparent pixels are shown on white")
        background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, picture.convert("RGBA")).convert("RGB")
    if mode in ("L", "1"):
        notes.append("greyscale image converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    return picture.convert("RGB")


# ---- the model's side --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Path:
    """How one family encodes a caption and calls its denoiser on an encoded, noised image."""

    encode: Callable  # (pipe, caption, device) -> what encode_prompt returned
    call: Callable  # (pipe, latent (B, C, h, w), timestep, encoded) -> None: one denoiser call
    pack: int = 1  # latent pixels per side packed into one denoiser input channel group (Flux: 2)


def _call_default(pipe, name: str):
    """The default the pipeline's own __call__ gives an argument (what a generation would use)."""
    parameter = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if parameter is None else parameter.default


def _unet_encode(pipe, caption, device):
    return pipe.encode_prompt(caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)


def _unet_call(pipe, latent, t, encoded) -> None:
    unet, embeds = pipe.unet, encoded[0]
    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and (original, crop, target) sizes
        pooled = encoded[2]
        h, w = (side * pipe.vae_scale_factor for side in latent.shape[-2:])
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=embeds.dtype, device=latent.device)
        added = {"text_embeds": pooled, "time_ids": time_ids}
    unet(latent, torch.tensor([t], device=latent.device), encoder_hidden_states=embeds, added_cond_kwargs=added,
         return_dict=False)


def _sd3_encode(pipe, caption, device):
    return pipe.encode_prompt(caption, None, None, device=device, do_classifier_free_guidance=False,
                              max_sequence_length=_call_default(pipe, "max_sequence_length") or 256)


def _sd3_call(pipe, latent, t, encoded) -> None:
    pipe.transformer(hidden_states=latent, timestep=torch.tensor([t], device=latent.device),
                     encoder_hidden_states=encoded[0], pooled_projections=encoded[2], return_dict=False)


def _flux_encode(pipe, caption, device):
    return pipe.encode_prompt(caption, None, device=device,
                              max_sequence_length=_call_default(pipe, "max_sequence_length") or 512)


def _flux_call(pipe, latent, t, encoded) -> None:
    b, c, h, w = latent.shape
    packed = pipe._pack_latents(latent, b, c, h, w)
    ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, latent.device, latent.dtype)
    transformer = pipe.transformer
    guidance = None
    if transformer.config.guidance_embeds:  # guidance-distilled (dev): the embedding the pipeline gives by default
        guidance = torch.full([1], float(_call_default(pipe, "guidance_scale")), device=latent.device)
    embeds, pooled, text_ids = encoded
    # Flux pipelines pass the timestep divided by 1000: σ itself
    transformer(hidden_states=packed, timestep=torch.tensor([t / 1000], device=latent.device), guidance=guidance,
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=ids,
                return_dict=False)


def _pixart_encode(pipe, caption, device):
    options = {"max_sequence_length": _call_default(pipe, "max_sequence_length") or 120}
    if SANA.name == family_of(pipe).name:  # the instruction Sana puts before every prompt in a generation
        options["complex_human_instruction"] = _call_default(pipe, "complex_human_instruction")
    return pipe.encode_prompt(caption, do_classifier_free_guidance=False, device=device, **options)


def _pixart_call(pipe, latent, t, encoded) -> None:
    transformer = pipe.transformer
    embeds, mask = encoded[0], encoded[1]
    kwargs = {}
    if family_of(pipe).name == SANA.name:
        t = t * transformer.config.timestep_scale
    else:
        resolution = aspect = None
        if transformer.config.sample_size == 128 and type(pipe).__name__.startswith("PixArtAlpha"):
            h, w = (side * pipe.vae_scale_factor for side in latent.shape[-2:])  # PixArt-α 1024's size condition
            resolution = torch.tensor([[h, w]], dtype=embeds.dtype, device=latent.device)
            aspect = torch.tensor([[h / w]], dtype=embeds.dtype, device=latent.device)
        kwargs["added_cond_kwargs"] = {"resolution": resolution, "aspect_ratio": aspect}
    transformer(latent, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                timestep=torch.tensor([t], device=latent.device), return_dict=False, **kwargs)


PATHS = {UNET.name: _Path(_unet_encode, _unet_call), SD3.name: _Path(_sd3_encode, _sd3_call),
         FLUX.name: _Path(_flux_encode, _flux_call, pack=2), PIXART.name: _Path(_pixart_encode, _pixart_call),
         SANA.name: _Path(_pixart_encode, _pixart_call)}


def supported() -> list[str]:
    """The families `explain` works with."""
    return list(PATHS)


def _path_of(pipe) -> _Path:
    family = family_of(pipe)
    path = PATHS.get(family.name)
    if path is None:
        raise InputError(f"explain does not support {family.name} ({type(pipe).__name__}) yet: it needs an image "
                         f"encoder path; supported: {', '.join(PATHS)}")
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "encode"):
        raise InputError(f"{type(pipe).__name__} has no VAE to encode the image with: explain needs one")
    denoiser = getattr(pipe, family.denoiser)
    if getattr(denoiser.config, "addition_embed_type", None) == "text_time":  # SDXL: pooled text + 6 size numbers
        pooled = getattr(getattr(pipe, "text_encoder_2", None), "config", None)
        wanted = denoiser.add_embedding.linear_1.in_features
        if pooled is None or denoiser.config.addition_time_embed_dim * 6 + pooled.projection_dim != wanted:
            raise InputError(f"{type(pipe).__name__}'s UNet expects other added conditions than SDXL's sizes (a "
                             "refiner's aesthetic score?): explain supports the SDXL base layout")
    channels = vae.config.latent_channels * path.pack**2
    if denoiser.config.in_channels != channels:
        raise InputError(f"{type(pipe).__name__}'s denoiser takes {denoiser.config.in_channels} input channels, "
                         f"not the {channels} of the encoded image (an inpainting or otherwise conditioned model): "
                         "explain needs a plain text-to-image denoiser")
    return path


def is_flow(scheduler) -> bool:
    """Does this scheduler noise by flow matching (x = (1-σ)·x₀ + σ·ε) rather than the DDPM forward process?"""
    config = scheduler.config
    return type(scheduler).__name__.startswith(FLOW_SCHEDULERS) or bool(config.get("use_flow_sigmas")) or \
        config.get("prediction_type") == "flow_prediction"


def _timesteps(pipe, levels: Sequence[float] | None) -> tuple[list[float], list[float]]:
    """(levels from high noise to low, the denoiser's timestep for each)."""
    scheduler = pipe.scheduler
    chosen = DEFAULT_LEVELS if levels is None else levels
    if isinstance(chosen, int | float) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                      for v in chosen):
        raise InputError(f"noise_levels must be a list of numbers in [0, 1], got {chosen!r}")
    chosen = [float(v) for v in chosen]
    if not 1 <= len(chosen) <= MAX_LEVELS or not all(0 <= v <= 1 for v in chosen):
        raise InputError(f"noise_levels must be 1 to {MAX_LEVELS} numbers in [0, 1] (0: the clean image, 1: pure "
                         f"noise), got {chosen}")
    total = scheduler.config.num_train_timesteps
    flow = is_flow(scheduler)
    if not flow and getattr(scheduler, "alphas_cumprod", None) is None:
        raise InputError(f"{type(scheduler).__name__} has neither a DDPM noise schedule (alphas_cumprod) nor flow "
                         "sigmas: explain cannot noise the image for it")
    chosen.sort(reverse=True)  # high noise to low: timesteps fall within one traced generation
    steps = [v * total if flow else float(min(total - 1, round(v * total))) for v in chosen]
    if len(set(steps)) < len(steps):
        raise InputError(f"noise_levels {chosen} give the same timestep twice ({steps}): give distinct levels")
    return chosen, steps


def _noised(scheduler, latent: torch.Tensor, timestep: float, noise: torch.Tensor) -> torch.Tensor:
    if is_flow(scheduler):
        sigma = timestep / scheduler.config.num_train_timesteps
        return (1 - sigma) * latent + sigma * noise
    alpha = float(scheduler.alphas_cumprod[int(timestep)])
    return alpha**0.5 * latent + (1 - alpha) ** 0.5 * noise


def _encode_image(pipe, picture: Image.Image, device) -> torch.Tensor:
    """The picture as the denoiser's latent: the VAE's mean (deterministic), shifted and scaled as the
    pipeline's own img2img does."""
    vae = pipe.vae
    pixels = torch.from_numpy(np.asarray(picture, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    out = vae.encode(pixels.to(device, vae.dtype))
    latent = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latent
    config = vae.config
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if mean is not None and std is not None:  # VAEs with per-channel statistics (as SDXL img2img uses them)
        shape = (1, -1, 1, 1)
        mean = torch.tensor(mean, device=device).view(shape)
        std = torch.tensor(std, device=device).view(shape)
        return (latent - mean) * config.scaling_factor / std
    return (latent - (config.get("shift_factor") or 0.0)) * config.scaling_factor


def _finest_cell(pipe) -> int:
    """Image pixels per cell of the finest attention grid the maps keep (the UNet's shallowest
    cross-attention level; a transformer's patch)."""
    family = family_of(pipe)
    denoiser = getattr(pipe, family.denoiser)
    if family.denoiser != "unet":
        return family.vae_scale(pipe) * family.patch(denoiser)
    n_down = len(getattr(denoiser, "down_blocks", [])) or 1
    return family.vae_scale(pipe) * 2 ** min(depth_of(path, n_down) for path in family.layers(denoiser))


def model_size(pipe, width: int, height: int) -> tuple[int, int]:
    """(width, height) the model reads an image of this size at: its own size when the model can take it; else
    the nearest sides it can (multiples of `generation.size_multiple`, not past a position table's limit), and
    no more pixels than its native size (an image above that is scaled down, aspect kept)."""
    multiple = size_multiple(pipe)
    native_w, native_h = native_size(pipe)
    scale = min(1.0, math.sqrt(native_w * native_h / (width * height)))
    largest = max_side(pipe)
    if largest is not None:
        scale = min(scale, largest / max(width, height))
    w, h = (max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))
    if largest is not None:
        w, h = min(w, largest // multiple * multiple), min(h, largest // multiple * multiple)
    return w, h


# ---- the call ----------------------------------------------------------------------------------------------
def explain(pipe, image: str | Path | Image.Image | np.ndarray, caption: str, *,
            noise_levels: Sequence[float] | None = None, seed: int = 0, concepts: list[str] | None = None,
            sites: str = "finest", **trace_options) -> HeatMaps:
    """Per-word heat maps of a given image: where does the model see each word of `caption` in it?

    The image is encoded with the pipeline's VAE, noised at each noise level (fixed `seed`), and the denoiser is
    called once per level with the caption, from high noise to low, under `crossattn.trace`: the same
    `HeatMaps` a generation gives (every word, phrase and concept map, placement, segmentation, diagnosis),
    over the image at its own size (``maps.image_size``). The caller's image is never modified.

    Args:
        pipe: a pipeline of Stable Diffusion 1.x/2.x/XL, SD3/3.5 (and the embedded MMDiT), Flux.1, PixArt or
            Sana; other families are refused (`supported()`).
        image: a file path, a PIL image or an array (see `read_image`: transparency, greyscale and 16-bit are
            converted with a note in ``maps.notes``). A size the model cannot take, or one above its native
            pixel count, is resized for the model (`model_size`) with a note; the maps come back at the image's
            own size. Larger than the maps can hold (``saved.MAX_IMAGE_PIXELS``, or more than
            ``saved.MAX_IMAGE_SCALE`` image pixels per attention cell) is refused.
        caption: what the image shows, in the model's words; a caption longer than the text encoder reads is
            kept with a note naming what it does not see.
        noise_levels: each level ℓ in [0, 1] is one denoiser call at timestep ℓ·T (DDPM schedulers) or σ = ℓ
            (flow matching); see the module's docstring. Default (0.3, 0.1), from benchmarks/explain_eval.py (100
            held-out shapes-world scenes drawn with exact masks, both embedded models): low noise reads a given
            image best (mIoU of colour+shape maps at single levels 0.1 / 0.2 / 0.3: UNet 0.770 / 0.771 / 0.773,
            on its finest sites 0.898 / 0.896 / 0.892; MMDiT 0.878 / 0.877 / 0.869), then the MMDiT falls (0.855
            at 0.4, 0.832 at 0.5, 0.704 at 0.7: at high σ its text attention spreads over the whole image) and so
            do the UNet's finest maps (0.876 at 0.5, 0.829 at 0.7); both collapse at 0.9. Two levels (0.3, 0.1) are as
            good as the best single level on both models (UNet 0.772 / 0.897, MMDiT 0.877), and within 0.005 of
            level 0.1 alone either way on drawn out-of-distribution scenes (textured background, anti-aliased
            edges, 4-5 objects, touching objects). Two were kept over one for one more call: the maps then rest
            on two noise draws and two depths rather than on one level being right for a model never measured
            here; ``noise_levels=[0.1]`` halves the cost. Three or four levels add nothing.
        seed: seeds the noise (one draw per level).
        concepts: words to locate whether or not the caption says them (``maps.concept("sky")``).
        sites: ``"finest"`` (default) keeps, on models whose layers work at several resolutions (UNets), only the
            finest cross-attention sites: the coarse ones blur a given image's boundaries (UNet mIoU 0.897 on the
            finest sites against 0.772 on all of them, at the default levels; benchmarks/explain_eval.py).
            ``"all"`` keeps every site, as a generation's maps do. Transformers work at one resolution: no change.
        **trace_options: passed to `crossattn.trace` (``per_head``, ``per_layer``, ``mass``,
            ``concept_method``, ...).

    Example:
        >>> import crossattn
        >>> from PIL import Image, ImageDraw
        >>> picture = Image.new("RGB", (64, 64), (240, 240, 236))
        >>> draw = ImageDraw.Draw(picture)
        >>> draw.ellipse((6, 22, 26, 42), fill=(220, 30, 30))
        >>> draw.rectangle((40, 24, 56, 40), fill=(30, 60, 220))
        >>> maps = crossattn.explain(crossattn.load_pipeline(), picture, "a red circle left of a blue square")
        >>> maps.words, maps.image_size
        (['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square'], (64, 64))
        >>> crossattn.check(maps, "red circle left_of blue square").passed
        True
    """
    path = _path_of(pipe)
    if sites not in SITES:
        raise InputError(f"sites must be one of {', '.join(map(repr, SITES))}, got {sites!r}")
    if not isinstance(caption, str) or not caption.strip():
        raise InputError("the caption is empty: say what the image shows, e.g. 'a red circle left of a blue square'")
    levels, timesteps = _timesteps(pipe, noise_levels)
    picture, notes = read_image(image)
    width, height = picture.size
    work = model_size(pipe, width, height)
    cell = _finest_cell(pipe)
    if max(width / work[0], height / work[1]) * cell > MAX_IMAGE_SCALE:
        side = MAX_IMAGE_SCALE * round(math.sqrt(work[0] * work[1])) // cell
        raise InputError(f"the image is {width}x{height}: too large for this model's maps (at most "
                         f"{MAX_IMAGE_SCALE} image pixels per attention cell); at most about {side}x{side} here")
    notes += check_inputs(pipe, caption, work, len(levels), 0.0, seed=seed,
                          concept_method=trace_options.get("concept_method"))
    if NO_WORDS in notes:
        raise InputError("the caption has no words to map (no letters or digits): say what the image shows")
    if work != (width, height):
        notes.append(f"the image ({width}x{height}) was resized to {work[0]}x{work[1]} for the model; the maps are "
                     "at the image's own size")
    device = getattr(pipe, "_execution_device", None) or pipe.device
    denoiser = getattr(pipe, family_of(pipe).denoiser)
    generator = torch.Generator("cpu").manual_seed(seed)
    with trace(pipe, concepts=concepts, **trace_options) as tr, torch.no_grad():
        tr.expected_steps = len(levels)
        encoded = path.encode(pipe, caption, device)
        model_input = picture if work == (width, height) else picture.resize(work, Image.Resampling.LANCZOS)
        latent = _encode_image(pipe, model_input, device).to(denoiser.dtype)
        for t in timesteps:
            noise = torch.randn(latent.shape, generator=generator).to(device, latent.dtype)
            path.call(pipe, _noised(pipe.scheduler, latent, t, noise), t, encoded)
    maps = tr.heat_maps()
    if sites == "finest" and len(maps.resolutions) > 1:
        maps = maps.filter(resolutions=[maps.resolutions[0]])
    for kept in (maps, maps.concepts):
        if kept is not None:
            kept.image_size = (height, width)
    maps.info = replace(maps.info, prompt=caption, explained=True, noise_levels=levels, seed=seed, guidance_scale=None,
                        model_size=list(work), notes=merged_notes(notes, maps.info.notes))
    maps._image = picture
    return maps
