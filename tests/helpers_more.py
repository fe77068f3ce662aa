"""Tiny pipelines for Sana, Lumina 2, CogView4, HunyuanDiT, AuraFlow, Kandinsky 3, DeepFloyd IF, and Stable
Diffusion with an IP-Adapter: random weights from small configs, no download.

Tokenizers are built here, in code, with the special tokens the pipelines need: a Gemma-style BPE ("▁" starts a
word, <bos> first, no end token; spaces are never merged into a word's end, so "Prompt: " + "a" tokenises as
"Prompt:" + "▁a" exactly as Gemma does), a GLM-style byte-level BPE ("Ġ"; ``[gMASK] <sop>`` first; the pad token
is also the end token), a WordPiece BERT vocabulary ("##" continues a word) and the shared T5 one. "hexagon" is
in no training text, so every tokenizer splits it into several pieces.
"""

from __future__ import annotations

import functools
import inspect
import json

import torch
from diffusers import (
    AuraFlowPipeline,
    AuraFlowTransformer2DModel,
    AutoencoderDC,
    CogView4Pipeline,
    CogView4Transformer2DModel,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    HunyuanDiT2DModel,
    HunyuanDiTPipeline,
    IFPipeline,
    Kandinsky3Pipeline,
    Kandinsky3UNet,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    VQModel,
)
from diffusers.models.embeddings import ImageProjection
from helpers import CORPUS, build_tiny_sd, perturbed, quiet, t5_tokenizer, tiny_t5, tiny_vae
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    GlmConfig,
    GlmModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

# The pipelines' own template texts: the tokenizers learn whole words from them, as real ones would.
SANA_INSTRUCTION = "\n".join(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)
LUMINA_SYSTEM = ("You are an assistant designed to generate superior images with the superior degree of image-text "
                 "alignment based on textual prompts or user prompts. <Prompt Start> ")
TEXTS = CORPUS + [SANA_INSTRUCTION, LUMINA_SYSTEM]
ALPHABET = sorted(set("".join(TEXTS)) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def _trained_bpe(pre_tokenizer, special: list[str], alphabet: list[str]) -> tuple[dict[str, int], list]:
    """(vocab, merges) of a BPE trained on the texts, words cut by `pre_tokenizer` (so no merge spans two words)."""
    tok = Tokenizer(models.BPE(unk_token=special[-1]))
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(TEXTS * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


@functools.cache
def gemma_tokenizer() -> GemmaTokenizer:
    special = ["<pad>", "<eos>", "<bos>", "<mask>", "<unk>"]
    alphabet = [c for c in ALPHABET if c != " "] + ["▁"]
    vocab, merges = _trained_bpe(pre_tokenizers.Metaspace(prepend_scheme="never"), special, alphabet)
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


@functools.cache
def glm_tokenizer() -> PreTrainedTokenizerFast:
    vocab, merges = _trained_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False),
                                 ["<|endoftext|>", "[gMASK]", "<sop>"], pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="[gMASK] <sop> $A",
                                                       special_tokens=[("[gMASK]", vocab["[gMASK]"]),
                                                                       ("<sop>", vocab["<sop>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   additional_special_tokens=["[gMASK]", "<sop>"], padding_side="left")


@functools.cache
def bert_tokenizer() -> BertTokenizer:
    words = sorted({w for line in CORPUS for w in line.lower().replace(",", " ").split()})
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "hex", "##agon"]
    pieces += words + list(letters) + [f"##{c}" for c in letters]
    return BertTokenizer(vocab={p: i for i, p in enumerate(dict.fromkeys(pieces))})


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
