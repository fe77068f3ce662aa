"""`crossattn explain IMAGE CAPTION`: maps, overlays, segmentation and placement of an image the user brings."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from crossattn.cli import main

CAPTION = "a red circle left of a blue square"


@pytest.fixture()
def scene(tmp_path):
    picture = Image.new("RGB", (64, 64), (240, 240, 236))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((6, 22, 26, 42), fill=(220, 30, 30))
    draw.rectangle((40, 24, 56, 40), fill=(30, 60, 220))
    path = tmp_path / "scene.png"
    picture.save(path)
    return path


def test_explain_writes_maps_and_places_the_objects(scene, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["explain", str(scene), CAPTION, "--out", str(out)]) == 0
    data = json.loads((out / "placement.json").read_text())
    assert "PASS  red circle left_of blue square" in capsys.readouterr().out
    x = {w["word"]: w["centroid"][0] for w in data["words"]}
    assert x["red circle"] < 32 < x["blue square"]
    assert Image.open(out / "image.png").size == (64, 64)
    assert len(list((out / "overlays").glob("*.png"))) == 8
    for name in ("grid.png", "segmentation.png", "heatmaps.json", "maps.safetensors"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("content", [b"", b"not an image at all"], ids=["empty", "text"])
def test_explain_bad_files_are_one_line_and_status_2(tmp_path, capsys, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    assert main(["explain", str(bad), CAPTION, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an image this tool can read: give a PNG, JPEG" in err[0]


def test_explain_missing_file_and_empty_caption(scene, tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nope.png"), CAPTION, "--out", str(tmp_path / "x")]) == 2
    assert main(["explain", str(scene), "  ", "--out", str(tmp_path / "y")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "caption is empty" in errors[1]
