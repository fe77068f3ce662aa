"""Concept maps: they never change the image, they agree with the plain maps where they must, and a concept
that is not in the picture gets little of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crossattn
from tests.families.pipelines import build_tiny_sd, build_tiny_sd3
from tests.helpers import seeded

PROMPT = "a red circle left of a blue square"


def run(pipe, steps=3, **kw):
    return pipe(PROMPT, num_inference_steps=steps, generator=seeded(), output_type="latent", **kw).images


SD3_OPTIONS = dict(height=32, width=32, max_sequence_length=24)


@pytest.mark.parametrize("build, options, method", [
    (build_tiny_sd, {}, None), (build_tiny_sd, {}, "attention"), (build_tiny_sd3, SD3_OPTIONS, None),
    (build_tiny_sd3, SD3_OPTIONS, "outputs"), (build_tiny_sd3, SD3_OPTIONS, "attention")],
    ids=["unet", "unet-attention", "sd3", "sd3-outputs", "sd3-attention"])
def test_concepts_never_change_the_image_and_share_each_pixel(build, options, method):
    pipe = build()
    plain = run(pipe, **options)
    with crossattn.trace(pipe, concepts=["circle", "sky", "background"], concept_method=method) as tr:
        traced = run(pipe, **options)
    assert torch.equal(plain, traced)
    maps = tr.heat_maps()
    assert maps.words[:3] == ["a", "red", "circle"]  # the prompt's maps are unaffected
    shares = maps.concepts.data.token_maps()  # per pixel, the concepts' shares
    assert maps.concepts.info.concept_method == (method or "prompt")
    if method is None:  # "prompt": each concept its own prompt, a probability on its words (not a share)
        assert float(shares.min()) > 0 and float(shares.max()) < 1 and float(shares.std()) > 0
    else:  # a softmax over the concepts: they share each pixel
        assert torch.allclose(shares.sum(-1), torch.ones(shares.shape[:2]), atol=1e-5)
    sky = maps.concept("sky")
    assert sky.array.shape == maps.word("circle").array.shape and sky.array.max() == pytest.approx(1.0)
    with pytest.raises(crossattn.InputError, match="not a word"):
        maps.concept("moon")


@pytest.mark.parametrize("method", ["outputs", "prompt"])
def test_joint_concepts_do_not_depend_on_their_order(method):
    """Concept tokens attend to the image and to each other, without positions (with "prompt", each text to
    itself): their order is immaterial."""
    pipe = build_tiny_sd3()
    with crossattn.trace(pipe, concepts=["circle", "sky", "square"], concept_method=method) as a:
        run(pipe, **SD3_OPTIONS)
    with crossattn.trace(pipe, concepts=["square", "circle", "sky"], concept_method=method) as b:
        run(pipe, **SD3_OPTIONS)
    for concept in ("circle", "sky", "square"):
        assert np.allclose(a.heat_maps().concept(concept).raw, b.heat_maps().concept(concept).raw, atol=1e-5)


@pytest.mark.parametrize("build, options, layers",
                         [(build_tiny_sd, {}, None), (build_tiny_sd3, SD3_OPTIONS, ["joint.0"])],
                         ids=["unet", "sd3-attention"])
def test_attention_concepts_equal_the_plain_attention_renormalised_over_them(build, options, layers):
    """CLIP is causal: the concept "a red circle" encoded alone has the state of the prompt's "circle" token, and
    the whole prompt that of its "square" token. Over just these two keys, each head's softmax is the plain
    attention renormalised over the two tokens, which the per-head, per-layer plain maps give exactly. In a
    joint transformer that holds in the first block, where the concept tokens are still the prompt's (later
    blocks update them from the image alone)."""
    pipe = build(seed=3)
    with crossattn.trace(pipe, concepts=["a red circle", PROMPT], per_head=True, per_layer=True, time_bins=1,
                         concept_method="attention") as tr:
        run(pipe, steps=1, **options)
    maps, concepts = tr.heat_maps(), tr.heat_maps().concepts
    if layers:
        maps, concepts = maps.filter(layers=layers), concepts.filter(layers=layers)
    circle, square = maps.word("circle").positions[0], maps.word("square").positions[0]
    expected, n = 0, 0
    for sums in maps.data.sums.values():  # (bins, heads, h, w, tokens), one step: sums are the probabilities
        p = sums[0]
        expected = expected + (p[..., circle] / (p[..., circle] + p[..., square])).sum(0)
        n += p.shape[0]
    got = concepts.data.token_maps()[..., 0]
    assert torch.allclose(got, expected / n, atol=1e-5)


@pytest.mark.parametrize("build, options", [(build_tiny_sd, {}), (build_tiny_sd3, dict(height=32, width=32))],
                         ids=["unet", "sd3"])
def test_a_concept_read_as_a_prompt_is_exactly_that_prompts_attention_on_its_words(build, options):
    """Method "prompt" when the concept is the prompt itself: its text states are the prompt's, so in every
    layer (on SD3 every joint block: the concept's text rides the text stream exactly as the prompt's does) the
    map is the plain attention probability summed over the prompt's word tokens (start, end and padding left
    out), head by head — which the per-head, per-layer plain maps give exactly. On SD3 the words of both
    encoders' segments (CLIP and T5) count."""
    pipe = build(seed=3)
    with crossattn.trace(pipe, concepts=[PROMPT, "sky"], per_head=True, per_layer=True, time_bins=1) as tr:
        run(pipe, steps=1, **options)
    maps, concepts = tr.heat_maps(), tr.heat_maps().concepts
    positions = sorted({p for w in maps.data.words for p in w.positions})
    expected, n = 0, 0
    for sums in maps.data.sums.values():  # (bins, heads, h, w, tokens), one step: sums are the probabilities
        expected = expected + sums[0][..., positions].sum(-1).sum(0)
        n += sums.shape[1]
    got = concepts.data.token_maps()[..., 0]
    assert len(maps.data.words) == 8 and len(positions) >= (16 if build is build_tiny_sd3 else 8)
    assert torch.allclose(got, expected / n, atol=1e-5)


def test_a_concept_method_the_model_lacks_is_refused():
    with pytest.raises(crossattn.InputError, match="concept method 'outputs' is not available for .*UNet.*: it offers "
                                                   "prompt, attention"):
        crossattn.trace(build_tiny_sd(), concepts=["sky"], concept_method="outputs")
    with pytest.raises(crossattn.InputError, match="'keys' is not available.*methods: prompt, outputs, attention"):
        crossattn.trace(build_tiny_sd3(), concepts=["sky"], concept_method="keys")


@pytest.mark.slow
@pytest.mark.parametrize("model, method, ratio", [("shapes-unet", None, 2.5), ("shapes-unet", "attention", 5),
                                                  ("shapes-mmdit", None, 10), ("shapes-mmdit", "attention", 5)])
def test_an_absent_concept_stays_off_the_object_on_the_shapes_models(model, method, ratio):
    """The control on the trained models: in "a large red circle", the concept "red" gets `ratio` times more of
    the circle's pixels than the concept "blue" (not drawn), and more on the circle than off it; a multi-word
    concept is addressed by its name. (Method "prompt" gives each concept a probability of its own, the others a
    share of one softmax: the ratio is what both can be held to.)"""
    from crossattn.generation import generate
    from crossattn.shapes import evaluate as ev

    pipe = crossattn.load_pipeline(model)
    image, maps = generate(pipe, "a large red circle", seed=1, concepts=["red", "blue", "a background"],
                           concept_method=method)
    blob = ev.largest_blob(ev.colour_masks(np.asarray(image))["red"])
    assert blob.sum() > 50
    red, blue = maps.concept("red").raw, maps.concept("blue").raw
    assert red[blob].mean() > ratio * blue[blob].mean() and red[blob].mean() > 5 * red[~blob].mean()
    assert maps.concept("a background").raw.shape == red.shape
