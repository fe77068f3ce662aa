"""Small helpers of many tests: a seeded generator, and hand-made heat maps (no pipeline).

The tiny pipelines of every family are in `tests.families`.
"""

from __future__ import annotations

import numpy as np
import torch

from crossattn.capture import Site
from crossattn.heatmaps import HeatMaps, MapData, MapInfo
from crossattn.words import Word


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blob(h: int, w: int, cx: float, cy: float, r: float = 4.0) -> np.ndarray:
    """A Gaussian blob centred at (cx, cy) in pixel coordinates."""
    ys, xs = np.indices((h, w)) + 0.5
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r)).astype(np.float32)


def toy_maps(words: list[str], token_maps: list[np.ndarray], steps: int = 4, prompt: str | None = None) -> HeatMaps:
    """A HeatMaps whose token i+1 has map token_maps[i] (one site, one bin, constant over steps)."""
    h, w = token_maps[0].shape
    t = torch.zeros(1, 1, h, w, len(words) + 2)
    for i, m in enumerate(token_maps):
        t[0, 0, :, :, i + 1] = torch.from_numpy(np.asarray(m, np.float32))
    trace = t[0, 0][None].repeat(steps, 1, 1, 1)
    data = MapData(
        sums={"up.16x16": t}, counts={"up.16x16": np.array([1])}, sites={"up.16x16": Site("up.16x16", "up", (h, w))},
        bin_steps=[list(range(steps))], step_sums=trace, step_counts=np.ones(steps, dtype=np.int64),
        words=[Word(x, (i + 1,), words[:i].count(x)) for i, x in enumerate(words)],
    )
    return HeatMaps(data=data, tokens=["<start>"] + words + ["<end>"], image_size=(4 * h, 4 * w),
                    info=MapInfo(prompt=prompt or " ".join(words)))
