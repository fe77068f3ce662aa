"""The configurations GPU users run, on tiny pipelines: attention backends, step caches, guiders (skip-layer
guidance, SDXL PAG), regional and whole-model compile, context parallelism, bf16. Each gives the right maps with a
note where one is due, or is refused before the generation is spent."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPAGPipeline
from diffusers.hooks import FirstBlockCacheConfig
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

import crossattn
from tests.families.pipelines import build_tiny_flux, build_tiny_sd3, quiet
from tests.helpers import seeded
from tests.reference import expected_token_maps, record_attention

PROMPT = "a cyan circle left of a cyan square"


def flux_run(pipe, steps=3, **kw):
    return pipe(PROMPT, num_inference_steps=steps, generator=seeded(), output_type="latent", height=32, width=32,
                max_sequence_length=24, guidance_scale=3.5, **kw).images


@pytest.fixture()
def flux():
    return build_tiny_flux()


def test_a_backend_that_bypasses_sdpa_is_switched_for_the_trace_and_given_back(flux):
    with crossattn.trace(flux) as native:
        expected = flux_run(flux)
    previous = _AttentionBackendRegistry._active_backend
    try:
        flux.transformer.set_attention_backend("flex")  # diffusers also makes it the process-wide default
        with crossattn.trace(flux) as tr:
            out = flux_run(flux)
        assert torch.equal(out, expected)  # it ran through SDPA, as the native run did
        assert torch.allclose(tr.heat_maps().data.token_maps(), native.heat_maps().data.token_maps(), atol=1e-7)
        assert any("'flex' of 2 traced layer(s) was switched" in n for n in tr.heat_maps().notes)
        backends = {m.processor._attention_backend for m in flux.transformer.modules() if hasattr(m, "processor")}
        assert backends == {AttentionBackendName.FLEX}  # given back
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)


class ManualAttention:
    """A processor that attends without torch's SDPA (as a custom kernel would): unobservable."""

    def __init__(self, original):
        self.original = original

    def __call__(self, *args, **kw):
        real = torch.nn.functional.scaled_dot_product_attention

        def manual(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
            scores = query @ key.transpose(-1, -2) * (scale or query.shape[-1] ** -0.5)
            return (scores + (attn_mask if attn_mask is not None else 0)).softmax(-1) @ value

        torch.nn.functional.scaled_dot_product_attention = manual
        try:
            return self.original(*args, **kw)
        finally:
            torch.nn.functional.scaled_dot_product_attention = real


def test_unobservable_attention_is_refused_after_the_first_step_not_the_whole_generation(flux):
    for module in flux.transformer.modules():
        if hasattr(module, "processor"):
            module.processor = ManualAttention(module.processor)
    calls = []
    hook = flux.transformer.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(crossattn.InputError, match="reached torch's scaled_dot_product_attention"):
        with crossattn.trace(flux):
            flux_run(flux, steps=6)
    hook.remove()
    assert len(calls) == 1


def test_a_step_cache_is_named_and_the_skipped_layers_average_the_steps_they_ran(flux):
    flux.transformer.enable_cache(FirstBlockCacheConfig(threshold=50.0))  # reuse the later blocks at once
    tracer = crossattn.trace(flux, time_bins=1, per_layer=True)
    with record_attention(flux.transformer, ["single_transformer_blocks.0.attn"]) as calls, tracer:
        flux_run(flux, steps=6)
    assert tracer.coverage()["recorded_calls"] == {"double.0": 6, "single.0": 1}
    maps = tracer.heat_maps()
    assert any("single.0 1/6" in n for n in maps.notes)
    text, pixels = 24, 64
    expected = expected_token_maps(calls, slice(0, 1), slice(text, text + pixels), slice(0, text),
                                   tracer.kept_positions)
    assert torch.allclose(maps.filter(layers=["single.0"]).data.token_maps().reshape(pixels, -1), expected, atol=1e-5)


def test_sd3_skip_layer_guidance_records_the_conditional_pass_only():
    pipe = build_tiny_sd3()
    options = dict(num_inference_steps=5, output_type="latent", height=32, width=32, max_sequence_length=24,
                   guidance_scale=5.0, skip_guidance_layers=[0], skip_layer_guidance_start=0.0,
                   skip_layer_guidance_stop=1.0)  # a skip-layer pass in steps 1-4, at the same timestep
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: batches.append(k["hidden_states"].shape[0]),
                                                      with_kwargs=True)
    with crossattn.trace(pipe) as plain:
        pipe(PROMPT, generator=seeded(), **{**options, "skip_guidance_layers": None})
    with crossattn.trace(pipe) as slg:
        pipe(PROMPT, generator=seeded(), **options)
    hook.remove()
    assert batches[5:] == [2, 2, 1, 2, 1, 2, 1, 2, 1]  # [negative, prompt], then the prompt with layers skipped
    assert slg.coverage()["recorded_calls"] == {"joint.0": 5, "joint.1": 5}  # one call a step: the CFG pass
    # steps 0 and 1 run on the same latents in both: the skip-layer pass was not mixed into step 1
    for step in (0, 1):
        a, b = slg.heat_maps().over_steps("circle")[step], plain.heat_maps().over_steps("circle")[step]
        assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-6)
    assert any("further pass with the prompt's text" in n for n in slg.heat_maps().notes)


def test_sdxl_pag_maps_are_the_prompts_row(tiny_sdxl):
    pipe = quiet(StableDiffusionXLPAGPipeline(**tiny_sdxl.components, pag_applied_layers=["mid"]))
    tracer = crossattn.trace(pipe, time_bins=1)
    with record_attention(pipe.unet, list(tracer.layers)) as calls, tracer:
        pipe(PROMPT, negative_prompt="a green triangle", num_inference_steps=2, generator=seeded(), height=32,
             width=32, guidance_scale=5.0, pag_scale=3.0, output_type="latent")
    assert {p.shape[0] for p in calls} == {3}
    maps = tracer.heat_maps()
    for h, w in maps.resolutions:
        group = [p for p in calls if p.shape[-2] == h * w]
        expected = expected_token_maps(group, slice(1, 2), slice(0, h * w), slice(0, 77), tracer.kept_positions)
        got = maps.filter(resolutions=[f"{h}x{w}"]).data.token_maps().reshape(h * w, -1)
        assert torch.allclose(got, expected, atol=1e-6)


def test_regionally_compiled_blocks_run_eagerly_for_the_trace(flux):
    with crossattn.trace(flux) as eager:
        expected = flux_run(flux)
    flux.transformer.compile_repeated_blocks(backend="eager")  # the mechanism, without a C++ build
    with crossattn.trace(flux) as tr:
        out = flux_run(flux)
    assert torch.equal(out, expected)
    assert torch.allclose(tr.heat_maps().data.token_maps(), eager.heat_maps().data.token_maps(), atol=1e-7)
    assert any("compiled block(s) ran uncompiled" in n for n in tr.heat_maps().notes)
    compiled = [m for m in flux.transformer.modules() if m._compiled_call_impl is not None]
    assert len(compiled) == 2  # their compiled forward given back


def test_a_wholly_compiled_denoiser_and_context_parallelism_are_refused_before_anything_runs(flux):
    flux.transformer = torch.compile(flux.transformer, backend="eager")
    with pytest.raises(crossattn.InputError, match="compiled whole with torch.compile"):
        crossattn.trace(flux)
    pipe = build_tiny_flux()
    next(m for m in pipe.transformer.modules() if hasattr(m, "processor")).processor._parallel_config = object()
    with pytest.raises(crossattn.InputError, match="context parallelism"):
        crossattn.trace(pipe)


def test_bf16_output_unchanged_and_maps_right(flux):
    fp32 = crossattn.trace(flux)
    with fp32:
        flux_run(flux)
    flux.to(torch.bfloat16)
    plain = flux_run(flux)
    with crossattn.trace(flux) as tr:
        traced = flux_run(flux)
    assert torch.equal(plain, traced)
    a, b = tr.heat_maps().data.token_maps().flatten(), fp32.heat_maps().data.token_maps().flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99


@pytest.mark.parametrize("offload", ["model", "group"])
def test_cpu_offload_traces_exactly(offload):
    """Model offload (accelerate's hooks move each component in for its call) and group offload (diffusers' hooks
    move groups of blocks): the recorder follows each layer's device, and the maps are the un-offloaded pipeline's.
    (Sequential offload fails untraced on CPU with this torch and accelerate, so it has no test here.)"""
    from tests.families.pipelines import build_tiny_sd

    def run(pipe):
        return pipe(PROMPT, num_inference_steps=2, generator=seeded(), output_type="latent").images

    reference = quiet(build_tiny_sd())
    with crossattn.trace(reference) as expected:
        latents = run(reference)
    pipe = quiet(build_tiny_sd())
    if offload == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    else:
        pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1)
    plain = run(pipe)
    with crossattn.trace(pipe) as tr:
        assert torch.equal(run(pipe), plain)
    assert torch.equal(plain, latents)
    assert torch.equal(tr.heat_maps().data.token_maps(), expected.heat_maps().data.token_maps())
    assert tr.heat_maps().data.token_maps().device.type == "cpu"  # the maps come back on the CPU
