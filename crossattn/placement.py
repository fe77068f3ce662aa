"""Where did each word land, when was that decided, and does it match the intended layout?

Downstream of the heat maps: functions here take a `HeatMaps` (or plain arrays) and never the other way round;
`HeatMaps.placement`, `.check`, `.segmentation`, ... only forward here.

- Mask: ``method="relative"`` keeps pixels ≥ ``tau`` × the word's peak (DAAM's choice, tau = 0.4);
  ``method="otsu"`` picks the threshold that best splits the map's histogram in two.
- Centroid: the heat-weighted mean (x, y) over the mask, in image pixels; bbox (x0, y0, x1, y1) with x1, y1
  exclusive; area: mask share of the image; region: the centroid's cell in a 3×3 grid
  (left/centre/right × top/middle/bottom, e.g. "top-left", "left", "centre").
- Relations (``"circle left_of square"``): compare centroids; pass when the gap along the axis exceeds
  ``margin`` × the image side (default 0.05). Boxes (``"circle in 0,0,0.5,1"``, normalised x0,y0,x1,y1):
  pass when IoU(mask, box) ≥ ``min_iou`` (default 0.3). A name may carry ``#k`` for the k-th repeat of a
  word or phrase ("cat left_of cat#1").
- Objects and relations read from the prompt: noun phrases and the relations between them
  (`crossattn.phrases`); what cannot be read is skipped with a note.
- Timeline: the centroid at every step of the coarse trace; "decided at step k" is the first step from
  which the centroid stays within ``tolerance`` × the image side (default 0.1) of its final position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageDraw

from . import phrases, render
from .errors import InputError, UnknownWordError
from .words import ref_name, word_ref

if TYPE_CHECKING:
    from .heatmaps import HeatMaps

DEFAULT_TAU = 0.4
RELATIONS = ("left_of", "right_of", "above", "below")
SIDES = ("left", "right", "top", "bottom")


@dataclass
class Placement:
    """Where one word landed. Pixel coordinates; None when the word's map is all zero."""

    word: str
    centroid: tuple[float, float] | None
    bbox: tuple[int, int, int, int] | None
    area: float
    region: str
    threshold: float
    mask: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"word": self.word, "centroid": self.centroid, "bbox": self.bbox, "area": round(self.area, 4),
                "region": self.region, "threshold": round(self.threshold, 4)}


def threshold_of(array: np.ndarray, method: str = "relative", tau: float = DEFAULT_TAU) -> float:
    """The cut-off above which a pixel belongs to the word (array normalised to [0, 1])."""
    if method == "relative":
        if not 0 < tau < 1:
            raise InputError(f"tau must be in (0, 1), got {tau}")
        return float(tau * array.max())
    if method == "otsu":
        level, _ = cv2.threshold((array * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return float(level) / 255
    raise InputError(f"unknown threshold method {method!r}; use 'relative' or 'otsu'")


def region_name(x: float, y: float, width: int, height: int) -> str:
    col = ("left", "centre", "right")[min(int(3 * x / width), 2)]
    row = ("top", "middle", "bottom")[min(int(3 * y / height), 2)]
    if row == "middle":
        return col
    return row if col == "centre" else f"{row}-{col}"


def weighted_centroid(array: np.ndarray, mask: np.ndarray) -> tuple[float, float] | None:
    weights = np.where(mask, array, 0).astype(np.float64)
    total = weights.sum()
    if total <= 0:
        return None
    ys, xs = np.indices(array.shape)
    # +0.5: the centre of pixel (i, j) is at (j + 0.5, i + 0.5) in image coordinates
    return float((weights * (xs + 0.5)).sum() / total), float((weights * (ys + 0.5)).sum() / total)


def place(word: str, array: np.ndarray, method: str = "relative", tau: float = DEFAULT_TAU) -> Placement:
    """Mask, centroid, bbox, area share and region of one word's normalised map."""
    h, w = array.shape
    if array.max() <= 0:
        return Placement(word, None, None, 0.0, "none", 0.0, np.zeros_like(array, dtype=bool))
    level = threshold_of(array, method, tau)
    mask = array >= level if method == "relative" else array > level
    ys, xs = np.nonzero(mask)
    centroid = weighted_centroid(array, mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Placement(word, centroid, bbox, float(mask.mean()), region_name(*centroid, w, h), level, mask)


def relation_gap(a: tuple[float, float], b: tuple[float, float], relation: str) -> float:
    """Signed gap between points a and b along the relation's axis: positive when "a <relation> b" holds.

    The one relation test of the project: placement checks, the shapes world and its evaluation use it.
    """
    return {"left_of": b[0] - a[0], "right_of": a[0] - b[0], "above": b[1] - a[1], "below": a[1] - b[1]}[relation]


def word_map(maps: HeatMaps, name: str):
    """The map of a word or phrase named as in statements ("red circle", "cat#1")."""
    text, occurrence = word_ref(name)
    return maps.word(text, occurrence)


# ---- per-word placement ------------------------------------------------------------------------------------
def placements(maps: HeatMaps, words: list[str] | None = None, method: str = "relative",
               tau: float = DEFAULT_TAU) -> dict[str, Placement]:
    """word -> Placement; all the prompt's words by default (repeats as "cat#1", ...)."""
    if words is None:
        words = maps.names
    return {w: place(word_map(maps, w).word, word_map(maps, w).array, method, tau) for w in words}


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


def box_iou(mask: np.ndarray, box: tuple[float, ...]) -> float:
    h, w = mask.shape
    target = np.zeros_like(mask, dtype=bool)
    target[round(box[1] * h) : round(box[3] * h), round(box[0] * w) : round(box[2] * w)] = True
    union = np.logical_or(mask, target).sum()
    return float(np.logical_and(mask, target).sum() / union) if union else 0.0


# ---- what the prompt says ---------------------------------------------------------------------------------
def _prompt(maps: HeatMaps) -> str:
    return maps.meta.get("prompt") or " ".join(maps.words)


def _known(maps: HeatMaps, name: str) -> bool:
    try:
        word_map(maps, name)
    except UnknownWordError:
        return False
    return True


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
    words = phrases.prompt_words(_prompt(maps))
    return [w for w in dict.fromkeys(words) if w not in _FUNCTION_WORDS and not phrases.is_tag(w) and _known(maps, w)]


def segment(arrays: list[np.ndarray], background: float = 0.3) -> np.ndarray:
    """Argmax over words of their normalised maps; 0 = background (no word ≥ `background`), k = word k-1."""
    stack = np.stack(arrays)
    labels = stack.argmax(0) + 1
    labels[stack.max(0) < background] = 0
    return labels


def segmentation(maps: HeatMaps, names: list[str] | None = None,
                 background: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """Who owns each pixel: (labels (H, W), names); 0 = background, k = names[k - 1]. One region per object
    phrase by default ("red circle" is one region, its words merged)."""
    names = names or objects(maps)
    if not names:
        raise InputError("there are no words to map in this prompt (no letters or digits)")
    return segment([word_map(maps, n).array for n in names], background), names


# Colours for regions and paths, each with a name, so that a region is never painted in a colour the prompt
# names for another object (the yellow square painted green): those are left out of the palette.
PALETTE = {"red": (230, 25, 75), "green": (60, 180, 75), "blue": (0, 130, 200), "yellow": (255, 225, 25),
           "purple": (145, 30, 180), "orange": (245, 130, 48), "cyan": (70, 240, 240), "magenta": (240, 50, 230),
           "olive": (128, 128, 0), "navy": (0, 0, 128), "teal": (0, 128, 128), "brown": (170, 110, 40),
           "pink": (250, 190, 212), "lime": (210, 245, 60), "maroon": (128, 0, 0), "grey": (128, 128, 128)}


def palette_for(names: list[str]) -> list[tuple[int, int, int]]:
    """One colour per name, avoiding colours the names mention ("yellow square" never gets yellow)."""
    said = {w for n in names for w in re.findall(r"[a-z]+", n.lower())}
    usable = [rgb for colour, rgb in PALETTE.items() if colour not in said] or list(PALETTE.values())
    return [usable[k % len(usable)] for k in range(len(names))]


def segmentation_picture(image: Image.Image | np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.55,
                         tile: int = 384) -> Image.Image:
    """Labels coloured over the image, each region named in place, with a legend underneath."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    big = cv2.resize(labels.astype(np.uint8), base.size, interpolation=cv2.INTER_NEAREST)
    palette = palette_for(names)
    colours = np.array([(0, 0, 0)] + palette, np.float32)
    pixels = np.asarray(base).astype(np.float32)
    painted = np.where(big[..., None] > 0, (1 - alpha) * pixels + alpha * colours[big], pixels)
    row_h = max(18, tile // 16)
    label_font = render.font(int(row_h * 0.7))
    legend = [f"{name}  {float((labels == k).mean()):.0%}" for k, name in enumerate(["background"] + names)]
    width = max([base.width] + [12 + row_h + int(label_font.getlength(t)) + 6 for t in legend])  # never cut
    out = Image.new("RGB", (width, base.height + row_h * (len(names) + 1) + 4), "white")
    out.paste(Image.fromarray(painted.round().astype(np.uint8)), (0, 0))
    anchors, named = [], []
    for k, name in enumerate(names, start=1):  # the name at the region's centre, moved aside where names crowd
        ys, xs = np.nonzero(big == k)
        if len(xs):
            anchors.append((float(xs.mean()), float(ys.mean())))
            named.append(name)
    render.draw_labels(out, anchors, named, int(row_h * 0.7), canvas=(0, 0, base.width, base.height))
    draw = ImageDraw.Draw(out)
    for k, text in enumerate(legend):
        y = base.height + k * row_h + row_h // 2 + 2
        colour = (255, 255, 255) if k == 0 else palette[k - 1]
        draw.rectangle([6, y - row_h // 3, 6 + row_h // 1.5, y + row_h // 3], fill=colour, outline="black")
        render.draw_text(out, (12 + row_h, y), text, label_font, anchor="lm")
    return out


# ---- timeline ---------------------------------------------------------------------------------------------
@dataclass
class Timeline:
    """A word's centroid per step (image pixels; NaN where the step was not recorded) and when it settled."""

    word: str
    centroids: np.ndarray  # (steps, 2)
    decided_at: int | None  # first step from which the centroid stays within tolerance of the final one
    steps: int
    tolerance_px: float

    def to_dict(self) -> dict:
        return {"word": self.word, "decided_at": self.decided_at, "steps": self.steps,
                "tolerance_px": round(self.tolerance_px, 2),
                "centroids": [None if np.isnan(c).any() else [round(float(v), 2) for v in c] for c in self.centroids]}

    @classmethod
    def from_dict(cls, data: dict) -> Timeline:
        """The timeline a `report` holds (centroids rounded to 0.01 px), for drawing it."""
        centroids = np.array([[np.nan, np.nan] if c is None else c for c in data["centroids"]], float).reshape(-1, 2)
        return cls(data["word"], centroids, data["decided_at"], data["steps"], data["tolerance_px"])


def settle_step(centroids: np.ndarray, tolerance: float) -> int | None:
    """First index from which every valid centroid is within `tolerance` of the last valid one."""
    valid = ~np.isnan(centroids).any(axis=1)
    if not valid.any():
        return None
    final = centroids[np.nonzero(valid)[0][-1]]
    far = valid & (np.linalg.norm(centroids - final, axis=1) > tolerance)
    return int(np.nonzero(far)[0][-1] + 1) if far.any() else int(np.nonzero(valid)[0][0])


def timeline(word: str, per_step: np.ndarray, image_size: tuple[int, int], tau: float = DEFAULT_TAU,
             tolerance: float = 0.1) -> Timeline:
    """Centroids of per-step coarse maps (steps, th, tw), scaled to image pixels, and the settle step."""
    h, w = image_size
    steps, th, tw = per_step.shape
    centroids = np.full((steps, 2), np.nan)
    for k, frame in enumerate(per_step):
        peak = frame.max()
        if peak > 0:
            c = weighted_centroid(frame / peak, frame >= tau * peak)
            centroids[k] = (c[0] * w / tw, c[1] * h / th)
    tol = tolerance * max(h, w)
    return Timeline(word, centroids, settle_step(centroids, tol), steps, tol)


def placement_timeline(maps: HeatMaps, name: str, tau: float = DEFAULT_TAU, tolerance: float = 0.1) -> Timeline:
    """A word's or phrase's centroid at every step and the step from which its position stays put."""
    text, occurrence = word_ref(name)
    return timeline(word_map(maps, name).word, maps.timeline(text, occurrence), maps.image_size, tau, tolerance)


def timeline_picture(image: Image.Image | np.ndarray, lines: list[Timeline], tile: int = 384) -> Image.Image:
    """Each word's centroid path over the image: dots from dark (early) to bright (late), a ring at the end."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    scale = base.width / render.as_rgb(image).shape[1]
    canvas = np.asarray(base).copy()
    palette = palette_for([line.word for line in lines])
    for line, colour in zip(lines, palette):
        pts = [(int(x * scale), int(y * scale)) for x, y in line.centroids if not np.isnan(x)]
        for i in range(1, len(pts)):
            cv2.line(canvas, pts[i - 1], pts[i], colour, 1, cv2.LINE_AA)
        for i, p in enumerate(pts):
            shade = 0.35 + 0.65 * (i + 1) / len(pts)
            cv2.circle(canvas, p, 3, tuple(int(c * shade) for c in colour), -1, cv2.LINE_AA)
        if pts:
            cv2.circle(canvas, pts[-1], 7, colour, 2, cv2.LINE_AA)
    label_font = render.font(14)
    texts = [f"{line.word}: " + (f"position decided at step {line.decided_at + 1} of {line.steps}"
                                 if line.decided_at is not None else "never settled") for line in lines]
    width = max([base.width] + [int(label_font.getlength(t)) + 36 for t in texts])  # the legend is never cut
    out = Image.new("RGB", (width, base.height + 22 * len(lines) + 10), "white")
    out.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (text, colour) in enumerate(zip(texts, palette)):
        y = base.height + 6 + 22 * k + 8
        draw.rectangle([6, y - 6, 18, y + 6], fill=colour)
        render.draw_text(out, (26, y), text, label_font, anchor="lm")
    return out


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
        "prompt": maps.meta.get("prompt"),
        "image_size": list(maps.image_size),
        "method": method,
        "tau": tau,
        "words": [{**p.to_dict(), "word": name} for name, p in places.items()],
        "checks": [check(maps, s, method, tau).to_dict() for s in statements],
        "notes": notes,
        "timelines": [{**placement_timeline(maps, n, tau=tau).to_dict(), "word": n} for n in names],
    }


TABLE_HEADERS = ["object", "centroid (x, y)", "bbox x0,y0,x1,y1", "area", "region", "position decided"]


def fmt_point(p) -> str:
    return "-" if p is None else f"({p[0]:.1f}, {p[1]:.1f})"


def table_rows(data: dict) -> list[list[str]]:
    """One row per object of a `report`, as the CLI prints it and the demo shows it (`TABLE_HEADERS`)."""
    decided = {t["word"]: t for t in data["timelines"]}
    rows = []
    for row in data["words"]:
        t = decided.get(row["word"], {})
        when = f"step {t['decided_at'] + 1} of {t['steps']}" if t.get("decided_at") is not None else "-"
        bbox = "-" if row["bbox"] is None else ",".join(str(v) for v in row["bbox"])
        rows.append([row["word"], fmt_point(row["centroid"]), bbox, f"{row['area']:.1%}", row["region"], when])
    return rows


def format_report(data: dict) -> str:
    """A plain-text table of a `report`: one row per object, then one line per statement and note."""
    rows = [TABLE_HEADERS] + table_rows(data)
    widths = [max(len(r[k]) for r in rows) for k in range(len(TABLE_HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in rows]
    if data["checks"]:
        lines.append("")
        lines += [f"{'PASS' if c['passed'] else 'FAIL'}  {c['statement']}  ({c['reason']})" for c in data["checks"]]
    lines += [f"note: {n}" for n in data.get("notes", [])]
    return "\n".join(lines)
