"""Save/load round trip, loading pipelines from folders, and the CLI end to end on a saved tiny pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import seeded
from PIL import Image

import crossattn
from crossattn.cli import main

PROMPT = "a red circle left of a cyan square"


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory, tiny_sd):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_save_load_round_trip(tmp_path, tiny_sd3level, fmt):
    with crossattn.trace(tiny_sd3level, per_head=True) as tr:
        tiny_sd3level(PROMPT, num_inference_steps=3, generator=seeded(), output_type="latent")
    maps = tr.heat_maps()
    maps.meta["seed"] = 0
    maps.save(tmp_path, fmt=fmt)
    back = crossattn.load_heat_maps(tmp_path)
    assert back.words == maps.words and back.tokens == maps.tokens and back.bin_steps == maps.bin_steps
    assert back.sites == maps.sites and back.per_head and back.meta["seed"] == 0
    for k in maps.sums:
        assert torch.equal(back.sums[k], maps.sums[k]) and np.array_equal(back.counts[k], maps.counts[k])
    assert np.array_equal(back.word("cyan").array, maps.word("cyan").array)
    assert np.array_equal(back.filter(heads=[1], blocks=["up"]).word("circle").raw,
                          maps.filter(heads=[1], blocks=["up"]).word("circle").raw)
    info = json.loads((tmp_path / "heatmaps.json").read_text())
    assert info["words"][6] == {"text": "cyan", "token_indices": [7, 8], "occurrence": 0}
    assert info["prompt"] == PROMPT and info["steps"] == 3


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="heatmaps.json"):
        crossattn.load_heat_maps(tmp_path)


def test_load_pipeline_from_folder(saved_pipeline, tmp_path):
    pipe = crossattn.load_pipeline(saved_pipeline, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        crossattn.load_pipeline(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        crossattn.load_pipeline(tmp_path)


def test_pickled_weights_are_refused(tiny_sd, tmp_path):
    tiny_sd.save_pretrained(tmp_path)
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tiny_sd.unet.state_dict(), tmp_path / "unet" / "diffusion_pytorch_model.bin")  # a pickle
    with pytest.raises(OSError, match="safetensors"):
        crossattn.load_pipeline(tmp_path, device="cpu")


def test_cli_generate_end_to_end(saved_pipeline, tmp_path):
    out = tmp_path / "out"
    code = main(["generate", PROMPT, "--model", str(saved_pipeline), "--steps", "3", "--seed", "7",
                 "--out", str(out), "--words", "circle,cyan"])
    assert code == 0
    image = Image.open(out / "image.png")
    assert image.size == (32, 32)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["00_circle.png", "01_cyan.png"]
    assert Image.open(out / "grid.png").width > 256
    info = json.loads((out / "heatmaps.json").read_text())
    assert info["seed"] == 7 and info["prompt"] == PROMPT and info["model"] == str(saved_pipeline)
    assert crossattn.load_heat_maps(out).word("circle").array.shape == (32, 32)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--words", "elephant"], "'elephant' is not a word of the prompt; its words are: 'a', 'red'"),
        (["--size", "30x30"], "bad size 30x30: width and height must be positive multiples of 4"),
        (["--size", "big"], "bad size 'big'"),
        (["--steps", "0"], "steps must be between 1 and 1000"),
    ],
)
def test_cli_errors_are_one_line(saved_pipeline, tmp_path, capsys, extra, message):
    code = main(["generate", PROMPT, "--model", str(saved_pipeline), "--out", str(tmp_path)] + extra)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("crossattn: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "image.png").exists()


def test_cli_missing_model_via_console_script(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "crossattn", "generate", "a cat", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("crossattn: error: model not found")


def test_cli_placement_end_to_end(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "place"
    code = main(["placement", PROMPT, "--model", str(saved_pipeline), "--steps", "3", "--out", str(out),
                 "--expect", "circle left_of square", "--expect", "cyan square in 0.5,0,1,1", "--from-prompt"])
    assert code == 0
    data = json.loads((out / "placement.json").read_text())
    assert [c["statement"] for c in data["checks"]] == [
        "circle left_of square", "cyan square in 0.5,0,1,1", "red circle left_of cyan square"]
    assert [w["word"] for w in data["words"]] == ["red", "circle", "cyan", "square"]
    assert all(isinstance(c["passed"], bool) for c in data["checks"])
    assert Image.open(out / "segmentation.png").width == 384 and (out / "timeline.png").exists()
    printed = capsys.readouterr().out
    assert "circle left_of square" in printed and ("PASS" in printed or "FAIL" in printed)
    code = main(["placement", PROMPT, "--model", str(saved_pipeline), "--expect", "circle near square"])
    assert code == 2 and "cannot read 'circle near square'" in capsys.readouterr().err
