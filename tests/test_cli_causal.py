"""`crossattn effects`, `crossattn diagnose --repair`, and `crossattn sweep`'s exit status when items are missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crossattn import sweep
from crossattn.cli import main

PROMPT = "a red circle left of a blue square"


def test_effects_writes_pictures_changes_and_json(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["effects", PROMPT, "--words", "blue square", "--steps", "6", "--out", str(out)]) == 0
    data = json.loads((out / "effects.json").read_text())
    assert data["how"] == "prompt" and [e["word"] for e in data["effects"]] == ["blue square"]
    assert data["effects"][0]["prompt"] == "a red circle left of"
    picture = Image.open(out / "effects" / "00_blue_square.png")
    assert picture.width > 2 * picture.height  # attention | change | counterfactual
    assert Image.open(out / "effects" / "00_blue_square_counterfactual.png").size == (64, 64)
    with np.load(out / "changes.npz") as changes:
        change = changes["00_blue_square"]
    assert change.shape == (64, 64) and 0 < change.max() <= 1
    assert "blue square" in capsys.readouterr().out


def test_effects_by_attention_with_a_window(tmp_path):
    out = tmp_path / "a"
    assert main(["effects", PROMPT, "--words", "circle", "--how", "attention", "--scale", "0", "--window", "0:3",
                 "--steps", "6", "--out", str(out)]) == 0
    data = json.loads((out / "effects.json").read_text())
    assert data["how"] == "attention" and data["steps"] == [0, 3] and data["effects"][0]["mean_change"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--words", "dog"], "'dog' is not in the prompt"),
    (["--how", "attention", "--words", "dog"], "'dog' is not a word of the prompt"),
    (["--scale", "2"], "--scale and --window apply to --how attention"),
    (["--how", "attention", "--window", "a:b"], "bad --window 'a:b'"),
    (["--how", "attention", "--window", "0:99", "--words", "circle"], "outside this generation's 6 steps"),
    (["--how", "attention", "--scale", "-1", "--words", "circle"], "scale must be a finite number >= 0"),
])
def test_effects_bad_input_is_one_line_and_status_2(tmp_path, capsys, args, message):
    assert main(["effects", PROMPT, "--steps", "6", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_diagnose_repair(tmp_path, capsys):
    out = tmp_path / "d"
    status = main(["diagnose", "a red circle, a green square and a blue triangle", "--steps", "8", "--seed", "1",
                   "--repair", "--out", str(out)])
    data = json.loads((out / "diagnosis.json").read_text())
    neglected = sorted(o["name"] for o in data["before"]["objects"] if o["missing"])
    assert sorted(data["repair"]["boosted"]) == neglected
    assert status == (3 if any(o["missing"] for o in data["after"]["objects"]) or data["after"]["merged"]
                      or data["after"]["misplaced"] or any(o["wrong_attribute"] for o in data["after"]["objects"])
                      else 0)
    for name in ("image_before.png", "image.png", "repair.png", "diagnosis.png"):
        assert (out / name).stat().st_size > 0
    assert "repair:" in capsys.readouterr().out


def test_a_sweep_with_items_missing_exits_3(tmp_path, monkeypatch, capsys):
    class Losing(sweep.LocalEngine):
        def map(self, items):
            self.lost = 1
            return super().map(items[1:])

    monkeypatch.setitem(sweep.ENGINES, "local", Losing)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    assert main(["sweep", str(prompts), "--out", str(tmp_path / "s"), "--steps", "2"]) == 3
    assert "INCOMPLETE" in capsys.readouterr().out
    monkeypatch.setitem(sweep.ENGINES, "local", sweep.LocalEngine)
    assert main(["sweep", str(prompts), "--out", str(tmp_path / "s"), "--steps", "2"]) == 0


def test_a_sweep_refuses_bad_settings_before_loading_the_model(tmp_path, monkeypatch, capsys):
    import crossattn.models

    monkeypatch.setattr(crossattn.models, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["sweep", str(prompts), "--out", str(tmp_path / "s"), "--steps", "0"]) == 2
    assert "steps must be between 1 and" in capsys.readouterr().err


def test_diagnose_causal_writes_the_causal_scores_and_exits_by_the_verdicts(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["diagnose", PROMPT, "--causal", "--steps", "6", "--out", str(out)])
    data = json.loads((out / "diagnosis.json").read_text())
    assert code == (3 if data["failed"] else 0)
    scores = [o["causal_neglect"] for o in data["objects"]]
    assert len(scores) == 2 and min(scores) == 0.0 and all(0 <= s <= 1 for s in scores)
    assert any("causal checks" in n for n in data["notes"]) and "object" in capsys.readouterr().out
    assert main(["diagnose", PROMPT, "--causal", "--repair", "--out", str(tmp_path / "r")]) == 2
    assert "leave out --objects and --causal" in capsys.readouterr().err
