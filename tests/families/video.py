"""One tiny text-to-video pipeline per video family, built as `tests.families.pipelines` builds the image ones: random
weights from small configs (DiTs nudged by `perturbed`), tokenizers and text encoders from `tests.families.text`, no
download; CPU, float32, a 2-step call of a few frames in well under a second each.

Each builder's docstring states the layout it reproduces in miniature: where the text sits in attention, and how the
frames reach the denoiser (in the attention batch for AnimateDiff, in the token sequence for the DiTs). `CALLS` holds
each family's call options (frames, size, guidance as the family does it); `run_video` calls a pipeline with them.

    .venv/bin/python -m tests.families.video   # builds and runs each once: output shapes and seconds
"""

from __future__ import annotations

import functools
import time

import torch
from diffusers import (
    AnimateDiffControlNetPipeline,
    AnimateDiffPipeline,
    AnimateDiffSDXLPipeline,
    AnimateDiffVideoToVideoPipeline,
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    ControlNetModel,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    MotionAdapter,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from PIL import Image
from transformers import CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from .pipelines import build_tiny_sd, build_tiny_sdxl, perturbed, quiet
from .text import _byte_level, clip_tokenizer, t5_tokenizer, text_config, tiny_t5

TEXT_LENGTH = 24  # max_sequence_length of the T5 / Llama families (CogVideoX's transformer is built for it)


# ---- UNet + motion modules: frames in the attention batch ------------------------------------------------------
def build_tiny_animatediff(seed: int = 0) -> AnimateDiffPipeline:
    """AnimateDiff: the tiny SD pipeline (`build_tiny_sd`) with a random MotionAdapter, its UNet turned into a
    UNetMotionModel. Text cross-attention is the spatial `attn2` of `*.attentions.*` at 8×8 (32 px), run on a batch of
    [negatives × frames, prompts × frames] (the text repeated per frame); the motion modules' `attn1`/`attn2` are
    self-attention across frames (batch: B·H·W, sequence: frames), never text."""
    sd = build_tiny_sd(seed)
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=sd.unet.config.block_out_channels, motion_layers_per_block=2,
                            motion_norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=16)
    return quiet(AnimateDiffPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                     motion_adapter=adapter, scheduler=sd.scheduler))


ANIMATEDIFF_PARTS = ("vae", "text_encoder", "tokenizer", "unet", "motion_adapter", "scheduler")


def build_tiny_animatediff_v2v(seed: int = 0) -> AnimateDiffVideoToVideoPipeline:
    """AnimateDiff video-to-video: `build_tiny_animatediff`'s parts; the input video is encoded and noised, the
    denoiser's batch and text are laid out as text-to-video's."""
    parts = build_tiny_animatediff(seed).components
    return quiet(AnimateDiffVideoToVideoPipeline(**{k: parts[k] for k in ANIMATEDIFF_PARTS}))


def build_tiny_animatediff_controlnet(seed: int = 0) -> AnimateDiffControlNetPipeline:
    """AnimateDiff with a ControlNet of random weights: its residuals enter the UNet, whose text attention is
    traced; the ControlNet's own attention is not the picture's and is not."""
    parts = build_tiny_animatediff(seed).components
    torch.manual_seed(seed)
    controlnet = ControlNetModel(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
                                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(2, 4),
                                 conditioning_embedding_out_channels=(8, 16), norm_num_groups=32)
    return quiet(AnimateDiffControlNetPipeline(controlnet=controlnet, **{k: parts[k] for k in ANIMATEDIFF_PARTS}))


def build_tiny_animatediff_sdxl(seed: int = 0) -> AnimateDiffSDXLPipeline:
    """AnimateDiff SDXL: `build_tiny_sdxl`'s parts (two CLIP encoders, text_time conditioning) with a random
    MotionAdapter; the pipeline gives the UNet one text row per video, which it repeats per frame inside."""
    sd = build_tiny_sdxl()
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=sd.unet.config.block_out_channels, motion_layers_per_block=2,
                            motion_norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=16,
                            use_motion_mid_block=False)
    return quiet(AnimateDiffSDXLPipeline(vae=sd.vae, text_encoder=sd.text_encoder, text_encoder_2=sd.text_encoder_2,
                                         tokenizer=sd.tokenizer, tokenizer_2=sd.tokenizer_2, unet=sd.unet,
                                         motion_adapter=adapter, scheduler=sd.scheduler))


def input_frames(n: int = 4, size: int = 32) -> list:
    """A small input video (or conditioning frames): flat colours changing from frame to frame."""
    return [Image.new("RGB", (size, size), (40 * k, 110, 160)) for k in range(n)]


# ---- video diffusion transformers: (frames, h, w) patches in the token sequence ---------------------------------
def wan_transformer(seed: int) -> WanTransformer3DModel:
    return perturbed(WanTransformer3DModel, seed,
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32)


def build_tiny_wan(seed: int = 0, experts: bool = False) -> WanPipeline:
    """Wan 2.1 text-to-video: per block, `blocks.N.attn2` cross-attends from the (F, H, W) patch tokens (patch 1×2×2)
    to the T5 positions, zero-padded to max_sequence_length and not masked; CFG as two calls (prompt, then negative).
    VAE: 8× space, 4× time (5 frames → 2 latent frames; 64 px → 8×8 latent → 4×4 tokens a frame).
    Real Wan reads UMT5; T5 stands in (same tokenizer style, one more relative-bias table). With `experts`, Wan 2.2
    A14B's layout: a second transformer (other weights) runs the steps below half the noise (`boundary_ratio`)."""
    transformer = wan_transformer(seed)
    second = dict(transformer_2=wan_transformer(seed + 1), boundary_ratio=0.5) if experts else {}
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return quiet(WanPipeline(tokenizer=t5_tokenizer(), text_encoder=tiny_t5(32), vae=vae, transformer=transformer,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **second))


def build_tiny_cogvideox(seed: int = 0) -> CogVideoXPipeline:
    """CogVideoX (2B layout): joint attention `transformer_blocks.N.attn1` over [T5 text (exactly
    max_sequence_length = TEXT_LENGTH positions, unmasked), video (F, H, W) patches (2×2)]; CFG as one batch
    [negatives, prompts]. Latents are (B, F, C, H, W); VAE 8× space, 4× time (9 frames → 3 latent frames;
    64 px → 8×8 latent → 4×4 tokens a frame)."""
    transformer = perturbed(CogVideoXTransformer3DModel, seed,
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=TEXT_LENGTH)
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4)
    return quiet(CogVideoXPipeline(tokenizer=t5_tokenizer(), text_encoder=tiny_t5(32), vae=vae,
                                   transformer=transformer, scheduler=DDIMScheduler()))


@functools.cache
def hunyuan_tokenizer() -> PreTrainedTokenizerFast:
    """Llama 3 style as HunyuanVideo's (llava-llama-3): <|begin_of_text|> first, the header tokens whole, <pad> on
    the right."""
    return _byte_level(first=("<|begin_of_text|>",), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                       pad_token="<pad>", extra_special_tokens=["<|start_header_id|>", "<|end_header_id|>"])


@functools.cache
def hunyuan_template() -> dict:
    """The pipeline's own prompt template, its `crop_start` (95 for the real tokenizer) counted for this tokenizer:
    the first position where two prompts differ, so the kept rows start at the prompt's first token."""
    tok, template = hunyuan_tokenizer(), DEFAULT_PROMPT_TEMPLATE["template"]
    a, b = (tok(template.format(text)).input_ids for text in ("a", "b"))
    return {"template": template, "crop_start": next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)}


def build_tiny_hunyuanvideo(seed: int = 0) -> HunyuanVideoPipeline:
    """HunyuanVideo: one double-stream (`transformer_blocks.N.attn`, text through add_q/k/v) and one single-stream
    block (`single_transformer_blocks.N.attn`), each over [video (F, H, W) patches (1×2×2), Llama text], the text's
    padding masked; CLIP only pooled; guidance-distilled (guidance embedded, no negative unless true_cfg_scale > 1,
    then two calls). Call with ``prompt_template=hunyuan_template()``. VAE 8× space, 4× time."""
    tok = hunyuan_tokenizer()
    transformer = perturbed(HunyuanVideoTransformer3DModel, seed,
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=32, rope_axes_dim=(4, 6, 6))
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                                    up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                    layers_per_block=1, norm_num_groups=4, scaling_factor=0.476986,
                                    spatial_compression_ratio=8, temporal_compression_ratio=4)
    # 3 layers: the pipeline reads the hidden states 2 layers before the last
    llama = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=37, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    return quiet(HunyuanVideoPipeline(text_encoder=llama, tokenizer=tok, transformer=transformer, vae=vae,
                                      scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                      text_encoder_2=CLIPTextModel(text_config()), tokenizer_2=clip_tokenizer()))


def build_tiny_ltx(seed: int = 0) -> LTXPipeline:
    """LTX-Video: `transformer_blocks.N.attn2` cross-attends from the (F, H, W) tokens (patch 1×1×1, latents packed
    to (B, tokens, C) by the pipeline) to T5 positions, padding masked by an additive bias; CFG as one batch
    [negatives, prompts]. VAE here 4× space and 4× time (the real one 32× and 8×): 32 px, 9 frames → 3 × 8×8 tokens."""
    transformer = perturbed(LTXVideoTransformer3DModel, seed,
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=2, caption_channels=32)
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1, patch_size_t=1,
                                encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    return quiet(LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=tiny_t5(32),
                             tokenizer=t5_tokenizer(), transformer=transformer))


BUILDERS = {
    "animatediff": build_tiny_animatediff,
    "animatediff_v2v": build_tiny_animatediff_v2v,
    "animatediff_controlnet": build_tiny_animatediff_controlnet,
    "animatediff_sdxl": build_tiny_animatediff_sdxl,
    "wan": build_tiny_wan,
    "cogvideox": build_tiny_cogvideox,
    "hunyuanvideo": build_tiny_hunyuanvideo,
    "ltx": build_tiny_ltx,
}
# a 2-step call's options: a few frames, small frames, guidance as the family has it (`negative`: takes the
# family's negative prompt: one CFG batch or, for Wan, a second call)
CALLS = {
    "animatediff": dict(num_frames=4, height=32, width=32, guidance_scale=5.0, negative=True),
    # strength 1: every step runs (the contract counts them), the input video only sets the frame count
    "animatediff_v2v": dict(video=input_frames(), strength=1.0, height=32, width=32, guidance_scale=5.0,
                            negative=True),
    "animatediff_controlnet": dict(conditioning_frames=input_frames(), num_frames=4, height=32, width=32,
                                   guidance_scale=5.0, negative=True),
    "animatediff_sdxl": dict(num_frames=4, height=32, width=32, guidance_scale=5.0, negative=True),
    "wan": dict(num_frames=5, height=64, width=64, guidance_scale=5.0, max_sequence_length=TEXT_LENGTH,
                negative=True),
    "cogvideox": dict(num_frames=9, height=64, width=64, guidance_scale=6.0, max_sequence_length=TEXT_LENGTH,
                      negative=True),
    "hunyuanvideo": dict(num_frames=9, height=64, width=64, guidance_scale=6.0, max_sequence_length=TEXT_LENGTH,
                         negative=False),
    "ltx": dict(num_frames=9, height=32, width=32, guidance_scale=3.0, max_sequence_length=TEXT_LENGTH,
                negative=True),
}


def run_video(pipe, name: str, prompt: str | None = None, **kw) -> torch.Tensor:
    """`pipe` (built by `BUILDERS[name]`) called on `CALLS[name]` for 2 steps (`kw` overrides any option); the latents
    it returns (LTX: packed, (B, tokens, C))."""
    from ..helpers import seeded
    from . import NEGATIVE, PROMPT, STEPS  # here, not at the top: tests.families may import this module

    options = dict(CALLS[name])
    if options.pop("negative"):
        options["negative_prompt"] = NEGATIVE
    if name == "hunyuanvideo":
        options["prompt_template"] = hunyuan_template()
    options = dict(output_type="latent", num_inference_steps=STEPS) | options | kw
    return pipe(prompt=prompt or PROMPT, generator=seeded(), **options).frames


def main() -> None:
    for name, build in BUILDERS.items():
        start = time.perf_counter()
        pipe = build()
        built = time.perf_counter()
        out = run_video(pipe, name)
        done = time.perf_counter()
        print(f"{name:13s} {pipe.__class__.__name__:22s} latents {tuple(out.shape)!s:22s} "
              f"build {built - start:5.2f} s  2 steps {done - built:5.2f} s")


if __name__ == "__main__":
    main()
