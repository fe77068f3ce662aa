"""Tiny pipelines built from small configs (random weights, no download), shared by the tests.

The tokenizer is the real CLIP BPE vocabulary shipped in assets/clip-tokenizer, so word/token behaviour
is the one of real Stable Diffusion.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from crossattn.shapes.model import TOKENIZER_DIR

torch.set_flush_denormal(True)


def text_config(**overrides) -> CLIPTextConfig:
    base = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextConfig(**(base | overrides))


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=32)


def sd_pipeline(unet: UNet2DConditionModel, scheduler) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config()),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    """SD-1.x layout in miniature: VAE factor 2 (32 px images → 16×16 latents), cross-attention at 8×8."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4),
    )
    return sd_pipeline(unet, DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))


@pytest.fixture(scope="session")
def tiny_sd() -> StableDiffusionPipeline:
    return build_tiny_sd()


@pytest.fixture(scope="session")
def tiny_sd3level() -> StableDiffusionPipeline:
    """Three UNet levels so cross-attention runs at 3 resolutions (16×16, 8×8, 4×4) in down, mid and up."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2,
    )
    return sd_pipeline(unet, DDIMScheduler())


@pytest.fixture(scope="session")
def tiny_sdxl() -> StableDiffusionXLPipeline:
    """SDXL layout: two text encoders (concatenated context, 32 + 32), text_time added conditioning."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    )
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config()),
        text_encoder_2=CLIPTextModelWithProjection(text_config(projection_dim=32)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
