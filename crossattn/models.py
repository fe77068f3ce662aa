"""Loading pipelines: the embedded shapes-world model by default, any diffusers pipeline by hub id or folder.

Weights are read from safetensors only (``use_safetensors=True``: a folder with only pickled ``.bin``
weights is refused rather than unpickled). Device and dtype default to CUDA + float16 when a GPU is
present, else CPU + float32 (float16 matmuls are slow or unsupported on CPUs).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The models this package ships (package data under crossattn/assets), by the name users type.
EMBEDDED = ("shapes-unet",)
DEFAULT_MODEL = "shapes-unet"


def asset_path(name: str) -> Path:
    """A file or folder shipped inside the package (works from a checkout and from an installed wheel)."""
    return Path(str(files("crossattn") / "assets" / name))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_pipeline(name_or_path: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None):
    """Load a diffusers pipeline (SD 1.x/2.x, SDXL, ...) from a local folder or a Hugging Face hub id.

    With no argument, the shipped shapes-world model in ``assets/shapes-model``.

    Example:
        >>> import crossattn
        >>> pipe = crossattn.load_pipeline()                 # embedded model, CPU float32 here
        >>> type(pipe).__name__, pipe.device.type
        ('StableDiffusionPipeline', 'cpu')
    """
    from diffusers import DiffusionPipeline

    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    source = asset_path(str(name_or_path)) if str(name_or_path) in EMBEDDED else Path(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if source.exists():
        if not (source / "model_index.json").exists():
            raise FileNotFoundError(f"{source} is not a diffusers pipeline folder (no model_index.json in it)")
        where = str(source)
    elif name_or_path is not None and _HUB_ID.match(str(name_or_path)) and not str(name_or_path).startswith("."):
        where = str(name_or_path)  # a hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5"
    else:
        raise FileNotFoundError(f"model not found: {source} is neither a local folder nor a hub id (org/name)")
    pipe = DiffusionPipeline.from_pretrained(where, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)
