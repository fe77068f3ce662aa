"""Modular pipelines: their guiders run each pass (conditional, unconditional, perturbed) as its own denoiser call.

The maps must be the conditional pass's, checked against an independent float64 recomputation of the calls the
guider itself labelled ``pred_cond`` (`reference`), with the traced image bit-identical to the untraced one —
also under PAG, whose guider runs its own `TorchFunctionMode` beside the trace's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance, PerturbedAttentionGuidance
from diffusers.hooks import LayerSkipConfig
from diffusers.modular_pipelines import (
    FluxAutoBlocks,
    StableDiffusion3ModularPipeline,
    StableDiffusionXLAutoBlocks,
    ZImageAutoBlocks,
)

import crossattn
from tests.families.pipelines import build_tiny_flux, build_tiny_sdxl, build_tiny_zimage
from tests.helpers import seeded
from tests.reference import expected_token_maps, record_attention

PROMPT = "a red circle left of a cyan square"
WORDS = ["a", "red", "circle", "left", "of", "a", "cyan", "square"]
GUIDERS = {
    "cfg": lambda: ClassifierFreeGuidance(guidance_scale=5.0),
    "pag": lambda: PerturbedAttentionGuidance(  # the mid block's self-attention scores skipped in a third pass
        guidance_scale=5.0, perturbed_guidance_scale=3.0, perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0,
        perturbed_guidance_config=LayerSkipConfig(indices=[0], fqn="mid_block.attentions.0.transformer_blocks",
                                                  skip_attention=False, skip_attention_scores=True, skip_ff=False)),
    "apg": lambda: AdaptiveProjectedGuidance(guidance_scale=5.0),
    "no guidance": lambda: ClassifierFreeGuidance(guidance_scale=1.0),
}


@pytest.fixture(scope="module")
def sdxl():
    pipe = StableDiffusionXLAutoBlocks().init_pipeline()
    pipe.update_components(**{k: v for k, v in build_tiny_sdxl().components.items() if v is not None})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe):
    return pipe(prompt=PROMPT, num_inference_steps=3, generator=seeded(), output="images")[0]


def labelled_passes(guider) -> list[str]:
    """The guider's own label of each denoiser call it asks for, in order (its `prepare_inputs` is watched)."""
    labels, original = [], guider.prepare_inputs

    def prepare_inputs(*args, **kwargs):
        batches = original(*args, **kwargs)
        labels.extend(b.__guidance_identifier__ for b in batches)
        return batches

    guider.prepare_inputs = prepare_inputs
    return labels


@pytest.mark.parametrize("name", list(GUIDERS))
def test_sdxl_modular_maps_are_the_conditional_pass(sdxl, name):
    sdxl.update_components(guider=GUIDERS[name]())
    plain = np.asarray(generate(sdxl))
    with crossattn.trace(sdxl):
        assert np.array_equal(plain, np.asarray(generate(sdxl)))
    # The reference's own SDPA wrapper hides the call from PAG's mode (it looks for torch's function), so its
    # generation is PAG-less: the maps are compared on that generation, the image above.
    labels = labelled_passes(sdxl.guider)
    tracer = crossattn.trace(sdxl, time_bins=1)
    with record_attention(sdxl.unet, list(tracer.layers)) as calls, tracer:
        generate(sdxl)
    maps = tracer.heat_maps()
    assert maps.words == WORDS and len(maps.steps) == 3
    per_call = len(calls) // len(labels)  # each traced layer once per denoiser call
    assert per_call * len(labels) == len(calls)
    cond = [p for k, p in enumerate(calls) if labels[k // per_call] == "pred_cond"]
    assert len(cond) == 3 * per_call
    for h, w in maps.resolutions:
        group = [p for p in cond if p.shape[-2] == h * w]
        expected = expected_token_maps(group, slice(0, 1), slice(0, h * w), slice(0, group[0].shape[-1]),
                                       tracer.kept_positions)
        got = maps.filter(resolutions=[f"{h}x{w}"]).data.token_maps().reshape(h * w, -1)
        assert torch.allclose(got, expected, atol=1e-6)
    assert ("pred_cond_skip" in labels) == (name == "pag")
    if name == "pag":  # its perturbed pass has the prompt's text and latent: recognised, left out, said
        assert any("further pass with the prompt's text" in note for note in maps.notes)


# modular blocks, the classic builder, the pipelines' own size arguments, and the steps whose maps must agree: all
# for SDXL and Flux; the first for Z-Image, whose modular guider combines the passes differently from its
# classic pipeline (the same text and first latent, so the same first step; later latents differ)
PAIRS = {
    "sdxl": (StableDiffusionXLAutoBlocks, build_tiny_sdxl, {}, {"guidance_scale": 5.0}, None),
    "flux": (FluxAutoBlocks, build_tiny_flux, {"height": 32, "width": 32, "max_sequence_length": 16},
             {"height": 32, "width": 32, "max_sequence_length": 16}, None),
    "z-image": (ZImageAutoBlocks, build_tiny_zimage, {"height": 32, "width": 32},
                {"height": 32, "width": 32, "guidance_scale": 5.0}, [0]),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_modular_pipelines_trace_exactly_and_as_their_classic_ones(name):
    blocks, build, sizes, classic_options, steps = PAIRS[name]
    classic = build()
    classic.set_progress_bar_config(disable=True)
    if classic.vae.config.get("shift_factor", 0) is None:  # the modular Z-Image decoder adds it unconditionally
        classic.vae.register_to_config(shift_factor=0.0)
    modular = blocks().init_pipeline()
    modular.update_components(**{k: v for k, v in classic.components.items() if v is not None})
    modular.set_progress_bar_config(disable=True)
    if name == "sdxl":
        modular.update_components(guider=ClassifierFreeGuidance(guidance_scale=5.0))

    def run():
        return modular(prompt=PROMPT, num_inference_steps=2, generator=seeded(), output="latents", **sizes)

    plain = run()
    with crossattn.trace(modular) as b:
        assert torch.equal(plain, run())
    with crossattn.trace(classic) as a:
        classic(PROMPT, num_inference_steps=2, generator=seeded(), output_type="latent", **classic_options)
    got, expected = b.heat_maps(), a.heat_maps()
    assert got.words == WORDS and len(got.steps) == 2
    if steps is not None:
        got, expected = got.filter(steps=steps), expected.filter(steps=steps)
    for word in ("red", "circle", "square"):  # one batch of [negative, prompt] vs a call each: float noise only
        np.testing.assert_allclose(got.word(word).raw, expected.word(word).raw, rtol=1e-5, atol=1e-7)
    owners = [step for step in modular._blocks.sub_blocks.values() if hasattr(step, "encode_prompt")]
    assert owners and all("encode_prompt" not in vars(step) for step in owners)  # the steps' own methods are back


def test_other_modular_pipelines_are_refused_clearly():
    pipe = StableDiffusion3ModularPipeline.__new__(StableDiffusion3ModularPipeline)  # no blocks needed to be told no
    with pytest.raises(crossattn.InputError, match="modular pipeline that crossattn does not support yet: it traces "
                                                   "StableDiffusionXLModularPipeline, FluxModularPipeline"):
        crossattn.trace(pipe)
