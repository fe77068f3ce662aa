"""Geometry of one map: its mask, centroid, box and region, how two points relate, and a centroid's track.

Plain arrays in, plain numbers out: no heat maps, no pipeline. `crossattn.placement` applies these to a word's
map; the shapes world and its evaluation use `relation_gap` as their one relation test.

- Mask: ``method="relative"`` keeps pixels ≥ ``tau`` × the map's peak (DAAM's choice, tau = 0.4);
  ``method="otsu"`` picks the threshold that best splits the map's histogram in two.
- Centroid: the heat-weighted mean (x, y) over the mask, in image pixels; bbox (x0, y0, x1, y1) with x1, y1
  exclusive; area: mask share of the image; region: the centroid's cell in a 3×3 grid
  (left/centre/right × top/middle/bottom, e.g. "top-left", "left", "centre").
- Track: the centroid at every step of the per-step maps; "decided at step k" is the first step from which
  the centroid stays within ``tolerance`` × the image side (default 0.1) of its final position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import InputError

DEFAULT_TAU = 0.4


RELATIONS = ("left_of", "right_of", "above", "below")




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


def box_iou(mask: np.ndarray, box: tuple[float, ...]) -> float:
    h, w = mask.shape
    target = np.zeros_like(mask, dtype=bool)
    target[round(box[1] * h) : round(box[3] * h), round(box[0] * w) : round(box[2] * w)] = True
    union = np.logical_or(mask, target).sum()
    return float(np.logical_and(mask, target).sum() / union) if union else 0.0


def segment(arrays: list[np.ndarray], background: float = 0.3) -> np.ndarray:
    """Argmax over words of their normalised maps; 0 = background (no word ≥ `background`), k = word k-1."""
    stack = np.stack(arrays)
    labels = stack.argmax(0) + 1
    labels[stack.max(0) < background] = 0
    return labels


# ---- timeline ---------------------------------------------------------------------------------------------
@dataclass
class Track:
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
    def from_dict(cls, data: dict) -> Track:
        """The track a placement `report` holds (centroids rounded to 0.01 px), for drawing it."""
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


def track_of(word: str, per_step: np.ndarray, image_size: tuple[int, int], tau: float = DEFAULT_TAU,
             tolerance: float = 0.1) -> Track:
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
    return Track(word, centroids, settle_step(centroids, tol), steps, tol)
