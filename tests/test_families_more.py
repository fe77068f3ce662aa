"""Capture on Sana, Lumina 2, CogView4, HunyuanDiT, AuraFlow, Kandinsky 3, DeepFloyd IF and SD + IP-Adapter:
outputs bit-identical, maps equal to an independent recomputation (`reference`), words from each tokenizer,
the prompt's rows under guidance, and nothing left behind after an exception. Tiny pipelines (`helpers_more`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from helpers import seeded
from helpers_more import (
    LUMINA_SYSTEM,
    SANA_INSTRUCTION,
    build_tiny_auraflow,
    build_tiny_cogview4,
    build_tiny_hunyuandit,
    build_tiny_if,
    build_tiny_kandinsky3,
    build_tiny_lumina2,
    build_tiny_sana,
    build_tiny_sd_ip_adapter,
)
from reference import expected_token_maps, record_attention

import crossattn
from crossattn.families import family_of

PROMPT = "a cyan hexagon left of a cyan square"  # "hexagon": several pieces in every tokenizer; "a", "cyan" twice
WORDS = ["a", "cyan", "hexagon", "left", "of", "a", "cyan", "square"]
NEGATIVE = "a green triangle"
STEPS = 2


def pieces(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


# The token at each text position of the denoiser's input, as each pipeline builds it (from the pipelines' code,
# not from crossattn): what a family's `segments` must reproduce.
def sana_fed(pipe) -> list[str]:
    tok, length = pipe.tokenizer, 16  # max_sequence_length
    ids = tok(SANA_INSTRUCTION + PROMPT, padding="max_length", truncation=True,
              max_length=len(tok.encode(SANA_INSTRUCTION)) + length - 2).input_ids
    return pieces(tok, [ids[0]] + ids[-(length - 1):])  # output rows [0] + the last 15


def lumina2_fed(pipe) -> list[str]:
    return pieces(pipe.tokenizer, pipe.tokenizer(LUMINA_SYSTEM + PROMPT).input_ids)


def cogview4_fed(pipe) -> list[str]:
    ids = pipe.tokenizer(PROMPT).input_ids
    return pieces(pipe.tokenizer, [pipe.tokenizer.pad_token_id] * (-len(ids) % 16) + ids)  # left-padded to 16k


def hunyuandit_fed(pipe) -> list[str]:
    bert = pipe.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    return pieces(pipe.tokenizer, bert) + pieces(pipe.tokenizer_2, pipe.tokenizer_2(PROMPT).input_ids)


def auraflow_fed(pipe) -> list[str]:
    return ["<register>"] * 8 + pieces(pipe.tokenizer, pipe.tokenizer(PROMPT).input_ids)


def tokens_fed(pipe) -> list[str]:
    return pieces(pipe.tokenizer, pipe.tokenizer(PROMPT).input_ids)


@dataclass(frozen=True)
class Case:
    build: Callable
    options: dict
    fed: Callable = tokens_fed
    sources: list[str] = field(default_factory=list)  # text sources the maps should name (several encoders)
    calls: bool = False  # guidance runs two calls per step (prompt, then negative), not one [negative, prompt] batch


IMAGE_EMBEDS = torch.randn(2, 1, 32, generator=seeded(1))  # [negative, prompt] image embeddings for the IP-Adapter
# 2-step runs at small sizes; every one with classifier-free guidance
CASES = {
    "sana": Case(build_tiny_sana, dict(height=32, width=32, guidance_scale=4.5, max_sequence_length=16,
                                       use_resolution_binning=False, output_type="latent"), sana_fed),
    "lumina2": Case(build_tiny_lumina2, dict(height=64, width=64, guidance_scale=4.0, max_sequence_length=64,
                                             output_type="latent"), lumina2_fed, calls=True),
    "cogview4": Case(build_tiny_cogview4, dict(height=32, width=32, guidance_scale=4.0, output_type="latent"),
                     cogview4_fed, calls=True),
    "hunyuandit": Case(build_tiny_hunyuandit, dict(height=16, width=16, guidance_scale=4.0,
                                                   use_resolution_binning=False, output_type="latent"),
                       hunyuandit_fed, ["bert", "mt5"]),
    "auraflow": Case(build_tiny_auraflow, dict(height=32, width=32, guidance_scale=4.0, max_sequence_length=24,
                                               output_type="latent"), auraflow_fed),
    "kandinsky3": Case(build_tiny_kandinsky3, dict(height=64, width=64, guidance_scale=4.0, output_type="latent")),
    "if": Case(build_tiny_if, dict(height=16, width=16, guidance_scale=4.0, clean_caption=False, output_type="pt")),
    "sd_ip_adapter": Case(build_tiny_sd_ip_adapter, dict(height=32, width=32, guidance_scale=5.0, output_type="latent",
                                                         ip_adapter_image_embeds=[IMAGE_EMBEDS])),
}


def run(pipe, case: Case, prompt=PROMPT, **kw):
    return pipe(prompt, num_inference_steps=STEPS, generator=seeded(), **case.options, **kw).images


def denoiser(pipe):
    return getattr(pipe, family_of(pipe).denoiser)


def processors(model) -> dict:
    """Each attention module's processor (not every model lists them in `attn_processors`)."""
    return {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor")}


def hooks(pipe) -> list:
    """Every module's forward hooks (transformers keeps its own output-capturing hooks on some text encoders)."""
    modules = [m for c in pipe.components.values() if isinstance(c, torch.nn.Module) for m in c.modules()]
    return [(list(m._forward_pre_hooks.values()), list(m._forward_hooks.values())) for m in modules]


@dataclass
class Traced:
    """One family's pipeline, its untraced output, and a traced run recorded by the reference too."""

    name: str
    case: Case
    pipe: object
    plain: torch.Tensor
    out: torch.Tensor
    tracer: crossattn.Trace
    calls: list[torch.Tensor]
    restored: bool  # the processors were kept during the trace, the hooks are as before after it
    hooks: list


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and far faster on a machine busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(CASES))
def traced(request, one_thread) -> Traced:
    case = CASES[request.param]
    pipe = case.build()
    before = processors(denoiser(pipe))
    plain = run(pipe, case)
    hooked = hooks(pipe)
    tracer = crossattn.trace(pipe, time_bins=1)
    with record_attention(denoiser(pipe), list(tracer.layers)) as calls, tracer:
        kept = processors(denoiser(pipe)) == before  # the very same objects (processors compare by identity)
        out = run(pipe, case)
    return Traced(request.param, case, pipe, plain, out, tracer, calls, kept and hooks(pipe) == hooked, hooked)


def prompt_rows_maps(case: Case, tracer, calls) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reference's mean maps (pixels, kept tokens) of the prompt's rows, from the recorded attention calls.

    Layouts as the models build them: cross-attention keys are all text; added K/V keys are [text, the queries'
    own image]; joint (text first) calls hold [text, image] as queries and keys. Under guidance the prompt is the
    second half of a batch, or the first of the two calls per step.
    """
    kinds = {layer.kind for layer in tracer.layers.values()}
    assert len(kinds) == 1
    kind = kinds.pop()
    if kind == "cross":  # the text's calls, not an IP-Adapter's image-prompt calls (4 keys)
        calls = [p for p in calls if p.shape[-1] == max(c.shape[-1] for c in calls)]
    if case.calls:  # [prompt call's layers, negative call's layers] per step
        n = len(tracer.layers)
        calls = [p for k, p in enumerate(calls) if (k // n) % 2 == 0]
    maps = tracer.heat_maps()
    out = []
    for h, w in maps.resolutions:
        group = calls if kind == "text_first" else [p for p in calls if p.shape[-2] == h * w]
        batch, queries, keys = group[0].shape[0], group[0].shape[-2], group[0].shape[-1]
        rows = slice(batch // 2, batch) if not case.calls else slice(0, batch)
        if kind == "text_first":
            images, text = slice(keys - h * w, keys), slice(0, keys - h * w)
        else:
            images, text = slice(0, queries), slice(0, keys - (queries if kind == "added_kv" else 0))
        site = maps if len(maps.resolutions) == 1 else maps.filter(resolutions=[f"{h}x{w}"])
        got = site.token_maps().reshape(h * w, -1)
        out.append((got, expected_token_maps(group, rows, images, text, tracer._kept.tolist())))
    return out


def test_output_is_bit_identical_and_nothing_is_left_behind(traced):
    assert torch.equal(traced.plain, traced.out)
    assert traced.restored
    recorded = traced.tracer.coverage()["recorded_calls"]
    assert recorded and all(n == STEPS for n in recorded.values())  # every traced layer, the prompt's call per step


def test_maps_equal_an_independent_recomputation(traced):
    for got, expected in prompt_rows_maps(traced.case, traced.tracer, traced.calls):
        assert got.shape == expected.shape and got.sum() > 0
        assert torch.allclose(got, expected, atol=1e-5)


def test_words_multi_piece_repeated_and_no_template_words(traced):
    maps = traced.tracer.heat_maps()
    assert maps.words == WORDS  # no instruction, system prompt, register or special token is a word
    assert maps.meta["prompt"].strip() == PROMPT
    hexagon = maps.word_info[2]
    per_source = [cols for _, cols in hexagon.sources] or [hexagon.positions]
    assert all(len(cols) > 1 for cols in per_source)  # several tokens, in every source
    assert set(maps.word("cyan").positions).isdisjoint(maps.word("cyan", occurrence=1).positions)
    assert [name for name, _ in hexagon.sources] == traced.case.sources


def test_each_kept_token_is_the_one_the_pipeline_put_there(traced):
    fed = traced.case.fed(traced.pipe)
    assert traced.tracer.heat_maps().tokens == [fed[p] for p in traced.tracer._kept.tolist()]


def test_maps_of_image_0_are_the_prompts_not_the_negatives(traced):
    pipe, case = traced.pipe, traced.case
    tracer = crossattn.trace(pipe, time_bins=1, capture_uncond=True)
    with record_attention(denoiser(pipe), list(tracer.layers)) as calls, tracer:
        run(pipe, case, negative_prompt=NEGATIVE)
    assert tracer.n_images == 1
    prompt, negative = tracer.heat_maps(), tracer.heat_maps(negative=True)
    assert prompt.words == WORDS and negative.words == ["a", "green", "triangle"]
    for got, expected in prompt_rows_maps(case, tracer, calls):  # the prompt's rows, recomputed independently
        assert torch.allclose(got, expected, atol=1e-5)
    assert not np.allclose(prompt.word("a").raw, negative.word("a").raw)


def test_restored_after_an_exception_mid_generation(traced):
    pipe, tracer = traced.pipe, traced.tracer
    layer = denoiser(pipe).get_submodule(next(iter(tracer.layers)))
    seen = []

    def explode(module, args):  # Ctrl-C inside a traced layer (its observer on), in its second call
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt

    bomb = layer.to_q.register_forward_pre_hook(explode)
    try:
        with pytest.raises(KeyboardInterrupt), crossattn.trace(pipe):
            run(pipe, traced.case)
    finally:
        bomb.remove()
    assert len(seen) == 2 and hooks(pipe) == traced.hooks
    assert torch._C._len_torch_function_stack() == 0  # the observer's mode is off
    assert torch.equal(run(pipe, traced.case), traced.plain)


@pytest.mark.parametrize("traced", ["kandinsky3"], indirect=True)
def test_kandinsky3_traces_text_cross_attention_only(traced):
    unet = traced.pipe.unet
    every = [n for n, m in unet.named_modules() if type(m).__name__ == "Attention"]
    assert all(unet.get_submodule(n).is_cross_attention for n in every)  # what fooled a naive probe
    traced_layers = set(traced.tracer.layers)
    assert "add_time_condition.attention" in every and "add_time_condition.attention" not in traced_layers
    assert not any(".attentions.0." in n for n in traced_layers)  # image self-attention
    assert traced_layers == {n for n in every if n.startswith(("down_blocks.1.", "up_blocks.")) and
                             ".attentions.0." not in n}
    assert traced.tracer.coverage()["skipped_calls"] == {}  # no traced call was anything but text attention


@pytest.mark.parametrize("traced", ["if"], indirect=True)
def test_if_is_its_own_family_with_added_kv_layers(traced):
    assert family_of(traced.pipe).name == "DeepFloyd IF"  # not the Stable Diffusion UNet fallback
    assert {layer.kind for layer in traced.tracer.layers.values()} == {"added_kv"}
    maps = traced.tracer.heat_maps()
    assert maps.image_size == (16, 16) == tuple(traced.out.shape[-2:])  # pixel space: no VAE factor


@pytest.mark.parametrize("traced", ["sd_ip_adapter"], indirect=True)
def test_ip_adapter_image_branch_is_skipped(traced):
    assert {type(p).__name__ for n, p in traced.pipe.unet.attn_processors.items() if "attn2" in n} == \
        {"IPAdapterAttnProcessor2_0"}
    coverage = traced.tracer.coverage()
    assert coverage["skipped_calls"] == coverage["recorded_calls"]  # one image-prompt call beside each text call


@pytest.mark.parametrize("traced", ["lumina2"], indirect=True)
def test_lumina2_prompts_of_different_lengths_are_skipped_not_misread(traced):
    with crossattn.trace(traced.pipe) as tr:
        run(traced.pipe, traced.case, prompt=[PROMPT, "a dog"])
    coverage = tr.coverage()
    assert set(coverage["recorded_calls"].values()) == {0} and set(coverage["skipped_calls"].values()) == {STEPS}
    with pytest.raises(RuntimeError, match="nothing was captured"):
        tr.heat_maps()
