"""Model families: what differs between them (layers, text positions, tokenizers), one module each.

`base.Family` says what a family answers; `family_of(pipe)` picks the family of a pipeline by its class.
"""

from __future__ import annotations

from ..errors import InputError
from .animatediff import ANIMATEDIFF
from .auraflow import AURAFLOW
from .base import Family
from .chroma import CHROMA
from .cogvideox import COGVIDEOX
from .cogview4 import COGVIEW4
from .deepfloyd_if import IF
from .flux import FLUX
from .flux2 import FLUX2, FLUX2_KLEIN
from .hidream import HIDREAM
from .hunyuandit import HUNYUANDIT
from .hunyuanvideo import HUNYUANVIDEO
from .kandinsky3 import KANDINSKY3
from .ltx import LTX
from .lumina2 import LUMINA2
from .pixart import PIXART, SANA
from .qwenimage import QWEN_IMAGE
from .sd3 import SD3
from .unet import UNET
from .wan import WAN
from .zimage import Z_IMAGE

# Checked in order: the UNet family last, as its "StableDiffusion*" would also match "StableDiffusion3...".
REGISTRY: tuple[Family, ...] = (
    SD3, FLUX, PIXART, SANA,
    FLUX2, FLUX2_KLEIN, CHROMA, QWEN_IMAGE, Z_IMAGE, HIDREAM,
    LUMINA2, COGVIEW4, HUNYUANDIT, AURAFLOW, KANDINSKY3, IF,
    WAN, COGVIDEOX, ANIMATEDIFF, HUNYUANVIDEO, LTX,
    UNET,
)
VIDEO_WORDS = ("Video", "AnimateDiff", "Wan", "CogVideoX", "Mochi", "LTX", "Latte", "Allegro", "SkyReels")
# Variants that a broader pattern would catch but whose sequences the family does not describe.
NOT_YET = {"StableDiffusionPanorama": "its denoiser sees one view window of the panorama per call, and crossattn does "
                                     "not yet place the views' maps on the panorama",
           "Flux2": "among Flux.2 pipelines only Flux2Pipeline and Flux2KleinPipeline are supported (the KV, edit "
                    "and inpaint variants put reference-image tokens into the sequence)"}
# Modular pipelines whose text encoder step calls its own `encode_prompt` (which the trace watches), each with the
# classic pipeline whose family it is: their guiders run each pass as its own denoiser call, and the prompt's is
# told by its text, as with classic pipelines.
MODULAR = {"StableDiffusionXLModularPipeline": "StableDiffusionXLPipeline", "FluxModularPipeline": "FluxPipeline",
           "ZImageModularPipeline": "ZImagePipeline"}

__all__ = ["MODULAR", "REGISTRY", "Family", "family_of", "supported_list"]


def family_of(pipe) -> Family:
    """The family of a pipeline, by its class; a clear error for video and unknown transformer pipelines."""
    names = [cls.__name__ for cls in type(pipe).__mro__]
    name = names[0]
    if "ModularPipeline" in names:
        if name not in MODULAR:
            raise InputError(f"{name} is a modular pipeline that crossattn does not support yet: it traces "
                             f"{', '.join(MODULAR)} (whose text encoder steps it can watch), and every family's "
                             "classic pipeline class")
        names = [MODULAR[name]]  # its family is its classic pipeline's
    video = any(word in name for word in VIDEO_WORDS)
    for exact in (True, False):  # an exact class name wins over a prefix ("Flux2Pipeline" over Flux.1's "Flux*")
        for family in REGISTRY:
            for pattern in family.pipelines:
                if any(n == pattern if exact else pattern.endswith("*") and n.startswith(pattern[:-1]) for n in names):
                    if video and not family.video:  # a video pipeline caught by an image family's prefix
                        break
                    return family
        if exact:
            for prefix, why in NOT_YET.items():
                if name.startswith(prefix):
                    raise InputError(f"{name} is not supported yet: {why}")
    if video:
        supported = ", ".join(p for f in REGISTRY if f.video for p in f.pipelines)
        raise InputError(f"{name} is not supported yet: among video pipelines crossattn traces {supported}; "
                         "image-to-video pipelines and the other video variants are not done yet")
    if getattr(pipe, "unet", None) is not None and type(pipe.unet).__name__ == "UNet2DConditionModel":
        return UNET  # any other pipeline built around a Stable Diffusion UNet
    raise InputError(f"{name} is not supported: crossattn.trace works with {supported_list()}")


def supported_list() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.pipelines)})" for f in REGISTRY)
