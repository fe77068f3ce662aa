"""Diagnosis: each verdict on constructed maps with a known answer, then end to end on the embedded model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import crossattn
from crossattn import pictures, reports
from crossattn.diagnosis import Calibration, StoppedEarly, diagnose, early_stop
from tests.helpers import blob, toy_maps

CAL = Calibration({"neglect": 0.5, "leakage": 0.3, "merging": 0.3})
WORDS = "a red circle left of a blue square".split()
ZERO = np.zeros((16, 16), np.float32)


def maps_for(circle, square, red=None, blue=None):
    """Maps of the words above: each word's map given (attributes default to their object's map)."""
    arrays = [ZERO, circle if red is None else red, circle, ZERO, ZERO, ZERO, square if blue is None else blue, square]
    return toy_maps(WORDS, arrays)


def test_a_healthy_generation_has_no_failure():
    d = diagnose(maps_for(blob(16, 16, 4, 8, 2), blob(16, 16, 12, 8, 2)), calibration=CAL)
    assert [o.name for o in d.objects] == ["red circle", "blue square"]
    assert not d.failed and d.merged == [] and d.misplaced == []
    assert d["circle"].neglect == pytest.approx(0.0) and d["red circle"].leakage["red"] < 0.05
    assert d.verdicts()[0].startswith("no failure found")


def test_neglected_object():
    weak = 0.1 * np.ones((16, 16), np.float32)  # a flat, weak map: the square was not attended
    d = diagnose(maps_for(blob(16, 16, 4, 8, 2), weak), calibration=CAL)
    square = d["square"]
    assert square.missing and square.neglect == pytest.approx(0.9, abs=0.02)  # 1 - 0.1 / the circle's peak
    assert not d["circle"].missing and d.failed
    assert "'blue square' was probably neglected" in d.verdicts()[0]
    assert square.settled["missing"] == 0  # the same from the first step of this constant trace


def test_leaking_attribute():
    circle, square = blob(16, 16, 4, 8, 2), blob(16, 16, 12, 8, 2)
    d = diagnose(maps_for(circle, square, red=0.3 * circle + 0.7 * square), calibration=CAL)
    assert d["circle"].leakage["red"] > 0.6 and d["circle"].wrong_attribute
    assert not d["square"].wrong_attribute
    assert any("'red' leaks onto other objects" in line for line in d.verdicts())


def test_merged_objects_and_broken_relation():
    here, there = blob(16, 16, 8, 8, 3), blob(16, 16, 9, 8, 3)
    d = diagnose(maps_for(here, there), calibration=CAL)
    assert d.merged == [("red circle", "blue square")] and d.merging[("red circle", "blue square")] > 0.5
    swapped = diagnose(maps_for(blob(16, 16, 12, 8, 2), blob(16, 16, 4, 8, 2)), calibration=CAL)
    assert swapped.misplaced == ["red circle left_of blue square"] and not swapped.merged


def test_objects_given_by_the_caller_and_errors():
    maps = maps_for(blob(16, 16, 4, 8, 2), blob(16, 16, 12, 8, 2))
    d = diagnose(maps, objects=["blue square"], calibration=CAL)
    assert [o.name for o in d.objects] == ["blue square"] and d.misplaced == []  # no prompt relations asked for
    with pytest.raises(crossattn.UnknownWordError):
        diagnose(maps, objects=["green triangle"], calibration=CAL)
    with pytest.raises(KeyError, match="not an object"):
        d["triangle"]
    data = d.to_dict()
    assert json.loads(json.dumps(data))["objects"][0]["name"] == "blue square"


@pytest.mark.slow
def test_end_to_end_on_the_embedded_model(tmp_path):
    from crossattn.generation import generate

    pipe = crossattn.load_pipeline()
    image, maps = generate(pipe, "a red circle, a green square and a blue triangle", seed=0, steps=6, guidance=2.0)
    d = crossattn.diagnose(maps)
    assert [o.name for o in d.objects] == ["red circle", "green square", "blue triangle"]
    assert 0 <= min(o.neglect for o in d.objects) and d.steps == 6
    assert pictures.diagnosis_picture(d, image).size == (384, 384) and reports.diagnosis_text(d).startswith("object")
    maps.save(tmp_path, diagnosis=d)
    saved = json.loads((tmp_path / "diagnosis.json").read_text())
    assert saved["objects"][0]["name"] == "red circle" and saved["verdicts"] == d.verdicts()
    with crossattn.trace(pipe) as tr, pytest.raises(StoppedEarly) as stop:  # a predicate that always fires
        pipe("a red circle left of a blue square", num_inference_steps=8,
             callback_on_step_end=early_stop(tr, at=2, when=lambda d: True))
    assert stop.value.step == 2 and stop.value.diagnosis.window == [0, 1]
    assert len(tr.recorder.timesteps) == 2  # nothing ran after the stop


@pytest.mark.slow
def test_a_traced_prompt_and_a_generated_one_name_the_same_objects():
    """`crossattn.objects` / `crossattn.diagnose` after `crossattn.trace` (the prompt known by its decoded tokens,
    "… , 4 k") and after `generate` (the prompt as typed, "…, 4k", what the CLI uses) find the same objects:
    no phantom 'k'."""
    import torch

    from crossattn.generation import generate

    prompt = "a photo of a cyan circle to the right of a red square, 4k"
    pipe = crossattn.load_pipeline()
    with crossattn.trace(pipe) as tr:
        pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    traced = tr.heat_maps()
    _, generated = generate(pipe, prompt, seed=0, steps=3)
    assert traced.words[-2:] == ["4", "k"]  # CLIP reads "4k" as two words: "k" has a map, but is no object
    for maps in (traced, generated):
        assert crossattn.objects(maps) == ["cyan circle", "red square"]
        d = crossattn.diagnose(maps)
        assert [o.name for o in d.objects] == ["cyan circle", "red square"] and "'k'" not in " ".join(d.verdicts())
        assert crossattn.relations(maps) == ["cyan circle right_of red square"]
