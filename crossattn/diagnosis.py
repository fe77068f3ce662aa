"""Why did this generation go wrong? Neglected objects, leaking attributes, merged objects, broken relations.

A function over heat maps: ``crossattn.diagnose(maps)``. The objects are the prompt's noun phrases with
their attribute words (`crossattn.phrases`), or the ones the caller names ("red circle", "blue square").

Scores (all in [0, 1]; higher = more likely a failure), from the maps of a window of steps:

- **neglect** of an object: ``1 − peak(object) / max(peak of the prompt's objects)``, where peak is the
  highest mean attention probability of the object's head word on any pixel (Attend-and-Excite's signal). A
  neglected word gets a flat, weak map. Computed over the first half of the generation's steps, where the layout
  is decided (over all of an early window).
- **leakage** of an attribute word ("red" of "red circle"): the share of its attention mass (over the pixels
  the objects own: where an object's head word gets the most attention, and ≥ 0.4 × its peak) that falls on
  *other* objects' pixels.
- **merging** of two objects: IoU of their head words' masks (relative threshold, tau 0.4 of each peak).
- **misplacement**: the prompt's relations, checked as `placement.check` does.

Verdicts come from thresholds chosen on training seeds of the shapes world (``benchmarks/diagnosis_eval.py``
writes them, with a calibration table, to ``crossattn/assets/diagnosis.json``); each verdict says how often a
score that high was a real failure there (its confidence). "When": the step from which each verdict, computed
from the per-step trace, stays what it ends as.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import geometry, placement
from .errors import InputError, UnknownWordError
from .models import asset_path
from .words import ref_name, word_ref

if TYPE_CHECKING:
    from .heatmaps import HeatMaps

FAILURES = ("neglect", "leakage", "merging")


@dataclass(frozen=True)
class Calibration:
    """Thresholds per failure kind, and per kind the observed share of real failures by score range."""

    thresholds: dict[str, float]
    bins: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)  # (low, high, share true)
    source: str = "given by the caller"

    def confidence(self, kind: str, score: float) -> float | None:
        """How often a score like this one was a real failure in the validation run (None: uncalibrated)."""
        found = None
        for low, _high, share in self.bins.get(kind, []):  # ascending, contiguous: the last range starting below
            if score >= low:
                found = share
        return found

    @classmethod
    def load(cls) -> Calibration:
        """The shipped calibration, written by benchmarks/diagnosis_eval.py --write-calibration.

        A threshold of null means no threshold was right more often than not in validation: that verdict is
        never issued (its score is still reported)."""
        path = asset_path("diagnosis.json")
        data = json.loads(path.read_text())
        thresholds = {k: math.inf if v is None else v for k, v in data["thresholds"].items()}
        bins = {k: [tuple(b) for b in v] for k, v in data.get("bins", {}).items()}
        if "causal" in data:  # the causal neglect verdict (`crossattn.diagnose_causally`), calibrated on its own
            causal = data["causal"]
            thresholds["causal_neglect"] = math.inf if causal["threshold"] is None else causal["threshold"]
            bins["causal_neglect"] = [tuple(b) for b in causal["bins"]]
        return cls(thresholds, bins, data.get("source", str(path)))


@dataclass
class ObjectDiagnosis:
    """One object of the prompt: its scores, verdicts and when each verdict settled."""

    name: str  # "red circle", "cat#1"
    head: str  # the noun whose map stands for the object
    attributes: list[str]
    neglect: float
    missing: bool
    leakage: dict[str, float]  # attribute -> share of its attention on other objects
    wrong_attribute: bool
    settled: dict[str, int | None] = field(default_factory=dict)  # verdict -> step from which it held
    confidence: dict[str, float | None] = field(default_factory=dict)
    mask: np.ndarray | None = field(default=None, repr=False)
    # `crossattn.diagnose_causally`: 1 − how much ablating the object's words changed its region, relative to the
    # prompt's other objects (then `missing` is that score's verdict); None from the maps alone
    causal_neglect: float | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "head": self.head, "attributes": self.attributes,
                "neglect": round(self.neglect, 4), "missing": self.missing,
                "causal_neglect": None if self.causal_neglect is None else round(self.causal_neglect, 4),
                "leakage": {k: round(v, 4) for k, v in self.leakage.items()}, "wrong_attribute": self.wrong_attribute,
                "settled": self.settled, "confidence": self.confidence}


@dataclass
class Diagnosis:
    """The diagnosis of one image: ``d["circle"]`` (by noun or phrase), ``d.merged``, ``d.misplaced``."""

    objects: list[ObjectDiagnosis]
    merged: list[tuple[str, str]]
    merging: dict[tuple[str, str], float]  # pair -> IoU of their masks
    merging_confidence: dict[tuple[str, str], float | None]  # pair -> share of real merges at that IoU
    misplaced: list[str]  # relations that fail
    checks: list[dict]
    steps: int
    window: list[int]  # the steps the scores come from
    calibration: str
    thresholds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> ObjectDiagnosis:
        wanted = name.lower().strip()
        for o in self.objects:
            if wanted in (o.name.lower(), o.head.lower()):
                return o
        raise UnknownWordError(f"{name!r} is not an object of this diagnosis; its objects are: "
                               f"{', '.join(repr(o.name) for o in self.objects) or '(none)'}")

    @property
    def failed(self) -> bool:
        """Did any verdict find a failure?"""
        return bool(self.merged or self.misplaced or any(o.missing or o.wrong_attribute for o in self.objects))

    def verdicts(self) -> list[str]:
        """Plain-language verdict lines, failures first."""
        lines = []
        for o in self.objects:
            if o.missing and o.causal_neglect is not None:  # the verdict of the causal check
                lines.append(f"'{o.name}' was probably neglected: removing its attention barely changed its region "
                             f"(causal neglect {o.causal_neglect:.2f}{_conf(o.confidence.get('neglect'))})")
            elif o.missing:
                lines.append(f"'{o.name}' was probably neglected (neglect {o.neglect:.2f}"
                             f"{_conf(o.confidence.get('neglect'))}){_when(o, 'missing')}")
            for attribute, share in o.leakage.items():
                if share >= self.thresholds["leakage"]:
                    lines.append(f"'{attribute}' leaks onto other objects ({share:.0%} of its attention"
                                 f"{_conf(o.confidence.get('leakage'))}){_when(o, 'wrong_attribute')}")
        for a, b in self.merged:
            lines.append(f"'{a}' and '{b}' share one region (IoU {self.merging[(a, b)]:.2f}"
                         f"{_conf(self.merging_confidence.get((a, b)))})")
        lines += [f"relation fails: {s}" for s in self.misplaced]
        if not lines:
            lines.append("no failure found: every object was attended, attributes stayed on their objects, "
                         "relations hold")
        return lines

    def to_dict(self) -> dict:
        return {"failed": self.failed, "objects": [o.to_dict() for o in self.objects],
                "merged": [list(p) for p in self.merged],
                "merging": [{"objects": list(p), "iou": round(v, 4), "confidence": self.merging_confidence.get(p)}
                            for p, v in self.merging.items()],
                "misplaced": self.misplaced, "checks": self.checks, "steps": self.steps, "window": self.window,
                "calibration": self.calibration, "verdicts": self.verdicts(),
                "thresholds": {k: None if math.isinf(v) else v for k, v in self.thresholds.items()},
                "notes": self.notes}


def _conf(share: float | None) -> str:
    return "" if share is None else f"; {share:.0%} of such cases were real failures in validation"


def _when(o: ObjectDiagnosis, verdict: str) -> str:
    step = o.settled.get(verdict)
    return "" if step is None else f", decided at step {step + 1}"


# ---- scores ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """An object to diagnose: its display name, head word (with occurrence) and attribute words."""

    name: str
    head: str
    occurrence: int
    attributes: tuple[str, ...]


def subjects(maps: HeatMaps, objects: list[str] | None = None) -> tuple[list[Subject], list[str]]:
    """The objects to diagnose, from the prompt's noun phrases (or the given phrases), and notes."""
    notes: list[str] = []
    found = []
    if objects is None:
        found_phrases, notes = placement.prompt_objects(maps)
        candidates = [(ref_name(p.text, p.occurrence), p.head, p.attributes) for p in found_phrases]
    else:
        candidates = []
        for text in objects:
            words = text.lower().split()
            if not words:
                raise InputError("an object to diagnose is empty")
            candidates.append((text, words[-1], tuple(words[:-1])))
    for name, head, attributes in candidates:
        text, occurrence = word_ref(name)
        maps.word(text, occurrence)  # a phrase the caller named must be in the prompt (the prompt's ones are)
        head_occurrence = sum(1 for s in found if s.head == head)
        found.append(Subject(name, head, head_occurrence, tuple(attributes)))
    return found, notes


def _maps_of(maps: HeatMaps, subject: Subject) -> np.ndarray:
    return maps.word(subject.head, subject.occurrence).raw


def neglect_scores(maps: HeatMaps, subs: list[Subject]) -> list[float]:
    peaks = [float(_maps_of(maps, s).max()) for s in subs]
    top = max(peaks, default=0.0)
    return [1.0 - p / top if top > 0 else 1.0 for p in peaks]


def regions(maps: HeatMaps, subs: list[Subject], tau: float = geometry.DEFAULT_TAU) -> list[np.ndarray]:
    """Each object's own pixels: where its head word gets more attention than any other object's head word,
    and at least `tau` × its own peak (raw probabilities: a weak, flat map owns little)."""
    raws = np.stack([_maps_of(maps, s) for s in subs])
    owner = raws.argmax(0)
    return [(owner == k) & (raws[k] >= tau * raws[k].max()) & (raws[k] > 0) for k in range(len(subs))]


def leakage_scores(maps: HeatMaps, subs: list[Subject], owned: list[np.ndarray]) -> list[dict[str, float]]:
    out = []
    anyone = np.logical_or.reduce(owned) if owned else None
    for k, s in enumerate(subs):
        scores = {}
        for attribute in s.attributes:
            try:
                raw = maps.word(attribute, _occurrence_before(maps, attribute, s)).raw
            except UnknownWordError:
                continue
            total = float(raw[anyone].sum())
            scores[attribute] = float(raw[anyone & ~owned[k]].sum()) / total if total > 0 else 0.0
        out.append(scores)
    return out


def _occurrence_before(maps: HeatMaps, attribute: str, subject: Subject) -> int:
    """Which repeat of an attribute word belongs to this object: the last one before the object's head."""
    words = [w.text.lower() for w in maps.data.words]
    heads = [i for i, w in enumerate(words) if w == subject.head.lower()]
    head_at = heads[subject.occurrence] if subject.occurrence < len(heads) else len(words)
    before = [i for i in range(head_at) if words[i] == attribute.lower()]
    return max(0, len(before) - 1)


def merging_scores(maps: HeatMaps, subs: list[Subject]) -> dict[tuple[str, str], float]:
    masks = [geometry.place(s.name, maps.word(s.head, s.occurrence).array).mask for s in subs]
    out = {}
    for i in range(len(subs)):
        for j in range(i + 1, len(subs)):
            union = np.logical_or(masks[i], masks[j]).sum()
            out[(subs[i].name, subs[j].name)] = float(np.logical_and(masks[i], masks[j]).sum() / union) if union else 0.
    return out


def diagnose(maps: HeatMaps, objects: list[str] | None = None, steps: slice | list[int] | None = None,
             calibration: Calibration | None = None) -> Diagnosis:
    """Diagnose one image's maps (optionally from a window of its steps: the early verdict).

        >>> import crossattn
        >>> from crossattn.generation import generate
        >>> image, maps = generate(crossattn.load_pipeline(), "a red circle left of a blue square", seed=0)
        >>> d = crossattn.diagnose(maps)
        >>> [o.name for o in d.objects], d["circle"].missing
        (['red circle', 'blue square'], False)
    """
    calibration = calibration or Calibration.load()
    subs, notes = subjects(maps, objects)
    window = maps if steps is None else maps.filter(steps=steps)
    n_steps = len(maps.data.step_counts)
    # neglect looks at the first half of the generation, where the layout is decided (all of an early window)
    total = maps.info.steps or n_steps
    layout = window.filter(steps=[s for s in window.steps if s < max(1, total // 2)] or window.steps[:1])
    neglect = neglect_scores(layout, subs)
    owned = regions(window, subs) if subs else []
    leakage = leakage_scores(window, subs, owned)
    merging = merging_scores(window, subs)
    th = calibration.thresholds
    statements, relation_notes = placement.prompt_relations(maps) if objects is None else ([], [])
    checks = [placement.check(window, s).to_dict() for s in statements]
    result = []
    for k, s in enumerate(subs):
        o = ObjectDiagnosis(s.name, s.head, list(s.attributes), neglect[k], neglect[k] >= th["neglect"], leakage[k],
                            any(v >= th["leakage"] for v in leakage[k].values()), mask=owned[k])
        o.confidence = {"neglect": calibration.confidence("neglect", neglect[k]),
                        "leakage": calibration.confidence("leakage", max(leakage[k].values(), default=0.0))}
        result.append(o)
    if steps is None and subs and maps.data.step_sums is not None:
        _settle(maps, subs, result, th)
    return Diagnosis(
        objects=result,
        merged=[pair for pair, iou in merging.items() if iou >= th["merging"]],
        merging=merging,
        merging_confidence={pair: calibration.confidence("merging", iou) for pair, iou in merging.items()},
        misplaced=[c["statement"] for c in checks if not c["passed"]],
        checks=checks,
        steps=n_steps,
        window=window.steps,
        calibration=calibration.source,
        thresholds=dict(th),
        notes=notes + relation_notes + [
            f"no {kind} verdict: no {kind} threshold was right more often than not in validation; scores only"
            for kind in FAILURES if math.isinf(th[kind])],
    )


def _settle(maps: HeatMaps, subs: list[Subject], result: list[ObjectDiagnosis], th: dict) -> None:
    """For each object, the step from which its missing / wrong-attribute verdicts (from the per-step trace)
    stay what they finally are."""
    frames = {}
    for s in subs:
        frames[s.name] = maps.over_steps(s.head, s.occurrence)
    steps = len(maps.data.step_counts)
    peaks = np.stack([frames[s.name].reshape(steps, -1).max(-1) for s in subs])  # (objects, steps)
    top = peaks.max(0)
    missing = (1 - peaks / np.where(top > 0, top, 1)) >= th["neglect"]
    for k, o in enumerate(result):
        o.settled["missing"] = geometry.settle_step(missing[k][:, None].astype(float), 0.5)
    for k, (s, o) in enumerate(zip(subs, result)):
        if not o.leakage:
            continue
        owner = np.stack([frames[x.name] for x in subs]).argmax(0)  # (steps, th, tw)
        verdicts = []
        for step in range(steps):
            shares = []
            for attribute in o.leakage:
                series = maps.over_steps(attribute, _occurrence_before(maps, attribute, s))[step]
                total = series.sum()
                shares.append(series[owner[step] != k].sum() / total if total > 0 else 0.0)
            verdicts.append(max(shares) >= th["leakage"])
        o.settled["wrong_attribute"] = geometry.settle_step(np.array(verdicts, float)[:, None], 0.5)


# ---- early verdict ---------------------------------------------------------------------------------------
class StoppedEarly(Exception):
    """Raised by an `early_stop` callback to abort a generation whose early diagnosis says it is doomed."""

    def __init__(self, step: int, diagnosis: Diagnosis):
        super().__init__(f"stopped after step {step}: " + "; ".join(diagnosis.verdicts()))
        self.step, self.diagnosis = step, diagnosis


def early_stop(trace, at: int, when=lambda d: d.failed, objects: list[str] | None = None):
    """A `callback_on_step_end` for diffusers pipelines: after step `at` (1-based), diagnose the steps so far
    and raise `StoppedEarly` if `when(diagnosis)` holds — e.g. to skip doomed seeds in a seed search.

        >>> import torch, crossattn
        >>> from crossattn.diagnosis import StoppedEarly, early_stop
        >>> pipe = crossattn.load_pipeline()
        >>> with crossattn.trace(pipe) as tr:
        ...     try:
        ...         image = pipe("a red circle left of a blue square", generator=torch.Generator().manual_seed(0),
        ...                      callback_on_step_end=early_stop(tr, at=5)).images[0]
        ...         outcome = "finished"
        ...     except StoppedEarly as stop:
        ...         outcome = f"stopped after step {stop.step}: {stop.diagnosis.verdicts()}"
        >>> outcome
        'finished'
    """
    if at < 1:
        raise InputError(f"early_stop: 'at' is a step number from 1, got {at}")

    def callback(pipeline, i, t, kwargs):
        if i + 1 == at:
            d = diagnose(trace.heat_maps(), objects, steps=slice(0, at))
            if when(d):
                raise StoppedEarly(at, d)
        return kwargs

    return callback
