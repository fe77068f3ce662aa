"""Rendering: pixels of overlays, colour maps, grids and colour bars."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crossattn import render


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
    from crossattn import placement

    fig = np.asarray(render.with_colorbar(Image.new("RGB", (64, 64), "gray"), "circle", tile=128))
    assert (fig[-1] == 255).all() and (fig[:, -1] == 255).all()  # a white margin all round: nothing cut at the edge
    below_bar = fig[-12:, 128 + 8 + 12 :]  # rows under the bar's bottom, right of the bar: the lower half of "0.0"
    assert (below_bar < 128).any()
    line = placement.Timeline("a very long object phrase with many words", np.full((3, 2), 20.0), 0, 3, 6.4)
    picture = np.asarray(placement.timeline_picture(Image.new("RGB", (64, 64), "gray"), [line], tile=128))
    assert picture.shape[1] > 128 and (picture[:, -1] == 255).all()  # widened for the legend, which ends inside


def test_notebooks_show_pictures():
    """A HeatMaps or WordHeatMap as the last expression of a Jupyter cell shows its picture."""
    from helpers import blob, toy_maps

    maps = toy_maps(["a", "red", "circle"], [np.zeros((8, 8)), blob(8, 8, 2, 2), blob(8, 8, 6, 6)])
    for png in (maps._repr_png_(), maps.word("circle")._repr_png_()):
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and Image.open(io.BytesIO(png)).width > 100
    assert repr(maps).startswith("HeatMaps(3 words ['a', 'red', 'circle'], 1 sites ['up.16x16']")
    assert "tensor" not in repr(maps) and repr(maps.word("circle")).startswith("WordHeatMap('circle', 32x32")
