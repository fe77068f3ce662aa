"""Rendering: pixels of overlays, colour maps, grids and colour bars."""

from __future__ import annotations

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
