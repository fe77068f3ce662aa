"""What every video family shares: frames of (F, H, W) patch tokens stacked into one grid, and which decoded frames a
latent frame covers.

The denoisers here lay their video tokens out frame by frame, each frame row by row (a Conv3d patch embedding
flattened from (F, H, W)), so the query sequence read as a (frames·h, w) grid is the frames stacked along the
height: the recorder keeps that grid as it is and the maps cut it into frames (`heatmaps.MapData`). A causal video
VAE that compresses time by T makes T·(F − 1) + 1 frames of F latent ones: latent frame 0 is decoded frame 0, latent
frame k ≥ 1 covers decoded frames T·(k − 1) + 1 … T·k.
"""

from __future__ import annotations

import inspect

import torch

from .base import Family


def causal_frames(temporal: int, frames: int) -> list[list[int]]:
    """The decoded frames each of `frames` latent frames covers, for a causal VAE compressing time by `temporal`."""
    return [[0]] + [list(range(temporal * (k - 1) + 1, temporal * k + 1)) for k in range(1, frames)]


class VideoFamily(Family):
    """A transformer over (F, H, W) patch tokens; `patches(denoiser)` gives the (time, height, width) patch size and
    `latent_frames_axis` where the frames sit in the latent the denoiser is given."""

    video = True
    latent_frames_axis = 2  # (B, C, F, H, W); CogVideoX: (B, F, C, H, W)

    def patches(self, denoiser: torch.nn.Module) -> tuple[int, int, int]:
        """(time, height, width) latent pixels per token; default: a square ``patch_size`` and ``patch_size_t``."""
        p = denoiser.config.patch_size
        return denoiser.config.patch_size_t or 1, p, p

    def refused(self, pipe) -> str | None:
        if self.patches(getattr(pipe, self.denoiser))[0] > 1:
            return (f"this {self.name} transformer patches time (patch_size_t), and crossattn does not yet say which "
                    "decoded frames its maps cover; the family's models with time patch 1 are supported")
        return None

    def patch(self, denoiser: torch.nn.Module) -> int:
        return self.patches(denoiser)[1]

    def vae_scale(self, pipe) -> int:
        return pipe.vae_scale_factor_spatial

    def frames(self, denoiser, args, kwargs) -> int:
        latent = self.first_input(args, kwargs)
        return latent.shape[self.latent_frames_axis] // self.patches(denoiser)[0]

    def grid(self, denoiser, args, kwargs) -> tuple[int, int]:
        latent = self.first_input(args, kwargs)
        _, ph, pw = self.patches(denoiser)
        return self.frames(denoiser, args, kwargs) * (latent.shape[-2] // ph), latent.shape[-1] // pw

    def output_frames(self, pipe, frames: int) -> list[list[int]]:
        return causal_frames(self.temporal_factor(pipe), frames)

    def native_size(self, pipe) -> tuple[int, int]:
        """The pipeline's own default size; where it leaves it to the transformer, the transformer's sample size."""
        call = inspect.signature(type(pipe).__call__).parameters
        height, width = call["height"].default, call["width"].default
        if isinstance(height, int) and isinstance(width, int):
            return width, height
        config, scale = getattr(pipe, self.denoiser).config, self.vae_scale(pipe)
        return config.sample_width * scale, config.sample_height * scale
