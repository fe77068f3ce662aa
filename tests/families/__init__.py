"""The model families as the tests see them: `FAMILIES` lists each one's tiny pipeline (`pipelines`: one builder
per family; `text`: the tokenizers and text encoders they share), how to call it, and where its attention calls
hold the image, the text and the prompt's rows: what `tests/test_families.py` runs its contract on.
Used by the tests and the benchmarks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..helpers import seeded
from . import pipelines as tiny
from . import video
from .text import LUMINA_SYSTEM, SANA_INSTRUCTION

PROMPT = "a cyan hexagon left of a cyan square"  # "hexagon": several pieces in every tokenizer; "a", "cyan" twice
WORDS = PROMPT.split()
NEGATIVE = "a green triangle"
STEPS = 2


# ---- where the image and the text sit in one attention call: (keys, image tokens) -> (image queries, text keys)
def cross(keys: int, pixels: int) -> tuple[slice, slice]:
    return slice(0, pixels), slice(0, keys)


def added_kv(keys: int, pixels: int) -> tuple[slice, slice]:  # keys: [text, the queries' own image]
    return slice(0, pixels), slice(0, keys - pixels)


def text_first(keys: int, pixels: int) -> tuple[slice, slice]:
    return slice(keys - pixels, keys), slice(0, keys - pixels)


def image_first(keys: int, pixels: int) -> tuple[slice, slice]:
    return slice(0, pixels), slice(pixels, keys)


def image_padded_first(keys: int, pixels: int) -> tuple[slice, slice]:  # Z-Image pads the image to 32k tokens
    return slice(0, pixels), slice(math.ceil(pixels / 32) * 32, keys)


# ---- where the prompt's rows are under guidance
NEGATIVES_FIRST = "negatives first"  # one batch [negatives, prompts] per step
PROMPTS_FIRST = "prompts first"  # one batch [prompts, negatives] per step
CALLS = "calls"  # one denoiser call per step for the prompt, then one for the negative


# ---- the token at each text position of the denoiser's input, as each pipeline builds it (from the pipelines'
# code, not crossattn's): what the kept tokens must be
def pieces(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


def tokens_of(name: str = "tokenizer") -> Callable:
    """The prompt as the pipeline's tokenizer `name` makes it (padding after it is never kept)."""
    def fed(pipe) -> list[str]:
        tokenizer = getattr(pipe, name)
        return pieces(tokenizer, tokenizer(PROMPT).input_ids)
    return fed


def padded_then(second: str) -> Callable:
    """Two encoders' texts one after the other: the first padded to 77 positions, then `second`'s."""
    def fed(pipe) -> list[str]:
        first = pipe.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
        return pieces(pipe.tokenizer, first) + tokens_of(second)(pipe)
    return fed


def sana_fed(pipe) -> list[str]:
    tok, length = pipe.tokenizer, 16  # max_sequence_length
    ids = tok(SANA_INSTRUCTION + PROMPT, padding="max_length", truncation=True,
              max_length=len(tok.encode(SANA_INSTRUCTION)) + length - 2).input_ids
    return pieces(tok, [ids[0]] + ids[-(length - 1):])  # output rows [0] + the last 15


def lumina2_fed(pipe) -> list[str]:
    return pieces(pipe.tokenizer, pipe.tokenizer(LUMINA_SYSTEM + PROMPT).input_ids)


def cogview4_fed(pipe) -> list[str]:
    ids = pipe.tokenizer(PROMPT).input_ids
    return pieces(pipe.tokenizer, [pipe.tokenizer.pad_token_id] * (-len(ids) % 16) + ids)  # left-padded to 16k


def auraflow_fed(pipe) -> list[str]:
    return ["<register>"] * 8 + tokens_of()(pipe)


def hunyuan_fed(pipe) -> list[str]:  # the templated prompt, its first crop_start tokens dropped by the pipeline
    template = video.hunyuan_template()
    ids = pipe.tokenizer(template["template"].format(PROMPT)).input_ids
    return pieces(pipe.tokenizer, ids[template["crop_start"]:])


@dataclass(frozen=True)
class Family:
    build: Callable
    call: dict  # a 2-step call's options (32 px, latents, guidance with NEGATIVE where the family has it)
    layout: Callable[[int, int], tuple[slice, slice]]
    guidance: str | None  # None: no negative (guidance-distilled)
    sources: tuple[str, ...]  # the texts the maps name, in order
    fed: Callable | None = tokens_of()  # None: a chat template, not rebuilt here
    output: str = "images"  # the pipeline output's field: "frames" for a video pipeline


NEG = dict(negative_prompt=NEGATIVE)


def video_call(name: str) -> dict:
    """A video family's call (`video.CALLS`: frames, size, guidance), with the negative prompt where it takes one."""
    options = dict(video.CALLS[name])
    return options | NEG if options.pop("negative") else options

IMAGE_EMBEDS = torch.randn(2, 1, 32, generator=seeded(1))  # [negative, prompt] image embeddings for the IP-Adapter
OUT_LAYERS = dict(text_encoder_out_layers=(1, 2))  # the tiny Flux.2 encoders have 2 layers
FAMILIES = {
    "sd": Family(tiny.build_tiny_sd, dict(guidance_scale=5.0, **NEG), cross, NEGATIVES_FIRST, ("clip",)),
    "sdxl": Family(tiny.build_tiny_sdxl, dict(guidance_scale=5.0, **NEG), cross, NEGATIVES_FIRST, ("clip",)),
    "sd_ip_adapter": Family(tiny.build_tiny_sd_ip_adapter, dict(guidance_scale=5.0, ip_adapter_image_embeds=[
        IMAGE_EMBEDS], **NEG), cross, NEGATIVES_FIRST, ("clip",)),
    "kandinsky3": Family(tiny.build_tiny_kandinsky3, dict(height=64, width=64, guidance_scale=4.0, **NEG), cross,
                         NEGATIVES_FIRST, ("t5",)),
    "if": Family(tiny.build_tiny_if, dict(height=16, width=16, guidance_scale=4.0, clean_caption=False,
                                          output_type="pt", **NEG), added_kv, NEGATIVES_FIRST, ("t5",)),
    "sd3": Family(tiny.build_tiny_sd3, dict(guidance_scale=5.0, max_sequence_length=24, **NEG), image_first,
                  NEGATIVES_FIRST, ("clip", "t5"), padded_then("tokenizer_3")),
    "flux": Family(tiny.build_tiny_flux, dict(guidance_scale=3.5, max_sequence_length=24), text_first, None,
                   ("t5",), tokens_of("tokenizer_2")),
    "pixart": Family(tiny.build_tiny_pixart, dict(guidance_scale=4.5, max_sequence_length=24,
                                                  use_resolution_binning=False, **NEG), cross, NEGATIVES_FIRST,
                     ("t5",)),
    "sana": Family(tiny.build_tiny_sana, dict(guidance_scale=4.5, max_sequence_length=16,
                                              use_resolution_binning=False, **NEG), cross, NEGATIVES_FIRST,
                   ("gemma",), sana_fed),
    "lumina2": Family(tiny.build_tiny_lumina2, dict(height=64, width=64, guidance_scale=4.0, max_sequence_length=64,
                                                    **NEG), text_first, CALLS, ("gemma",), lumina2_fed),
    "cogview4": Family(tiny.build_tiny_cogview4, dict(guidance_scale=4.0, **NEG), text_first, CALLS, ("glm",),
                       cogview4_fed),
    "hunyuandit": Family(tiny.build_tiny_hunyuandit, dict(height=16, width=16, guidance_scale=4.0,
                                                          use_resolution_binning=False, **NEG), cross,
                         NEGATIVES_FIRST, ("bert", "mt5"), padded_then("tokenizer_2")),
    "auraflow": Family(tiny.build_tiny_auraflow, dict(guidance_scale=4.0, max_sequence_length=24, **NEG), text_first,
                       NEGATIVES_FIRST, ("umt5",), auraflow_fed),
    "flux2": Family(tiny.build_tiny_flux2, dict(max_sequence_length=80, **OUT_LAYERS), text_first, None,
                    ("mistral",), None),
    "flux2_klein": Family(tiny.build_tiny_flux2_klein, dict(guidance_scale=4.0, max_sequence_length=32,
                                                            **OUT_LAYERS), text_first, CALLS, ("qwen3",), None),
    "qwenimage": Family(tiny.build_tiny_qwenimage, dict(true_cfg_scale=4.0, max_sequence_length=32, **NEG),
                        text_first, CALLS, ("qwen2.5-vl",), None),
    # 40 px: 10×10 = 100 image tokens, padded to 128 before the text
    "zimage": Family(tiny.build_tiny_zimage, dict(height=40, width=40, guidance_scale=4.0, max_sequence_length=32,
                                                  **NEG), image_padded_first, PROMPTS_FIRST, ("qwen3",), None),
    "hidream": Family(tiny.build_tiny_hidream, dict(guidance_scale=4.0, max_sequence_length=24, **NEG), image_first,
                      NEGATIVES_FIRST, ("t5", "llama", "llama_layer"), None),
    "chroma": Family(tiny.build_tiny_chroma, dict(guidance_scale=4.0, max_sequence_length=24, **NEG), text_first,
                     CALLS, ("t5",)),
    # video: frames as rows of the batch (AnimateDiff), or (F, H, W) patch tokens in the sequence
    "animatediff": Family(video.build_tiny_animatediff, video_call("animatediff"), cross, NEGATIVES_FIRST, ("clip",),
                          output="frames"),
    "animatediff_v2v": Family(video.build_tiny_animatediff_v2v, video_call("animatediff_v2v"), cross,
                              NEGATIVES_FIRST, ("clip",), output="frames"),
    "animatediff_controlnet": Family(video.build_tiny_animatediff_controlnet, video_call("animatediff_controlnet"),
                                     cross, NEGATIVES_FIRST, ("clip",), output="frames"),
    "animatediff_sdxl": Family(video.build_tiny_animatediff_sdxl, video_call("animatediff_sdxl"), cross,
                               NEGATIVES_FIRST, ("clip",), output="frames"),
    "wan": Family(video.build_tiny_wan, video_call("wan"), cross, CALLS, ("t5",), output="frames"),
    # Wan 2.2 A14B: a second transformer takes the low-noise step
    "wan22": Family(functools.partial(video.build_tiny_wan, experts=True), video_call("wan"), cross, CALLS, ("t5",),
                    output="frames"),
    "cogvideox": Family(video.build_tiny_cogvideox, video_call("cogvideox"), text_first, NEGATIVES_FIRST, ("t5",),
                        output="frames"),
    "hunyuanvideo": Family(video.build_tiny_hunyuanvideo, video_call("hunyuanvideo") | dict(
        prompt_template=video.hunyuan_template()), image_first, None, ("llama",), hunyuan_fed, output="frames"),
    "ltx": Family(video.build_tiny_ltx, video_call("ltx"), cross, NEGATIVES_FIRST, ("t5",), output="frames"),
}


def run(pipe, family: Family, prompt=PROMPT, **kw) -> torch.Tensor:
    options = dict(height=32, width=32, output_type="latent") | family.call | kw
    out = pipe(prompt=prompt, num_inference_steps=STEPS, generator=seeded(), **options)
    return getattr(out, family.output)
