"""Where did each word land, when was that decided, and does it match the intended layout?

Functions over `HeatMaps` (the geometry of one map is `crossattn.geometry`; pictures of the results are in
`crossattn.pictures`, text tables in `crossattn.reports`):

- `placements(maps)`: each word's mask, centroid, box, area and region (`geometry.place`).
- `check(maps, "circle left_of square")`: compare centroids; pass when the gap along the axis exceeds
  ``margin`` × the image side (default 0.05). Boxes (``"circle in 0,0,0.5,1"``, normalised x0,y0,x1,y1):
  pass when IoU(mask, box) ≥ ``min_iou`` (default 0.3). A name may carry ``#k`` for the k-th repeat of a
  word or phrase ("cat left_of cat#1").
- `objects(maps)`, `relations(maps)`: the noun phrases and relations the prompt itself states
  (`crossattn.phrases`); what cannot be read is skipped with a note.
- `segmentation(maps)`: who owns each pixel. `track(maps, "cat")`: the centroid over the steps.
- `report(maps)`: all of it as JSON-ready data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import phrases
from .errors import InputError, UnknownWordError
from .geometry import DEFAULT_TAU, RELATIONS, Placement, Track, box_iou, place, relation_gap, segment, track_of
from .words import ref_name

if TYPE_CHECKING:
    from .heatmaps import HeatMaps


# ---- per-word placement ------------------------------------------------------------------------------------
def placements(maps: HeatMaps, words: list[str] | None = None, method: str = "relative",
               tau: float = DEFAULT_TAU) -> dict[str, Placement]:
    """word -> Placement; all the prompt's words by default (repeats as "cat#1", ...)."""
    if words is None:
        words = maps.names
    return {w: place(maps[w].word, maps[w].array, method, tau) for w in words}


# ---- layout checks ---------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The verdict on one statement, with the numbers it rests on."""

    statement: str
    passed: bool
    evidence: dict
    reason: str

    def to_dict(self) -> dict:
        return {"statement": self.statement, "passed": self.passed, "evidence": self.evidence, "reason": self.reason}


_BOX = re.compile(r"^(.+?)\s+(?:in|at|inside)\s*\(?\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\)?$")
_SIDE = re.compile(r"^(.+?)\s+(?:on|at|in) the (left|right|top|bottom)(?: side| half)?$")
STATEMENT_HELP = ("write 'X left_of Y' (also right_of, above, below), 'X on the left' (right, top, bottom) or "
                  "'X in x0,y0,x1,y1' with a normalised box; 'X#1' names the second X")


def parse_statement(statement: str) -> tuple[str, str, str | tuple[float, ...]]:
    """'circle left_of square' -> ('circle', 'left_of', 'square'); 'sun in 0,0,1,0.5' -> ('sun', 'in', box);
    'circle on the left' -> ('circle', 'side', 'left')."""
    text = " ".join(statement.strip().split())
    if m := _BOX.match(text):
        box = tuple(float(v) for v in m.groups()[1:])
        if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise InputError(f"bad box in {statement!r}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return m.group(1).lower(), "in", box
    normal = re.sub(r"\b(left|right) of\b", r"\1_of", text.lower())
    for rel in RELATIONS:
        parts = re.split(rf"\s+{rel}\s+", normal)
        if len(parts) == 2 and all(parts):
            return parts[0], rel, parts[1]
    if m := _SIDE.match(normal):
        return m.group(1), "side", m.group(2)
    raise InputError(f"cannot read {statement!r}: {STATEMENT_HELP}")


def statement_words(statement: str) -> list[str]:
    """The words or phrases a statement names (to check they are in the prompt before generating)."""
    subject, relation, obj = parse_statement(statement)
    return [subject] + ([obj] if relation in RELATIONS else [])


def check(maps: HeatMaps, statement: str, method: str = "relative", tau: float = DEFAULT_TAU,
          margin: float = 0.05, min_iou: float = 0.3) -> CheckResult:
    """Verdict on a layout statement (see module doc) from the maps of the words it names."""
    subject, relation, obj = parse_statement(statement)
    places = placements(maps, statement_words(statement), method, tau)
    h, w = maps.image_size
    a = places[subject]
    if a.centroid is None:
        return CheckResult(statement, False, {subject: None}, f"{subject!r} has no attention anywhere")
    ax, ay = a.centroid
    if relation == "in":
        iou = box_iou(a.mask, obj)
        return CheckResult(statement, iou >= min_iou, {"iou": round(iou, 4), "centroid": a.centroid, "box": obj},
                           f"IoU {iou:.2f} {'>=' if iou >= min_iou else '<'} {min_iou}")
    if relation == "side":
        value, limit, sign = {"left": (ax, w / 2, -1), "right": (ax, w / 2, 1), "top": (ay, h / 2, -1),
                              "bottom": (ay, h / 2, 1)}[obj]
        passed = sign * (value - limit) > margin * (w if obj in ("left", "right") else h)
        return CheckResult(statement, passed, {"centroid": a.centroid},
                           f"centroid {'x' if obj in ('left', 'right') else 'y'} = {value:.1f} of {2 * limit:.0f}")
    b = places[obj]
    if b.centroid is None:
        return CheckResult(statement, False, {obj: None}, f"{obj!r} has no attention anywhere")
    delta = relation_gap(a.centroid, b.centroid, relation)
    axis = "x" if relation in ("left_of", "right_of") else "y"
    passed = delta > margin * (w if axis == "x" else h)
    k = 0 if axis == "x" else 1
    return CheckResult(statement, passed, {subject: a.centroid, obj: b.centroid, f"d{axis}": round(delta, 2)},
                       f"{subject} {axis}={a.centroid[k]:.1f}, {obj} {axis}={b.centroid[k]:.1f}")


# ---- what the prompt says ---------------------------------------------------------------------------------
def _prompt(maps: HeatMaps) -> str:
    return maps.info.prompt or " ".join(maps.words)


def _known(maps: HeatMaps, name: str) -> bool:
    try:
        maps.word(name)
    except UnknownWordError:
        return False
    return True


def relations(maps: HeatMaps) -> list[str]:
    """The statements the prompt itself makes ("cat left_of dog", "moon at the top", ...), to `check`."""
    return prompt_relations(maps)[0]


def prompt_relations(maps: HeatMaps) -> tuple[list[str], list[str]]:
    """(statements the prompt makes, notes on what was skipped): "cat left_of dog", "moon at the top", ..."""
    parse = phrases.parse_prompt(_prompt(maps))
    statements, notes = [], list(parse.notes)
    for relation in parse.relations:
        statement = relation.statement()
        missing = [n for n in statement_words(statement) if not _known(maps, n)]
        if missing:
            notes.append(f"skipped {statement!r}: {', '.join(map(repr, missing))} not among the mapped words")
        else:
            statements.append(statement)
    return statements, notes


# Words that name no object, for prompts in which no noun phrase can be read.
_FUNCTION_WORDS = frozenset(
    "a an the of and or with in on at to is are left right above below under over top bottom beside next "
    "near small large big tiny huge middle center centre side".split()
)


def prompt_objects(maps: HeatMaps) -> tuple[list[phrases.Phrase], list[str]]:
    """The prompt's object phrases that are mapped words, and a note for each that is not: the one reading of
    a prompt's objects that `objects`, `report` and `crossattn.diagnosis` share."""
    found, notes = [], []
    for phrase in phrases.parse_prompt(_prompt(maps)).objects:
        name = ref_name(phrase.text, phrase.occurrence)
        if _known(maps, name):
            found.append(phrase)
        else:
            notes.append(f"skipped {name!r}: not among the mapped words")
    return found, notes


def objects(maps: HeatMaps) -> list[str]:
    """The objects the prompt names, as phrases ("red circle", "cat#1"), in prompt order. A prompt with
    no readable noun phrase gives its content words (not articles, relation words or style tags) instead."""
    found, _ = prompt_objects(maps)
    if found:
        return [ref_name(p.text, p.occurrence) for p in found]
    words = phrases.plain_words(_prompt(maps))
    return [w for w in dict.fromkeys(words) if w not in _FUNCTION_WORDS and not phrases.is_tag(w) and _known(maps, w)]


def segmentation(maps: HeatMaps, names: list[str] | None = None,
                 background: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """Who owns each pixel: (labels (H, W), names); 0 = background, k = names[k - 1]. One region per object
    phrase by default ("red circle" is one region, its words merged)."""
    names = names or objects(maps)
    if not names:
        raise InputError("there are no words to map in this prompt (no letters or digits)")
    return segment([maps.word(n).array for n in names], background), names


def track(maps: HeatMaps, name: str, tau: float = DEFAULT_TAU, tolerance: float = 0.1, over: str = "steps") -> Track:
    """A word's or phrase's centroid at every step and the step from which its position stays put; with
    ``over="frames"``, its centroid in every frame of a video (each frame's own map) and the frame from which it
    stays put."""
    if over == "frames":
        per_frame = np.stack([maps.frame(i).word(name).latent for i in range(maps.frames)])
        return track_of(maps.word(name).word, per_frame, maps.image_size, tau, tolerance)
    if over != "steps":
        raise InputError(f"over must be 'steps' or 'frames', got {over!r}")
    return track_of(maps.word(name).word, maps.over_steps(name), maps.image_size, tau, tolerance)


# ---- reports ----------------------------------------------------------------------------------------------
def report(maps: HeatMaps, statements: list[str] | None = None, from_prompt: bool = False,
           method: str = "relative", tau: float = DEFAULT_TAU) -> dict:
    """Everything about placement for one image's maps, as plain JSON-ready data.

    Covers the prompt's objects (see `objects`), the given statements and, with `from_prompt` (or when no
    statement is given), the relations read from the prompt; `notes` says what could not be read.
    """
    statements = list(statements or [])
    notes: list[str] = []
    if from_prompt or not statements:
        found, notes = prompt_relations(maps)
        statements += [s for s in found if s not in statements]
    names = objects(maps)
    places = placements(maps, names, method, tau)
    return {
        "prompt": maps.info.prompt,
        "image_size": list(maps.image_size),
        "method": method,
        "tau": tau,
        "words": [{**p.to_dict(), "word": name} for name, p in places.items()],
        "checks": [check(maps, s, method, tau).to_dict() for s in statements],
        "notes": notes,
        "timelines": [{**track(maps, n, tau=tau).to_dict(), "word": n} for n in names],
    }


