"""Read a folder written by `HeatMaps.save` back, trusting nothing in it.

A saved folder may come from anyone (a colleague, a download, a crafted attack on a demo): every key, type,
shape, size and path is checked against what heatmaps.json says before any array is read, and each complaint is
an `InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from .capture import Site
from .errors import InputError
from .heatmaps import FORMAT_VERSION, INFO_FIELDS, HeatMaps, MapData, MapInfo
from .words import Word

# Bounds on what a saved folder may ask for: a word's map is drawn at the image size, and the finest grid kept is
# at least 1/128 of the image side in every family (after a filter, perhaps only a UNet's coarsest: 1/64).
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_IMAGE_SCALE = 128
MAX_INFO_BYTES = 64 << 20
MAX_FRAMES = 4096  # frames of a video's maps
# heatmaps.json keys that become `MapInfo` fields and are read by crossattn: (the types each may have, in words)
INFO_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "prompt": ((str, type(None)), "a string or null"), "negative_prompt": ((str, type(None)), "a string or null"),
    "notes": ((list,), "a list of strings"), "sources": ((list,), "a list of strings"),
    "concepts": ((list,), "a list of strings"), "steps": ((int, type(None)), "an integer or null"),
    "family": ((str,), "a string"), "kind": ((str,), "a string"), "resolution_sites": ((bool,), "true or false"),
}


def _read_info(saved: dict, reader: _Reader) -> MapInfo:
    """The `MapInfo` of a saved folder: the keys crossattn reads are type-checked; unknown keys are left out."""
    values = {k: v for k, v in saved.items() if k in INFO_FIELDS}
    for key, (kinds, what) in INFO_TYPES.items():
        if key in values:
            reader.get(values, key, kinds, what)
    for key in ("notes", "sources", "concepts"):
        if key in values and not all(isinstance(v, str) for v in values[key]):
            raise reader.fail(f"{key!r} must be a list of strings, got {_short(values[key])}")
    return MapInfo(**values)


class _Reader:
    """Checks one file of a saved folder; every complaint is an `InputError` naming the file."""

    def __init__(self, file: Path):
        self.file = file

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.file}: {what} (not a folder written by HeatMaps.save, or damaged)")

    def get(self, data: dict, key: str, kinds: type | tuple[type, ...], what: str):
        if key not in data:
            raise self.fail(f"{key!r} is missing")
        value = data[key]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(f"{key!r} must be {what}, got {_short(value)}")
        return value

    def ints(self, value, what: str, low: int = 0, high: float = math.inf, length: int | None = None) -> list[int]:
        """A list of ints in [low, high), of `length` items when given."""
        ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok or (length is not None and len(value) != length) or not all(low <= v < high for v in value):
            size = f"{length} " if length is not None else ""
            raise self.fail(f"{what} must be a list of {size}integers in [{low}, {high}), got {_short(value)}")
        return value


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inside(folder: Path, name, reader: _Reader, what: str) -> Path:
    """`folder / name`, refused unless it is a plain relative name that stays inside `folder` (symlinks resolved)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise reader.fail(f"{what} must be a file name inside the folder, got {_short(name)}")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise reader.fail(f"{what} {name!r} leads outside the folder")
    return path


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype kind "f"/"i"/"u"/"b") of every array in a maps file, read without loading the data."""
    if path.suffix == ".npz":
        out = {}
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f"{member}: unsupported .npy version {version}")
                    shape, _, dtype = read_header(f)
                out[member.removesuffix(".npy")] = (tuple(shape), dtype.kind)
        return out
    from safetensors import safe_open

    kinds = {"F": "f", "B": "f", "I": "i", "U": "u"}  # F32, BF16, I64, U8, ... by their first letter
    with safe_open(path, "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), kinds.get(f.get_slice(k).get_dtype()[0], "?")) for k in f.keys()}


def _load_arrays(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(data[k]) for k in names}
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in names}


def load_heat_maps(directory: str | Path) -> HeatMaps:
    """Read a folder written by `HeatMaps.save` back into a `HeatMaps`.

    Everything is checked before use: a damaged or crafted folder raises `InputError` naming the file and what is
    wrong (types, missing keys, shapes against the JSON, a maps file outside the folder, sizes out of bounds).
    """
    folder = Path(directory)
    info_file = folder / "heatmaps.json"
    reader = _Reader(info_file)
    if not info_file.is_file():
        raise InputError(f"{info_file} not found: not a folder written by HeatMaps.save")
    if info_file.stat().st_size > MAX_INFO_BYTES:
        raise reader.fail(f"{info_file.stat().st_size} bytes, more than the {MAX_INFO_BYTES} a saved folder holds")
    try:
        info = json.loads(info_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise reader.fail(f"not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise reader.fail(f"must hold a JSON object, got {_short(info)}")
    version = info.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise InputError(f"{info_file} has format version {_short(version)}; this crossattn reads versions 1 and "
                         f"{FORMAT_VERSION} (upgrade crossattn to read newer files)")
    meta = _read_info(info, reader)
    tokens = reader.get(info, "tokens", list, "a list of token strings")
    if not all(isinstance(t, str) for t in tokens):
        raise reader.fail(f"'tokens' must be a list of strings, got {_short(tokens)}")
    words = [_read_word(w, reader, len(tokens)) for w in reader.get(info, "words", list, "a list of words")]
    height, width = reader.ints(reader.get(info, "image_size", list, "[height, width]"), "'image_size'", 1,
                                length=2)
    if height * width > MAX_IMAGE_PIXELS:
        raise reader.fail(f"'image_size' {height}x{width} is more than {MAX_IMAGE_PIXELS:,} pixels")
    per_head = reader.get(info, "per_head", bool, "true or false")
    per_layer = reader.get(info, "per_layer", bool, "true or false")
    frames = reader.get(info, "frames", int, "a whole number of frames") if "frames" in info else 1  # 0.3 wrote it
    if isinstance(frames, bool) or not 1 <= frames <= MAX_FRAMES:
        raise reader.fail(f"'frames' must be from 1 to {MAX_FRAMES}, got {_short(frames)}")
    sites = {}
    for name, s in reader.get(info, "sites", dict, "an object of sites").items():
        if not isinstance(s, dict):
            raise reader.fail(f"site {name!r} must be an object with 'block' and 'resolution', got {_short(s)}")
        block = reader.get(s, "block", str, "a block name")
        resolution = reader.ints(reader.get(s, "resolution", list, "[height, width]"), f"site {name!r}'s resolution",
                                 1, length=2)
        sites[name] = Site(name, block, tuple(resolution))
    if not sites:
        raise reader.fail("'sites' is empty")
    finest = max((s.resolution for s in sites.values()), key=lambda r: r[0] * r[1])
    if not all(g <= side <= MAX_IMAGE_SCALE * g for g, side in zip(finest, (height, width))):
        raise reader.fail(f"'image_size' {height}x{width} does not fit the finest attention grid "
                          f"{finest[0]}x{finest[1]} (1 to {MAX_IMAGE_SCALE} pixels per grid cell)")
    raw_bins = reader.get(info, "bin_steps", list, "a list of lists of steps")
    if not raw_bins:
        raise reader.fail("'bin_steps' is empty")
    path = _inside(folder, reader.get(info, "maps_file", str, "a file name"), reader, "'maps_file'")
    arrays = _read_arrays(path, sites, len(raw_bins), len(tokens), per_head, frames)
    n_steps = len(arrays["trace_counts"])
    bin_steps = [reader.ints(b, "each of 'bin_steps'", 0, n_steps) for b in raw_bins]
    concepts = None
    if (folder / "concepts" / "heatmaps.json").exists():
        _inside(folder, "concepts", reader, "the concepts folder")
        concepts = load_heat_maps(folder / "concepts")
        if concepts.image_size != (height, width):
            raise InputError(f"{folder / 'concepts' / 'heatmaps.json'}: image size {concepts.image_size} differs from "
                             f"the maps' {(height, width)}")
    data = MapData(
        sums={k: arrays[f"sums/{k}"].float() for k in sites},
        counts={k: arrays[f"counts/{k}"].numpy().astype(np.int64) for k in sites},
        sites=sites,
        bin_steps=bin_steps,
        step_sums=arrays["trace"].float() if "trace" in arrays else None,
        step_counts=arrays["trace_counts"].numpy().astype(np.int64),
        words=words,
        per_head=per_head,
        per_layer=per_layer,
        frames=frames,
    )
    return HeatMaps(data=data, tokens=tokens, image_size=(height, width), info=meta, concepts=concepts)



def _read_word(data, reader: _Reader, n_tokens: int) -> Word:
    if not isinstance(data, dict):
        raise reader.fail(f"each of 'words' must be an object, got {_short(data)}")
    text = reader.get(data, "text", str, "a string")
    positions = reader.ints(reader.get(data, "token_indices", list, "a list of token indices"),
                            f"{text!r}'s token_indices", 0, n_tokens)
    occurrence = reader.get(data, "occurrence", int, "an integer")
    if occurrence < 0:
        raise reader.fail(f"{text!r}'s occurrence must be 0 or more, got {occurrence}")
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise reader.fail(f"{text!r}'s sources must be an object, got {_short(sources)}")
    by_source = tuple((k, tuple(reader.ints(v, f"{text!r}'s {k} positions", 0, n_tokens))) for k, v in sources.items())
    return Word(text, tuple(positions), occurrence, by_source)


_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "O": "object"}  # numpy dtype kinds
# What reading a damaged maps file raises: zipfile, zlib, numpy's .npy reader and safetensors each their own.
_FILE_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, SafetensorError)


def _read_arrays(path: Path, sites: dict[str, Site], n_bins: int, n_tokens: int,
                 per_head: bool, frames: int = 1) -> dict[str, torch.Tensor]:
    """The arrays of a maps file, each checked against what heatmaps.json says before any is read."""
    reader = _Reader(path)
    if path.suffix not in (".npz", ".safetensors"):
        raise reader.fail("the maps file must be .safetensors or .npz")
    if not path.is_file():
        raise reader.fail("not found")
    try:
        headers = _array_headers(path)
    except _FILE_ERRORS as e:  # a damaged archive or header: zipfile, numpy and safetensors each raise their own
        raise reader.fail(f"cannot be read ({type(e).__name__}: {e})") from None

    def expect(name: str, kind: str, shape: tuple[int | None, ...], what: str) -> tuple[int, ...]:
        if name not in headers:
            raise reader.fail(f"has no array {name!r}")
        found, found_kind = headers[name]
        fits = len(found) == len(shape) and all(want is None or want == got for want, got in zip(shape, found))
        if not fits or found_kind not in kind:
            wanted = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")"
            raise reader.fail(f"array {name!r} is {_KINDS.get(found_kind, 'other')} {found}, heatmaps.json says "
                              f"{_KINDS[kind[0]]} {wanted} {what}")
        return found

    floats, ints = "f", "iu"
    n_steps = expect("trace_counts", ints, (None,), "(steps)")[0]
    for k, site in sites.items():
        h, w = site.resolution
        heads = expect(f"sums/{k}", floats, (n_bins, None if per_head else 1, frames * h, w, n_tokens),
                       "(bins, heads, frames·height, width, tokens)")[1]
        if heads < 1:
            raise reader.fail(f"array 'sums/{k}' has no heads")
        expect(f"counts/{k}", ints, (n_bins,), "(bins)")
    names = ["trace_counts"] + [f"{kind}/{k}" for k in sites for kind in ("sums", "counts")]
    if "trace" in headers:
        if expect("trace", floats, (n_steps, None, None, n_tokens), "(steps, height, width, tokens)")[1] % frames:
            raise reader.fail(f"array 'trace' does not hold {frames} frames of equal height")
        names.append("trace")
    try:
        arrays = _load_arrays(path, names)
    except _FILE_ERRORS as e:  # data cut short or corrupt behind a sound header
        raise reader.fail(f"cannot be read ({type(e).__name__}: {e})") from None
    for name, t in arrays.items():
        if not torch.isfinite(t.float()).all() or (t < 0).any():
            raise reader.fail(f"array {name!r} holds negative, NaN or infinite values")
    return arrays
