"""Capture on diffusion transformers (SD3, Flux.1, PixArt): exact outputs, maps equal to an independent
recomputation, words from each tokenizer, restored state. Tiny random-weight pipelines, no download."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import build_tiny_sd3, seeded
from reference import expected_token_maps, record_attention

import crossattn

PROMPT = "a cyan circle left of a cyan square"
SIZE = dict(height=32, width=32)


def run(pipe, prompt=PROMPT, steps=3, **kw):
    return pipe(prompt, num_inference_steps=steps, generator=seeded(), output_type="latent", **SIZE, **kw).images


FAMILIES = {
    # name: (fixture, call options, text layout in the attention call)
    "sd3": ("sd3", dict(guidance_scale=5.0, max_sequence_length=24), "text_last"),
    "flux": ("flux", dict(guidance_scale=3.5, max_sequence_length=24), "text_first"),
    "pixart": ("pixart", dict(guidance_scale=4.5, max_sequence_length=24, use_resolution_binning=False), "cross"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_output_is_bit_identical_and_processors_untouched(family, request):
    fixture, options, _ = FAMILIES[family]
    pipe = request.getfixturevalue(fixture)
    before = dict(pipe.transformer.attn_processors)
    plain = run(pipe, **options)
    with crossattn.trace(pipe) as tr:
        assert all(pipe.transformer.attn_processors[k] is v for k, v in before.items())
        traced = run(pipe, **options)
    assert torch.equal(plain, traced)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in pipe.transformer.modules())
    coverage = tr.coverage()
    assert coverage["recorded_calls"] and all(n == 3 for n in coverage["recorded_calls"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_maps_equal_an_independent_recomputation(family, request):
    fixture, options, kind = FAMILIES[family]
    pipe = request.getfixturevalue(fixture)
    tracer = crossattn.trace(pipe, time_bins=1)
    paths = list(tracer.layers)
    with record_attention(pipe.transformer, paths) as calls, tracer:
        run(pipe, **options)
    maps = tracer.heat_maps()
    kept = tracer._kept.tolist()
    h, w = maps.resolutions[0]
    n_img = h * w
    batch = calls[0].shape[0]
    rows = slice(batch // 2, batch) if family != "flux" else slice(0, batch)  # Flux: guidance embedding, no CFG
    t_len = calls[0].shape[-1] - (0 if kind == "cross" else n_img)
    if kind == "cross":
        images, text = slice(0, n_img), slice(0, t_len)
    elif kind == "text_first":
        images, text = slice(t_len, t_len + n_img), slice(0, t_len)
    else:
        images, text = slice(0, n_img), slice(n_img, n_img + t_len)
    expected = expected_token_maps(calls, rows, images, text, kept)
    assert torch.allclose(maps.token_maps().reshape(n_img, -1), expected, atol=1e-5)


def test_sd3_words_in_both_sources_and_the_source_option(sd3):
    with crossattn.trace(sd3) as tr:
        run(sd3, guidance_scale=5.0, max_sequence_length=24)
    maps = tr.heat_maps()
    assert maps.words == ["a", "cyan", "circle", "left", "of", "a", "cyan", "square"]
    assert maps.meta["sources"] == ["clip", "t5"]
    cyan = maps.word_info[1]
    clip, t5 = dict(cyan.sources)["clip"], dict(cyan.sources)["t5"]
    assert len(clip) == 2  # CLIP BPE: "cy" + "an"
    assert maps.tokens[clip[0]] == "cy" and maps.tokens[clip[1]] == "an</w>"
    assert all(maps.tokens[c].startswith("▁") or c != t5[0] for c in t5)  # T5: "▁" starts the word
    second = maps.word("cyan", occurrence=1)
    assert set(second.positions).isdisjoint(cyan.positions)  # the repeated word has its own positions
    both = maps.word("cyan").raw
    assert np.allclose(both, maps.word("cyan", source="clip").raw + maps.word("cyan", source="t5").raw, atol=1e-6)
    with pytest.raises(crossattn.InputError, match="unknown source"):
        maps.word("cyan", source="gemma")
    with pytest.raises(crossattn.InputError, match="resolutions do not apply"):
        maps.filter(resolutions=[16])
    assert list(maps.sites) == ["joint"] and maps.blocks == ["joint"]


def test_sd3_without_t5_and_per_layer_sites():
    pipe = build_tiny_sd3(with_t5=False)
    plain = run(pipe, max_sequence_length=24)
    with crossattn.trace(pipe, per_layer=True, per_head=True) as tr:
        assert torch.equal(run(pipe, max_sequence_length=24), plain)
    maps = tr.heat_maps()
    assert maps.meta["sources"] == ["clip"] and sorted(maps.sites) == ["joint.0", "joint.1"]
    one = maps.filter(layers=["joint.1"], heads=[0])
    assert list(one.sites) == ["joint.1"] and one.word("circle").array.shape == (32, 32)
    with pytest.raises(crossattn.InputError, match="no layer named"):
        maps.filter(layers=["single.0"])


def test_flux_double_and_single_stream_blocks_both_recorded(flux):
    with crossattn.trace(flux, per_layer=True) as tr:
        run(flux, guidance_scale=3.5, max_sequence_length=24)
    maps = tr.heat_maps()
    assert sorted(maps.sites) == ["double.0", "single.0"] and maps.blocks == ["double", "single"]
    assert maps.resolutions == [(8, 8)] and maps.image_size == (32, 32)
    for site in maps.sites:  # both kinds of block really attended to the text
        assert maps.filter(layers=[site]).token_maps().sum() > 0


def test_flux_true_cfg_records_the_prompt_call_not_the_negative(flux):
    options = dict(guidance_scale=3.5, max_sequence_length=24, negative_prompt="a green triangle", true_cfg_scale=4.0)
    with crossattn.trace(flux, capture_uncond=True, time_bins=3) as both:
        run(flux, **options)
    with crossattn.trace(flux) as prompt_only:
        run(flux, **options)
    with crossattn.trace(flux, time_bins=3) as no_negative:
        run(flux, guidance_scale=3.5, max_sequence_length=24)
    assert prompt_only.n_images == both.n_images == 1
    cond, neg = both.heat_maps(), both.heat_maps(negative=True)
    assert neg.words == ["a", "green", "triangle"] and cond.words[:2] == ["a", "cyan"]
    assert torch.allclose(prompt_only.heat_maps().token_maps(), cond.token_maps(), atol=1e-6)
    # at the first step (same latents) the prompt's call is the same with or without a negative call after it
    first = no_negative.heat_maps().filter(steps=[0]).token_maps()
    assert torch.allclose(first, cond.filter(steps=[0]).token_maps(), atol=1e-6)


def test_pixart_guidance_detected_without_the_pipeline_flag(pixart):
    assert not hasattr(pixart, "do_classifier_free_guidance")
    options = dict(max_sequence_length=24, use_resolution_binning=False)
    with crossattn.trace(pixart, capture_uncond=True) as tr:
        run(pixart, guidance_scale=4.5, negative_prompt="a green triangle", **options)
    assert tr.n_images == 1
    assert tr.heat_maps().words[:2] == ["a", "cyan"] and tr.heat_maps(negative=True).words[1] == "green"
    with crossattn.trace(pixart) as tr:
        run(pixart, guidance_scale=1.0, **options)  # no guidance: one half only
    assert tr.n_images == 1 and tr.heat_maps().words[-1] == "square"


@pytest.mark.parametrize("family", FAMILIES)
def test_restored_after_an_exception_mid_generation(family, request):
    fixture, options, _ = FAMILIES[family]
    pipe = request.getfixturevalue(fixture)

    calls = []

    def explode(module, args):  # Ctrl-C in the middle of the second denoising step
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    bomb = pipe.transformer.transformer_blocks[0].register_forward_pre_hook(explode)
    try:
        with pytest.raises(KeyboardInterrupt):
            with crossattn.trace(pipe):
                run(pipe, **options)
    finally:
        bomb.remove()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in pipe.transformer.modules())
    assert torch.equal(run(pipe, **options), run(pipe, **options))


def test_video_pipelines_are_refused_clearly():
    from diffusers import AnimateDiffPipeline

    pipe = object.__new__(AnimateDiffPipeline)
    with pytest.raises(crossattn.InputError, match="video.*not support"):
        crossattn.trace(pipe)
