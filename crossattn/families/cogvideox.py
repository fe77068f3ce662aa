"""CogVideoX 1.0 (`CogVideoXPipeline`: 2B, 5B; 1.5, which also patches time, is refused).

Layers: each block's joint attention ``transformer_blocks.N.attn1`` over one sequence: the T5 text first (the
pipeline pads it to ``max_sequence_length``, 226, unmasked), then the video's (F, H, W) patch tokens (2×2).
Site "joint". The latent reaches the transformer as (B, F, C, H, W).
Guidance is one batch [negatives, prompts].
"""

from __future__ import annotations

from .video import VideoFamily


class CogVideoXFamily(VideoFamily):
    name = "CogVideoX"
    pipelines = ("CogVideoXPipeline",)
    latent_frames_axis = 1

    layer_rules = {r"transformer_blocks\.(\d+)\.attn1": ("joint", "text_first")}


COGVIDEOX = CogVideoXFamily()
