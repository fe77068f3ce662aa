"""Model families: what differs between them (layers, text positions, tokenizers), one module each.

`base.Family` says what a family answers; `family_of(pipe)` picks the family of a pipeline by its class.
"""

from __future__ import annotations

from ..errors import InputError
from .base import Family
from .flux import FLUX
from .pixart import PIXART, SANA
from .sd3 import SD3
from .unet import UNET

# Checked in order: the UNet family last, as its "StableDiffusion*" would also match "StableDiffusion3...".
REGISTRY: tuple[Family, ...] = (
    SD3, FLUX, PIXART, SANA,
    UNET,
)
VIDEO_WORDS = ("Video", "AnimateDiff", "Wan", "CogVideoX", "Mochi", "LTX", "Latte", "Allegro", "SkyReels")

__all__ = ["REGISTRY", "Family", "family_of", "supported_list"]


def family_of(pipe) -> Family:
    """The family of a pipeline, by its class; a clear error for video and unknown transformer pipelines."""
    names = [cls.__name__ for cls in type(pipe).__mro__]
    name = names[0]
    if any(word in name for word in VIDEO_WORDS):
        raise InputError(f"{name} generates video, which crossattn does not support yet (frames share the attention "
                         f"batch, so per-frame maps need their own handling); supported: {supported_list()}")
    for family in REGISTRY:
        for pattern in family.pipelines:
            if any(n == pattern or pattern.endswith("*") and n.startswith(pattern[:-1]) for n in names):
                return family
    if getattr(pipe, "unet", None) is not None and type(pipe.unet).__name__ == "UNet2DConditionModel":
        return UNET  # any other pipeline built around a Stable Diffusion UNet
    raise InputError(f"{name} is not supported: crossattn.trace works with {supported_list()}")


def supported_list() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.pipelines)})" for f in REGISTRY)
