"""One tiny pipeline per family, in the style of diffusers' `get_dummy_components()`: random weights from small
configs, no download, a few tenths of a second each on a CPU. Text parts come from `tests.families.text`.

Each builder's docstring states the layout it reproduces in miniature (text encoders, where the text sits in
attention, image size → token grid); `tests/test_families.py` lists them all and runs one contract on each.
"""

from __future__ import annotations

import torch
from diffusers import (
    AuraFlowPipeline,
    AuraFlowTransformer2DModel,
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    ChromaPipeline,
    ChromaTransformer2DModel,
    CogView4Pipeline,
    CogView4Transformer2DModel,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    HunyuanDiT2DModel,
    HunyuanDiTPipeline,
    IFPipeline,
    Kandinsky3Pipeline,
    Kandinsky3UNet,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    VQModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from diffusers.models.embeddings import ImageProjection
from transformers import (
    BertConfig,
    BertModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    GlmConfig,
    GlmModel,
    LlamaConfig,
    LlamaForCausalLM,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    UMT5Config,
    UMT5EncoderModel,
)

from .text import (
    bert_tokenizer,
    clip_tokenizer,
    gemma_tokenizer,
    glm_tokenizer,
    llama_tokenizer,
    mistral_tokenizer,
    qwen_tokenizer,
    t5_tokenizer,
    text_config,
    tiny_t5,
)

torch.set_flush_denormal(True)


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


def perturbed(cls, seed: int, scale: float = 0.05, **config) -> torch.nn.Module:
    """`cls(**config)` built from `seed`, then every weight nudged. DiTs start as near-identities (adaLN-zero,
    zero-initialised outputs): nudged, random models attend unevenly and produce varied outputs, as trained ones
    do."""
    torch.manual_seed(seed)
    model = cls(**config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def sd_pipeline(unet: UNet2DConditionModel, scheduler) -> StableDiffusionPipeline:
    return quiet(StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config()), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False))


# ---- UNets: cross-attention from latent pixels to the text ----------------------------------------------------
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


def build_tiny_sd_ip_adapter(seed: int = 0, tokens: int = 4) -> StableDiffusionPipeline:
    """The tiny SD pipeline with an IP-Adapter of random weights: every attn2 gets an image-prompt branch whose
    keys are `tokens` image-prompt tokens (fed by `ip_adapter_image_embeds`, no image encoder needed)."""
    pipe = build_tiny_sd(seed)
    unet = pipe.unet
    dim = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)
    ip_layers = {}
    for k, name in enumerate(n.removesuffix(".processor") for n in unet.attn_processors if "attn2" in n):
        attn = unet.get_submodule(name)
        ip_layers[f"{2 * k + 1}.to_k_ip.weight"] = torch.randn(attn.to_k.weight.shape, generator=gen) * 0.2
        ip_layers[f"{2 * k + 1}.to_v_ip.weight"] = torch.randn(attn.to_v.weight.shape, generator=gen) * 0.2
    projection = ImageProjection(cross_attention_dim=dim, image_embed_dim=dim, num_image_text_embeds=tokens)
    proj = projection.state_dict()
    image_proj = {"proj.weight": proj["image_embeds.weight"], "proj.bias": proj["image_embeds.bias"],
                  "norm.weight": proj["norm.weight"], "norm.bias": proj["norm.bias"]}
    unet._load_ip_adapter_weights([{"image_proj": image_proj, "ip_adapter": ip_layers}])
    return quiet(pipe)


def build_tiny_kandinsky3(seed: int = 0) -> Kandinsky3Pipeline:
    """Kandinsky 3: two UNet levels, text cross-attention at the second (4×4 for a 64 px image's 8×8 latent)."""
    unet = perturbed(Kandinsky3UNet, seed, scale=0.02, in_channels=4, time_embedding_dim=8, groups=2,
                     attention_head_dim=4, layers_per_block=2, block_out_channels=(16, 32), cross_attention_dim=8,
                     encoder_hid_dim=32)
    movq = VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                   num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                   vq_embed_dim=4)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="squaredcos_cap_v2",
                              clip_sample=True, thresholding=False)
    return quiet(Kandinsky3Pipeline(tokenizer=t5_tokenizer(), text_encoder=tiny_t5(32), unet=unet,
                                     scheduler=scheduler, movq=movq))


def build_tiny_if(seed: int = 0) -> IFPipeline:
    """DeepFloyd IF stage I: pixel-space UNet with added K/V attention at 8×8 (for 16 px images), T5 text."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, layers_per_block=1, block_out_channels=[32, 64],
                                down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                                mid_block_type="UNetMidBlock2DSimpleCrossAttn",
                                up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=3,
                                out_channels=6, cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8,
                                addition_embed_type="text", addition_embed_type_num_heads=2,
                                cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
                                act_fn="gelu")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001,
                              beta_end=0.02, thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
                              prediction_type="epsilon", variance_type="learned_range")
    return quiet(IFPipeline(tokenizer=t5_tokenizer(), text_encoder=tiny_t5(32), unet=unet, scheduler=scheduler,
                             safety_checker=None, feature_extractor=None, watermarker=None,
                             requires_safety_checker=False))


# ---- diffusion transformers with T5, CLIP, Gemma, GLM or BERT text -------------------------------------------
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


def build_tiny_sana(seed: int = 0) -> SanaPipeline:
    """Sana: linear self-attention, cross-attention (attn2) to Gemma 2; AutoencoderDC (factor 2)."""
    transformer = perturbed(SanaTransformer2DModel, seed,
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=16)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=[1, 1], downsample_block_type="conv",
                        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407)
    return quiet(SanaPipeline(tokenizer=gemma_tokenizer(), text_encoder=_tiny_gemma2(), vae=vae,
                               transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))


def _tiny_gemma2() -> Gemma2Model:
    return Gemma2Model(Gemma2Config(vocab_size=len(gemma_tokenizer()), hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                    attn_implementation="eager"))


def build_tiny_lumina2(seed: int = 0) -> Lumina2Pipeline:
    """Lumina 2: context and noise refiners, then joint blocks (text first); 64 px → 8×8 latent → 4×4 tokens."""
    transformer = perturbed(Lumina2Transformer2DModel, seed,
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 2, 2), axes_lens=(300, 16, 16),
        cap_feat_dim=16)
    return quiet(Lumina2Pipeline(transformer=transformer, vae=tiny_vae(block_out_channels=(32,),
                                                                        down_block_types=("DownEncoderBlock2D",),
                                                                        up_block_types=("UpDecoderBlock2D",)),
                                  scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=_tiny_gemma2(),
                                  tokenizer=gemma_tokenizer()))


def build_tiny_cogview4(seed: int = 0) -> CogView4Pipeline:
    """CogView4: joint attention [text, image] per block; GLM text encoder; 32 px → 16×16 latent → 8×8 tokens."""
    transformer = perturbed(CogView4Transformer2DModel, seed,
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2, out_channels=4,
        text_embed_dim=32, time_embed_dim=8, condition_dim=4)
    glm = GlmModel(GlmConfig(vocab_size=len(glm_tokenizer()), hidden_size=32, intermediate_size=16,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                             pad_token_id=glm_tokenizer().pad_token_id))
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    return quiet(CogView4Pipeline(tokenizer=glm_tokenizer(), text_encoder=glm, vae=tiny_vae(),
                                   transformer=transformer, scheduler=scheduler))


def build_tiny_hunyuandit(seed: int = 0) -> HunyuanDiTPipeline:
    """HunyuanDiT: cross-attention (attn2) to [77 BERT positions, 256 mT5 positions]; VAE factor 1, 16 px → 8×8."""
    transformer = perturbed(HunyuanDiT2DModel, seed,
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
        cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16, hidden_size=24,
        activation_fn="gelu-approximate")
    bert = BertModel(BertConfig(vocab_size=len(bert_tokenizer()), hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=37, max_position_embeddings=80))
    vae = tiny_vae(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                   up_block_types=("UpDecoderBlock2D",))
    return quiet(HunyuanDiTPipeline(vae=vae, text_encoder=bert, tokenizer=bert_tokenizer(), transformer=transformer,
                                     scheduler=DDPMScheduler(), safety_checker=None, feature_extractor=None,
                                     requires_safety_checker=False, text_encoder_2=tiny_t5(32),
                                     tokenizer_2=t5_tokenizer()))


def build_tiny_auraflow(seed: int = 0) -> AuraFlowPipeline:
    """AuraFlow: one joint (MMDiT) and one single block, [8 registers, UMT5 text, image]; 32 px → 8×8 tokens."""
    transformer = perturbed(AuraFlowTransformer2DModel, seed,
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, out_channels=4, pos_embed_max_size=64)
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(t5_tokenizer()), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                       num_heads=2, relative_attention_num_buckets=8))
    return quiet(AuraFlowPipeline(tokenizer=t5_tokenizer(), text_encoder=umt5, vae=tiny_vae(),
                                   transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()))


# ---- diffusion transformers with LLM text encoders (chat templates) and Chroma --------------------------------
def _flux2_vae() -> AutoencoderKLFlux2:
    """VAE factor 2 (two levels): 32 px → 16×16 latents → 8×8 packed tokens."""
    return AutoencoderKLFlux2(block_out_channels=(4, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=1,
                              norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, sample_size=32)


def _flux2_transformer(seed: int, guidance: bool) -> Flux2Transformer2DModel:
    """Text features: two encoder layers' hidden states (16 each) side by side."""
    transformer = perturbed(Flux2Transformer2DModel, seed,
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=guidance)
    return transformer


def build_tiny_flux2(seed: int = 0) -> Flux2Pipeline:
    """Flux.2 [dev] layout: Mistral 3 encoder (2 layers, hidden states of layers 1 and 2 stacked: 2 × 16 features),
    one double- and one single-stream block, text first; call with ``text_encoder_out_layers=(1, 2)``."""
    tok = mistral_tokenizer()
    torch.manual_seed(seed)
    text = dict(model_type="mistral", vocab_size=len(tok), hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, sliding_window=None,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(model_type="pixtral", hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=37, image_size=30, patch_size=6)
    encoder = Mistral3ForConditionalGeneration(Mistral3Config(text_config=text, vision_config=vision,
                                                              image_token_index=len(tok) - 1))
    return quiet(Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux2_vae(), text_encoder=encoder,
                                tokenizer=tok, transformer=_flux2_transformer(seed, guidance=True)))


def build_tiny_flux2_klein(seed: int = 0) -> Flux2KleinPipeline:
    """Flux.2 [klein] layout: Qwen3 encoder (chat template, thinking off), true CFG against "" as two calls;
    call with ``text_encoder_out_layers=(1, 2)``."""
    torch.manual_seed(seed)
    encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(qwen_tokenizer()), hidden_size=16, intermediate_size=16,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                           max_position_embeddings=512))
    return quiet(Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flux2_vae(),
                                     text_encoder=encoder, tokenizer=qwen_tokenizer(),
                                     transformer=_flux2_transformer(seed, guidance=False)))


def build_tiny_qwenimage(seed: int = 0) -> QwenImagePipeline:
    """Qwen-Image layout: Qwen2.5-VL encoder, the system-prompt template's prefix dropped (``drop_idx`` set to this
    tokenizer's prefix length, as 34 is the real one's), joint attention text first, 8×8 tokens at 32 px."""
    tok = qwen_tokenizer()
    transformer = perturbed(QwenImageTransformer2DModel, seed,
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    text = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"})
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
    encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, hidden_size=16, vocab_size=len(tok), vision_start_token_id=len(tok),
        vision_end_token_id=len(tok) + 1, vision_token_id=len(tok) + 2, image_token_id=len(tok) + 3,
        video_token_id=len(tok) + 4))
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=encoder, tokenizer=tok,
                             transformer=transformer)
    prefix = pipe.prompt_template_encode.split("{}")[0]
    pipe.prompt_template_encode_start_idx = len(tok(prefix).input_ids)
    return quiet(pipe)


def build_tiny_zimage(seed: int = 0) -> ZImagePipeline:
    """Z-Image layout: Qwen3 encoder (chat template), one unified sequence [image tokens, text tokens] per image,
    each part padded to a multiple of 32; CFG as one batch [prompts, negatives]."""
    transformer = perturbed(ZImageTransformer2DModel, seed,
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    encoder = Qwen3Model(Qwen3Config(vocab_size=len(qwen_tokenizer()), hidden_size=16, intermediate_size=16,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                     max_position_embeddings=512))
    return quiet(ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=encoder,
                                 tokenizer=qwen_tokenizer(), transformer=transformer))


def build_tiny_hidream(seed: int = 0) -> HiDreamImagePipeline:
    """HiDream-I1 layout: two CLIPs (pooled only), T5 and Llama 3 (2 layers, each block reads one); one double- and
    one single-stream block, image first, then [T5, Llama last layer, the block's Llama layer]."""
    transformer = perturbed(HiDreamImageTransformer2DModel, seed,
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[32, 16], text_emb_dim=64, num_routed_experts=2,
        num_activated_experts=1, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tokenizer()), hidden_size=16, intermediate_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         attn_implementation="eager"))  # HiDream asks it for attention weights
    clip = dict(hidden_act="gelu", projection_dim=32)
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(),
        text_encoder=CLIPTextModelWithProjection(text_config(**clip)), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_config(**clip)), tokenizer_2=clip_tokenizer(),
        text_encoder_3=tiny_t5(32), tokenizer_3=t5_tokenizer(), text_encoder_4=llama, tokenizer_4=llama_tokenizer(),
        transformer=transformer)
    pipe.default_sample_size = 16  # the pipeline rescales every request to this area: 32 px at VAE factor 2
    return quiet(pipe)


def build_tiny_chroma(seed: int = 0) -> ChromaPipeline:
    """Chroma layout: Flux-like double/single-stream blocks, T5 only, its padding masked; true CFG as two calls."""
    transformer = perturbed(ChromaTransformer2DModel, seed,
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=[4, 4, 8], approximator_num_channels=8, approximator_hidden_dim=32,
        approximator_layers=1)
    return quiet(ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(),
                                 vae=tiny_vae(shift_factor=0.0, scaling_factor=1.0), text_encoder=tiny_t5(32),
                                 tokenizer=t5_tokenizer(), transformer=transformer))
