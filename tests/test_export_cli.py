"""Save/load round trip, loading pipelines from folders, the CLI end to end on a saved tiny pipeline, and the
README's bad-input table (each row: the message and the exit status)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import crossattn
from crossattn.cli import main
from tests.helpers import seeded

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
    maps.info.seed = 0
    maps.save(tmp_path, fmt=fmt)
    back = crossattn.load_heat_maps(tmp_path)
    assert back.words == maps.words and back.tokens == maps.tokens and back.data.bin_steps == maps.data.bin_steps
    assert back.sites == maps.sites and back.data.per_head and back.info.seed == 0
    for k in maps.data.sums:
        assert torch.equal(back.data.sums[k], maps.data.sums[k])
        assert np.array_equal(back.data.counts[k], maps.data.counts[k])
    assert np.array_equal(back.word("cyan").array, maps.word("cyan").array)
    assert np.array_equal(back.filter(heads=[1], blocks=["up"]).word("circle").raw,
                          maps.filter(heads=[1], blocks=["up"]).word("circle").raw)
    info = json.loads((tmp_path / "heatmaps.json").read_text())
    assert info["words"][6] == {"text": "cyan", "token_indices": [7, 8], "occurrence": 0, "sources": {}}
    assert info["format_version"] == 2 and back.info == maps.info  # the typed record survives the round trip
    assert not (tmp_path / "diagnosis.json").exists()  # writing maps runs no analysis; a given diagnosis travels
    maps.save(tmp_path, fmt=fmt, diagnosis=crossattn.diagnose(maps))
    assert json.loads((tmp_path / "diagnosis.json").read_text())["verdicts"] == crossattn.diagnose(maps).verdicts()
    assert oct((tmp_path / f"maps.{fmt}").stat().st_mode & 0o777) == oct((tmp_path / "heatmaps.json").stat().st_mode
                                                                          & 0o777)  # one permission for both
    assert info["prompt"] == PROMPT and info["steps"] == 3


def test_load_errors(tmp_path):
    with pytest.raises(crossattn.InputError, match="heatmaps.json"):
        crossattn.load_heat_maps(tmp_path)
    (tmp_path / "heatmaps.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(crossattn.InputError, match="format version 99"):
        crossattn.load_heat_maps(tmp_path)


def test_load_pipeline_from_folder(saved_pipeline, tmp_path):
    pipe = crossattn.load_pipeline(saved_pipeline, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    with pytest.raises(crossattn.InputError, match="not an embedded model .*, a local pipeline folder or a hub id"):
        crossattn.load_pipeline(tmp_path / "missing")
    with pytest.raises(crossattn.InputError, match="model_index.json"):
        crossattn.load_pipeline(tmp_path)


def test_pickled_weights_are_refused(tiny_sd, tmp_path):
    tiny_sd.save_pretrained(tmp_path)
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tiny_sd.unet.state_dict(), tmp_path / "unet" / "diffusion_pytorch_model.bin")  # a pickle
    with pytest.raises(crossattn.InputError, match="no safetensors weights"):
        crossattn.load_pipeline(tmp_path, device="cpu")


def test_cli_generate_end_to_end(saved_pipeline, tmp_path):
    out = tmp_path / "out"
    code = main(["generate", PROMPT, "--model", str(saved_pipeline), "--steps", "3", "--seed", "7",
                 "--out", str(out), "--words", "circle,cyan", "--concepts", "sky, red circle"])
    assert code == 0
    image = Image.open(out / "image.png")
    assert image.size == (32, 32)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["00_circle.png", "01_cyan.png",
                                                                   "concept00_sky.png", "concept01_red_circle.png"]
    assert Image.open(out / "grid.png").width > 256
    info = json.loads((out / "heatmaps.json").read_text())
    assert info["seed"] == 7 and info["prompt"] == PROMPT and info["model"] == str(saved_pipeline)
    assert json.loads((out / "diagnosis.json").read_text())["objects"][0]["name"] == "red circle"
    loaded = crossattn.load_heat_maps(out)
    assert loaded.word("circle").array.shape == (32, 32) and loaded.concept("red circle").array.shape == (32, 32)
    assert loaded.concepts.info.concept_method == "prompt"


# The README's bad-input table, row by row: (command after the model, the one line it prints after "error: ").
BAD_INPUT = [
    (["generate", ""], "the prompt is empty: type what the image should show"),
    (["generate", PROMPT, "--size", "30x30"], "bad size 30x30: width and height must be positive multiples of 4"),
    (["generate", PROMPT, "--size", "big"], "bad size 'big': write WIDTHxHEIGHT"),
    (["generate", PROMPT, "--size", "8192x8192"], "bad size 8192x8192: at most 16,777,216 pixels here"),
    (["generate", PROMPT, "--steps", "0"], "steps must be between 1 and 1000, got 0"),
    (["generate", PROMPT, "--guidance", "99"], "guidance must be between 0 and 50, got 99.0"),
    (["generate", PROMPT, "--seed", "-1"], "argument --seed: must be from 0 to 9223372036854775807"),
    (["generate", PROMPT, "--seed", str(2**70)], "argument --seed: must be from 0 to 9223372036854775807"),
    (["generate", PROMPT, "--words", "elephant"], "'elephant' is not a word of the prompt; its words are: 'a', 'red'"),
    (["generate", PROMPT, "--cmap", "bogus"], "argument --cmap: unknown colour map 'bogus'; choose one of: jet"),
    (["generate", PROMPT, "--out", "/proc/crossattn"], "cannot write to --out '/proc/crossattn'"),
    (["placement", PROMPT, "--expect", "circle left_of bird"], "'bird' is not a word of the prompt"),
    (["placement", PROMPT, "--expect", "circle near square"], "cannot read 'circle near square': write 'X left_of Y'"),
    (["generate", PROMPT, "--device", "bogus"], "argument --device: unknown device 'bogus': choose one of cpu"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a[2:]) or "empty prompt" for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_status_2_before_generating(saved_pipeline, tmp_path, capsys, monkeypatch, args,
                                                              message):
    from crossattn.cli import common

    monkeypatch.setattr(common, "run", lambda *a, **k: pytest.fail("generated despite bad input"))
    out = [] if "--out" in args else ["--out", str(tmp_path)]
    try:
        code = main(args + ["--model", str(saved_pipeline)] + out)
    except SystemExit as exit_:  # argparse's own checks (seed, colour map) exit from parse_args
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("crossattn: error: ") and message in err[0]
    assert not (tmp_path / "image.png").exists()


def test_a_concept_method_the_model_lacks_is_one_line_and_status_2(saved_pipeline, tmp_path, capsys):
    code = main(["generate", PROMPT, "--model", str(saved_pipeline), "--out", str(tmp_path), "--concepts", "sky",
                 "--concept-method", "outputs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["crossattn: error: concept method 'outputs' is not available for Stable Diffusion "
                                 "1.x / 2.x / XL (UNet): it offers prompt, attention (methods: prompt, outputs, "
                                 "attention)"]
    assert not (tmp_path / "image.png").exists()


def test_an_internal_error_is_status_1_with_a_hint_and_a_traceback_with_debug(saved_pipeline, tmp_path, capsys,
                                                                              monkeypatch):
    from crossattn.cli import common

    def bug(*args, **kwargs):
        raise KeyError("some_key")  # a programming bug, not the user's input

    monkeypatch.setattr(common, "run", bug)
    args = ["generate", PROMPT, "--model", str(saved_pipeline), "--out", str(tmp_path)]
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crossattn:")]  # not the bar
    assert err == ["crossattn: internal error: KeyError: 'some_key' (rerun with --debug for the traceback)"]
    assert main(["--debug"] + args) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_cli_diagnose_exit_status_says_whether_a_failure_was_found(saved_pipeline, tmp_path, capsys):
    code = main(["diagnose", PROMPT, "--model", str(saved_pipeline), "--steps", "3", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    assert code == (3 if data["failed"] else 0)
    assert [o["name"] for o in data["objects"]] == ["red circle", "cyan square"]
    assert Image.open(tmp_path / "diagnosis.png").size == (384, 384) and "object" in capsys.readouterr().out


def test_cli_missing_model_via_console_script(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "crossattn", "generate", "a cat", "--model", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2  # and nothing but that line: no torchvision / accelerate notices
    assert proc.stderr.strip().splitlines() == [f"crossattn: error: model not found: '{tmp_path / 'nope'}' is not "
                                                "an embedded model (shapes-unet, shapes-mmdit, shapes-video), a local "
                                                "pipeline folder or a hub id (org/name)"]
    proc = subprocess.run([sys.executable, "-m", "crossattn", "--help"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""


def test_cli_placement_end_to_end(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "place"
    code = main(["placement", PROMPT, "--model", str(saved_pipeline), "--steps", "3", "--out", str(out),
                 "--expect", "circle left_of square", "--expect", "cyan square in 0.5,0,1,1", "--from-prompt"])
    assert code == 0
    data = json.loads((out / "placement.json").read_text())
    assert [c["statement"] for c in data["checks"]] == [
        "circle left_of square", "cyan square in 0.5,0,1,1", "red circle left_of cyan square"]
    assert [w["word"] for w in data["words"]] == ["red circle", "cyan square"]  # objects, as noun phrases
    assert all(isinstance(c["passed"], bool) for c in data["checks"])
    assert Image.open(out / "segmentation.png").width == 384 and (out / "timeline.png").exists()
    printed = capsys.readouterr().out
    assert "circle left_of square" in printed and ("PASS" in printed or "FAIL" in printed)


def run_cli(args: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit status, stderr's lines without the progress bar, stdout) of one in-process CLI run."""
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own checks exit from parse_args
        code = exit_.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.startswith("crossattn:")], captured.out


def test_a_device_that_is_not_here_and_a_port_out_of_range_are_one_line_and_status_2(saved_pipeline, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA
    for device in ("cuda", "cuda:1"):
        code, err, _ = run_cli(["generate", PROMPT, "--model", str(saved_pipeline), "--out", str(tmp_path),
                                "--device", device], capsys)
        assert code == 2 and err == [f"crossattn: error: argument --device: device '{device}' is not available "
                                     "here: choose one of cpu (see crossattn generate --help)"]
    with pytest.raises(crossattn.InputError, match="device 'cuda' is not available here: choose one of cpu"):
        crossattn.load_pipeline(saved_pipeline, device="cuda")
    code, err, _ = run_cli(["demo", "--port", "70000"], capsys)
    assert code == 2 and err == ["crossattn: error: argument --port: must be from 1 to 65535, got 70000 "
                                 "(see crossattn demo --help)"]
    assert not list(tmp_path.iterdir())


def test_load_pipeline_prints_nothing_unless_asked_and_leaves_the_libraries_settings_alone():
    code = ("import crossattn\n"
            "from diffusers.utils import logging as d\n"
            "from transformers.utils import logging as t\n"
            "settings = lambda: [d.get_verbosity(), t.get_verbosity(), d.is_progress_bar_enabled(), "
            "t.is_progress_bar_enabled()]\n"
            "before = settings()\n"
            "crossattn.load_pipeline(); crossattn.load_pipeline('shapes-mmdit')\n"
            "print(before == settings(), before[:2])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "DIFFUSERS_", "TRANSFORMERS_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""  # no accelerate / torchvision advice, no loading bars
    assert proc.stdout.strip() == "True [30, 30]"  # at the libraries' default (WARNING), and left as they were
    asked = subprocess.run([sys.executable, "-c", "import crossattn; crossattn.load_pipeline()"], capture_output=True,
                           text=True, env=dict(env, DIFFUSERS_VERBOSITY="info"), timeout=300)
    assert asked.returncode == 0 and "Loaded scheduler" in asked.stderr  # who asks for diffusers' notices gets them


def test_shapes_mmdit_sizes_come_from_its_position_table(tmp_path, capsys):
    from crossattn.generation import check_inputs, max_side, size_hint

    pipe = crossattn.load_pipeline("shapes-mmdit", device="cpu")
    assert max_side(pipe) == 64  # 16 positions a side × patch 1 × VAE factor 4
    assert size_hint(pipe, 4 * 64 * 64) == "at most 64x64 for this model"  # the demo's hint on a CPU
    assert size_hint(pipe, 64 * 64) == "at most 4,096 pixels here (e.g. 64x64)"
    assert size_hint(crossattn.load_pipeline(device="cpu"), 4 * 64 * 64) == "at most 16,384 pixels here (e.g. 128x128)"
    assert check_inputs(pipe, "a red circle", (64, 48), 1, 1.0) == []
    for size in ("80x64", "64x128", "128x128"):
        code, err, _ = run_cli(["generate", "a red circle", "--model", "shapes-mmdit", "--size", size, "--out",
                                str(tmp_path)], capsys)
        assert code == 2 and err == [f"crossattn: error: bad size {size}: this model makes images of at most 64 px "
                                     "a side (e.g. 64x64)"]


@pytest.mark.parametrize("command", ["generate", "placement", "diagnose"])
def test_an_emoji_only_prompt_gives_the_image_and_one_note_with_status_0(saved_pipeline, tmp_path, capsys, command):
    code, err, _ = run_cli([command, "🐱🐶", "--model", str(saved_pipeline), "--steps", "2", "--out",
                            str(tmp_path)], capsys)
    assert code == 0 and err == ["crossattn: note: The prompt has no words to map (no letters or digits): here is "
                                 "the image, without heat maps."]
    assert Image.open(tmp_path / "image.png").size == (32, 32)


def test_a_long_prompt_is_one_note_line_and_no_warning(saved_pipeline, tmp_path, capsys, recwarn):
    prompt = " ".join([PROMPT] * 12)  # ~100 tokens; the text encoder reads 77
    code, err, _ = run_cli(["generate", prompt, "--model", str(saved_pipeline), "--steps", "2", "--out",
                            str(tmp_path)], capsys)
    assert code == 0 and len(err) == 1 and err[0].startswith("crossattn: note: The prompt is longer than the 77 "
                                                             "tokens the text encoder reads; the model does not see: ")
    assert not [w for w in recwarn if "crossattn" in w.filename]  # no raw UserWarning after the note
    notes = json.loads((tmp_path / "heatmaps.json").read_text())["notes"]
    assert notes == [err[0].removeprefix("crossattn: note: ")]


def test_a_very_long_word_gets_a_short_unique_file_name(saved_pipeline, tmp_path, capsys):
    from crossattn.words import SLUG_BYTES, slug

    assert slug("red circle") == "red_circle" and slug("🐱") == "word"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert slug(long_a) != slug(long_b) and len(slug(long_a).encode()) == SLUG_BYTES
    assert len(slug("é" * 300).encode()) <= SLUG_BYTES and slug("é" * 300).startswith("é")
    code, err, _ = run_cli(["generate", f"a {'x' * 300} circle", "--model", str(saved_pipeline), "--steps", "2",
                            "--out", str(tmp_path)], capsys)
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert names[0] == "00_a.png" and names[1].startswith("01_xxx") and all(len(n) < 80 for n in names)


def test_commands_never_mix_their_results_in_one_folder(saved_pipeline, tmp_path, capsys):
    model = ["--model", str(saved_pipeline), "--steps", "2", "--out", str(tmp_path)]
    assert run_cli(["generate", PROMPT, *model], capsys)[0] == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err, _ = run_cli(["placement", PROMPT, *model], capsys)
    assert code == 2 and err == [f"crossattn: error: --out '{tmp_path}' already holds the results of `crossattn "
                                 f"generate` for “{PROMPT}”: give another --out, or add --overwrite to replace them"]
    code, err, _ = run_cli(["generate", "a cyan square", *model], capsys)  # another prompt
    assert code == 2 and "already holds the results of `crossattn generate` for “a red circle" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert run_cli(["generate", PROMPT, *model, "--seed", "5", "--words", "circle"], capsys)[0] == 0  # its own
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["00_circle.png"]  # no overlay left over
    assert run_cli(["placement", PROMPT, *model, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crossattn-run.json", "image.png", "placement.json",
                                                          "segmentation.png", "timeline.png"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "image.png").write_bytes(b"someone else's")
    code, err, _ = run_cli(["diagnose", PROMPT, *model[:-1], str(foreign)], capsys)
    assert code == 2 and err == [f"crossattn: error: --out '{foreign}' already holds image.png: give another --out, "
                                 "or add --overwrite to replace them"]


def test_default_output_folders_are_one_per_command(monkeypatch, tmp_path):
    from crossattn.cli import build_parser

    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    assert {c: parser.parse_args([c, "a cat"]).out for c in ("generate", "placement", "diagnose")} == {
        "generate": "out/generate", "placement": "out/placement", "diagnose": "out/diagnose"}


def test_help_shows_every_default():
    from crossattn.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, flags (off unless given), options without a default
            shown = formatter._expand_help(action)
            assert "default" in shown, f"crossattn {name} {action.option_strings[0]}: {shown!r}"
            if action.default not in (None, []):
                assert str(action.default) in shown, f"crossattn {name} {action.option_strings[0]}: {shown!r}"
