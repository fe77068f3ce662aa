"""Where did each word land, when was that decided, and does it match the intended layout?

Works on plain arrays (a word's normalised map, (H, W) in [0, 1]); `HeatMaps.placement`, `.check`,
`.segmentation` and `.placement_timeline` call in here.

- Mask: ``method="relative"`` keeps pixels ≥ ``tau`` × the word's peak (DAAM's choice, tau = 0.4);
  ``method="otsu"`` picks the threshold that best splits the map's histogram in two.
- Centroid: the heat-weighted mean (x, y) over the mask, in image pixels; bbox (x0, y0, x1, y1) with x1, y1
  exclusive; area: mask share of the image; region: the centroid's cell in a 3×3 grid
  (left/centre/right × top/middle/bottom, e.g. "top-left", "left", "centre").
- Relations (``"circle left_of square"``): compare centroids; pass when the difference along the axis
  exceeds ``margin`` × the image side (default 0.05). Boxes (``"circle in 0,0,0.5,1"``, normalised
  x0,y0,x1,y1): pass when IoU(mask, box) ≥ ``min_iou`` (default 0.3).
- Timeline: the centroid at every step of the coarse trace; "decided at step k" is the first step from
  which the centroid stays within ``tolerance`` × the image side (default 0.1) of its final position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw

from . import render

RELATIONS = ("left_of", "right_of", "above", "below")
SIDES = ("left", "right", "top", "bottom")
# Words that name no object: left out of the default segmentation and of phrases parsed from prompts.
STOP_WORDS = frozenset(
    "a an the of and or with in on at to is are left right above below under over top bottom beside next "
    "near small large big tiny huge middle center centre side".split()
)
# Relation phrases as they appear in prompts (longest first), with the relation they state.
_PROMPT_RELATIONS = [
    (("to", "the", "left", "of"), "left_of"), (("to", "the", "right", "of"), "right_of"),
    (("on", "top", "of"), "above"), (("left", "of"), "left_of"), (("right", "of"), "right_of"),
    (("above",), "above"), (("over",), "above"), (("below",), "below"), (("under",), "below"),
    (("beneath",), "below"),
]
_PROMPT_SIDES = [(("on", "the", "left"), "left"), (("on", "the", "right"), "right"), (("at", "the", "top"), "top"),
                 (("at", "the", "bottom"), "bottom")]


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


def threshold_of(array: np.ndarray, method: str = "relative", tau: float = 0.4) -> float:
    """The cut-off above which a pixel belongs to the word (array normalised to [0, 1])."""
    if method == "relative":
        if not 0 < tau < 1:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
        return float(tau * array.max())
    if method == "otsu":
        level, _ = cv2.threshold((array * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return float(level) / 255
    raise ValueError(f"unknown threshold method {method!r}; use 'relative' or 'otsu'")


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


def place(word: str, array: np.ndarray, method: str = "relative", tau: float = 0.4) -> Placement:
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


def segment(arrays: list[np.ndarray], background: float = 0.3) -> np.ndarray:
    """Argmax over words of their normalised maps; 0 = background (no word ≥ `background`), k = word k-1."""
    stack = np.stack(arrays)
    labels = stack.argmax(0) + 1
    labels[stack.max(0) < background] = 0
    return labels


PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (245, 130, 48),
           (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128)]


def segmentation_picture(image: Image.Image | np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.55,
                         tile: int = 384) -> Image.Image:
    """Labels coloured over the image (background left as is) with a legend underneath."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    big = cv2.resize(labels.astype(np.uint8), base.size, interpolation=cv2.INTER_NEAREST)
    colours = np.array([(0, 0, 0)] + [PALETTE[k % len(PALETTE)] for k in range(len(names))], np.float32)
    pixels = np.asarray(base).astype(np.float32)
    painted = np.where(big[..., None] > 0, (1 - alpha) * pixels + alpha * colours[big], pixels)
    row_h = max(18, tile // 16)
    out = Image.new("RGB", (base.width, base.height + row_h * (len(names) + 1)), "white")
    out.paste(Image.fromarray(painted.round().astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(out)
    label_font = render.font(int(row_h * 0.7))
    for k, name in enumerate(["background"] + names):
        y = base.height + k * row_h + row_h // 2
        colour = (255, 255, 255) if k == 0 else PALETTE[(k - 1) % len(PALETTE)]
        draw.rectangle([6, y - row_h // 3, 6 + row_h // 1.5, y + row_h // 3], fill=colour, outline="black")
        share = float((labels == k).mean())
        draw.text((12 + row_h, y), f"{name}  {share:.0%}", fill="black", font=label_font, anchor="lm")
    return out


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


def parse_statement(statement: str) -> tuple[str, str, str | tuple[float, ...]]:
    """'circle left_of square' -> ('circle', 'left_of', 'square'); 'sun in 0,0,1,0.5' -> ('sun', 'in', box);
    'circle on the left' -> ('circle', 'side', 'left')."""
    text = " ".join(statement.strip().split())
    if m := _BOX.match(text):
        box = tuple(float(v) for v in m.groups()[1:])
        if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ValueError(f"bad box in {statement!r}: need 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return m.group(1), "in", box
    normal = re.sub(r"\b(left|right) of\b", r"\1_of", text.lower())
    for rel in RELATIONS:
        parts = re.split(rf"\s+{rel}\s+", normal)
        if len(parts) == 2 and all(parts):
            return parts[0], rel, parts[1]
    for words, side in _PROMPT_SIDES:
        suffix = " " + " ".join(words)
        if normal.endswith(suffix) and normal[: -len(suffix)]:
            return normal[: -len(suffix)], "side", side
    raise ValueError(
        f"cannot read {statement!r}: write 'X left_of Y' (also right_of, above, below), 'X on the left' "
        "(right, top, bottom) or 'X in x0,y0,x1,y1' with a normalised box"
    )


def box_iou(mask: np.ndarray, box: tuple[float, ...]) -> float:
    h, w = mask.shape
    target = np.zeros_like(mask, dtype=bool)
    target[round(box[1] * h) : round(box[3] * h), round(box[0] * w) : round(box[2] * w)] = True
    union = np.logical_or(mask, target).sum()
    return float(np.logical_and(mask, target).sum() / union) if union else 0.0


def judge(statement: str, placements: dict[str, Placement], size: tuple[int, int], margin: float = 0.05,
          min_iou: float = 0.3) -> CheckResult:
    """Verdict on one parsed statement given the placements of the words it names."""
    subject, relation, obj = parse_statement(statement)
    h, w = size
    a = placements[subject]
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
    b = placements[obj]
    if b.centroid is None:
        return CheckResult(statement, False, {obj: None}, f"{obj!r} has no attention anywhere")
    bx, by = b.centroid
    delta = {"left_of": bx - ax, "right_of": ax - bx, "above": by - ay, "below": ay - by}[relation]
    side = w if relation in ("left_of", "right_of") else h
    passed = delta > margin * side
    axis = "x" if relation in ("left_of", "right_of") else "y"
    return CheckResult(
        statement, passed, {subject: a.centroid, obj: b.centroid, f"d{axis}": round(delta, 2)},
        f"{subject} {axis}={ax if axis == 'x' else ay:.1f}, {obj} {axis}={bx if axis == 'x' else by:.1f}",
    )


def _phrase(words: list[str]) -> list[str]:
    return [w for w in words if w not in ("a", "an", "the")]


def relations_in_prompt(words: list[str]) -> list[str]:
    """Statements a prompt makes, e.g. ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square'] ->
    ['red circle left_of blue square']. Phrases are the words between boundaries minus articles."""
    lower = [w.lower() for w in words]
    found, i, last_end = [], 0, 0
    boundaries = {"and", ","}
    while i < len(lower):
        for pattern, rel in _PROMPT_RELATIONS + _PROMPT_SIDES:
            n = len(pattern)
            if tuple(lower[i : i + n]) != pattern:
                continue
            left = _phrase(lower[last_end:i])
            if rel in SIDES:
                if left:
                    found.append(f"{' '.join(left)} on the {rel}" if rel in ("left", "right") else
                                 f"{' '.join(left)} at the {rel}")
            else:
                j = i + n
                while j < len(lower) and lower[j] not in boundaries and not _starts_relation(lower, j):
                    j += 1
                right = _phrase(lower[i + n : j])
                if left and right:
                    found.append(f"{' '.join(left)} {rel} {' '.join(right)}")
            last_end = i + n
            i += n - 1
            break
        else:
            if lower[i] in boundaries:
                last_end = i + 1
        i += 1
    return found


def _starts_relation(words: list[str], i: int) -> bool:
    return any(tuple(words[i : i + len(p)]) == p for p, _ in _PROMPT_RELATIONS + _PROMPT_SIDES)


# ---- timeline -------------------------------------------------------------------------------------------
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


def settle_step(centroids: np.ndarray, tolerance: float) -> int | None:
    """First index from which every valid centroid is within `tolerance` of the last valid one."""
    valid = ~np.isnan(centroids).any(axis=1)
    if not valid.any():
        return None
    final = centroids[np.nonzero(valid)[0][-1]]
    far = valid & (np.linalg.norm(centroids - final, axis=1) > tolerance)
    return int(np.nonzero(far)[0][-1] + 1) if far.any() else int(np.nonzero(valid)[0][0])


def timeline(word: str, per_step: np.ndarray, image_size: tuple[int, int], tau: float = 0.4,
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


def timeline_picture(image: Image.Image | np.ndarray, lines: list[Timeline], tile: int = 384) -> Image.Image:
    """Each word's centroid path over the image: dots from dark (early) to bright (late), a ring at the end."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    scale = base.width / render.as_rgb(image).shape[1]
    canvas = np.asarray(base).copy()
    for k, line in enumerate(lines):
        colour = PALETTE[k % len(PALETTE)]
        pts = [(int(x * scale), int(y * scale)) for x, y in line.centroids if not np.isnan(x)]
        for i in range(1, len(pts)):
            cv2.line(canvas, pts[i - 1], pts[i], colour, 1, cv2.LINE_AA)
        for i, p in enumerate(pts):
            shade = 0.35 + 0.65 * (i + 1) / len(pts)
            cv2.circle(canvas, p, 3, tuple(int(c * shade) for c in colour), -1, cv2.LINE_AA)
        if pts:
            cv2.circle(canvas, pts[-1], 7, colour, 2, cv2.LINE_AA)
    out = Image.new("RGB", (base.width, base.height + 22 * len(lines) + 6), "white")
    out.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(out)
    label_font = render.font(14)
    for k, line in enumerate(lines):
        y = base.height + 6 + 22 * k + 8
        draw.rectangle([6, y - 6, 18, y + 6], fill=PALETTE[k % len(PALETTE)])
        when = f"position decided at step {line.decided_at} of {line.steps}" if line.decided_at is not None \
            else "never settled"
        draw.text((26, y), f"{line.word}: {when}", fill="black", font=label_font, anchor="lm")
    return out


# ---- reports --------------------------------------------------------------------------------------------
def report(maps, statements: list[str] | None = None, from_prompt: bool = False, method: str = "relative",
           tau: float = 0.4) -> dict:
    """Everything about placement for one image's `HeatMaps`, as plain JSON-ready data.

    Covers the object words (see `HeatMaps.object_words`), the given statements and, with `from_prompt`
    (or when no statement is given), the relations parsed from the prompt.
    """
    statements = list(statements or [])
    if from_prompt or not statements:
        statements += [s for s in maps.relations_from_prompt() if s not in statements]
    words = maps.object_words()
    places = maps.placement(words, method, tau)
    return {
        "prompt": maps.meta.get("prompt"),
        "image_size": list(maps.image_size),
        "method": method,
        "tau": tau,
        "words": [p.to_dict() for p in places.values()],
        "checks": [maps.check(s, method, tau).to_dict() for s in statements],
        "timelines": [maps.placement_timeline(w, tau=tau).to_dict() for w in words],
    }


def fmt_point(p) -> str:
    return "-" if p is None else f"({p[0]:.1f}, {p[1]:.1f})"


def format_report(data: dict) -> str:
    """A plain-text table of a `report`: one row per word, one per statement."""
    lines = [f"{'word':<14} {'centroid (x, y)':<18} {'bbox x0,y0,x1,y1':<20} {'area':>6}  {'region':<13} decided"]
    decided = {t["word"]: t for t in data["timelines"]}
    for row in data["words"]:
        bbox = "-" if row["bbox"] is None else ",".join(str(v) for v in row["bbox"])
        t = decided.get(row["word"], {})
        when = f"step {t['decided_at']}/{t['steps']}" if t.get("decided_at") is not None else "-"
        lines.append(f"{row['word']:<14} {fmt_point(row['centroid']):<18} {bbox:<20} {row['area']:>6.1%}  "
                     f"{row['region']:<13} {when}")
    if data["checks"]:
        lines.append("")
        for c in data["checks"]:
            lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['statement']}  ({c['reason']})")
    return "\n".join(lines)
