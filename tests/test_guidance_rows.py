"""Which batch rows are the prompt's: read from the denoiser's text input, never guessed from the batch size.

PAG batches [negative, prompt, perturbed] under guidance and [prompt, perturbed] without: the maps must be the
prompt's row, checked against an independent float64 recomputation of that row (`reference`), and must differ
from the negative's and the perturbed pass's. Layouts crossattn cannot place are refused before any map is made.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPAGPipeline, StableDiffusionPanoramaPipeline

import crossattn
from tests.families.pipelines import quiet
from tests.helpers import seeded
from tests.reference import expected_token_maps, record_attention

PROMPT = "a red circle left of a cyan square"
NEGATIVE = "a green triangle"


@pytest.fixture(scope="module")
def pag(tiny_sd) -> StableDiffusionPAGPipeline:
    return quiet(StableDiffusionPAGPipeline(**tiny_sd.components, pag_applied_layers=["mid", "up"]))


def traced_run(pipe, capture_uncond=False, **kw):
    tracer = crossattn.trace(pipe, time_bins=1, capture_uncond=capture_uncond)
    with record_attention(pipe.unet, list(tracer.layers)) as calls, tracer:
        out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, generator=seeded(), output_type="latent",
                   **kw).images
    return tracer, calls, out


def row_maps(tracer, calls, row: int) -> list[torch.Tensor]:
    """Per resolution: the reference's mean (pixels, kept tokens) maps of one batch row, all layers and steps."""
    out = []
    for h, w in tracer.heat_maps().resolutions:
        group = [p for p in calls if p.shape[-2] == h * w]
        out.append(expected_token_maps(group, slice(row, row + 1), slice(0, h * w), slice(0, group[0].shape[-1]),
                                       tracer.kept_positions))
    return out


def crossattn_maps(maps) -> list[torch.Tensor]:
    return [maps.filter(resolutions=[f"{h}x{w}"]).data.token_maps().reshape(h * w, -1) for h, w in maps.resolutions]


@pytest.mark.parametrize(("guidance", "prompt_row", "batch"), [(5.0, 1, 3), (1.0, 0, 2)], ids=["cfg", "no-cfg"])
def test_pag_maps_are_the_prompts_row(pag, guidance, prompt_row, batch):
    plain = pag(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, generator=seeded(), output_type="latent",
                guidance_scale=guidance, pag_scale=3.0).images
    tracer, calls, out = traced_run(pag, guidance_scale=guidance, pag_scale=3.0)
    assert torch.equal(plain, out)
    assert {p.shape[0] for p in calls} == {batch}  # [negative,] prompt, perturbed
    maps = tracer.heat_maps()
    assert maps.words == ["a", "red", "circle", "left", "of", "a", "cyan", "square"]
    for got, expected, other in zip(crossattn_maps(maps), row_maps(tracer, calls, prompt_row),
                                    row_maps(tracer, calls, batch - 1 if prompt_row else 1), strict=True):
        assert torch.allclose(got, expected, atol=1e-6)
        assert not torch.allclose(got, other, atol=1e-4)  # the perturbed pass differs: it was not mixed in
    if guidance > 1:
        for got, negative in zip(crossattn_maps(maps), row_maps(tracer, calls, 0), strict=True):
            assert not torch.allclose(got, negative, atol=1e-4)
    assert any("further pass with the prompt's text" in note for note in maps.info.notes)


def test_pag_negative_maps_are_the_negatives_row(pag):
    tracer, calls, _ = traced_run(pag, capture_uncond=True, guidance_scale=5.0, pag_scale=3.0)
    assert tracer.n_images == 1
    negative = tracer.heat_maps(negative=True)
    assert negative.words == ["a", "green", "triangle"]
    for got, expected in zip(crossattn_maps(tracer.heat_maps()), row_maps(tracer, calls, 1), strict=True):
        assert torch.allclose(got, expected, atol=1e-6)
    assert not np.allclose(negative.word("a").raw, tracer.heat_maps().word("a").raw)


def test_pag_with_two_images_per_prompt(pag):
    tracer, calls, _ = traced_run(pag, guidance_scale=5.0, pag_scale=3.0, num_images_per_prompt=2)
    assert {p.shape[0] for p in calls} == {6}  # [negative ×2, prompt ×2, perturbed ×2]
    assert tracer.n_images == 2
    for image in (0, 1):
        got = crossattn_maps(tracer.heat_maps(image))
        for g, expected in zip(got, row_maps(tracer, calls, 2 + image), strict=True):
            assert torch.allclose(g, expected, atol=1e-6)


def test_encode_prompt_is_given_back(tiny_sd):
    with crossattn.trace(tiny_sd):
        assert "encode_prompt" in vars(tiny_sd)  # watched for the trace's duration
    assert "encode_prompt" not in vars(tiny_sd)


def test_a_denoiser_called_without_its_pipeline_is_refused_before_it_runs(tiny_sd):
    latent = torch.zeros(1, 4, 16, 16)
    context = torch.zeros(1, 77, 32)
    with crossattn.trace(tiny_sd), pytest.raises(crossattn.InputError, match="which rows of the denoiser's batch"):
        tiny_sd.unet(latent, 10, encoder_hidden_states=context)


def test_panorama_is_refused_clearly(tiny_sd):
    pipe = StableDiffusionPanoramaPipeline(**tiny_sd.components)
    with pytest.raises(crossattn.InputError, match="view window"):
        crossattn.trace(pipe)
