"""Tiny pipelines whose text encoders are chat LLMs (Flux.2, Qwen-Image, Z-Image, HiDream) or T5 alone (Chroma).

Random weights from small configs, no download. The LLM-style tokenizers are one byte-level BPE ("Ġ" starts a
word) trained here, in code, on the shared corpus and the pipelines' template texts, wrapped three ways with the
special tokens and chat templates of the real ones: Qwen (``<|im_start|>``/``<|im_end|>``; Qwen3's ``<think>``
block when thinking is off), Mistral (``[SYSTEM_PROMPT]``/``[INST]``) and Llama 3 (``<|begin_of_text|>``).
"cyan" is left out of the training text, so it is always several pieces.
"""

from __future__ import annotations

import functools

import torch
from diffusers import (
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from helpers import CORPUS, clip_tokenizer, perturbed, quiet, t5_tokenizer, text_config, tiny_t5, tiny_vae
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPTextModelWithProjection,
    LlamaConfig,
    LlamaForCausalLM,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]",
           "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<|begin_of_text|>", "<|eot_id|>"]
QWEN_CHAT = ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
             "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
             "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
             "{%- endif %}{%- endif %}")
MISTRAL_CHAT = ("{{ bos_token }}{%- for m in messages %}{%- if m['role'] == 'system' %}"
                "{{ '[SYSTEM_PROMPT]' + m['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}"
                "{%- elif m['role'] == 'user' %}{{ '[INST]' + m['content'][0]['text'] + '[/INST]' }}{%- endif %}"
                "{%- endfor %}")
# Template text the tokenizer learns whole words from (the prompts' words come from the shared corpus).
TEMPLATE_TEXT = [SYSTEM_MESSAGE, "system user assistant", "Describe the image by detailing the color, shape, size, "
                 "texture, quantity, text, spatial relationships of the objects and background:"]


@functools.cache
def _bpe() -> str:
    """The trained byte-level BPE, serialised (each wrapper gets its own copy)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [line for line in CORPUS if "cyan" not in line] + TEMPLATE_TEXT
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text * 4, trainer)
    return tok.to_str()


def _wrap(chat_template: str | None = None, bos: str | None = None, **special) -> PreTrainedTokenizerFast:
    tok = Tokenizer.from_str(_bpe())
    if bos is not None:  # Mistral and Llama 3 put their begin-of-sequence token first
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, **special)
    out.chat_template = chat_template
    return out


@functools.cache
def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-VL / Qwen3 style: no BOS, eos = <|im_end|> (the end of a turn), pad = <|endoftext|>."""
    tok = _wrap(QWEN_CHAT, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=["<|im_start|>"])
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return tok


@functools.cache
def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Mistral Small 3 style (what Flux.2's processor wraps): <s>, [SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]."""
    return _wrap(MISTRAL_CHAT, eos_token="</s>", pad_token="<pad>", bos="<s>",
                 extra_special_tokens=["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"])


@functools.cache
def llama_tokenizer() -> PreTrainedTokenizerFast:
    """Llama 3.1 Instruct style: <|begin_of_text|> first, eos <|eot_id|> (HiDream pads with it)."""
    return _wrap(bos="<|begin_of_text|>", eos_token="<|eot_id|>")


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
