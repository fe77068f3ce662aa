"""Placement on hand-made maps: masks, centroids, regions, verdicts, prompt parsing, timelines, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

import crossattn
from crossattn import geometry, placement
from crossattn.words import ref_name, word_ref
from tests.helpers import blob, toy_maps


def test_place_centroid_bbox_area_region():
    a = np.zeros((60, 90), np.float32)
    a[6:18, 3:21] = 1.0  # a 12 x 18 block in the top-left
    p = placement.place("sun", a)
    assert p.centroid == pytest.approx((12.0, 12.0))
    assert p.bbox == (3, 6, 21, 18) and p.area == pytest.approx(12 * 18 / (60 * 90))
    assert p.region == "top-left"
    assert geometry.region_name(45, 30, 90, 60) == "centre"
    assert geometry.region_name(80, 30, 90, 60) == "right"
    assert geometry.region_name(45, 55, 90, 60) == "bottom"


def test_relative_and_otsu_thresholds():
    a = blob(64, 64, 20, 40)
    rel = placement.place("x", a / a.max(), method="relative", tau=0.5)
    assert rel.threshold == pytest.approx(0.5)
    otsu = placement.place("x", a / a.max(), method="otsu")
    assert 0 < otsu.threshold < 1 and otsu.mask.sum() > 0
    assert otsu.centroid == pytest.approx((20, 40), abs=0.6)
    with pytest.raises(ValueError, match="relative' or 'otsu"):
        geometry.threshold_of(a, method="magic")


def test_all_zero_map():
    p = placement.place("ghost", np.zeros((8, 8), np.float32))
    assert p.centroid is None and p.bbox is None and p.area == 0 and p.region == "none"


def test_parse_statements():
    assert placement.parse_statement("circle left_of square") == ("circle", "left_of", "square")
    assert placement.parse_statement("red circle  left of  blue square") == ("red circle", "left_of", "blue square")
    assert placement.parse_statement("sun above house") == ("sun", "above", "house")
    assert placement.parse_statement("circle in 0, 0, 0.5, 1") == ("circle", "in", (0, 0, 0.5, 1))
    assert placement.parse_statement("circle on the left") == ("circle", "side", "left")
    with pytest.raises(crossattn.InputError, match="cannot read"):
        placement.parse_statement("circle near square")
    with pytest.raises(ValueError, match="bad box"):
        placement.parse_statement("circle in 0.6,0,0.5,1")


def test_relations_read_from_natural_prompts_name_mapped_words():
    circle, square = blob(16, 16, 4, 8, 2), blob(16, 16, 12, 8, 2)
    words = "a photo of a red circle to the left of a blue square in a garden".split()
    arrays = [np.zeros((16, 16))] * len(words)
    arrays[words.index("circle")], arrays[words.index("square")] = circle, square
    maps = toy_maps(words, arrays)
    maps.info.prompt = "A photo of a red circle to the left of a blue square in a garden, 4k"
    statements, notes = placement.prompt_relations(maps)
    assert statements == ["red circle left_of blue square"] and crossattn.check(maps, statements[0]).passed
    assert crossattn.objects(maps) == ["red circle", "blue square"]  # framing ("photo") and context ("garden") are not
    maps.info.prompt = "a red circle left of a purple square"  # "purple" is not among the mapped words
    statements, notes = placement.prompt_relations(maps)
    assert statements == [] and "not among the mapped words" in notes[0]


def test_statements_with_repeats_and_errors():
    assert placement.parse_statement("cat left_of cat#1") == ("cat", "left_of", "cat#1")
    assert word_ref("red cat#1") == ("red cat", 1) and word_ref("cat") == ("cat", 0)
    assert word_ref(ref_name("red cat", 1)) == ("red cat", 1) and ref_name("cat", 0) == "cat"
    assert placement.statement_words("circle in 0,0,0.5,1") == ["circle"]
    assert placement.relation_gap((1, 5), (4, 2), "left_of") == 3
    assert placement.relation_gap((1, 5), (4, 2), "above") == -3
    with pytest.raises(crossattn.InputError, match="cannot read"):
        placement.parse_statement("circle beside square")


def test_settle_step_on_a_synthetic_trace():
    # the blob wanders for 6 steps, then sits at (48, 16) from step 6 on
    path = [(8, 56), (16, 48), (24, 40), (32, 32), (40, 24), (44, 20)] + [(48, 16)] * 4
    frames = np.stack([blob(64, 64, x, y, r=3) for x, y in path])
    line = geometry.track_of("cat", frames, (64, 64), tolerance=0.05)
    assert line.decided_at == 6 and line.steps == 10
    assert line.centroids[-1] == pytest.approx((48, 16), abs=0.5)
    assert geometry.track_of("cat", frames, (64, 64), tolerance=0.1).decided_at == 5  # (44,20) is 5.7 px away
    empty = geometry.track_of("none", np.zeros((3, 8, 8)), (64, 64))
    assert empty.decided_at is None and np.isnan(empty.centroids).all()
    for original in (line, empty):  # a report's timelines draw as the originals do
        again = geometry.Track.from_dict(original.to_dict())
        assert (again.word, again.decided_at, again.steps) == (original.word, original.decided_at, original.steps)
        assert np.allclose(again.centroids, original.centroids, atol=0.005, equal_nan=True)


def test_heatmaps_check_and_segmentation():
    circle, square = blob(16, 16, 4, 8, 2), blob(16, 16, 12, 8, 2)
    maps = toy_maps(["a", "circle", "left", "of", "a", "square"],
                    [np.zeros((16, 16))] * 1 + [circle] + [np.zeros((16, 16))] * 3 + [square])
    good, bad = crossattn.check(maps, "circle left_of square"), crossattn.check(maps, "circle right_of square")
    assert good.passed and not bad.passed
    assert good.evidence["circle"][0] == pytest.approx(16, abs=1)
    assert good.evidence["square"][0] == pytest.approx(48, abs=1)
    assert crossattn.check(maps, "circle in 0.05,0.3,0.45,0.7").passed
    assert not crossattn.check(maps, "circle in 0.55,0.3,0.95,0.7").passed
    assert crossattn.check(maps, "circle on the left").passed and not crossattn.check(maps, "square on the left").passed
    zero = crossattn.check(maps, "a left_of square")
    assert not zero.passed and "no attention" in zero.reason
    assert [r for r in crossattn.relations(maps)] == ["circle left_of square"]
    labels, names = crossattn.segmentation(maps)  # one region per object phrase
    assert names == ["circle", "square"]
    assert labels[32, 16] == 1 and labels[32, 48] == 2 and labels[2, 32] == 0
    places = crossattn.placements(maps)
    assert list(places) == ["a", "circle", "left", "of", "a#1", "square"]
    assert places["circle"].region == "left" and places["square"].region == "right"


def test_identical_words_and_single_word():
    one, two = blob(16, 16, 3, 3, 2), blob(16, 16, 13, 13, 2)
    maps = toy_maps(["circle", "and", "circle"], [one, np.zeros((16, 16)), two])
    places = crossattn.placements(maps)
    assert places["circle"].region == "top-left" and places["circle#1"].region == "bottom-right"
    single = toy_maps(["circle"], [one])
    assert crossattn.placements(single)["circle"].region == "top-left"
    assert crossattn.track(single, "circle").decided_at == 0
    assert crossattn.segmentation(single)[1] == ["circle"]


def test_objects_of_a_traced_prompt_are_those_of_the_prompt_typed():
    """The trace names a prompt by its decoded tokens ("…, 4 k"), `generate` by the text typed ("…, 4k"): both
    give the same objects, to `objects`, `segmentation` and `diagnose` alike — no phantom 'k'."""
    from crossattn.diagnosis import Calibration
    from crossattn.words import prompt_words
    from tests.families.text import clip_tokenizer

    typed = "a photo of a cyan circle to the right of a red square, 4k"
    tokenizer = clip_tokenizer()
    decoded = tokenizer.decode(tokenizer(typed).input_ids, skip_special_tokens=True)
    assert decoded.endswith("square , 4 k")
    words = [w.text for w in prompt_words(tokenizer, typed)]
    assert words[-2:] == ["4", "k"]
    arrays = [np.zeros((16, 16))] * len(words)
    arrays[words.index("circle")], arrays[words.index("square")] = blob(16, 16, 12, 8, 2), blob(16, 16, 4, 8, 2)
    arrays[words.index("k")] = blob(16, 16, 8, 8, 2)
    calibration = Calibration({"neglect": 0.5, "leakage": 0.3, "merging": 0.3})
    for prompt in (typed, decoded):
        maps = toy_maps(words, arrays, prompt=prompt)
        assert crossattn.objects(maps) == ["cyan circle", "red square"]
        assert crossattn.segmentation(maps)[1] == ["cyan circle", "red square"]
        d = crossattn.diagnosis.diagnose(maps, calibration=calibration)
        assert [o.name for o in d.objects] == ["cyan circle", "red square"] and not d.failed
    only_tags = toy_maps(["4", "k", "hd"], [blob(16, 16, 8, 8, 2)] * 3, prompt="4 k , hd")
    assert crossattn.objects(only_tags) == []  # no content words either: tags are no objects
