"""Input checks, all before any compute is spent: each message is meant for the field it is about."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from .. import placement
from ..concepts import METHODS
from ..errors import InputError, one_line
from ..generation import MAX_SEED, Request, native_size, parse_size, size_hint
from ..words import find_word, split_list, word_ref
from .limits import GUIDANCE_RANGE, Loaded, Models
from .store import Result
from .video import default_frames, is_video
from .views import View

CONCEPT_METHODS = ["model's default", *METHODS]

NO_RESULT = "generate an image first"


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
                  names: list[str], concept_method: str | None = None, frames: int | None = None,
                  **more) -> Request:
    """The request to generate, once everything asked for is known to be servable here and every word or
    phrase named (words to show, words of layout statements) is in the prompt (`frames`: a video's, None for an
    image or the video pipeline's default); `more`: the rest of
    `Request.make`'s options (model, negative_prompt, concepts)."""
    return Request.make(loaded.pipe, prompt, seed=seed, steps=steps, guidance=guidance,
                        size=parse_size(size) if (size or "").strip() else None, words=names,
                        concept_method=concept_method, max_pixels=loaded.limits.max_pixels,
                        max_steps=loaded.limits.max_steps, frames=frames, **more)


def statement_names(expect: str) -> list[str]:
    """The words or phrases the layout statements name (an unreadable statement is an `InputError`)."""
    return [name for statement in View(expect=expect).statements for name in placement.statement_words(statement)]


@dataclass(frozen=True)
class Job:
    """A request that passed every check, with the loaded model it runs on (whose lock it takes)."""

    loaded: Loaded
    request: Request


def requested_frames(loaded: Loaded, frames: object) -> int | None:
    """The frame count to ask a video model for: None for an image model, whatever the hidden field holds; the
    default here when the field is empty."""
    if not is_video(loaded):
        return None
    if frames is None or (isinstance(frames, str) and not frames.strip()):
        return default_frames(loaded)
    return number(frames, "frames", 1, loaded.limits.max_frames, whole=True)


# Every field checked alone, the others at these values (always accepted: frames None is the pipeline's default),
# so that each message names its field.
ACCEPTED = {"prompt": "a", "size": "", "steps": 1, "guidance": 0.0, "seed": 0, "names": [], "concept_method": None,
            "frames": None}


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

    def refuse(self) -> None:
        """An `InputError` naming each field that failed, if any did (a request that skipped the validator)."""
        if self.errors:
            raise InputError("; ".join(f"{name}: {message}" for name, message in self.errors.items()))


def check_generation(models: Models, prompt: str, seed: object, steps: object, guidance: object, size: str,
                     model: str, other_model: str, words: str, expect: str, concept_method: str,
                     load: bool = True, negative: str = "", concepts: str = "",
                     frames: object = None) -> tuple[Job | None, Checks]:
    """The job if it can be served, with the checks' messages by field. With `load=False` a model typed
    in that is not loaded yet is not loaded: only what needs no model is checked (the job is None). `frames`
    applies to video models only (an image model ignores it: the page hides the field)."""
    checks = Checks()
    size, model, other_model, words, expect = map(as_text, (size, model, other_model, words, expect))
    loaded = checks("other_model" if other_model.strip() else "model", models.get, other_model or model, load)
    seed = checks("seed", number, seed, "seed", 0, MAX_SEED, whole=True)
    guidance = checks("guidance", number, guidance, "guidance", *GUIDANCE_RANGE)
    if loaded is None:  # the rest depends on the model: its limits, its tokenizer
        return None, checks
    steps = checks("steps", number, steps, "steps", 1, loaded.limits.max_steps, whole=True)
    method = None if concept_method in (None, CONCEPT_METHODS[0]) else as_text(concept_method)
    # the Frames field follows the Model dropdown: a video model typed in makes its default count here
    frames = checks("frames", requested_frames, loaded, None if other_model.strip() else frames)
    alone = {"prompt": prompt, "size": size, "concept_method": method}
    if frames is not None:  # a video's count, once it is a number: the model's own rules (e.g. 4·k + 1)
        alone["frames"] = frames
    for name, value in alone.items():
        checks(name, check_request, loaded, **(ACCEPTED | {name: value}))
    named = named_words(checks, words, expect)
    if "prompt" not in checks.errors:  # words are looked for in the prompt
        for box, names in named.items():
            checks(box, check_request, loaded, **(ACCEPTED | {"prompt": prompt, "names": names}))
    if checks.errors:
        return None, checks
    names = named["words"] + named["expect"]
    request = check_request(loaded, prompt, size, steps, guidance, seed, names, method,  # each passed alone
                            frames, model=other_model or model, negative_prompt=as_text(negative) or None,
                            concepts=split_list(as_text(concepts)))
    return Job(loaded, request), checks


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
            checks(box, find_word, result.maps.data.words, *word_ref(name))
    checks("frame", number, view.frame, "frame", 0, result.maps.frames - 1, whole=True)  # 0 to 0 for an image
    return checks


def size_info(loaded: Loaded) -> str:
    """The size box's hint: the model's own size and the sizes it can make here."""
    width, height = native_size(loaded.pipe)
    return f"empty = the model's {width}x{height}; {size_hint(loaded.pipe, loaded.limits.max_pixels)}"


