"""Rendering: pixels of overlays, colour maps, grids and colour bars."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crossattn import geometry, pictures, render


def test_overlay_alpha_extremes():
    image = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[:, 15:] = 1.0
    assert np.array_equal(np.asarray(render.overlay(image, heat, alpha=0.0)), image)
    full = np.asarray(render.overlay(image, heat, alpha=1.0, cmap="jet"))
    assert np.array_equal(full, render.colorize(heat, "jet"))
    assert tuple(full[0, 0]) == (0, 0, 128) and tuple(full[0, -1]) == (128, 0, 0)  # jet: dark blue .. dark red


def test_overlay_upsamples_small_maps_and_rejects_bad_input():
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1
    out = render.overlay(Image.new("RGB", (64, 48), "white"), heat, alpha=0.5)
    assert out.size == (64, 48)
    with pytest.raises(ValueError, match="alpha"):
        render.overlay(np.zeros((4, 4, 3), np.uint8), heat, alpha=2)
    with pytest.raises(ValueError, match="choose one of"):
        render.colorize(heat, "rainbowz")


def test_upsample_is_bicubic_and_non_negative():
    low = np.zeros((4, 4), np.float32)
    low[1:3, 1:3] = 1
    up = render.upsample(low, (32, 32))
    assert up.shape == (32, 32) and up.min() >= 0
    assert up[16, 16] > 0.9 and up[0, 0] < 0.05


def test_grid_and_colorbar_sizes():
    tiles = [Image.new("RGB", (50, 60), c) for c in ("red", "green", "blue")]
    g = render.grid(tiles, cols=2, pad=4)
    assert g.size == (2 * 50 + 3 * 4, 2 * 60 + 3 * 4)
    assert g.getpixel((4, 4)) == (255, 0, 0) and g.getpixel((4 + 50 + 4, 4)) == (0, 128, 0)
    fig = render.with_colorbar(Image.new("RGB", (64, 64), "gray"), "circle", tile=128)
    assert fig.height > 128 and fig.width > 128
    top_of_bar = np.asarray(fig)[20, 128 + 8 + 2]  # the bar starts at the image top (below a 20 px title), 8 px right
    assert tuple(top_of_bar) == tuple(render.colorize(np.ones((1, 1)), "jet")[0, 0])


def test_no_label_is_clipped():
    """The colour bar's "0.0" and a long centroid-paths legend line stay inside their pictures."""

    fig = np.asarray(render.with_colorbar(Image.new("RGB", (64, 64), "gray"), "circle", tile=128))
    assert (fig[-1] == 255).all() and (fig[:, -1] == 255).all()  # a white margin all round: nothing cut at the edge
    below_bar = fig[-12:, 128 + 8 + 12 :]  # rows under the bar's bottom, right of the bar: the lower half of "0.0"
    assert (below_bar < 128).any()
    line = geometry.Track("a very long object phrase with many words", np.full((3, 2), 20.0), 0, 3, 6.4)
    picture = np.asarray(pictures.track_picture(Image.new("RGB", (64, 64), "gray"), [line], tile=128))
    assert picture.shape[1] > 128 and (picture[:, -1] == 255).all()  # widened for the legend, which ends inside


def test_notebooks_show_pictures():
    """A HeatMaps or WordHeatMap as the last expression of a Jupyter cell shows its picture."""
    from tests.helpers import blob, toy_maps

    maps = toy_maps(["a", "red", "circle"], [np.zeros((8, 8)), blob(8, 8, 2, 2), blob(8, 8, 6, 6)])
    for png in (maps._repr_png_(), maps.word("circle")._repr_png_()):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and Image.open(io.BytesIO(png)).width > 100
    assert repr(maps).startswith("HeatMaps(3 words ['a', 'red', 'circle'], 1 sites ['up.16x16']")
    assert "tensor" not in repr(maps) and repr(maps.word("circle")).startswith("WordHeatMap('circle', 32x32")


def test_a_filtered_repr_agrees_with_its_fields():
    """The repr counts the steps the maps hold now, not the generation's; notes are shown and read-only."""
    from crossattn.capture import Site
    from tests.helpers import blob, toy_maps

    maps = toy_maps(["a", "circle"], [np.zeros((8, 8)), blob(8, 8, 2, 2)], steps=20)
    site = maps.sites["up.16x16"]
    maps.data.sums = {"up.16x16": maps.data.sums["up.16x16"].repeat(4, 1, 1, 1, 1)}
    maps.data.counts = {"up.16x16": np.ones(4, np.int64)}
    maps.data.sites = {"up.16x16": Site(site.name, site.block, (8, 8))}
    maps.data.bin_steps = [list(range(k, k + 5)) for k in range(0, 20, 5)]
    assert "20 steps in 4 bins" in repr(maps) and "notes" not in repr(maps)
    early = maps.filter(steps=slice(0, 3))
    assert early.steps == [0, 1, 2, 3, 4] and len(early.data.bin_steps) == 1
    assert "steps 0-4 (5 of 20) in 1 bin," in repr(early)
    apart = maps.filter(steps=[0, 19])
    assert apart.steps == [0, 1, 2, 3, 4, 15, 16, 17, 18, 19] and "steps 0-4, 15-19 (10 of 20) in 2 bins" in repr(apart)
    maps.info.notes = ["the prompt was cut: “…”"]
    assert maps.notes == ["the prompt was cut: “…”"] and repr(maps).endswith("notes ['the prompt was cut: “…”'])")
    maps.notes.append("changed")  # a copy: the maps' notes change only through info
    assert maps.notes == ["the prompt was cut: “…”"]
    with pytest.raises(AttributeError):
        maps.notes = []


CROWD = ["green circle", "blue triangle", "a very long purple hexagon with thin stripes", "red square", "yellow star",
         "orange crescent moon"]


def crowded_masks(size: int = 64) -> list[np.ndarray]:
    """Six small regions packed around the centre, two touching the right edge."""
    masks = []
    for k, (x, y) in enumerate([(26, 26), (32, 26), (38, 26), (26, 32), (58, 32), (58, 38)]):
        m = np.zeros((size, size), bool)
        m[y : y + 6, x : x + 6] = True
        masks.append(m)
        assert k < len(CROWD)
    return masks


def assert_legible(picture: Image.Image, found: list, texts: list[str]) -> None:
    """Each text is drawn once (maybe shortened), inside its canvas and the picture, and no two labels overlap."""
    assert len(found) == len(texts)
    for label, text in zip(found, texts):
        assert label.text == text or (label.text.endswith("…") and text.startswith(label.text[:-1]))
        x0, y0, x1, y1 = label.box
        c0, d0, c1, d1 = label.canvas
        assert c0 <= x0 < x1 <= c1 and d0 <= y0 < y1 <= d1, (label, picture.size)
        assert 0 <= c0 and 0 <= d0 and c1 <= picture.width and d1 <= picture.height
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            apart = a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
            assert apart, (a, b)


@pytest.mark.parametrize("tile", [256, 384, 1400])
def test_segmentation_labels_never_overlap_or_leave_the_picture(tile):

    labels = np.zeros((64, 64), np.int64)
    for k, m in enumerate(crowded_masks(), start=1):
        labels[m] = k
    picture = pictures.segmentation_picture(Image.new("RGB", (64, 64), "gray"), labels, CROWD, tile=tile)
    found = render.labels(picture)
    shares = [f"{n}  {float((labels == k).mean()):.0%}" for k, n in enumerate(["background"] + CROWD)]
    assert_legible(picture, found, CROWD + shares)
    assert all(label.canvas == (0, 0, tile, tile) for label in found[: len(CROWD)])  # named on the image itself
    assert [label.text for label in found[len(CROWD) :]] == shares  # the legend is never shortened
    first = found[0].box  # a free label stays where its region is: "green circle" is near the first region
    assert abs((first[1] + first[3]) / 2 - 29 * tile / 64) < tile / 4


@pytest.mark.parametrize("tile", [256, 384])
def test_diagnosis_labels_never_overlap_or_leave_the_picture(tile):
    from crossattn.diagnosis import Diagnosis, ObjectDiagnosis

    objects = [ObjectDiagnosis(name, name.split()[-1], [], 0.0, k == 1, {}, False, mask=m)
               for k, (name, m) in enumerate(zip(CROWD, crowded_masks()))]
    d = Diagnosis(objects, [], {}, {}, [], [], 4, [0, 1, 2, 3], "test", {"neglect": 0.5, "leakage": 0.3})
    picture = pictures.diagnosis_picture(d, Image.new("RGB", (64, 64), "gray"), tile=tile)
    texts = [f"{o.name}: {'missing?' if o.missing else 'ok'}" for o in objects]
    assert_legible(picture, render.labels(picture), texts)
    assert "blue triangle: missing?" in [label.text for label in render.labels(picture)]


def test_long_titles_and_legends_are_fitted_not_cut():

    long = "a wonderfully long object phrase that no tile is wide enough for " * 2
    tile = render.labelled(Image.new("RGB", (64, 64), "gray"), long, 128)
    (label,) = render.labels(tile)
    assert label.text.endswith("…") and label.box[2] <= 128 and label.box[0] >= 0
    short = render.labelled(Image.new("RGB", (64, 64), "gray"), "blue triangle: step 12 of 20", 256)
    assert render.labels(short)[0].text == "blue triangle: step 12 of 20"
    figure = render.with_colorbar(Image.new("RGB", (64, 64), "gray"), long, tile=1400)
    assert_legible(figure, render.labels(figure), [long, "1.0", "0.5", "0.0"])  # the title widens the figure
    lines = [geometry.Track(n, np.full((3, 2), 20.0), 0, 3, 6.4) for n in CROWD]
    paths = pictures.track_picture(Image.new("RGB", (64, 64), "gray"), lines, tile=128)
    assert_legible(paths, render.labels(paths), [f"{n}: position decided at step 1 of 3" for n in CROWD])
    grid = render.grid([short, tile], cols=2, pad=4)  # a grid keeps its tiles' labels, moved with them
    assert [label.box[0] for label in render.labels(grid)] == [render.labels(short)[0].box[0] + 4,
                                                                 label.box[0] + 4 + 256 + 4]
