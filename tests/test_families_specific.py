"""One family's particulars, beside the contract every family passes (`test_families.py`): options only some
families have (SD3's sources, Flux's true CFG, Z-Image's CFG truncation, Qwen-Image's given embeddings), layers
a naive probe would misread (Kandinsky 3, DeepFloyd IF, an IP-Adapter), and which family a pipeline belongs to.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crossattn
from crossattn.families import family_of
from tests.families import FAMILIES, NEGATIVE, PROMPT, STEPS, WORDS, pipelines, run

pytestmark = pytest.mark.usefixtures("one_thread")


def traced_run(name: str, pipe=None, **trace_options) -> tuple[object, crossattn.Trace, torch.Tensor]:
    """Family `name`'s tiny pipeline (or `pipe`), one traced call with its options, and the output."""
    pipe = FAMILIES[name].build() if pipe is None else pipe
    with crossattn.trace(pipe, **trace_options) as tracer:
        out = run(pipe, FAMILIES[name])
    return pipe, tracer, out


def test_sd3_words_in_both_sources_and_the_source_option(sd3):
    maps = traced_run("sd3", sd3)[1].heat_maps()
    assert maps.info.sources == ["clip", "t5"]
    cyan = maps.data.words[1]
    clip, t5 = dict(cyan.sources)["clip"], dict(cyan.sources)["t5"]
    assert len(clip) == 2  # CLIP BPE: "cy" + "an"
    assert maps.tokens[clip[0]] == "cy" and maps.tokens[clip[1]] == "an</w>"
    assert all(maps.tokens[c].startswith("▁") or c != t5[0] for c in t5)  # T5: "▁" starts the word
    both = maps.word("cyan").raw
    assert np.allclose(both, maps.word("cyan", source="clip").raw + maps.word("cyan", source="t5").raw, atol=1e-6)
    with pytest.raises(crossattn.InputError, match="unknown source"):
        maps.word("cyan", source="gemma")
    with pytest.raises(crossattn.InputError, match="resolutions do not apply"):
        maps.filter(resolutions=[16])
    assert list(maps.sites) == ["joint"] and maps.blocks == ["joint"]


def test_sd3_without_t5_and_per_layer_sites():
    pipe = pipelines.build_tiny_sd3(with_t5=False)
    plain = run(pipe, FAMILIES["sd3"])
    with crossattn.trace(pipe, per_layer=True, per_head=True) as tr:
        assert torch.equal(run(pipe, FAMILIES["sd3"]), plain)
    maps = tr.heat_maps()
    assert maps.info.sources == ["clip"] and sorted(maps.sites) == ["joint.0", "joint.1"]
    one = maps.filter(layers=["joint.1"], heads=[0])
    assert list(one.sites) == ["joint.1"] and one.word("hexagon").array.shape == (32, 32)
    with pytest.raises(crossattn.InputError, match="no layer named"):
        maps.filter(layers=["single.0"])


def test_flux_double_and_single_stream_blocks_both_recorded(flux):
    maps = traced_run("flux", flux, per_layer=True)[1].heat_maps()
    assert sorted(maps.sites) == ["double.0", "single.0"] and maps.blocks == ["double", "single"]
    assert maps.resolutions == [(8, 8)] and maps.image_size == (32, 32)
    for site in maps.sites:  # both kinds of block really attended to the text
        assert maps.filter(layers=[site]).data.token_maps().sum() > 0


def test_flux_true_cfg_records_the_prompt_call_not_the_negative(flux):
    family = FAMILIES["flux"]
    with crossattn.trace(flux, capture_uncond=True, time_bins=STEPS) as both:
        run(flux, family, negative_prompt="a green triangle", true_cfg_scale=4.0)
    with crossattn.trace(flux) as prompt_only:
        run(flux, family, negative_prompt="a green triangle", true_cfg_scale=4.0)
    with crossattn.trace(flux, time_bins=STEPS) as no_negative:
        run(flux, family)
    assert prompt_only.n_images == both.n_images == 1
    cond, neg = both.heat_maps(), both.heat_maps(negative=True)
    assert neg.words == ["a", "green", "triangle"] and cond.words == WORDS
    assert torch.allclose(prompt_only.heat_maps().data.token_maps(), cond.data.token_maps(), atol=1e-6)
    # at the first step (same latents) the prompt's call is the same with or without a negative call after it
    first = no_negative.heat_maps().filter(steps=[0]).data.token_maps()
    assert torch.allclose(first, cond.filter(steps=[0]).data.token_maps(), atol=1e-6)


def test_pixart_guidance_detected_without_the_pipeline_flag(pixart):
    assert not hasattr(pixart, "do_classifier_free_guidance")
    tracer = traced_run("pixart", pixart, capture_uncond=True)[1]
    assert tracer.n_images == 1
    assert tracer.heat_maps().words == WORDS and tracer.heat_maps(negative=True).words == NEGATIVE.split()
    with crossattn.trace(pixart) as tr:
        run(pixart, FAMILIES["pixart"], guidance_scale=1.0)  # no guidance: one half only
    assert tr.n_images == 1 and tr.heat_maps().words == WORDS


def test_kandinsky3_traces_text_cross_attention_only():
    pipe, tracer, _ = traced_run("kandinsky3")
    every = [n for n, m in pipe.unet.named_modules() if type(m).__name__ == "Attention"]
    assert all(pipe.unet.get_submodule(n).is_cross_attention for n in every)  # what fooled a naive probe
    traced_layers = set(tracer.layers)
    assert "add_time_condition.attention" in every and "add_time_condition.attention" not in traced_layers
    assert not any(".attentions.0." in n for n in traced_layers)  # image self-attention
    assert traced_layers == {n for n in every if n.startswith(("down_blocks.1.", "up_blocks.")) and
                             ".attentions.0." not in n}
    assert tracer.coverage()["skipped_calls"] == {}  # no traced call was anything but text attention


def test_if_is_its_own_family_with_added_kv_layers():
    pipe, tracer, out = traced_run("if")
    assert family_of(pipe).name == "DeepFloyd IF"  # not the Stable Diffusion UNet fallback
    assert {layer.kind for layer in tracer.layers.values()} == {"added_kv"}
    assert tracer.heat_maps().image_size == (16, 16) == tuple(out.shape[-2:])  # pixel space: no VAE factor


def test_ip_adapter_image_branch_is_skipped():
    pipe, tracer, _ = traced_run("sd_ip_adapter")
    assert {type(p).__name__ for n, p in pipe.unet.attn_processors.items() if "attn2" in n} == \
        {"IPAdapterAttnProcessor2_0"}
    coverage = tracer.coverage()
    assert coverage["skipped_calls"] == coverage["recorded_calls"]  # one image-prompt call beside each text call


def test_lumina2_prompts_of_different_lengths_are_skipped_not_misread():
    pipe = FAMILIES["lumina2"].build()
    with crossattn.trace(pipe) as tr:
        run(pipe, FAMILIES["lumina2"], prompt=[PROMPT, "a dog"], negative_prompt=None)
    coverage = tr.coverage()
    assert set(coverage["recorded_calls"].values()) == {0} and set(coverage["skipped_calls"].values()) == {STEPS}
    with pytest.raises(RuntimeError, match="nothing was captured"):
        tr.heat_maps()


def test_hidream_words_sum_their_three_sources():
    maps = traced_run("hidream")[1].heat_maps()
    parts = [maps.word("hexagon", source=s).raw for s in ("t5", "llama", "llama_layer")]
    assert all(p.sum() > 0 for p in parts)
    assert np.allclose(maps.word("hexagon").raw, sum(parts), atol=1e-6)


def test_zimage_cfg_truncation_records_the_prompt_at_every_step():
    pipe, family = FAMILIES["zimage"].build(), FAMILIES["zimage"]
    with crossattn.trace(pipe, time_bins=STEPS) as truncated:  # the last step runs without the negatives' half
        run(pipe, family, cfg_truncation=0.5)
    with crossattn.trace(pipe, time_bins=STEPS) as full:
        run(pipe, family)
    assert all(n == STEPS for n in truncated.coverage()["recorded_calls"].values())
    cut, whole = truncated.heat_maps(), full.heat_maps()
    first = [m.filter(steps=[0]).data.token_maps() for m in (cut, whole)]
    assert torch.allclose(*first)  # same inputs
    assert cut.filter(steps=[STEPS - 1]).word("hexagon").raw.sum() > 0


def test_qwenimage_maps_of_a_call_given_embeddings_name_the_prompts_words():
    pipe, family = FAMILIES["qwenimage"].build(), FAMILIES["qwenimage"]
    embeds, mask = pipe.encode_prompt(PROMPT, max_sequence_length=32)
    with crossattn.trace(pipe) as given:
        run(pipe, family, prompt=None, prompt_embeds=embeds, prompt_embeds_mask=mask, negative_prompt=None,
            true_cfg_scale=1.0)
    with crossattn.trace(pipe) as encoded:
        run(pipe, family, negative_prompt=None, true_cfg_scale=1.0)
    maps = given.heat_maps(prompt=PROMPT)  # ids rebuilt from the prompt, the template dropped as the pipeline does
    assert maps.words == WORDS
    for k, word in enumerate(WORDS):
        assert np.allclose(maps.word(word, occurrence=WORDS[:k].count(word)).raw,
                           encoded.heat_maps().word(word, occurrence=WORDS[:k].count(word)).raw, atol=1e-6)


def test_pipelines_map_to_their_family():
    import diffusers

    expected = {"FluxPipeline": "Flux.1", "Flux2Pipeline": "Flux.2 [dev]", "Flux2KleinPipeline": "Flux.2 [klein]",
                "ChromaPipeline": "Chroma", "QwenImagePipeline": "Qwen-Image", "ZImagePipeline": "Z-Image",
                "HiDreamImagePipeline": "HiDream-I1"}
    for name, family in expected.items():  # Flux.1's "Flux*" does not catch Flux2Pipeline: exact names win
        assert family_of(object.__new__(getattr(diffusers, name))).name == family


def test_video_pipelines_not_done_are_refused_clearly():
    from diffusers import MochiPipeline

    pipe = object.__new__(MochiPipeline)
    with pytest.raises(crossattn.InputError, match="MochiPipeline is not supported yet: among video pipelines "
                                                   "crossattn traces WanPipeline, CogVideoXPipeline, "
                                                   "AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, "
                                                   "AnimateDiffControlNetPipeline, AnimateDiffSDXLPipeline, "
                                                   "HunyuanVideoPipeline, LTXPipeline"):
        crossattn.trace(pipe)


def test_chat_template_helpers():
    from crossattn.families.chat import template_prefix, unpadded_positions

    pad = 0
    assert template_prefix([0, 0, 7, 8, 5, 9], [7, 8, 9], pad) == {2, 3}  # left padding, then the template's 7 8
    assert unpadded_positions([7, 8, 5, 6, 0, 0], pad, drop=2) == [-1, -1, 0, 1, -1, -1]
    assert unpadded_positions([0, 7, 8, 5, 6], pad, drop=1, limit=2) == [-1, -1, 0, 1, -1]
