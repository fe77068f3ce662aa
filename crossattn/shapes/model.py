"""The shapes-world pipeline's architecture: a Stable Diffusion in miniature.

Same component classes as SD 1.x (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer),
so everything that works here works on a hub model. Sizes:

- images 64×64, VAE factor 4 → latents 4×16×16 (SD: factor 8, 4×64×64);
- UNet channels 64/128/128, cross-attention at 16×16, 8×8 and 4×4 (SD: 64, 32, 16, 8), 4 heads;
- text encoder: real CLIP BPE vocabulary (assets/clip-tokenizer), width 64, 3 layers, 77 tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ASSETS = Path(__file__).resolve().parents[2] / "assets"
TOKENIZER_DIR = ASSETS / "clip-tokenizer"
MODEL_DIR = ASSETS / "shapes-model"
LATENT_SIZE = 16
PREDICTION_TYPE = "v_prediction"
BETA_SCHEDULE = "squaredcos_cap_v2"


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    )


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=4,  # diffusers' UNet reads this as the number of heads
    )


def build_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def load_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def build_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        beta_schedule=BETA_SCHEDULE, prediction_type=PREDICTION_TYPE, timestep_spacing="trailing", steps_offset=1
    )


def assemble_pipeline(
    vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from trained parts (no safety checker: the world has nothing to check)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def untrained_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The shapes architecture with random weights: for tests and for building before training."""
    torch.manual_seed(seed)
    return assemble_pipeline(build_vae(), build_unet(), build_text_encoder())
