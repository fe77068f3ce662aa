"""Wan 2.1 and 2.2 text-to-video (`WanPipeline`): Wan 2.2 A14B runs its low-noise steps on a second transformer
(``transformer_2``, same layers), traced alike into the same sites.

Layers: each block's cross-attention ``blocks.N.attn2``: queries = the video's (F, H, W) patch tokens (patch
1×2×2), keys = the UMT5 positions, zero-padded to ``max_sequence_length`` and not masked. Site "blocks".
Guidance runs two denoiser calls per step, prompt first; `crossattn.rows` tells them apart by their text.
"""

from __future__ import annotations

from .video import VideoFamily


class WanFamily(VideoFamily):
    name = "Wan 2.1 / 2.2 (text-to-video)"
    pipelines = ("WanPipeline",)

    layer_rules = {r"blocks\.(\d+)\.attn2": ("blocks", "cross")}

    def patches(self, denoiser) -> tuple[int, int, int]:
        return tuple(denoiser.config.patch_size)

    def experts(self, pipe) -> list[str]:
        return ["transformer_2"] if getattr(pipe, "transformer_2", None) is not None else []


WAN = WanFamily()
