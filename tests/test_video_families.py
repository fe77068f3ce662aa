"""HunyuanVideo's and LTX-Video's particulars, beside the contract both pass (`test_families.py`): which layers are
traced (not HunyuanVideo's text refiner), where the frames come from (LTX's packed latents), which decoded frames each
latent frame covers, HunyuanVideo's prompt template and true CFG, and what LTX refuses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import crossattn
from crossattn.families import family_of
from crossattn.families.hunyuanvideo import HUNYUANVIDEO
from crossattn.families.ltx import LTX
from crossattn.generation import generate
from tests.families import FAMILIES, NEGATIVE, PROMPT, WORDS, run, video

pytestmark = pytest.mark.usefixtures("one_thread")
DECODED = [[0], [1, 2, 3, 4], [5, 6, 7, 8]]  # 9 frames from 3 latent ones, 4× in time (both tiny VAEs)


@pytest.fixture(scope="module")
def hunyuan():
    return FAMILIES["hunyuanvideo"].build()


@pytest.fixture(scope="module")
def ltx():
    return FAMILIES["ltx"].build()


def traced(pipe, name: str, **kw) -> tuple[crossattn.Trace, torch.Tensor]:
    with crossattn.trace(pipe, time_bins=1) as tr:
        out = run(pipe, FAMILIES[name], **kw)
    return tr, out


def test_hunyuanvideo_traces_both_streams_not_the_text_refiner(hunyuan):
    assert family_of(hunyuan) is HUNYUANVIDEO
    refiner = [n for n, m in hunyuan.transformer.named_modules() if "token_refiner" in n and hasattr(m, "processor")]
    assert refiner  # it has attention layers (text to text), and none of them is traced
    tr, decoded = traced(hunyuan, "hunyuanvideo", output_type="pt")
    assert sorted(tr.layers) == ["single_transformer_blocks.0.attn", "transformer_blocks.0.attn"]
    assert tr.coverage()["recorded_calls"] == {"double.0": 2, "single.0": 2}
    maps = tr.heat_maps()
    assert maps.blocks == ["double", "single"] and maps.frames == 3 and maps.resolutions == [(4, 4)]
    assert maps.info.output_frames == DECODED and decoded.shape[1] == 9  # (B, frames, C, H, W)


def test_hunyuanvideo_words_are_the_prompts_whatever_the_template_crop(hunyuan):
    """The pipeline's default crop_start (95) is shorter than the tiny tokenizer's template (194 tokens): the
    template's tail then reaches the denoiser before the prompt; those tokens are kept but are no words."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tr, _ = traced(hunyuan, "hunyuanvideo", prompt_template=DEFAULT_PROMPT_TEMPLATE, max_sequence_length=128)
    maps = tr.heat_maps()
    assert maps.words == WORDS and maps.info.prompt == PROMPT
    assert maps.tokens[-1] == "<|eot_id|>" and len(maps.tokens) > 100  # up to the template's closing token
    cropped, _ = traced(hunyuan, "hunyuanvideo")  # the contract's call: crop_start counted for this tokenizer
    assert cropped.kept_positions == list(range(13))  # the prompt's 12 tokens and <|eot_id|>, from position 0


def test_hunyuanvideo_true_cfg_two_calls_prompt_first(hunyuan):
    options = dict(true_cfg_scale=4.0, negative_prompt=NEGATIVE)
    with crossattn.trace(hunyuan, time_bins=1, capture_uncond=True) as both:
        run(hunyuan, FAMILIES["hunyuanvideo"], **options)
    prompt_only, _ = traced(hunyuan, "hunyuanvideo", **options)
    assert both.coverage()["recorded_calls"] == {"double.0": 4, "single.0": 4}  # prompt and negative, 2 steps
    assert both.heat_maps(negative=True).words == NEGATIVE.split()
    torch.testing.assert_close(both.heat_maps().data.token_maps(), prompt_only.heat_maps().data.token_maps())


def test_hunyuanvideo_maps_of_given_embeddings_name_the_prompts_words(hunyuan):
    embeds, pooled, mask = hunyuan.encode_prompt(PROMPT, prompt_template=video.hunyuan_template(),
                                                 max_sequence_length=video.TEXT_LENGTH)
    with crossattn.trace(hunyuan, time_bins=1) as given:
        run(hunyuan, FAMILIES["hunyuanvideo"], prompt=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
            prompt_attention_mask=mask)
    maps, typed = given.heat_maps(prompt=PROMPT), traced(hunyuan, "hunyuanvideo")[0].heat_maps()
    assert maps.words == WORDS
    np.testing.assert_allclose(maps.word("hexagon").raw, typed.word("hexagon").raw, rtol=1e-5, atol=1e-8)


def test_ltx_frames_and_grid_come_from_the_transformers_kwargs(ltx):
    assert family_of(ltx) is LTX
    packed = run(ltx, FAMILIES["ltx"])
    assert packed.shape == (1, 3 * 8 * 8, 8)  # the latents the transformer gets: (B, F·H·W, C), no grid shape
    tr, decoded = traced(ltx, "ltx", output_type="pt")
    maps = tr.heat_maps()
    assert maps.frames == 3 and maps.resolutions == [(8, 8)] and maps.image_size == (32, 32)
    assert maps.info.output_frames == DECODED and decoded.shape[1] == 9
    assert sorted(tr.layers) == ["transformer_blocks.0.attn2", "transformer_blocks.1.attn2"]


def test_ltx_output_frames_follow_its_vae_and_generate_checks_the_count(ltx):
    eight = SimpleNamespace(vae_temporal_compression_ratio=8)  # the released VAE: 161 frames from 21
    frames = LTX.output_frames(eight, 21)
    assert frames[:2] == [[0], list(range(1, 9))] and frames[-1][-1] == 160
    shown, maps = generate(ltx, PROMPT, steps=2, size=(32, 32), frames=9, guidance=3.0)
    assert len(shown) == 9 and maps.frames == 3 and maps.words == WORDS
    with pytest.raises(crossattn.InputError, match=r"frames must be 4·k \+ 1 for this model"):
        generate(ltx, PROMPT, steps=2, size=(32, 32), frames=8)


def test_ltx_refuses_what_its_grid_does_not_describe():
    def pipe(patch=1, patch_t=1, vae_patch_t=1):
        return SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(patch_size=patch,
                                                                                   patch_size_t=patch_t)),
                               vae=SimpleNamespace(config=SimpleNamespace(patch_size_t=vae_patch_t)))

    assert LTX.refused(pipe()) is None
    assert "patches its latents" in LTX.refused(pipe(patch=2))
    assert "patches time" in LTX.refused(pipe(vae_patch_t=2))
