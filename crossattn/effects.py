"""What an intervention changed, as data: the counterfactual images, where each changed, how that agrees with the
word's attention map, and a repair's before and after. `crossattn.causal` runs the generations that fill these;
`crossattn.pictures` draws them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .diagnosis import Diagnosis
from .errors import InputError
from .heatmaps import HeatMaps


@dataclass
class Effect:
    """What taking one word away did: the counterfactual image, where it changed, and how that agrees with the
    word's attention map."""

    word: str
    image: Image.Image
    change: np.ndarray  # float32 (H, W) in [0, 1]: mean absolute RGB change per pixel
    agreement: float | None  # Pearson r of the word's attention map (plain generation) and `change`; None if flat
    # or not a word
    prompt: str  # the counterfactual's prompt (the word deleted, for how="prompt")

    def to_dict(self) -> dict:
        return {"word": self.word, "prompt": self.prompt, "mean_change": round(float(self.change.mean()), 5),
                "max_change": round(float(self.change.max()), 5),
                "agreement": None if self.agreement is None else round(self.agreement, 4)}


@dataclass
class Effects:
    """The plain generation and one counterfactual per word: ``eff["blue circle"].change``."""

    prompt: str
    how: str
    scale: float
    steps: tuple[int, int | None]
    seed: int
    image: Image.Image
    maps: HeatMaps
    words: dict[str, Effect] = field(default_factory=dict)

    def __getitem__(self, word: str) -> Effect:
        if word not in self.words:
            raise InputError(f"no effect was measured for {word!r}; these were: {', '.join(map(repr, self.words))}")
        return self.words[word]

    def __iter__(self):
        return iter(self.words.values())

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "how": self.how, "scale": self.scale, "steps": list(self.steps),
                "seed": self.seed, "effects": [e.to_dict() for e in self.words.values()]}


def change_map(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Per pixel, the mean absolute change of the RGB values, in [0, 1]."""
    a = np.asarray(before.convert("RGB"), dtype=np.float32)
    b = np.asarray(after.convert("RGB"), dtype=np.float32)
    return (np.abs(a - b).mean(-1) / 255.0).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two maps of one size; None when either is constant (r is undefined)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else None


@dataclass
class Repair:
    """A generation, its diagnosis, and — where objects were neglected — the regeneration with their words'
    attention boosted. ``after`` reads the repaired generation's steps after the boost (unbiased attention)."""

    prompt: str
    image_before: Image.Image
    image: Image.Image
    before: Diagnosis
    after: Diagnosis
    boosted: dict[str, float]
    steps: tuple[int, int]
    maps_before: HeatMaps
    maps: HeatMaps

    @property
    def recovered(self) -> list[str]:
        """Objects neglected before and not after."""
        return [name for name in self.boosted if not self.after[name].missing]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "boosted": self.boosted, "steps": list(self.steps),
                "recovered": self.recovered, "before": self.before.verdicts(), "after": self.after.verdicts()}
