"""LTX-Video text-to-video (`LTXPipeline`).

Layers: each block's cross-attention ``transformer_blocks.N.attn2``: queries = the video tokens, keys = the T5
positions (padded to ``max_sequence_length``, the padding masked by an additive −10000 bias). Site "blocks".
``attn1`` is video self-attention. Guidance is one batch [negatives, prompts].
The pipeline packs the latents itself, (B, C, F, H, W) → (B, F·H·W, C) with patch 1 (frame by frame, each row by
row), so the latent the transformer gets has no frame or grid shape: the token grid is the ``num_frames``,
``height`` and ``width`` it is given beside it (latent sizes, which are token sizes at patch 1; a transformer that
patches is refused, as those sizes would no longer count its tokens).
VAE: ``vae_spatial_compression_ratio`` (32) in space; ``vae_temporal_compression_ratio`` (8) in time, decoded by
upsamplers that each double every frame and drop the first copy: the causal rule of `video.causal_frames`, T·(F − 1)
+ 1 frames, latent frame 0 alone, latent frame k ≥ 1 → frames T·(k − 1) + 1 … T·k. A VAE with a time patch
(``patch_size_t`` > 1: each decoded frame repeated, none released) would not follow it and is refused.
"""

from __future__ import annotations

from .video import VideoFamily


class LTXFamily(VideoFamily):
    name = "LTX-Video"
    pipelines = ("LTXPipeline",)

    layer_rules = {r"transformer_blocks\.(\d+)\.attn2": ("blocks", "cross")}

    def patches(self, denoiser) -> tuple[int, int, int]:
        return 1, 1, 1  # `refused` otherwise

    def vae_scale(self, pipe) -> int:
        return pipe.vae_spatial_compression_ratio

    def frames(self, denoiser, args, kwargs) -> int:
        return int(kwargs["num_frames"])

    def grid(self, denoiser, args, kwargs) -> tuple[int, int]:
        return int(kwargs["num_frames"]) * int(kwargs["height"]), int(kwargs["width"])

    def temporal_factor(self, pipe) -> int:
        return pipe.vae_temporal_compression_ratio  # LTXPipeline's name for it

    def refused(self, pipe) -> str | None:
        config = pipe.transformer.config
        if (config.patch_size, config.patch_size_t) != (1, 1):
            return (f"this LTX transformer patches its latents ({config.patch_size_t}×{config.patch_size}×"
                    f"{config.patch_size}), so the latent sizes the pipeline gives it no longer count its tokens; "
                    "LTX-Video with patch 1 (every released model) is supported")
        if (getattr(pipe.vae.config, "patch_size_t", 1) or 1) != 1:
            return ("this LTX VAE patches time (patch_size_t), so its decoded frames do not follow the latent frames "
                    "as crossattn maps them; a VAE with time patch 1 (every released model) is supported")
        return None


LTX = LTXFamily()
