"""What one server serves: the models it offers (each loaded once, typed-in ones bounded) and the
largest request each may ask of them; the bounds on the queue, sessions and uploads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..generation import MAX_PIXELS, native_size
from ..models import DEFAULT_MODEL, EMBEDDED, VIDEO_OF, asset_path, load_pipeline, resolve
from .guard import log

FILES_TTL_S = 3600  # a session's files are deleted after an hour unused

QUEUE_SIZE = 20  # requests waiting at once, all users together: beyond it a request is refused at once
MAX_UPLOAD = "10mb"  # the Explain tab's image; Gradio's upload route would otherwise store any size
SESSIONS = 50  # browser sessions Gradio keeps state for (the least recently used is dropped first)
SESSION_TTL_S = FILES_TTL_S  # a session's generation is dropped after this long unused (its files expire too)
EXTRA_MODELS = 2  # pipelines typed in with --allow-any-model kept loaded, least recently used dropped first
GUIDANCE_RANGE = (0, 20)  # the slider's range (the library accepts up to 50)
DEMO_FRAMES = 8  # a video's frames when not told (less if the model's own default is less): seconds on a CPU


@dataclass(frozen=True)
class Limits:
    """The largest request a pipeline serves here: beyond it one user would hold the queue for minutes."""

    max_pixels: int  # per frame, for a video
    max_steps: int
    max_frames: int = 16  # a video's: each frame costs about as much as an image of its size


def limits_for(pipe) -> Limits:
    """Generous on a GPU (up to 81 frames: Wan's own default); on a CPU at most 4x the model's native pixel
    count, 100 steps and 16 frames."""
    width, height = native_size(pipe)
    if pipe.device.type == "cuda":
        return Limits(min(MAX_PIXELS, 16 * width * height), 500, 81)
    return Limits(4 * width * height, 100, 16)


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
        # An embedded model that has not been trained yet (no folder) is not offered; an embedded video model has
        # no folder of its own (it is built at load time from an image model's): it needs that one's.
        self.choices = [name for name in EMBEDDED if asset_path(VIDEO_OF.get(name, name)).exists()]
        if self.default not in self.choices:
            self.choices.append(self.default)
        self.allow_any = allow_any
        self._offered: dict[str, Loaded] = {}
        self._extra: OrderedDict[str, Loaded] = OrderedDict()  # by source, most recently used last
        self._guard = threading.Lock()

    @property
    def image_choices(self) -> list[str]:
        """The offered models that make images (the Explain tab reads an image: a video model cannot)."""
        return [name for name in self.choices if name not in VIDEO_OF]

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

