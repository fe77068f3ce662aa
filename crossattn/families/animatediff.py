"""AnimateDiff (`AnimateDiffPipeline`, its video-to-video, ControlNet and SDXL variants): a Stable Diffusion UNet
turned into a `UNetMotionModel` by motion modules.

Layers: the UNet's own text cross-attention (``attn2`` of its spatial transformer blocks), as in `unet.py`; the
motion modules' ``attn1``/``attn2`` attend across frames (batch B·H·W, sequence = frames), never to the text, and
are not traced. The frames are rows of the batch: the latent (B, C, F, H, W) is run as (B·F, C, H, W) and the
pipeline repeats each prompt's text once per frame, so a frame is recorded as a row of its own, as an image
would be, and the maps stack a video's F rows into its frames. The VAE decodes frame by frame: map frame k is
decoded frame k.
"""

from __future__ import annotations

from ..errors import InputError
from .base import Family
from .unet import UNetFamily


class AnimateDiffFamily(UNetFamily):
    name = "AnimateDiff"
    pipelines = ("AnimateDiffPipeline", "AnimateDiffVideoToVideoPipeline", "AnimateDiffControlNetPipeline",
                 "AnimateDiffSDXLPipeline")
    video = True
    frames_in_batch = True

    def _sample(self, args, kwargs):
        return kwargs.get("sample", args[0] if args else None)

    def first_input(self, args, kwargs):
        return self._sample(args, kwargs).transpose(1, 2).flatten(0, 1)  # (B·F, C, H, W): a row per frame

    def text_input(self, args, kwargs):
        """One text row per frame, as the batch has: the SDXL pipeline gives one per video (its UNet repeats it per
        frame inside), the others already one per frame."""
        text, sample = super().text_input(args, kwargs), self._sample(args, kwargs)
        if text is not None and text.shape[0] == sample.shape[0] and sample.shape[2] > 1:
            return text.repeat_interleave(sample.shape[2], dim=0)
        return text

    def frames(self, denoiser, args, kwargs) -> int:
        return self._sample(args, kwargs).shape[2]

    def output_frames(self, pipe, frames: int) -> list[list[int]]:
        return [[k] for k in range(frames)]

    def check_frames(self, pipe, frames: int) -> None:
        Family.check_frames(self, pipe, frames)
        most = pipe.unet.config.motion_max_seq_length  # the motion modules' position table
        if frames > most:
            raise InputError(f"frames must be at most {most} for this motion adapter (its position table), got "
                             f"{frames}")


ANIMATEDIFF = AnimateDiffFamily()
