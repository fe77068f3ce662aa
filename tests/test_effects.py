"""`crossattn.effects` and `crossattn.repair` on the embedded shapes model: counterfactual images, change maps,
agreement, word deletion, and a repair whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

import crossattn
from crossattn import causal as fx
from crossattn.shapes.evaluate import read_pixels

PROMPT = "a red circle left of a blue square"
STEPS = 8


@pytest.fixture(scope="module")
def pipe():
    return crossattn.load_pipeline()


def test_delete_word():
    assert fx.delete_word(PROMPT, "blue square") == "a red circle left of"
    assert fx.delete_word("a cat and a cat", "cat#1") == "a cat and"
    assert fx.delete_word("A Red circle", "red") == "A circle"
    assert fx.delete_word("a red circle, a green square and a blue triangle", "red circle") == \
        "a green square and a blue triangle"
    assert fx.delete_word("the man with an apple", "apple") == "the man with"
    with pytest.raises(crossattn.InputError, match="'dog' is not in the prompt"):
        fx.delete_word(PROMPT, "dog")
    with pytest.raises(crossattn.InputError, match="leaves nothing"):
        fx.delete_word("circle", "circle")


def test_pearson():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert fx.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert fx.pearson(a, -a) == pytest.approx(-1.0)
    assert fx.pearson(a, np.zeros_like(a)) is None


def test_prompt_counterfactual_changes_the_picture_where_the_object_was(pipe):
    eff = crossattn.effects(pipe, PROMPT, ["blue square"], num_inference_steps=STEPS, seed=3)
    square = eff["blue square"]
    assert square.prompt == "a red circle left of"
    assert square.change.shape == (64, 64) and square.change.dtype == np.float32
    assert 0 <= square.change.min() and square.change.max() <= 1 and square.change.max() > 0.2
    truth = read_pixels(eff.image, PROMPT)
    mask = truth.blobs[("blue", "square")]
    assert square.change[mask].mean() > 3 * square.change[~mask].mean()  # the change sits on the square
    assert square.agreement is not None and square.agreement > 0.3
    assert eff.to_dict()["effects"][0]["word"] == "blue square"


def test_attention_scale_one_changes_nothing(pipe):
    eff = crossattn.effects(pipe, PROMPT, ["circle"], how="attention", scale=1.0, num_inference_steps=4)
    assert eff["circle"].change.max() == 0 and eff["circle"].agreement is None


@pytest.mark.parametrize(("kw", "message"), [
    (dict(words=["dog"]), "'dog' is not in the prompt"),
    (dict(words=["dog"], how="attention"), "'dog' is not a word of the prompt"),
    (dict(words=["circle"], how="sideways"), "how must be one of"),
    (dict(words=["circle"], how="attention", scale=-1.0), "scale must be a finite number"),
    (dict(words=["circle"], how="prompt", scale=2.0), "apply to how='attention'"),
    (dict(words=[]), "no words given"),
    (dict(words=["circle"], num_inference_steps=0), "steps must be between"),
    (dict(words=["circle"], eta=0.5), "unsupported pipeline option"),
])
def test_bad_input_before_any_generation(pipe, kw, message):
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(crossattn.InputError, match=message):
            crossattn.effects(pipe, PROMPT, **kw)
    finally:
        hook.remove()
    assert not calls


def test_repair_does_nothing_when_nothing_is_neglected(pipe, monkeypatch):
    runs = []
    real = fx.generate
    monkeypatch.setattr(fx, "generate", lambda *a, **k: runs.append(1) or real(*a, **k))
    r = crossattn.repair(pipe, "a red circle", num_inference_steps=STEPS, seed=0)
    assert not any(o.missing for o in r.before.objects)
    assert r.boosted == {} and r.recovered == [] and r.image is r.image_before and len(runs) == 1


def test_repair_boosts_exactly_the_neglected_objects_early(pipe, monkeypatch):
    """A known answer: the diagnosis is made to call 'blue square' neglected; repair must boost that phrase alone,
    in the first half of the steps, and regenerate once with the same seed."""
    real_diagnose, seen = fx.diagnose, []

    def diagnose(maps, objects=None, steps=None):
        d = real_diagnose(maps, objects, steps)
        if steps is None:
            d["blue square"].missing = True
        return d

    real_intervene = fx.intervene

    def intervene(pipe, scales, steps):
        seen.append((scales, steps))
        return real_intervene(pipe, scales, steps=steps)

    monkeypatch.setattr(fx, "diagnose", diagnose)
    monkeypatch.setattr(fx, "intervene", intervene)
    r = crossattn.repair(pipe, PROMPT, num_inference_steps=STEPS, seed=3)
    assert seen == [({"blue square": fx.REPAIR_SCALE}, (0, round(STEPS * fx.REPAIR_SHARE)))]
    assert r.boosted == {"blue square": fx.REPAIR_SCALE}
    assert r.after.window == list(range(round(STEPS * fx.REPAIR_SHARE), STEPS))  # read after the boost
    assert not np.array_equal(np.asarray(r.image), np.asarray(r.image_before))


def test_attention_effects_of_positions_that_are_not_words(pipe):
    eff = crossattn.effects(pipe, PROMPT, ["<end>"], how="attention", num_inference_steps=4)
    assert eff["<end>"].change.max() > 0 and eff["<end>"].agreement is None  # no word map to compare with
    with pytest.raises(crossattn.InputError, match="names text positions, not words"):
        crossattn.effects(pipe, PROMPT, ["<end>"], num_inference_steps=4)


def test_causal_diagnosis_scores_each_objects_ablation_and_gives_its_verdict(pipe):
    """The causal neglect score recomputed by hand: each object's words ablated (scale 0, all steps, same seed), the
    change inside its attention region, relative to the largest; the verdict is the shipped threshold's."""
    prompt = "a red circle left of a blue square and a green triangle"
    image, maps = fx.generate(pipe, prompt, seed=3, steps=STEPS, guidance=5.0)
    d = crossattn.diagnose_causally(pipe, image, maps)
    plain = crossattn.diagnose(maps)
    regions = []
    for o in plain.objects:
        with crossattn.intervene(pipe, {o.name: 0.0}):
            ablated, _ = fx.generate(pipe, prompt, seed=3, steps=STEPS, guidance=5.0)
        regions.append(float(fx.change_map(image, ablated)[o.mask].mean()))
    expected = [1 - r / max(regions) for r in regions]
    assert [o.name for o in d.objects] == ["red circle", "blue square", "green triangle"]
    np.testing.assert_allclose([o.causal_neglect for o in d.objects], expected, rtol=1e-6)
    assert min(o.causal_neglect for o in d.objects) == 0.0  # the object whose ablation changed most
    threshold = fx.Calibration.load().thresholds["causal_neglect"]
    assert [o.missing for o in d.objects] == [s >= threshold for s in expected]
    assert [o.neglect for o in d.objects] == [o.neglect for o in plain.objects]  # the attention score is kept
    assert any("3 more generations" in n for n in d.notes) and d.to_dict()["objects"][0]["causal_neglect"] is not None
    if any(o.missing for o in d.objects):
        assert any("removing its attention barely changed its region" in v for v in d.verdicts())
    with crossattn.trace(pipe) as tr:  # maps of a call crossattn did not make: no seed to repeat it with
        pipe(prompt, num_inference_steps=2)
    with pytest.raises(crossattn.InputError, match="needs the maps of a generation made by"):
        crossattn.diagnose_causally(pipe, image, tr.heat_maps())
