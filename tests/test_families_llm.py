"""Capture on the LLM-encoder families (Flux.2 [dev] / [klein], Qwen-Image, Z-Image, HiDream) and Chroma: exact
outputs, maps equal to an independent recomputation (prompt and negative rows), words without template tokens,
the prompt's CFG rows, restored state after an exception. Tiny random-weight pipelines (`helpers_llm`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import seeded
from helpers_llm import (
    build_tiny_chroma,
    build_tiny_flux2,
    build_tiny_flux2_klein,
    build_tiny_hidream,
    build_tiny_qwenimage,
    build_tiny_zimage,
)
from reference import expected_token_maps, record_attention

import crossattn

PROMPT = "a cyan circle left of a cyan square"
WORDS = PROMPT.split()
NEGATIVE = "a green triangle"
STEPS = 2


def layout_text_first(keys: int, pixels: int) -> tuple[slice, slice]:
    return slice(keys - pixels, keys), slice(0, keys - pixels)


def layout_image_first(keys: int, pixels: int) -> tuple[slice, slice]:
    return slice(0, pixels), slice(pixels, keys)


def layout_zimage(keys: int, pixels: int) -> tuple[slice, slice]:
    padded = math.ceil(pixels / 32) * 32  # the image part is padded to a multiple of 32 before the text
    return slice(0, pixels), slice(padded, keys)


# name: (builder, call options, CFG layout of the attention calls, attention layout, first block, sources)
FAMILIES = {
    "flux2": (build_tiny_flux2, dict(max_sequence_length=80, text_encoder_out_layers=(1, 2)), None,
              layout_text_first, "transformer_blocks.0", ["mistral"]),
    "flux2_klein": (build_tiny_flux2_klein, dict(guidance_scale=4.0, max_sequence_length=32,
                                                 text_encoder_out_layers=(1, 2)), "calls",
                    layout_text_first, "transformer_blocks.0", ["qwen3"]),
    "qwenimage": (build_tiny_qwenimage, dict(true_cfg_scale=4.0, negative_prompt=NEGATIVE, max_sequence_length=32),
                  "calls", layout_text_first, "transformer_blocks.0", ["qwen2.5-vl"]),
    # 40 px: 10×10 = 100 image tokens, padded to 128 before the text
    "zimage": (build_tiny_zimage, dict(guidance_scale=4.0, negative_prompt=NEGATIVE, max_sequence_length=32,
                                       height=40, width=40), "prompts_first", layout_zimage, "layers.0", ["qwen3"]),
    "hidream": (build_tiny_hidream, dict(guidance_scale=4.0, negative_prompt=NEGATIVE, max_sequence_length=24),
                "negatives_first", layout_image_first, "double_stream_blocks.0", ["t5", "llama", "llama_layer"]),
    "chroma": (build_tiny_chroma, dict(guidance_scale=4.0, negative_prompt=NEGATIVE, max_sequence_length=24), "calls",
               layout_text_first, "transformer_blocks.0", ["t5"]),
}


def run(pipe, options, prompt=PROMPT):
    return pipe(prompt=prompt, num_inference_steps=STEPS, generator=seeded(), output_type="latent",
                **(dict(height=32, width=32) | options)).images


def hooks(pipe) -> dict[str, tuple[int, int]]:
    """Forward (pre-)hook counts of every module of the pipeline (transformers installs some of its own)."""
    return {f"{name}.{n}": (len(m._forward_pre_hooks), len(m._forward_hooks))
            for name, component in pipe.components.items() if isinstance(component, torch.nn.Module)
            for n, m in component.named_modules()}


@pytest.fixture(scope="module", params=FAMILIES)
def traced(request):
    """One family's pipeline, its untraced output, and one traced run (both CFG halves kept) with every attention
    call of the traced layers recomputed independently."""
    build, options, cfg, *_ = FAMILIES[request.param]
    pipe = build()
    before = dict(crossattn.tracing._processors(pipe.transformer))
    plain = run(pipe, options)
    own_hooks = hooks(pipe)
    tracer = crossattn.trace(pipe, time_bins=1, capture_uncond=cfg is not None)
    with record_attention(pipe.transformer, list(tracer.layers)) as calls, tracer:
        untouched = all(crossattn.tracing._processors(pipe.transformer)[k] is v for k, v in before.items())
        out = run(pipe, options)
    return dict(name=request.param, pipe=pipe, options=options, plain=plain, out=out, tracer=tracer, calls=calls,
                untouched=untouched, before=before, own_hooks=own_hooks)


def test_output_is_bit_identical_and_nothing_is_left_behind(traced):
    assert traced["untouched"] and torch.equal(traced["plain"], traced["out"])
    assert hooks(traced["pipe"]) == traced["own_hooks"]
    recorded = traced["tracer"].coverage()["recorded_calls"]
    cfg = FAMILIES[traced["name"]][2]
    assert recorded and all(n == STEPS * (2 if cfg == "calls" else 1) for n in recorded.values())


def reference(t, negative: bool) -> torch.Tensor:
    """Mean over the prompt's (or the negative's) attention calls and heads of its image queries' probabilities on
    the kept text positions, cut from the full float64 softmax by the layout the test states; kept positions past a
    call's text (true CFG's calls differ in length) are 0."""
    _, _, cfg, layout, *_ = FAMILIES[t["name"]]
    calls, tracer = t["calls"], t["tracer"]
    layers = len(tracer.layers)
    kept = tracer._kept.tolist()
    h, w = tracer.heat_maps().resolutions[0]
    picked = []
    for i, probs in enumerate(calls):
        batch = probs.shape[0]
        if cfg == "calls":  # per step: the prompt's call through every layer, then the negative's
            if (i // layers) % 2 == negative:
                picked.append((probs, slice(0, batch)))
        elif cfg is None:
            picked.append((probs, slice(0, batch)))
        else:
            first = (cfg == "prompts_first") != negative
            picked.append((probs, slice(0, batch // 2) if first else slice(batch // 2, batch)))
    maps = []
    for probs, rows in picked:
        images, text = layout(probs.shape[-1], h * w)
        inside = torch.tensor([k < text.stop - text.start for k in kept])
        clipped = [min(k, text.stop - text.start - 1) for k in kept]
        maps.append(expected_token_maps([probs], rows, images, text, clipped) * inside)
    return torch.stack(maps).mean(0)


def test_maps_equal_an_independent_recomputation(traced):
    maps = traced["tracer"].heat_maps()
    n_img = math.prod(maps.resolutions[0])
    assert torch.allclose(maps.token_maps().reshape(n_img, -1), reference(traced, negative=False), atol=1e-5)
    if FAMILIES[traced["name"]][2] is not None:
        negative = traced["tracer"].heat_maps(negative=True).token_maps().reshape(n_img, -1)
        assert torch.allclose(negative, reference(traced, negative=True), atol=1e-5)


def test_words_of_the_prompt_only(traced):
    maps = traced["tracer"].heat_maps()
    assert maps.words == WORDS  # no "system", "user", "assistant", "Describe", ... from the templates
    assert maps.meta["prompt"] == PROMPT and maps.meta["sources"] == FAMILIES[traced["name"]][5]
    height = traced["options"].get("height", 32)
    assert maps.image_size == (height, height) and maps.resolutions == [(height // 4, height // 4)]
    cyan, again = maps.word_info[1], maps.word_info[6]
    assert cyan.text == again.text == "cyan" and again.occurrence == 1
    assert set(cyan.positions).isdisjoint(again.positions)  # the repeated word has its own tokens
    first = {w.text: w for w in maps.word_info if w.occurrence == 0}
    for source in maps.meta["sources"]:  # byte-level BPE splits "cyan", the T5-style tokenizer "square"
        pieces = [[maps.tokens[c] for c in first[word].in_source(source)] for word in ("cyan", "square")]
        assert all(p[0][0] in "Ġ▁" and not any(t[0] in "Ġ▁" for t in p[1:]) for p in pieces)
        assert max(len(p) for p in pieces) > 1
    assert maps.word("cyan").raw.sum() > 0


def test_hidream_words_sum_their_three_sources(traced):
    if traced["name"] != "hidream":
        pytest.skip("HiDream only")
    maps = traced["tracer"].heat_maps()
    parts = [maps.word("circle", source=s).raw for s in ("t5", "llama", "llama_layer")]
    assert all(p.sum() > 0 for p in parts)
    assert np.allclose(maps.word("circle").raw, sum(parts), atol=1e-6)


def test_cfg_maps_of_image_0_are_the_prompts(traced):
    pipe, options, tracer = traced["pipe"], traced["options"], traced["tracer"]
    if FAMILIES[traced["name"]][2] is None:  # guidance-distilled: one call, no negative
        with pytest.raises(crossattn.InputError, match="negative maps need"):
            tracer.heat_maps(negative=True)
        return
    with crossattn.trace(pipe, time_bins=1) as prompt_only:
        run(pipe, options)
    assert prompt_only.n_images == tracer.n_images == 1
    cond, neg = tracer.heat_maps(), tracer.heat_maps(negative=True)
    assert torch.allclose(prompt_only.heat_maps().token_maps(), cond.token_maps(), atol=1e-6)
    assert neg.words == ([] if traced["name"] == "flux2_klein" else NEGATIVE.split())  # [klein]'s negative is ""
    assert not torch.allclose(cond.token_maps(), neg.token_maps(), atol=1e-4)


def test_restored_after_an_exception_mid_generation(traced):
    pipe, options = traced["pipe"], traced["options"]
    seen = []

    def explode(module, args, kwargs):  # Ctrl-C in the middle of the second denoising step
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt

    block = pipe.transformer.get_submodule(FAMILIES[traced["name"]][4])
    bomb = block.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt), crossattn.trace(pipe, capture_uncond=True):
            run(pipe, options)
    finally:
        bomb.remove()
    assert hooks(pipe) == traced["own_hooks"]
    assert all(crossattn.tracing._processors(pipe.transformer)[k] is v for k, v in traced["before"].items())
    assert torch.equal(run(pipe, options), traced["plain"])


def test_zimage_cfg_truncation_records_the_prompt_at_every_step(traced):
    if traced["name"] != "zimage":
        pytest.skip("Z-Image only")
    pipe, options = traced["pipe"], traced["options"]
    with crossattn.trace(pipe, time_bins=STEPS) as truncated:  # the last step runs without the negatives' half
        run(pipe, options | dict(cfg_truncation=0.5))
    with crossattn.trace(pipe, time_bins=STEPS) as full:
        run(pipe, options)
    assert all(n == STEPS for n in truncated.coverage()["recorded_calls"].values())
    cut, whole = truncated.heat_maps(), full.heat_maps()
    assert torch.allclose(cut.filter(steps=[0]).token_maps(), whole.filter(steps=[0]).token_maps())  # same inputs
    assert cut.filter(steps=[STEPS - 1]).word("circle").raw.sum() > 0


def test_qwenimage_maps_of_a_call_given_embeddings_name_the_prompts_words(traced):
    if traced["name"] != "qwenimage":
        pytest.skip("Qwen-Image only")
    pipe = traced["pipe"]
    embeds, mask = pipe.encode_prompt(PROMPT, max_sequence_length=32)
    with crossattn.trace(pipe) as given:
        run(pipe, dict(prompt_embeds=embeds, prompt_embeds_mask=mask), prompt=None)
    with crossattn.trace(pipe) as encoded:
        run(pipe, {})
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
        assert crossattn.families.family_of(object.__new__(getattr(diffusers, name))).name == family


def test_chat_template_helpers():
    from crossattn.families.chat import template_prefix, unpadded_positions

    pad = 0
    assert template_prefix([0, 0, 7, 8, 5, 9], [7, 8, 9], pad) == {2, 3}  # left padding, then the template's 7 8
    assert unpadded_positions([7, 8, 5, 6, 0, 0], pad, drop=2) == [-1, -1, 0, 1, -1, -1]
    assert unpadded_positions([0, 7, 8, 5, 6], pad, drop=1, limit=2) == [-1, -1, 0, 1, -1]
