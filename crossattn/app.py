"""The Gradio demo: type a prompt, see where each word went, scrub through denoising, check the layout.

    crossattn demo                       # http://127.0.0.1:7860, embedded models only
    crossattn demo --allow-any-model     # also a hub id or server folder typed in the page

Sections, top to bottom: the inputs and the image; display and filters; the words (one heat map each, click
to select); who owns each pixel and where each object landed; time (the selected word per step); the model
view (the selected word per layer and head, with "Keep every layer and head"); downloads (one zip, written
only when asked for). Every view is drawn from the maps kept for the browser session (a gr.State), so any
display or filter change redraws every view without generating again.

Serving: generations run one at a time (one shared pipeline per model, whose processors a trace swaps while
it runs: ``concurrency_limit=1`` plus a lock per pipeline) and only within limits the device can serve in
reasonable time (`limits_for`); Gradio's queue shows each waiting user their place and holds at most
`QUEUE_SIZE` requests (more are refused at once, not left waiting for minutes). A running generation stops
between two steps when its user presses Stop or goes away; the page then says so and which prompt the views
still show. Redrawing needs no pipeline and runs up to 4 at once.

Memory: a browser session keeps one generation (a gr.State, dropped after `SESSION_TTL_S` idle); Gradio keeps
per-session copies of updated controls for at most `SESSIONS` sessions; pipelines typed in with
``--allow-any-model`` are kept for the `EXTRA_MODELS` most recently used (the offered models stay loaded).

Errors: bad input is checked before anything runs (Gradio's `validator`) and its message is shown under the
field it is about, where it stays until that field is edited; every panel keeps its last good content. Through
the API the same checks answer with the field and the message. Anything else shows a generic message in the
page and its traceback once in the server log; the app keeps serving.

Security: binds 127.0.0.1 unless told otherwise; never shares publicly unless asked; loads only the models
offered unless started with ``--allow-any-model`` (and then tells a remote user nothing about which server
paths exist); serves only files it wrote itself; accepts no upload over `MAX_UPLOAD` (the page has no upload).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import math
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import pandas as pd
import torch
from PIL import Image

from . import placement, render
from .concepts import METHODS
from .errors import InputError, one_line
from .generation import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    MAX_PIXELS,
    MAX_SEED,
    check_inputs,
    generate,
    native_size,
    parse_size,
    size_hint,
)
from .heatmaps import HeatMaps, WordHeatMap
from .models import DEFAULT_MODEL, EMBEDDED, asset_path, load_pipeline, resolve
from .words import find_word, slug, split_list, word_ref

log = logging.getLogger(__name__)

EXAMPLES = [
    "a red circle left of a blue square",
    "a small green triangle above a yellow circle",
    "a large cyan square right of a red triangle",
    "a blue square on the right",
    "a yellow square, a green circle and a blue triangle",
]
TILE, BIG, CELL = 256, 384, 96  # long side of gallery tiles, enlarged views and model-view cells
BIG_LABEL = "Selected word, large"
NOTE_WORDS = 8  # a note quoting more words (what a long prompt loses) shows how many and the first few
FILES_TTL_S = 3600
CONCEPT_METHODS = ["model's default", *METHODS]
CONCEPT_METHOD_INFO = ("outputs: ConceptAttention (transformers' default); attention: the attention the words would "
                       "get as the prompt (the only one on UNets)")
INTERNAL_ERROR = "Internal error: something went wrong on the server (it is logged there). Please try again."
NO_RESULT = "generate an image first"
QUEUE_SIZE = 20  # requests waiting at once, all users together: beyond it a request is refused at once
MAX_UPLOAD = "1mb"  # the page uploads nothing; Gradio's upload route would otherwise store any size
SESSIONS = 50  # browser sessions Gradio keeps state for (the least recently used is dropped first)
SESSION_TTL_S = FILES_TTL_S  # a session's generation is dropped after this long unused (its files expire too)
EXTRA_MODELS = 2  # pipelines typed in with --allow-any-model kept loaded, least recently used dropped first
GUIDANCE_RANGE = (0, 20)  # the slider's range (the library accepts up to 50)
# Small images (the shapes models draw 64x64) are shown enlarged with crisp pixels; the data stays as generated.
# Galleries grow with their tiles (Gradio caps them at 550 px with a scroll bar, which hides model-view rows).
CSS = (".pixels img { image-rendering: pixelated; }\n"
       "#generated-image img { width: 100%; height: 100%; object-fit: contain; }\n"
       ".pixels .grid-wrap { max-height: none !important; height: auto !important; }")


# ---- models and what one request may ask of them ------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The largest request a pipeline serves here: beyond it one user would hold the queue for minutes."""

    max_pixels: int
    max_steps: int


def limits_for(pipe) -> Limits:
    """Generous on a GPU; on a CPU at most 4x the model's native pixel count and 100 steps."""
    width, height = native_size(pipe)
    if pipe.device.type == "cuda":
        return Limits(min(MAX_PIXELS, 16 * width * height), 500)
    return Limits(4 * width * height, 100)


@dataclass
class Loaded:
    pipe: object
    lock: threading.Lock  # a trace swaps the processors of the shared denoiser: one generation at a time
    limits: Limits


class Models:
    """The pipelines this server offers, each loaded once; with ``--allow-any-model`` also those users type,
    keyed by where they load from (two spellings of one folder are one pipeline) and at most `EXTRA_MODELS`
    of them at a time (least recently used dropped first: each may take gigabytes)."""

    def __init__(self, default: str | None, allow_any: bool):
        self.default = default or DEFAULT_MODEL
        # An embedded model that has not been trained yet (no folder) is not offered.
        self.choices = [name for name in EMBEDDED if asset_path(name).exists()]
        if self.default not in self.choices:
            self.choices.append(self.default)
        self.allow_any = allow_any
        self._offered: dict[str, Loaded] = {}
        self._extra: OrderedDict[str, Loaded] = OrderedDict()  # by source, most recently used last
        self._guard = threading.Lock()

    def get(self, name: str | None, load: bool = True) -> Loaded | None:
        """The pipeline of `name` (empty: the default), loaded on first use; with `load=False`, None for one
        typed in that is not loaded yet (checks that must answer at once do not load gigabytes)."""
        name = (name or "").strip() or self.default
        if name in self.choices:
            with self._guard:
                if name not in self._offered:
                    self._offered[name] = self._load(name)
                return self._offered[name]
        if not self.allow_any:
            raise InputError(f"model {name!r} is not offered here (choose one of {', '.join(self.choices)}); "
                             "loading other models needs the demo started with --allow-any-model")
        # A remote user learns nothing about the server's files: every failure reads the same (the log has why).
        refused = InputError(f"cannot load model {name!r}: give a hub id this server has downloaded or the folder "
                             "of a diffusers pipeline it may read")
        try:
            source = resolve(name)
        except InputError as exc:
            log.info("model %r refused: %s", name, exc)
            raise refused from None
        if Path(source).exists():
            source = str(Path(source).resolve())
        with self._guard:
            if source not in self._extra:
                if not load:
                    return None
                try:
                    self._extra[source] = self._load(source)
                except InputError as exc:
                    log.info("model %r refused: %s", name, exc)
                    raise refused from None
                while len(self._extra) > EXTRA_MODELS:
                    self._extra.popitem(last=False)
            self._extra.move_to_end(source)
            return self._extra[source]

    @staticmethod
    def _load(source: str) -> Loaded:
        pipe = load_pipeline(source)
        pipe.set_progress_bar_config(disable=True)
        return Loaded(pipe, threading.Lock(), limits_for(pipe))


# ---- errors and stopping ------------------------------------------------------------------------------------
class Stopped(Exception):
    """The user pressed Stop or went away: the generation ends between two steps."""


def keep_quotes(message: str) -> str:
    """The message as the page should show it: Gradio's page strips a pair of quotes around a whole message,
    which would cut the first and last quote off "'dog' is not a word ...: 'a', 'triangle'"."""
    return message + "." if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"" else message


def friendly(fn: Callable) -> Callable:
    """Bad input becomes its one-line message in the page; a stopped generation changes nothing; anything else a
    generic message in the page and its traceback once in the log (Gradio's own printing is off). The app keeps
    serving either way."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as exc:
            raise gr.Error(keep_quotes(one_line(exc)), print_exception=False) from None
        except Stopped as exc:  # Stop's own handler says so in the page: no error badge on every panel
            log.info("%s", exc)
            return gr.skip()
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise gr.Error(INTERNAL_ERROR, print_exception=False) from None

    return wrapper


def lenient(validator: Callable) -> Callable:
    """A check that fails unexpectedly lets the request through (logged), where the callback reports it as an
    internal error: Gradio would otherwise send the exception's text to the client."""

    @functools.wraps(validator)
    def wrapper(*args, **kwargs):
        try:
            return validator(*args, **kwargs)
        except Exception:
            log.exception("internal error in %s", validator.__name__)
            return []

    return wrapper


def abandoned() -> bool:
    """Whether Gradio has given up on the event this thread serves: Stop cancelled it (Gradio drops it from
    its queue) or its client went away (Gradio marks it not alive). Gradio stops waiting for the event but
    cannot stop the thread computing it: the generation asks here between steps. (`gr.Request` cannot tell:
    its `is_disconnected()` answers for the POST that queued the event, long finished, so always True.)"""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:  # called outside a queued event (tests, scripts)
        return False
    event = queue.event_ids_to_events.get(event_id)
    return event is None or not event.alive


# ---- one generation and the settings it is viewed with ------------------------------------------------------
def _files_root() -> Path:
    root = Path(tempfile.gettempdir()) / "crossattn-demo"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():  # files of earlier sessions expire after an hour
        if time.time() - old.stat().st_mtime > FILES_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return root


@dataclass
class Result:
    """One generation, kept per browser session: the image, its maps, and the files drawn from them."""

    image: Image.Image
    maps: HeatMaps
    folder: Path
    stem: str  # "<prompt-slug>_seed<seed>": every file name starts with it
    shown: list[str] = field(default_factory=list)  # names of the gallery tiles: clicks resolve here
    cells: list[tuple[str, int]] = field(default_factory=list)  # (layer, head) of the model-view tiles

    @classmethod
    def new(cls, image: Image.Image, maps: HeatMaps) -> Result:
        prompt = maps.meta.get("prompt", "")
        words = slug(prompt[:48]) if any(ch.isalnum() for ch in prompt) else "prompt"
        stem = f"{words}_seed{maps.meta.get('seed', 0)}"
        return cls(image, maps, Path(tempfile.mkdtemp(prefix=stem[:20] + "-", dir=_files_root())), stem)

    def path(self, suffix: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)  # a session idle past FILES_TTL_S lost its folder
        return self.folder / f"{self.stem}_{suffix}"

    def save(self, picture: Image.Image, suffix: str) -> str:
        """Write a picture under a name that says what it shows (the name a download gets); return its path."""
        path = self.path(suffix + ("" if "." in suffix else ".png"))
        picture.save(path)
        return str(path)


@dataclass(frozen=True)
class View:
    """The display settings and filters every view is drawn with (the page's controls, by parameter name)."""

    words: str = ""
    expect: str = ""
    alpha: float = 0.5
    cmap: str = "jet"
    resolutions: list[str] | None = None
    blocks: list[str] | None = None
    first_step: int = 1
    last_step: int = 10**6
    selected: str | None = None
    step: int = 10**6

    def filtered(self, maps: HeatMaps) -> HeatMaps:
        """The maps restricted to the ticked resolutions and blocks (none ticked: all) and the step range."""
        first, last = sorted((int(self.first_step), int(self.last_step)))
        resolutions = self.resolutions if maps.meta.get("resolution_sites", True) else None
        return maps.filter(steps=slice(max(first, 1) - 1, last), resolutions=resolutions or None,
                           blocks=self.blocks or None)

    def shown(self, result: Result) -> list[str]:
        """The words to show: those typed, or every word of the prompt."""
        return split_list(self.words) or result.maps.names

    @property
    def statements(self) -> list[str]:
        return [line.strip() for line in (self.expect or "").splitlines() if line.strip()]


# ---- views: pictures and tables drawn from the stored maps ---------------------------------------------------
def gallery_items(result: Result, maps: HeatMaps, names: list[str], view: View) -> list[tuple[str, str]]:
    items = []
    for k, name in enumerate(names):
        m = placement.word_map(maps, name)
        items.append((result.save(m.overlay(result.image, view.alpha, view.cmap, size=TILE),
                                  f"map{k:02d}_{slug(name)}"), m.word))
    return items


def titled_map(maps: HeatMaps, name: str) -> WordHeatMap:
    """The map of a word or phrase, titled by the name it is picked by ("a#1": the map says which "a")."""
    return replace(placement.word_map(maps, name), word=name)


def selected_figure(result: Result, maps: HeatMaps, name: str, view: View) -> str:
    figure = titled_map(maps, name).figure(result.image, view.alpha, view.cmap, tile=BIG)
    return result.save(figure, f"{slug(name)}_large")


def step_frames(result: Result, maps: HeatMaps, name: str, view: View,
                steps: list[int] | None = None) -> list[Image.Image]:
    """The word's coarse map at each step (or at `steps`, 1-based) over the image, labelled "step k of N"."""
    text, occurrence = word_ref(name)
    frames = maps.timeline(text, occurrence)
    base = render.scale_to(result.image, TILE)
    pictures = []
    for k in steps or range(1, len(frames) + 1):
        frame = frames[k - 1]
        peak = frame.max()
        label = f"{name}: step {k} of {len(frames)}" if maps.trace_counts[k - 1] else f"step {k}: filtered out"
        picture = render.overlay(base, frame / peak if peak > 0 else frame, view.alpha, view.cmap)
        pictures.append(render.labelled(picture, label, TILE))
    return pictures


def step_view(result: Result, maps: HeatMaps, name: str, view: View, frames: list | None = None) -> str:
    """The selected word's frame at the chosen step, saved; drawn alone unless all `frames` are at hand (the
    slider moves often: one frame, not all of them)."""
    k = min(max(int(view.step), 1), len(maps.trace_counts))
    picture = frames[k - 1] if frames else step_frames(result, maps, name, view, [k])[0]
    return result.save(picture, f"{slug(name)}_step{k}")


def time_views(result: Result, maps: HeatMaps, name: str, view: View) -> tuple[str, str]:
    """(the frame at the chosen step, an animation over all steps) of the selected word."""
    frames = step_frames(result, maps, name, view)
    gif = result.path(f"{slug(name)}_steps.gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=150, loop=0)
    return step_view(result, maps, name, view, frames), str(gif)


def layer_head_cells(result: Result, maps: HeatMaps, name: str, view: View) -> tuple[list, list, str]:
    """The word's map per layer (rows) and head (columns): gallery items, their (layer, head), a legend."""
    items, cells, legend = [], [], []
    blank = Image.new("RGB", (CELL, CELL), "white")  # pads rows of layers with fewer heads: columns stay heads
    for row, (layer, site) in enumerate(maps.sites.items()):
        legend.append(f"L{row}: `{layer}` ({site.block}, {site.resolution[0]}x{site.resolution[1]})")
        for head in range(maps.heads):
            if head < maps.sums[layer].shape[1]:
                cell = placement.word_map(maps.filter(layers=[layer], heads=[head]), name)
                picture = cell.overlay(result.image, view.alpha, view.cmap, size=CELL)
            else:
                picture = blank
            items.append((result.save(picture, f"{slug(name)}_L{row}_h{head}"), f"L{row} h{head}"))
            cells.append((layer, head))
    return items, cells, "  \n".join(legend)


def placement_of_objects(image: Image.Image, maps: HeatMaps, view: View,
                         tile: int) -> tuple[Image.Image, dict, Image.Image]:
    """(segmentation picture, placement report, centroid-path picture) of the prompt's objects."""
    labels, names = maps.segmentation()
    segmentation = placement.segmentation_picture(image, labels, names, tile=tile)
    data = placement.report(maps, view.statements, from_prompt=not view.statements)
    paths = placement.timeline_picture(image, [placement.Timeline.from_dict(t) for t in data["timelines"]], tile=tile)
    return segmentation, data, paths


def placement_views(result: Result, maps: HeatMaps, view: View) -> tuple[str, pd.DataFrame, str, str]:
    """(segmentation, placement table, layout checks, centroid paths) as the page shows them."""
    segmentation, data, paths = placement_of_objects(result.image, maps, view, TILE)
    table = pd.DataFrame(placement.table_rows(data), columns=placement.TABLE_HEADERS)
    checks = [f"- **{'PASS' if c['passed'] else 'FAIL'}** {c['statement']}: {c['reason']}" for c in data["checks"]]
    checks = checks or ["_No relation stated; add one under “Intended layout”._"]
    checks += [f"- note: {n}" for n in data["notes"]]
    return result.save(segmentation, "segmentation"), table, "\n".join(checks), result.save(paths, "timeline")


def concept_items(result: Result, maps: HeatMaps, view: View) -> list[tuple[str, str]]:
    """The concept maps ("locate other words"), drawn like the words' maps."""
    if maps.concepts is None:
        return []
    return [(result.save(maps.concept(c).overlay(result.image, view.alpha, view.cmap, size=TILE),
                         f"concept{k:02d}_{slug(c)}"), c) for k, c in enumerate(maps.concepts.words)]


def diagnosis_views(result: Result, maps: HeatMaps) -> tuple[str | None, str]:
    """(the outlined picture, the verdict lines) of the maps' diagnosis."""
    d = maps.diagnose()
    if not d.objects:
        return None, "_No object phrase could be read from the prompt to diagnose._"
    lines = [f"- {line}" for line in d.verdicts()] + [f"- note: {n}" for n in d.notes]
    return result.save(d.picture(result.image, tile=TILE), "diagnosis"), "\n".join(lines)


def brief(text: str, words: int = NOTE_WORDS) -> str:
    """`text` quoted, one short line however long it is: “its first words …” (N words)."""
    parts = text.split()
    return f"“{' '.join(parts)}”" if len(parts) <= words else f"“{' '.join(parts[:words])} …” ({len(parts)} words)"


def notes_text(maps: HeatMaps) -> str:
    """The generation's notes, one line each: a quoted passage (what a long prompt loses) is shown `brief`."""
    notes = [re.sub(r"“([^”]*)”", lambda quoted: brief(quoted.group(1)), note) for note in maps.meta.get("notes", [])]
    return "\n".join(f"- {n}" for n in notes)


def write_zip(result: Result, view: View) -> str:
    """One zip of everything at the current settings: image, overlays, segmentation, centroid paths, the raw
    maps (loadable with `crossattn.load_heat_maps` once unpacked) and the placement report."""
    maps = view.filtered(result.maps)
    stem, folder = result.stem, result.folder / "zip"
    shutil.rmtree(folder, ignore_errors=True)
    result.maps.save(folder / f"{stem}_maps")
    files = {f"{stem}_image.png": result.image}
    for k, name in enumerate(view.shown(result)):
        files[f"{stem}_overlay_{k:02d}_{slug(name)}.png"] = titled_map(maps, name).figure(
            result.image, view.alpha, view.cmap, tile=max(BIG, *result.image.size))
    if maps.words:
        segmentation, data, paths = placement_of_objects(result.image, maps, view, BIG)
        files |= {f"{stem}_segmentation.png": segmentation, f"{stem}_timeline.png": paths}
        data |= {"seed": maps.meta.get("seed"), "steps": len(maps.trace_counts)}
        (folder / f"{stem}_placement.json").write_text(json.dumps(data, indent=1))
    for name, picture in files.items():
        picture.save(folder / name)
    archive = result.path("all.zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(folder))
    return str(archive)


# ---- input checks (all before any compute is spent) ---------------------------------------------------------
def number(value: object, what: str, low: float, high: float, whole: bool = False) -> float:
    """`value` if it is a number from `low` to `high` (a whole one with `whole`), else an `InputError` saying what
    was wrong and what is allowed: a request reaches us as its client sent it ("7", "abc", NaN, 1.5, None)."""
    kind = "a whole number" if whole else "a number"
    allowed = f"{what} must be {kind} from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{allowed}, got {'nothing' if value is None else repr(value)}")
    if not math.isfinite(value) or (whole and value != int(value)) or not low <= value <= high:
        raise InputError(f"{allowed}, got {value}")
    return int(value) if whole else float(value)


def as_text(value: object) -> str:
    """A text field's value as Gradio's preprocessing would give it (a request reaches us as sent)."""
    return "" if value is None else str(value)


def check_request(loaded: Loaded, prompt: str, size: str, steps: int, guidance: float, seed: int,
                  names: list[str], concept_method: str | None = None) -> tuple[int, int]:
    """The image size to generate at, once everything asked for is known to be servable and every word or
    phrase named (words to show, words of layout statements) is in the prompt."""
    pipe = loaded.pipe
    dims = parse_size(size) if (size or "").strip() else native_size(pipe)
    check_inputs(pipe, prompt, dims, steps, guidance, names, seed=seed, max_pixels=loaded.limits.max_pixels,
                 max_steps=loaded.limits.max_steps, concept_method=concept_method)
    return dims


def statement_names(expect: str) -> list[str]:
    """The words or phrases the layout statements name (an unreadable statement is an `InputError`)."""
    return [name for statement in View(expect=expect).statements for name in placement.statement_words(statement)]


@dataclass(frozen=True)
class Request:
    """A generation request that passed every check: what `generate` is called with."""

    loaded: Loaded
    seed: int
    steps: int
    guidance: float
    dims: tuple[int, int]
    method: str | None


# Every field checked alone, the others at these values (always accepted), so that each message names its field.
ACCEPTED = {"prompt": "a", "size": "", "steps": 1, "guidance": 0.0, "seed": 0, "names": [], "concept_method": None}


class Checks:
    """Runs checks, each on behalf of one field of the page, and keeps the first message per field."""

    def __init__(self):
        self.errors: dict[str, str] = {}

    def __call__(self, field: str, check: Callable, *args, **kwargs):
        try:
            return check(*args, **kwargs)
        except InputError as exc:
            self.errors.setdefault(field, one_line(exc))
            return None

    def verdicts(self, fields: list[str]) -> list[dict]:
        """One `gr.validate` per input of an event, in its order: shown under each field that failed."""
        return [gr.validate(name not in self.errors, self.errors.get(name, "")) for name in fields]


def check_generation(models: Models, prompt: str, seed: object, steps: object, guidance: object, size: str,
                     model: str, other_model: str, words: str, expect: str, concept_method: str,
                     load: bool = True) -> tuple[Request | None, Checks]:
    """The request if it can be served, with the checks' messages by field. With `load=False` a model typed
    in that is not loaded yet is not loaded: only what needs no model is checked (the request is None)."""
    checks = Checks()
    size, model, other_model, words, expect = map(as_text, (size, model, other_model, words, expect))
    loaded = checks("other_model" if other_model.strip() else "model", models.get, other_model or model, load)
    seed = checks("seed", number, seed, "seed", 0, MAX_SEED, whole=True)
    guidance = checks("guidance", number, guidance, "guidance", *GUIDANCE_RANGE)
    if loaded is None:  # the rest depends on the model: its limits, its tokenizer
        return None, checks
    steps = checks("steps", number, steps, "steps", 1, loaded.limits.max_steps, whole=True)
    method = None if concept_method in (None, CONCEPT_METHODS[0]) else as_text(concept_method)
    for name, value in {"prompt": prompt, "size": size, "concept_method": method}.items():
        checks(name, check_request, loaded, **(ACCEPTED | {name: value}))
    named = named_words(checks, words, expect)
    if "prompt" not in checks.errors:  # words are looked for in the prompt
        for box, names in named.items():
            checks(box, check_request, loaded, **(ACCEPTED | {"prompt": prompt, "names": names}))
    if checks.errors:
        return None, checks
    names = named["words"] + named["expect"]
    dims = check_request(loaded, prompt, size, steps, guidance, seed, names, method)  # each passed alone: all pass
    return Request(loaded, seed, steps, guidance, dims, method), checks


def named_words(checks: Checks, words: str, expect: str) -> dict[str, list[str]]:
    """The words typed to show and those the layout statements name, by field (one it cannot read: none)."""
    return {box: checks(box, read, text) or []
            for box, (read, text) in {"words": (split_list, words), "expect": (statement_names, expect)}.items()}


def check_view(result: Result | None, view: View, used: str) -> Checks:
    """The display settings checked against the stored maps; without maps, the control just `used` says that an
    image is needed first."""
    checks = Checks()
    if result is None:
        checks.errors[used] = NO_RESULT
        return checks
    for box, names in named_words(checks, view.words, view.expect).items():
        for name in names:
            checks(box, find_word, result.maps.word_info, *word_ref(name))
    return checks


def size_info(loaded: Loaded) -> str:
    """The size box's hint: the model's own size and the sizes it can make here."""
    width, height = native_size(loaded.pipe)
    return f"empty = the model's {width}x{height}; {size_hint(loaded.pipe, loaded.limits.max_pixels)}"


def step_slider(steps: int, value: int) -> dict:
    """A 1-based step slider over `steps` steps; hidden for a single step (a slider needs min < max)."""
    if steps == 1:
        return gr.update(visible=False, value=1)
    return gr.update(visible=True, minimum=1, maximum=steps, value=value)


# ---- the page -----------------------------------------------------------------------------------------------
def picture_and_text(title: str, picture: tuple[str, str], text: tuple[str, str]) -> tuple[gr.Image, gr.Markdown]:
    """A section: its title, then a picture beside a text, each given as (label, element id)."""
    gr.Markdown(title)
    with gr.Row():
        image = gr.Image(label=picture[0], type="filepath", elem_id=picture[1], scale=1)
        words = gr.Markdown(label=text[0], elem_id=text[1])
    return image, words


class DemoApp:
    """The page's components (one method per section) and the callbacks that fill them."""

    def __init__(self, models: Models):
        self.models = models
        self.default = models.get(None)  # loaded before the first request: the first click is fast

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="crossattn — where did each word go?", delete_cache=(FILES_TTL_S, FILES_TTL_S)) as page:
            self.state = gr.State(None, time_to_live=SESSION_TTL_S)
            gr.Markdown("# crossattn — where did each word of the prompt go?\n"
                        "Generate an image; every word gets a heat map of the pixels that attended to it. "
                        "Scroll down for who owns each pixel, where each object landed, when that was decided, and "
                        "what each layer and head saw.")
            self.inputs_section()
            self.filters_section()
            self.words_section()
            self.placement_section()
            self.diagnosis_section()
            self.time_section()
            self.model_section()
            self.downloads_section()
            self.wire()
        return page

    # ---- sections ----
    def inputs_section(self) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                self.request_form()
                self.words = gr.Textbox(label="Words to show (comma-separated; empty = all; Enter to apply)", value="",
                                        elem_id="words")
                self.expect = gr.Textbox(label="Intended layout (one per line, e.g. “circle left_of square”, "
                                               "“circle on the left”, “circle in 0,0,0.5,1”); empty = read from prompt",
                                         value="", lines=2, elem_id="expect")
                self.concepts = gr.Textbox(label="Locate other words (comma-separated; need not be in the prompt)",
                                           value="", elem_id="concepts",
                                           info="concept maps: e.g. “sky, background, square”")
                self.concept_method = gr.Radio(CONCEPT_METHODS, value=CONCEPT_METHODS[0], label="How to locate them",
                                               elem_id="concept-method", info=CONCEPT_METHOD_INFO)
                self.keep_heads = gr.Checkbox(label="Keep every layer and head",
                                              info="for the model view below; slower and heavier")
                with gr.Row():
                    self.run = gr.Button("Generate", variant="primary")
                    self.stop = gr.Button("Stop", variant="stop")
                self.status = gr.Markdown(elem_id="status")  # which prompt the views show; that Stop stopped
                gr.Examples(EXAMPLES, inputs=[self.prompt])
            with gr.Column(scale=1):
                self.image = gr.Image(label="Generated image", type="filepath", height=420,
                                      elem_id="generated-image", elem_classes="pixels")
                self.notes = gr.Markdown(label="Notes", elem_id="notes")

    def request_form(self) -> None:
        """What to generate and with which model; the limits shown are those of the default model here."""
        limits = self.default.limits
        self.prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=2, elem_id="prompt")
        self.negative = gr.Textbox(label="Negative prompt", value="")
        with gr.Row():
            self.seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
            self.dice = gr.Button("Random seed", size="sm")
        with gr.Row():
            self.steps = gr.Slider(1, limits.max_steps, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
            self.guidance = gr.Slider(*GUIDANCE_RANGE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale",
                                      elem_id="guidance")
        self.size = gr.Textbox(label="Image size (WIDTHxHEIGHT)", value="", elem_id="size",
                               info=size_info(self.default))
        with gr.Row():
            self.model = gr.Dropdown(self.models.choices, value=self.models.default, label="Model", elem_id="model")
            self.other_model = gr.Textbox(label="Other model (hub id or folder)", value="", elem_id="other-model",
                                          visible=self.models.allow_any)

    def filters_section(self) -> None:
        with gr.Accordion("Display and filters (every view redraws from the stored maps)", open=True):
            with gr.Row():
                self.alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay alpha")
                self.cmap = gr.Dropdown(list(render.COLORMAPS), value="jet", label="Colour map")
                self.resolutions = gr.CheckboxGroup(label="Resolutions (none ticked = all)", choices=[])
                self.blocks = gr.CheckboxGroup(label="Blocks (none ticked = all)", choices=[])
                self.first_step = gr.Slider(1, DEFAULT_STEPS, value=1, step=1, label="First step", elem_id="first-step")
                self.last_step = gr.Slider(1, DEFAULT_STEPS, value=DEFAULT_STEPS, step=1, label="Last step",
                                           elem_id="last-step")

    def words_section(self) -> None:
        gr.Markdown("## Words — click one to select it")
        with gr.Row():
            self.gallery = gr.Gallery(label="Per-word heat maps", columns=5, height="auto", allow_preview=False,
                                      elem_id="word-gallery", elem_classes="pixels")
            with gr.Column():
                self.selected = gr.Dropdown(label="Selected word", choices=[], interactive=True, elem_id="selected")
                self.big = gr.Image(label=BIG_LABEL, type="filepath", height=420, elem_id="selected-map")
        self.concept_gallery = gr.Gallery(label="Other words located (concept maps: each pixel's share among them)",
                                          columns=5, height="auto", allow_preview=False, visible=False,
                                          elem_id="concept-gallery", elem_classes="pixels")

    def placement_section(self) -> None:
        self.segmentation, self.checks = picture_and_text(
            "## Who owns each pixel, and where did each object land?",
            ("Segmentation (one region per object phrase)", "segmentation"), ("Layout checks", "checks"))
        self.table = gr.Dataframe(headers=placement.TABLE_HEADERS, label="Placement", interactive=False, wrap=True,
                                  elem_id="placement-table")

    def diagnosis_section(self) -> None:
        self.diagnosis_picture, self.verdicts = picture_and_text(
            "## Diagnosis — why did it go wrong?", ("Each object's region, with its verdict", "diagnosis-picture"),
            ("Verdicts", "verdicts"))

    def time_section(self) -> None:
        gr.Markdown("## Time — how the selected word's map evolved over the denoising steps")
        with gr.Row():
            with gr.Column():
                self.step = gr.Slider(1, DEFAULT_STEPS, value=DEFAULT_STEPS, step=1, label="Step",
                                      elem_id="time-slider")
                self.frame = gr.Image(label="Map at this step", type="filepath", elem_id="time-frame")
            self.animation = gr.Image(label="Animation", type="filepath", elem_id="animation")
            self.paths = gr.Image(label="Centroid paths (dark = early, ring = final)", type="filepath",
                                  elem_id="paths")

    def model_section(self) -> None:
        with gr.Column(visible=False) as self.model_view:
            gr.Markdown("## Model view — the selected word per layer (rows) and head (columns); click to enlarge")
            with gr.Row():
                self.grid = gr.Gallery(label="Layers × heads", columns=4, height="auto", allow_preview=False,
                                       elem_id="layer-head-grid", elem_classes="pixels", scale=1)
                self.cell = gr.Image(label="Layer and head", type="filepath", elem_id="cell", scale=1)
            self.legend = gr.Markdown(label="Layers")

    def downloads_section(self) -> None:
        gr.Markdown("## Downloads")
        with gr.Row():
            self.prepare = gr.Button("Prepare downloads")
            self.download = gr.File(label="Everything at the current settings (zip)", elem_id="downloads")

    # ---- wiring ----
    @property
    def view_inputs(self) -> dict[str, gr.components.Component]:
        return {"words": self.words, "expect": self.expect, "alpha": self.alpha, "cmap": self.cmap,
                "resolutions": self.resolutions, "blocks": self.blocks, "first_step": self.first_step,
                "last_step": self.last_step, "selected": self.selected, "step": self.step}

    @property
    def generate_inputs(self) -> dict[str, gr.components.Component]:
        """The request's controls, by the parameter names of `on_generate` (and of the API)."""
        return {"prompt": self.prompt, "negative": self.negative, "seed": self.seed, "steps": self.steps,
                "guidance": self.guidance, "size": self.size, "model": self.model, "other_model": self.other_model,
                "words": self.words, "expect": self.expect, "keep_heads": self.keep_heads, "concepts": self.concepts,
                "concept_method": self.concept_method}

    @property
    def selection_outputs(self) -> list:
        return [self.state, self.selected, self.big, self.frame, self.animation, self.grid, self.cell, self.legend]

    def wire(self) -> None:
        # preprocess=False: the request reaches `check_generation` as sent, which says what is wrong with each value
        # (Gradio's preprocessing would round a seed of 1.5 to 2 and answer "7", "abc" or NaN with a generic error).
        generation = self.run.click(
            friendly(self.on_generate), inputs=list(self.generate_inputs.values()),
            outputs=[self.state, self.image, self.notes, self.status, self.resolutions, self.blocks, self.first_step,
                     self.last_step, self.step, self.model_view, self.grid, self.concept_gallery],
            api_name="generate", concurrency_limit=1, show_progress="full", validator=self.validate_generation,
            preprocess=False,
        )
        everything = [*self.selection_outputs, self.gallery, self.segmentation, self.table, self.checks, self.paths,
                      self.concept_gallery, self.diagnosis_picture, self.verdicts]
        generation.success(friendly(self.on_render), inputs=[self.state], inputs_kwargs=self.view_inputs,
                           outputs=everything, api_name="render", validator=self.view_validator("words"))
        self.stop.click(self.on_stop, inputs=[self.state, self.prompt], outputs=[self.status], cancels=[generation],
                        api_visibility="private")
        self.dice.click(lambda: random.randint(0, 2**31 - 1), outputs=self.seed, api_visibility="private")
        self.model.input(friendly(self.on_model), inputs=[self.model], outputs=[self.size], api_visibility="private")
        private = dict(inputs=[self.state], inputs_kwargs=self.view_inputs, api_visibility="private",
                       trigger_mode="always_last")
        # .input and .submit fire on user edits only: .change would also fire when a generation updates a control.
        # One event per control, so that "generate an image first" is shown under the control just used.
        display = {"alpha": self.alpha.input, "cmap": self.cmap.input, "resolutions": self.resolutions.input,
                   "blocks": self.blocks.input, "first_step": self.first_step.input,
                   "last_step": self.last_step.input, "words": self.words.submit, "expect": self.expect.blur}
        for name, trigger in display.items():
            trigger(friendly(self.on_render), outputs=everything, validator=self.view_validator(name), **private)
        self.selected.input(friendly(self.on_select), outputs=self.selection_outputs,
                            validator=self.view_validator("selected"), **private)
        self.gallery.select(friendly(self.on_pick_word), outputs=self.selection_outputs, **private)
        self.concept_gallery.select(friendly(self.on_pick_concept), outputs=[self.big], **private)
        self.step.input(friendly(self.on_step), outputs=[self.frame], validator=self.view_validator("step"),
                        **private)
        self.grid.select(friendly(self.on_pick_cell), outputs=[self.cell], **private)
        self.prepare.click(friendly(self.on_prepare), inputs=[self.state], inputs_kwargs=self.view_inputs,
                           outputs=[self.download], api_name="prepare_downloads")

    # ---- checks before anything runs: their messages are shown under the fields they are about ----
    @lenient
    def validate_generation(self, *values) -> list[dict]:
        """A model typed in is not loaded here (that waits in the queue, where `on_generate` checks again)."""
        fields = list(self.generate_inputs)
        request = dict(zip(fields, values, strict=True))
        for unused in ("negative", "keep_heads", "concepts"):  # anything goes
            del request[unused]
        return check_generation(self.models, **request, load=False)[1].verdicts(fields)

    def view_validator(self, field: str) -> Callable:
        """The check of a redraw asked for by `field` (the control just used)."""

        def validate(result: Result | None, **view) -> list[dict]:
            return check_view(result, View(**view), field).verdicts(["state", *self.view_inputs])

        return lenient(validate)

    # ---- callbacks ----
    def on_generate(self, prompt: str, negative: str, seed: float, steps: float, guidance: float, size: str,
                    model: str, other_model: str, words: str, expect: str, keep_heads: bool, concepts: str = "",
                    concept_method: str = CONCEPT_METHODS[0],
                    progress=gr.Progress()) -> dict:  # noqa: B008 (how Gradio hands out progress bars)
        """Check everything, generate one image with its maps, and set the filter panel up for them."""
        request, checks = check_generation(self.models, prompt, seed, steps, guidance, size, model, other_model,
                                           words, expect, concept_method)
        if request is None:
            raise InputError("; ".join(f"{field}: {message}" for field, message in checks.errors.items()))

        def on_step(done: int, total: int) -> None:
            if abandoned():
                raise Stopped(f"generation stopped after step {done} of {total}: cancelled or the client left")
            progress((done, total), desc="denoising", unit="steps")

        progress(0, desc="waiting for the model")
        with request.loaded.lock:
            image, maps = generate(request.loaded.pipe, prompt, seed=request.seed, steps=request.steps,
                                   guidance=request.guidance, size=request.dims,
                                   negative_prompt=as_text(negative) or None, on_step=on_step,
                                   per_layer=keep_heads is True, per_head=keep_heads is True,
                                   concepts=split_list(as_text(concepts)) or None, concept_method=request.method)
        maps.meta["model"] = as_text(other_model) or as_text(model)
        result = Result.new(image, maps)
        resolutions = [f"{h}x{w}" for h, w in maps.resolutions]
        steps = request.steps
        return {
            self.state: result,
            self.image: result.save(image, "image"),
            self.notes: notes_text(maps),
            self.status: f"Showing {brief(prompt)} (seed {request.seed}, {steps} step{'s' * (steps != 1)}, "
                          f"{maps.meta['model']}).",
            self.resolutions: gr.update(choices=resolutions, value=resolutions,
                                        visible=maps.meta.get("resolution_sites", True)),
            self.blocks: gr.update(choices=maps.blocks, value=maps.blocks),
            self.first_step: step_slider(steps, 1),
            self.last_step: step_slider(steps, steps),
            self.step: step_slider(steps, steps),
            self.model_view: gr.update(visible=maps.per_head),
            self.grid: gr.update(columns=maps.heads),
            self.concept_gallery: gr.update(visible=maps.concepts is not None),
        }

    def on_model(self, model: str) -> dict:
        """Another model picked: the size hint names the sizes that one can make."""
        return gr.update(info=size_info(self.models.get(model)))

    def on_stop(self, result: Result | None, prompt: str) -> str:
        """Stop pressed: say that nothing new was made and which prompt the views still show."""
        if result is None:
            return "Stopped: no image was made."
        shown = result.maps.meta.get("prompt", "")
        if shown.strip() == (prompt or "").strip():
            return f"Stopped: no new image was made; the views still show {brief(shown)} as before."
        return (f"Stopped: {brief(prompt)} was not generated; the views below still show the previous prompt, "
                f"{brief(shown)}.")

    def on_render(self, result: Result | None, **view) -> dict:
        """Every view, from the stored maps at the current settings."""
        if result is None:
            raise InputError(NO_RESULT)
        view = View(**view)
        maps = view.filtered(result.maps)
        if not maps.words:
            return {self.state: replace(result, shown=[], cells=[]), self.selected: gr.update(choices=[], value=None),
                    self.gallery: [], self.big: None, self.frame: None, self.animation: None, self.grid: [],
                    self.cell: None, self.legend: "", self.segmentation: None, self.table: None,
                    self.checks: "_No words to map._", self.paths: None, self.concept_gallery: [],
                    self.diagnosis_picture: None, self.verdicts: "_No words to map._"}
        shown = view.shown(result)
        segmentation, table, checks, paths = placement_views(result, maps, view)
        out = self.selection(replace(result, shown=shown), maps, view)
        picture, verdicts = diagnosis_views(result, maps)
        return out | {self.gallery: gallery_items(result, maps, shown, view), self.segmentation: segmentation,
                      self.table: table, self.checks: checks, self.paths: paths,
                      self.concept_gallery: concept_items(result, maps, view), self.diagnosis_picture: picture,
                      self.verdicts: verdicts}

    def selection(self, result: Result, maps: HeatMaps, view: View) -> dict:
        """The views of the selected word: enlarged map, time, model view (the first object by default)."""
        objects = maps.objects()
        choices = list(dict.fromkeys(result.shown + objects))
        name = view.selected if view.selected in choices else (objects or choices)[0]
        frame, animation = time_views(result, maps, name, view)
        out = {self.selected: gr.update(choices=choices, value=name), self.frame: frame, self.animation: animation,
               self.big: gr.update(value=selected_figure(result, maps, name, view), label=BIG_LABEL),
               self.cell: None}
        cells = []
        if maps.per_head:
            items, cells, legend = layer_head_cells(result, maps, name, view)
            out |= {self.grid: items, self.legend: legend}
        return out | {self.state: replace(result, cells=cells)}

    def on_select(self, result: Result | None, **view) -> dict:
        """A word picked from the list: its enlarged map, time and model views."""
        if result is None:
            raise InputError(NO_RESULT)
        if not result.shown:  # a prompt without words: nothing to select
            return gr.skip()
        view = View(**view)
        return self.selection(result, view.filtered(result.maps), view)

    def on_pick_word(self, result: Result | None, evt: gr.SelectData, **view) -> dict:
        """A gallery click: the word of the clicked tile, as the gallery shows it (not as the words box reads now)."""
        if result is None or not 0 <= evt.index < len(result.shown):
            raise InputError("that tile is gone: generate again or pick a word from the list")
        return self.on_select(result, **(view | {"selected": result.shown[evt.index]}))

    def on_pick_concept(self, result: Result | None, evt: gr.SelectData, **view) -> dict:
        """A click on a concept map: that map large, with its colour bar, where the selected word's map is."""
        concepts = result.maps.concepts.words if result is not None and result.maps.concepts is not None else []
        if not 0 <= evt.index < len(concepts):
            raise InputError("that concept map is gone: generate again")
        name, view = concepts[evt.index], View(**view)
        figure = result.maps.concept(name).figure(result.image, view.alpha, view.cmap, tile=BIG)
        return {self.big: gr.update(value=result.save(figure, f"concept_{slug(name)}_large"),
                                    label=f"Located word “{name}”, large (concept map)")}

    def on_step(self, result: Result | None, **view) -> dict:
        """The step slider moved: the selected word's map at that step."""
        if result is None:
            raise InputError(NO_RESULT)
        if not result.shown:  # a prompt without words: no map to show
            return gr.skip()
        view = View(**view)
        maps = view.filtered(result.maps)
        return {self.frame: step_view(result, maps, view.selected or result.shown[0], view)}

    def on_pick_cell(self, result: Result | None, evt: gr.SelectData, **view) -> dict:
        """A model-view click: that layer and head of the selected word, large, named in the label."""
        if result is None or not 0 <= evt.index < len(result.cells):
            raise InputError("that cell is gone: generate again")
        layer, head = result.cells[evt.index]
        view = View(**view)
        maps = view.filtered(result.maps)
        if layer not in maps.sites or head >= maps.sums[layer].shape[1]:
            raise InputError("that tile shows no map: its layer has fewer heads or is filtered out")
        row = list(maps.sites).index(layer)
        m = placement.word_map(maps.filter(layers=[layer], heads=[head]), view.selected)
        figure = replace(m, word=f"{view.selected}: L{row} head {head}").figure(result.image, view.alpha, view.cmap,
                                                                                 BIG)
        return {self.cell: gr.update(value=result.save(figure, f"{slug(view.selected)}_L{row}_h{head}_large"),
                                     label=f"layer L{row} = {layer}, head {head}")}

    def on_prepare(self, result: Result | None, **view) -> dict:
        """The one zip of everything, written now (never on a mere display change)."""
        if result is None:
            raise InputError("generate an image first")
        return {self.download: write_zip(result, View(**view))}


# ---- starting the server ------------------------------------------------------------------------------------
def check_port(host: str, port: int) -> None:
    """Fail with one clear line when the port is taken (Gradio's own message points at an environment variable)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is already in use: pick another with --port, "
                             f"e.g. --port {port + 1}") from None
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def one_join_at_a_time(queue) -> None:
    """Make the queue's size limit hold under a burst: Gradio checks the size, awaits the event's validator, and
    only then queues the event, so concurrent requests all pass the check first (26 were queued with a limit of
    20). Validators answer in milliseconds (they load no model), so joining one at a time costs nothing."""
    push, lock = queue.push, asyncio.Lock()

    @functools.wraps(push)
    async def push_alone(*args, **kwargs):
        async with lock:
            return await push(*args, **kwargs)

    queue.push = push_alone


def build_app(models: Models) -> gr.Blocks:
    """The page, not yet queued or served (tests and embedding apps call this)."""
    return DemoApp(models).build()


def launch(host: str = "127.0.0.1", port: int = 7860, model: str | None = None, allow_any_model: bool = False,
           share: bool = False, block: bool = True) -> tuple[gr.Blocks, str]:
    """Build and start the app; returns (app, local URL). With `block`, serve until interrupted."""
    check_port(host, port)
    # Tiny attention probabilities become denormal floats, which CPUs process ~10x slower (see cli.main).
    torch.set_flush_denormal(True)
    app = build_app(Models(model, allow_any_model))
    app.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE)
    one_join_at_a_time(app._queue)
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                           show_error=False, theme=gr.themes.Soft(), footer_links=["api"], css=CSS,
                           max_file_size=MAX_UPLOAD, state_session_capacity=SESSIONS)
    return app, url
