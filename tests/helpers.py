"""Tiny pipelines built from small configs (random weights, no download), shared by the tests.

CLIP-based pipelines use the real CLIP BPE vocabulary shipped with the package, so word/token behaviour is
that of real Stable Diffusion. T5- and Gemma-style encoders get a SentencePiece-style (Unigram, "▁" starts a
word) tokenizer trained here, in code, on a small corpus; the Qwen-style one is a byte-level BPE ("Ġ").
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from crossattn.capture import Site
from crossattn.heatmaps import HeatMaps
from crossattn.shapes.model import TOKENIZER_DIR
from crossattn.words import Word

torch.set_flush_denormal(True)

CORPUS = [
    "a photo of a cat to the left of a dog in a garden", "a red circle left of a blue square",
    "a small green triangle above a yellow circle", "a large cyan square right of a red triangle",
    "an oil painting of a horse below a bright moon at sunset", "two dogs and a cat on a white background",
    "a cyan circle left of a cyan square", "highly detailed, trending on artstation, 4k",
]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.cache
def clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@functools.cache
def t5_tokenizer() -> T5TokenizerFast:
    """A SentencePiece-style Unigram tokenizer ("▁" starts a word), ending every sequence with </s>.

    Most corpus words are one piece; "square" and "triangle" are two ("▁squ" + "are", "▁tri" + "angle"), and any
    other word falls back to letters: multi-piece words as real T5 makes them.
    """
    words = sorted({w for line in CORPUS for w in line.replace(",", " ").split()} - {"square", "triangle"})
    letters = sorted(set("".join(CORPUS).replace(" ", "")) | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0), (",", -3.0)]
    vocab += [(f"▁{w}", -2.0) for w in words] + [("▁squ", -2.5), ("are", -2.5), ("▁tri", -2.5), ("angle", -2.5)]
    vocab += [(f"▁{c}", -8.0) for c in letters] + [(c, -9.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def text_config(**overrides) -> CLIPTextConfig:
    base = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextConfig(**(base | overrides))


def tiny_t5(d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer()), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=2, relative_attention_num_buckets=8))


def tiny_vae(**overrides) -> AutoencoderKL:
    return AutoencoderKL(**(dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=32)
                            | overrides))


def quiet(pipe):
    """Progress bars off; every module in eval mode (freshly built T5 would apply dropout)."""
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def sd_pipeline(unet: UNet2DConditionModel, scheduler) -> StableDiffusionPipeline:
    return quiet(StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config()), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False))


def build_tiny_sd(seed: int = 0, **unet_overrides) -> StableDiffusionPipeline:
    """SD-1.x layout in miniature: VAE factor 2 (32 px images → 16×16 latents), cross-attention at 8×8."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4)) | unet_overrides))
    return sd_pipeline(unet, DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))


def build_tiny_sd3level() -> StableDiffusionPipeline:
    """Three UNet levels so cross-attention runs at 3 resolutions (16×16, 8×8, 4×4) in down, mid and up."""
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2,
    )
    return sd_pipeline(unet, DDIMScheduler())


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """SDXL layout: two text encoders (concatenated context, 32 + 32), text_time added conditioning."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    )
    return quiet(StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config()),
        text_encoder_2=CLIPTextModelWithProjection(text_config(projection_dim=32)),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)))


def perturbed(cls, seed: int, scale: float = 0.05, **config) -> torch.nn.Module:
    """`cls(**config)` built from `seed`, then every weight nudged. DiTs start as near-identities (adaLN-zero,
    zero-initialised outputs): nudged, random models attend unevenly and produce varied outputs, as trained ones
    do."""
    torch.manual_seed(seed)
    model = cls(**config)
    gen = seeded(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def build_tiny_sd3(with_t5: bool = True, seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3 layout: joint attention over [image tokens, 77 CLIP positions, T5 positions]; 32 px → 16×16 tokens."""
    transformer = perturbed(SD3Transformer2DModel, seed,
        sample_size=16, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=16)
    clip = dict(hidden_act="gelu", projection_dim=32)
    return quiet(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(shift_factor=0.0, scaling_factor=1.0),
        text_encoder=CLIPTextModelWithProjection(text_config(**clip)), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_config(**clip)), tokenizer_2=clip_tokenizer(),
        text_encoder_3=tiny_t5(64) if with_t5 else None, tokenizer_3=t5_tokenizer() if with_t5 else None))


def build_tiny_flux(seed: int = 0) -> FluxPipeline:
    """Flux.1 layout: one double-stream and one single-stream block, text first; 32 px → 8×8 packed tokens."""
    transformer = perturbed(FluxTransformer2DModel, seed,
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    return quiet(FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(shift_factor=0.0, scaling_factor=1.0),
        text_encoder=CLIPTextModel(text_config(projection_dim=32)), tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_t5(32), tokenizer_2=t5_tokenizer(), transformer=transformer))


def build_tiny_pixart(seed: int = 0) -> PixArtAlphaPipeline:
    """PixArt-α layout: cross-attention (attn2) from 8×8 image tokens to T5 positions."""
    transformer = perturbed(PixArtTransformer2DModel, seed,
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    return quiet(PixArtAlphaPipeline(transformer=transformer, vae=tiny_vae(), text_encoder=tiny_t5(32),
                                      tokenizer=t5_tokenizer(), scheduler=DDIMScheduler()))


def blob(h: int, w: int, cx: float, cy: float, r: float = 4.0) -> np.ndarray:
    """A Gaussian blob centred at (cx, cy) in pixel coordinates."""
    ys, xs = np.indices((h, w)) + 0.5
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r)).astype(np.float32)


def toy_maps(words: list[str], token_maps: list[np.ndarray], steps: int = 4, prompt: str | None = None) -> HeatMaps:
    """A HeatMaps whose token i+1 has map token_maps[i] (one site, one bin, constant over steps)."""
    h, w = token_maps[0].shape
    t = torch.zeros(1, 1, h, w, len(words) + 2)
    for i, m in enumerate(token_maps):
        t[0, 0, :, :, i + 1] = torch.from_numpy(np.asarray(m, np.float32))
    trace = t[0, 0][None].repeat(steps, 1, 1, 1)
    return HeatMaps(
        sums={"up.16x16": t}, counts={"up.16x16": np.array([1])}, sites={"up.16x16": Site("up.16x16", "up", (h, w))},
        bin_steps=[list(range(steps))], trace=trace, trace_counts=np.ones(steps, dtype=np.int64),
        word_info=[Word(x, (i + 1,), words[:i].count(x)) for i, x in enumerate(words)],
        tokens=["<start>"] + words + ["<end>"], image_size=(4 * h, 4 * w),
        meta={"prompt": prompt or " ".join(words)},
    )
