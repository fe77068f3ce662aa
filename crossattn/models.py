"""Loading pipelines: the embedded shapes-world models by name, any diffusers pipeline by hub id or folder.

Weights are read from safetensors only (``use_safetensors=True``: a folder with only pickled ``.bin``
weights is refused rather than unpickled). Device and dtype default to CUDA + float16 when a GPU is
present, else CPU + float32 (float16 matmuls are slow or unsupported on CPUs). The embedded models ship
inside the package (``crossattn/assets``), so they load from a wheel in any working directory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import torch

from .errors import InputError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The models this package ships (package data under crossattn/assets), by the name users type.
EMBEDDED = {
    "shapes-unet": "shapes world, Stable Diffusion 1.x architecture in miniature (UNet, 64 px)",
    "shapes-mmdit": "shapes world, Stable Diffusion 3 architecture in miniature (MMDiT, 64 px)",
    "shapes-video": "shapes world as video: AnimateDiff over shapes-unet with a zero motion adapter (64 px frames)",
}
DEFAULT_MODEL = "shapes-unet"
# Embedded video models made at load time from an embedded image model: no weights of their own to ship.
VIDEO_OF = {"shapes-video": "shapes-unet"}


def asset_path(name: str) -> Path:
    """A file or folder shipped inside the package (works from a checkout and from an installed wheel)."""
    return Path(str(files("crossattn") / "assets" / name))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_devices() -> list[str]:
    """The devices a pipeline can run on here, as users write them."""
    here = ["cpu"]
    if torch.cuda.is_available():
        here += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        here.append("mps")
    return here


def check_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (default: CUDA when present, else CPU); one that does not exist here is bad input,
    refused before any loading with the devices that do."""
    if device is None:
        return default_device()
    here = available_devices()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists every device type it was ever built for
        raise InputError(f"unknown device {str(device)!r}: choose one of {', '.join(here)}") from None
    if parsed.type != "cpu" and str(parsed) not in here:
        raise InputError(f"device {str(device)!r} is not available here: choose one of {', '.join(here)}")
    return parsed


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def resolve(name_or_path: str | Path | None) -> str:
    """Where a model comes from: an embedded model's folder, a local pipeline folder or a hub id."""
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path).strip()
    name = VIDEO_OF.get(name, name)
    if name in EMBEDDED:
        return str(asset_path(name))
    source = Path(name).expanduser()
    if source.exists():
        if not (source / "model_index.json").exists():
            raise InputError(f"{name} is not a diffusers pipeline folder (no model_index.json in it)")
        return str(source)
    if _HUB_ID.match(name) and not name.startswith("."):
        return name  # a hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5"
    raise InputError(f"model not found: {name!r} is not an embedded model ({', '.join(EMBEDDED)}), a local "
                     "pipeline folder or a hub id (org/name)")


def _absent_parts(where: str) -> dict[str, None]:
    """Components a local folder lists as absent ([null, null]: SD3 without T5): passed as None, since
    diffusers would otherwise insist on loading them."""
    index = Path(where) / "model_index.json"
    if not index.exists():
        return {}
    entries = json.loads(index.read_text())
    return {k: None for k, v in entries.items() if isinstance(v, list) and v == [None, None]}


def _reason(exc: BaseException, where: str) -> str:
    """Why loading failed, in one self-contained line (library messages point at tracebacks the user never sees)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not Path(where).exists():  # a hub id
        if "cached" in text or "outgoing traffic" in text or "connect" in text.lower():
            return ("it is not in the local Hugging Face cache and the Hub cannot be reached (offline?): download it "
                    "where there is a network (huggingface-cli download), or give a local pipeline folder")
        return text.split(" Please check")[0]
    if "safetensors" in text:
        return "it has no safetensors weights (pickled .bin weights are refused: convert them to safetensors)"
    return text.split(". ")[0]


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide diffusers' and transformers' notices (install accelerate / torchvision, loading bars) while a
    pipeline loads, then put their settings back. A user who raised a library's verbosity above its default
    (e.g. ``DIFFUSERS_VERBOSITY=info``) asked for its messages and gets them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    quieted = []
    for library in (diffusers_logging, transformers_logging):
        level, bars = library.get_verbosity(), library.is_progress_bar_enabled()
        if level >= logging.WARNING:
            library.set_verbosity(logging.ERROR)
            library.disable_progress_bar()
            quieted.append((library, level, bars))
    try:
        yield
    finally:
        for library, level, bars in quieted:
            library.set_verbosity(level)
            if bars:
                library.enable_progress_bar()


def load_pipeline(name_or_path: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None):
    """Load a diffusers pipeline (any supported family) from a local folder or a Hugging Face hub id.

    With no argument, the embedded shapes-world UNet model; ``"shapes-mmdit"`` is the embedded MMDiT.

    Example:
        >>> import crossattn
        >>> pipe = crossattn.load_pipeline()                 # embedded model, CPU float32 here
        >>> type(pipe).__name__, pipe.device.type
        ('StableDiffusionPipeline', 'cpu')
    """
    from diffusers import DiffusionPipeline

    where = resolve(name_or_path)
    device = check_device(device)
    dtype = dtype or default_dtype(device)
    with _quiet_loading():
        try:
            pipe = DiffusionPipeline.from_pretrained(where, dtype=dtype, use_safetensors=True,
                                                     **_absent_parts(where))
        except (OSError, ValueError) as exc:  # offline hub, missing safetensors, broken folder: say it in one line
            raise InputError(f"could not load {name_or_path or DEFAULT_MODEL!s}: {_reason(exc, where)}") from exc
    if str(name_or_path).strip() in VIDEO_OF:
        with _quiet_loading():  # diffusers' notice on casting the new motion modules
            pipe = with_zero_motion(pipe)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def with_zero_motion(pipe):
    """An AnimateDiff pipeline over an image pipeline's UNet with a motion adapter whose output projections are 0:
    each motion module adds exactly nothing, so every frame is the image model's own picture of its own noise — a
    video whose frames are shapes-world scenes with pixel truth (different scenes: the frames' noise differs)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    config = pipe.unet.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the adapter's other weights never reach the output; seeded all the same
        adapter = MotionAdapter(block_out_channels=config.block_out_channels,
                                motion_layers_per_block=config.layers_per_block, motion_norm_num_groups=32,
                                motion_num_attention_heads=2, motion_max_seq_length=32)
    for module in adapter.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    video = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                unet=pipe.unet, motion_adapter=adapter.to(pipe.unet.dtype), scheduler=pipe.scheduler)
    return video
