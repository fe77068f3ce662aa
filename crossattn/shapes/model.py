"""The shapes-world pipelines' architectures: Stable Diffusion 1.x and Stable Diffusion 3 in miniature.

Both use the same component classes as the real models, so everything that works here works on a hub model,
the same VAE (factor 4: 64×64 images → 4×16×16 latents) and the real CLIP BPE vocabulary
(``crossattn/assets/clip-tokenizer``: token ids match real CLIP, 77 positions).

- ``unet`` (`StableDiffusionPipeline`): UNet channels 64/128/128, cross-attention at 16×16, 8×8 and 4×4,
  4 heads; one CLIP text encoder of width 64, 3 layers. v-prediction on a cosine schedule.
- ``mmdit`` (`StableDiffusion3Pipeline`): an `SD3Transformer2DModel` of width 128 (4 heads of 32), 8 joint
  blocks, patch size 1 (so its text→image maps are 16×16, like the UNet's finest), q/k RMS norms; two CLIP
  text encoders (widths 64 and 32; the first starts from the UNet model's trained one) and no T5, which
  diffusers allows: the pipeline then feeds 256 rows of zeros where T5's tokens would be. Flow matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..models import asset_path

TOKENIZER_DIR = asset_path("clip-tokenizer")
MODEL_DIR = asset_path("shapes-unet")
LATENT_SIZE = 16
PREDICTION_TYPE = "v_prediction"
BETA_SCHEDULE = "squaredcos_cap_v2"
# StableDiffusion3Pipeline's default max_sequence_length: without T5 the text sequence ends in this many zero rows.
T5_SLOTS = 256


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


def clip_config(width: int, layers: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407, **extra)


def build_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(clip_config(64, 3))


def build_transformer() -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=8,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=96,  # the two CLIPs' widths, 64 + 32, concatenated
        caption_projection_dim=128,
        pooled_projection_dim=96,
        pos_embed_max_size=LATENT_SIZE,
        qk_norm="rms_norm",
    )


def build_text_encoder_pair() -> tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection]:
    return (CLIPTextModelWithProjection(clip_config(64, 3, projection_dim=64)),
            CLIPTextModelWithProjection(clip_config(32, 2, projection_dim=32)))


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


def assemble_mmdit_pipeline(vae: AutoencoderKL, transformer: SD3Transformer2DModel,
                            text_encoder: CLIPTextModelWithProjection,
                            text_encoder_2: CLIPTextModelWithProjection) -> StableDiffusion3Pipeline:
    """A StableDiffusion3Pipeline from trained parts, without T5 (diffusers feeds zeros in its place)."""
    if vae.config.shift_factor is None:  # SD3 decodes latents / scale + shift
        vae.register_to_config(shift_factor=0.0)
    tokenizer = load_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )


@dataclass(frozen=True)
class Architecture:
    """What the trainer needs to know about one architecture: its parts, how they make a pipeline, and how its
    denoiser is trained (v-prediction on a DDPM schedule, or flow matching), so that the trainer need not ask
    which architecture it trains."""

    name: str
    denoiser: str  # the pipeline attribute of the trained denoiser: "unet" or "transformer"
    flow_matching: bool  # SD3's flow matching (x_t = (1 − σ)·x0 + σ·ε, target ε − x0) rather than SD's v-prediction

    def build(self) -> dict[str, torch.nn.Module]:
        if self.name == "unet":
            return {"unet": build_unet(), "text_encoder": build_text_encoder()}
        first, second = build_text_encoder_pair()
        return {"transformer": build_transformer(), "text_encoder": first, "text_encoder_2": second}

    def assemble(self, vae: AutoencoderKL, parts: dict[str, torch.nn.Module]):
        if self.name == "unet":
            return assemble_pipeline(vae, parts["unet"], parts["text_encoder"])
        return assemble_mmdit_pipeline(vae, parts["transformer"], parts["text_encoder"], parts["text_encoder_2"])

    @property
    def training_sink_logit(self) -> float | None:
        """The logit offset of the one zero row the MMDiT trains on in place of T5's 256 (`sink_logit`); None
        for the UNet. Where it is set the training attention processors are needed even without grounding."""
        return sink_logit() if self.flow_matching else None

    def encode_captions(self, pipe: StableDiffusionPipeline | StableDiffusion3Pipeline, captions: list[str],
                        device: torch.device) -> dict[str, torch.Tensor]:
        """The denoiser's text inputs from `pipe` (built around the live modules), computed exactly as the
        pipeline computes them, with gradients."""
        if not self.flow_matching:
            ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids.to(device)
            return {"encoder_hidden_states": pipe.text_encoder(ids)[0]}
        # One zero row where the pipeline puts 256 (T5's place): the training processors weigh it 256 times.
        context, _, pooled, _ = pipe.encode_prompt(captions, None, None, device=device,
                                                   do_classifier_free_guidance=False, max_sequence_length=1)
        return {"encoder_hidden_states": context, "pooled_projections": pooled}

    def sample_timesteps(self, n: int, gen: torch.Generator, device: torch.device, top: int, high_from: int,
                         high_share: float) -> torch.Tensor:
        """n training timesteps in [0, top): uniform integers for v-prediction, logit-normal floats for flow
        matching (as SD3), except a `high_share` drawn uniformly from [high_from, top)."""
        if self.flow_matching:
            t = torch.sigmoid(torch.randn(n, generator=gen, device=device)) * top
            high = high_from + torch.rand(n, generator=gen, device=device) * (top - high_from)
        else:
            t = torch.randint(0, top, (n,), generator=gen, device=device)
            if high_share == 0:  # draw nothing more, so the default recipe's random stream is unchanged
                return t
            high = torch.randint(high_from, top, (n,), generator=gen, device=device)
        pick = torch.rand(n, generator=gen, device=device) < high_share
        return torch.where(pick, high, t)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  sched: DDPMScheduler) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy latents, training target) at timesteps t; `sched` is the v-prediction schedule (flow matching
        takes only its number of timesteps: σ = t / that)."""
        if self.flow_matching:
            sigma = (t / sched.config.num_train_timesteps).view(-1, 1, 1, 1)
            return (1 - sigma) * latents + sigma * noise, noise - latents
        return sched.add_noise(latents, noise, t), sched.get_velocity(latents, noise, t)

    def loss_weight(self, t: torch.Tensor, snr: torch.Tensor, weighting: str, gamma: float) -> torch.Tensor:
        """Per-item weight of the squared error (see `Recipe.weighting`); `snr` is indexed by timestep. The flow
        loss is unweighted, as SD3's."""
        if self.flow_matching:
            return torch.ones_like(t, dtype=torch.float32)
        snr = snr[t]
        if weighting == "clamped":
            return (snr + 1).clamp(max=gamma) / (snr + 1)
        return snr.clamp(max=gamma) / (snr + 1)  # "min-snr": min-SNR-γ for v-prediction

    def noising(self, t: torch.Tensor, sched: DDPMScheduler) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, variance) of z_t given z0, z_t ~ N(scale · z0, variance · I), shaped (n, 1, 1, 1, 1)."""
        if self.flow_matching:  # z_t ~ N((1 − σ) z0, σ² I)
            scale = 1 - t.float().view(-1, 1, 1, 1, 1) / sched.config.num_train_timesteps
            return scale, (1 - scale) ** 2
        a = sched.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1, 1)  # z_t ~ N(√ᾱ z0, (1 − ᾱ) I)
        return a.sqrt(), 1 - a

    def target_from_clean(self, noisy: torch.Tensor, clean: torch.Tensor, scale: torch.Tensor,
                          var: torch.Tensor) -> torch.Tensor:
        """The training target given the noisy latent and a clean one (or its posterior mean); `scale` and
        `var` from `noising`."""
        if self.flow_matching:
            return (noisy - clean) / (1 - scale[:, 0])  # ε − z0 = (z_t − z0) / σ
        a = var[:, 0].neg().add(1)
        return (a.sqrt() * noisy - clean) / (1 - a).sqrt()  # v = (√ᾱ z_t − z0) / √(1 − ᾱ)


ARCHITECTURES = {
    "unet": Architecture("unet", "unet", flow_matching=False),
    "mmdit": Architecture("mmdit", "transformer", flow_matching=True),
}


def untrained_pipeline(seed: int = 0, arch: str = "unet"):
    """A shapes architecture with random weights: for tests and for building before training."""
    torch.manual_seed(seed)
    architecture = ARCHITECTURES[arch]
    return architecture.assemble(build_vae(), architecture.build())


def sink_logit() -> float:
    """Attention logit offset that stands for the T5 slots' identical zero rows when they are trained as one
    (see `grounding.JointTrainingProcessor`): 256 equal keys weigh as much as one key with logit + ln 256."""
    return math.log(T5_SLOTS)
