"""`crossattn.load_heat_maps` on damaged and crafted folders: an `InputError` naming the file and the fault, never
another exception, never a file outside the folder, never an allocation the arrays do not justify."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import crossattn
from crossattn.saved import load_heat_maps
from tests.helpers import blob, toy_maps

WORDS = "a red circle left of a blue square".split()


def saved(folder: Path, fmt: str = "safetensors") -> Path:
    arrays = [np.zeros((16, 16))] * len(WORDS)
    arrays[2], arrays[7] = blob(16, 16, 4, 8), blob(16, 16, 12, 8)
    maps = toy_maps(WORDS, arrays)
    maps.info.notes = ["the prompt was cut"]
    maps.save(folder, fmt=fmt)
    return folder


def edit_info(folder: Path, change) -> None:
    info = json.loads((folder / "heatmaps.json").read_text())
    change(info)
    (folder / "heatmaps.json").write_text(json.dumps(info))


def fails(folder: Path, file: str, message: str) -> None:
    with pytest.raises(crossattn.InputError) as error:
        load_heat_maps(folder)
    assert str(folder / file) in str(error.value) and message in str(error.value), str(error.value)


def test_a_sound_folder_loads_with_its_notes(tmp_path):
    for fmt in ("safetensors", "npz"):
        back = load_heat_maps(saved(tmp_path / fmt, fmt))
        assert back.words == WORDS and back.notes == ["the prompt was cut"] and back.image_size == (64, 64)
        assert back.word("circle").array.shape == (64, 64) and back.data.sums["up.16x16"].dtype == torch.float32


# (what is changed in heatmaps.json, the message's distinctive part)
JSON_DAMAGE = [
    (lambda i: i.pop("sites"), "'sites' is missing"),
    (lambda i: i.pop("words"), "'words' is missing"),
    (lambda i: i.update(sites=["up.16x16"]), "'sites' must be an object of sites"),
    (lambda i: i.update(sites={"up.16x16": "up"}), "site 'up.16x16' must be an object"),
    (lambda i: i.update(sites={"up.16x16": {"block": "up"}}), "'resolution' is missing"),
    (lambda i: i.update(sites={}), "'sites' is empty"),
    (lambda i: i.update(image_size="64x64"), "'image_size' must be [height, width]"),
    (lambda i: i.update(image_size=[64]), "'image_size' must be a list of 2 integers"),
    (lambda i: i.update(image_size=[64, -64]), "'image_size' must be a list of 2 integers in [1, inf)"),
    (lambda i: i.update(image_size=[200000, 200000]), "more than 67,108,864 pixels"),
    (lambda i: i.update(image_size=[8, 8]), "does not fit the finest attention grid 16x16"),
    (lambda i: i.update(image_size=[64, 4096]), "does not fit the finest attention grid 16x16"),
    (lambda i: i.update(per_head="yes"), "'per_head' must be true or false"),
    (lambda i: i.update(words="a red circle"), "'words' must be a list"),
    (lambda i: i.update(words=[5]), "each of 'words' must be an object"),
    (lambda i: i["words"][2].update(token_indices=[99]),
     "'circle''s token_indices must be a list of integers in [0, 10)"),
    (lambda i: i["words"][2].update(token_indices=["3"]), "token_indices must be a list of integers"),
    (lambda i: i["words"][2].pop("occurrence"), "'occurrence' is missing"),
    (lambda i: i["words"][2].update(occurrence=-1), "'circle''s occurrence must be 0 or more, got -1"),
    (lambda i: i["words"][2].update(sources=[1]), "'circle''s sources must be an object"),
    (lambda i: i.update(tokens=[1, 2]), "'tokens' must be a list of strings"),
    (lambda i: i.update(tokens=i["tokens"][:-1]), "heatmaps.json says float (1, 1, 16, 16, 9)"),
    (lambda i: i.update(bin_steps=[[0, 1], [2, 3]]), "heatmaps.json says float (2, 1, 16, 16, 10)"),
    (lambda i: i.update(bin_steps=[[0, 99]]), "each of 'bin_steps' must be a list of integers in [0, 4)"),
    (lambda i: i.update(bin_steps=[]), "'bin_steps' is empty"),
    (lambda i: i["sites"]["up.16x16"].update(resolution=[8, 8]), "heatmaps.json says float (1, 1, 8, 8, 10)"),
    (lambda i: i.update(per_head=True, sites={"up.16x16": i["sites"]["up.16x16"], "x": {"block": "up",
                                                                                          "resolution": [16, 16]}}),
     "has no array 'sums/x'"),
    (lambda i: i.update(notes="cut"), "'notes' must be a list of strings, got \"cut\""),
    (lambda i: i.update(notes=[1]), "'notes' must be a list of strings"),
    (lambda i: i.update(prompt=["a"]), "'prompt' must be a string or null, got [\"a\"]"),
    (lambda i: i.update(steps="4"), "'steps' must be an integer or null, got \"4\""),
    (lambda i: i.update(maps_file=None), "'maps_file' must be a file name"),
    (lambda i: i.update(maps_file="/etc/passwd"), "'maps_file' must be a file name inside the folder"),
    (lambda i: i.update(maps_file="../maps.safetensors"), "'maps_file' must be a file name inside the folder"),
    (lambda i: i.update(maps_file="gone.safetensors"), "gone.safetensors: not found"),
    (lambda i: i.update(maps_file="heatmaps.json"), "must be .safetensors or .npz"),
]


@pytest.mark.parametrize("change, message", JSON_DAMAGE, ids=[m for _, m in JSON_DAMAGE])
def test_damaged_json_is_named_with_its_fault(tmp_path, change, message):
    folder = saved(tmp_path)
    edit_info(folder, change)
    start = time.monotonic()
    file = "gone.safetensors" if "gone" in message else "heatmaps.json"
    if "says" in message or "no array" in message:
        file = "maps.safetensors"  # the arrays disagree with the JSON: the maps file is named
    fails(folder, file, message)
    assert time.monotonic() - start < 1  # nothing was allocated at the size the JSON claims


def test_json_that_is_not_json(tmp_path):
    folder = saved(tmp_path)
    text = (folder / "heatmaps.json").read_text()
    (folder / "heatmaps.json").write_text(text[: len(text) // 2])
    fails(folder, "heatmaps.json", "not valid JSON")
    (folder / "heatmaps.json").write_bytes(b"\xff\xfe{")
    fails(folder, "heatmaps.json", "not valid JSON")
    (folder / "heatmaps.json").write_text("[1, 2]")
    fails(folder, "heatmaps.json", "must hold a JSON object")
    (folder / "heatmaps.json").write_text('{"format_version": "2"}')
    with pytest.raises(crossattn.InputError, match='format version "2"'):
        load_heat_maps(folder)


def test_a_maps_file_linked_from_outside_is_refused(tmp_path):
    outside = saved(tmp_path / "elsewhere")
    folder = saved(tmp_path / "maps")
    (folder / "maps.safetensors").unlink()
    (folder / "maps.safetensors").symlink_to(outside / "maps.safetensors")
    fails(folder, "heatmaps.json", "'maps_file' 'maps.safetensors' leads outside the folder")
    concepts = saved(tmp_path / "concepts-elsewhere")
    (folder / "maps.safetensors").unlink()
    saved(tmp_path / "sound")
    (folder / "maps.safetensors").write_bytes((tmp_path / "sound" / "maps.safetensors").read_bytes())
    (folder / "concepts").symlink_to(concepts)
    fails(folder, "heatmaps.json", "the concepts folder 'concepts' leads outside the folder")


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_damaged_arrays_are_named_with_their_fault(tmp_path, fmt):
    folder = saved(tmp_path, fmt)
    path = folder / f"maps.{fmt}"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fails(folder, path.name, "cannot be read")
    path.write_bytes(b"")
    fails(folder, path.name, "cannot be read")
    arrays = {"trace_counts": torch.ones(4, dtype=torch.int64), "sums/up.16x16": torch.full((1, 1, 16, 16, 10), np.nan),
              "counts/up.16x16": torch.ones(1, dtype=torch.int64)}
    write(path, arrays)
    fails(folder, path.name, "array 'sums/up.16x16' holds negative, NaN or infinite values")
    write(path, arrays | {"sums/up.16x16": torch.zeros(1, 1, 16, 16, 10, dtype=torch.int64)})
    fails(folder, path.name, "array 'sums/up.16x16' is integer (1, 1, 16, 16, 10), heatmaps.json says float")
    write(path, {k: v for k, v in arrays.items() if k != "trace_counts"})
    fails(folder, path.name, "has no array 'trace_counts'")
    write(path, arrays | {"trace": torch.zeros(3, 16, 16, 10)})
    fails(folder, path.name, "array 'trace' is float (3, 16, 16, 10), heatmaps.json says float (4, any, any, 10)")


def write(path: Path, arrays: dict[str, torch.Tensor]) -> None:
    if path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    else:
        from safetensors.torch import save_file

        save_file(arrays, path)


def test_pickled_npz_members_are_refused(tmp_path):
    folder = saved(tmp_path, "npz")
    with np.load(folder / "maps.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["trace_counts"] = np.array([1, 1, 1, {"boom": 1}], dtype=object)
    np.savez(folder / "maps.npz", **arrays)
    fails(folder, "maps.npz", "array 'trace_counts' is object (4,), heatmaps.json says integer (any)")


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_fuzzed_folders_load_or_raise_input_error(tmp_path, fmt):
    """Cut each file at many points and flip random bytes: each load either works (and its maps can be read) or
    raises an InputError naming the damaged file."""
    folder = saved(tmp_path, fmt)
    rng = random.Random(0)
    originals = {name: (folder / name).read_bytes() for name in ("heatmaps.json", f"maps.{fmt}")}
    outcomes = {"loaded": 0, "refused": 0}
    for name, data in originals.items():
        cuts = [rng.randrange(len(data)) for _ in range(25)]
        flips = [bytearray(data) for _ in range(25)]
        for damaged in flips:
            for _ in range(3):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        for damaged in [data[:c] for c in cuts] + [bytes(f) for f in flips]:
            (folder / name).write_bytes(damaged)
            try:
                maps = load_heat_maps(folder)
                [maps.word(w.text, w.occurrence).array for w in maps.data.words]
                outcomes["loaded"] += 1
            except crossattn.InputError as e:
                assert str(folder) in str(e)
                outcomes["refused"] += 1
        (folder / name).write_bytes(data)
    assert outcomes["refused"] >= 50  # every cut is refused; a flipped byte may land in a value and load
