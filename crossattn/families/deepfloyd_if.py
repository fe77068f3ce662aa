"""DeepFloyd IF (T5, pixel-space UNet with added K/V attention): all stages (IF-I, super-resolution, img2img).

Its `UNet2DConditionModel` has no ``attn2``: the SimpleCrossAttn blocks' attention layers project the text
with their own added key/value weights and concatenate those keys before the image's own keys, so one
attention call holds [text keys, image keys] for image queries (kind "added_kv"; with
``only_cross_attention`` the keys are the text alone: "cross"). Traced: every attention module with added
K/V; sites are (block, resolution) like a UNet's. Text: T5's 77 positions. The UNet works on pixels, so the
image is its sample's size. Needs the default `AttnAddedKVProcessor2_0` (the older `AttnAddedKVProcessor`
does not call SDPA: coverage reports its layers as not observed).
"""

from __future__ import annotations

from ..capture import Layer
from .unet import T5UNetFamily, unet_layers


class IFFamily(T5UNetFamily):
    name = "DeepFloyd IF"
    pipelines = ("IF*",)

    def layers(self, denoiser) -> dict[str, Layer]:
        return unet_layers(denoiser, {n: "cross" if m.only_cross_attention else "added_kv"
                                      for n, m in denoiser.named_modules()
                                      if getattr(m, "added_kv_proj_dim", None) is not None})

    def vae_scale(self, pipe) -> int:
        return 1


IF = IFFamily()
