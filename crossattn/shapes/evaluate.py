"""Score a shapes-world pipeline: are the named objects drawn, and do the heat maps find them?

On N held-out prompts (scenes from seeds the trainer never draws: see `world`'s seed ranges), each
generated with a fixed seed:

1. fidelity — segment the generated image by nearest palette colour; for each named (colour, shape):
   (a) is that colour present, (b) is the largest blob of it the named shape (fill ratio of its bounding
   box: triangle ≈ 0.5, circle ≈ 0.79, square ≈ 1), (c) for two-object prompts, is the relation obeyed
   (centroids of the two blobs);
2. heat maps — IoU between each object's blob and the thresholded map (relative threshold, tau 0.4) of its
   colour word, its shape word and both merged; the same for two baselines: a centred Gaussian blob and a
   uniform map;
3. placement — for two-object prompts, does the attention verdict ("X left_of Y" from the maps'
   centroids) agree with the verdict from the pixels?

    crossattn eval-shapes --n 100 --json benchmarks/results/shapes_eval.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import placement
from ..generation import generate
from ..geometry import DEFAULT_TAU, relation_gap
from .world import BACKGROUND, COLOURS, HELD_OUT_SEED, SHAPES, parse_caption, sample_scene

FILL_PROTOTYPES = {"triangle": 0.5, "circle": np.pi / 4, "square": 1.0}
DRAWN_SHARE = 0.004  # a named colour counts as drawn when its largest blob covers this share of the image


def colour_masks(image: np.ndarray, max_distance: float = 90.0) -> dict[str, np.ndarray]:
    """Per palette colour, the pixels nearest to it and within `max_distance` in RGB (specks are left to
    `largest_blob`, which keeps only an object's main connected component)."""
    palette = np.array([BACKGROUND] + list(COLOURS.values()), np.float32)
    dist = np.linalg.norm(image[..., None, :].astype(np.float32) - palette, axis=-1)
    nearest = np.where(dist.min(-1) <= max_distance, dist.argmin(-1), 0)
    return {name: nearest == k + 1 for k, name in enumerate(COLOURS)}


def largest_blob(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    return labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def drawn(blob: np.ndarray) -> bool:
    """Is this blob (from `largest_blob`) big enough to count as a drawn object?"""
    return bool(blob.sum() >= DRAWN_SHARE * blob.size)


def classify_shape(blob: np.ndarray) -> str | None:
    """Nearest shape prototype by fill ratio (blob area / bounding-box area)."""
    ys, xs = np.nonzero(blob)
    if len(xs) < 4:
        return None
    fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    return min(FILL_PROTOTYPES, key=lambda s: abs(FILL_PROTOTYPES[s] - fill))


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def gaussian_baseline(size: int) -> np.ndarray:
    ys, xs = np.indices((size, size)) + 0.5
    sigma = size / 4
    return np.exp(-((xs - size / 2) ** 2 + (ys - size / 2) ** 2) / (2 * sigma**2))


@dataclass
class PixelTruth:
    """What a shapes-world image shows of its caption, read from the pixels alone."""

    pairs: list[tuple[str, str]]  # the caption's (colour, shape) objects
    blobs: dict[tuple[str, str], np.ndarray]  # the drawn ones (`drawn`): their colour's largest blob
    relation: str | None = None  # "red circle left_of blue square", when both are drawn in distinct colours
    relation_holds: bool | None = None  # the blobs' centroids obey it

    @property
    def on_objects(self) -> np.ndarray:
        """The pixels of every drawn object."""
        return np.logical_or.reduce(list(self.blobs.values()))


def read_pixels(image, prompt: str) -> PixelTruth | None:
    """The pixel truth of an image of a shapes-world caption, or None when `prompt` names no (colour, shape)."""
    pairs, relation = parse_caption(prompt)
    if not pairs:
        return None
    masks = colour_masks(np.asarray(image.convert("RGB")))
    blobs = {pair: blob for pair in pairs if drawn(blob := largest_blob(masks[pair[0]]))}
    truth = PixelTruth(pairs, blobs)
    if relation and len(pairs) == 2 and pairs[0][0] != pairs[1][0] and len(blobs) == 2:
        (ca, sa), (cb, sb) = pairs
        truth.relation = f"{ca} {sa} {relation} {cb} {sb}"
        truth.relation_holds = relation_gap(centroid(blobs[pairs[0]]), centroid(blobs[pairs[1]]), relation) > 0
    return truth


@dataclass
class Counts:
    n: int = 0
    hit: int = 0

    def add(self, ok: bool) -> None:
        self.n += 1
        self.hit += bool(ok)

    @property
    def rate(self) -> float | None:
        return self.hit / self.n if self.n else None


def held_out_scenes(n: int, two_object_share: float = 0.6) -> list:
    """n held-out scenes (seeds training never draws): about `two_object_share` of them with two objects and a
    relation, the rest with one or three."""
    n_two = round(n * two_object_share)
    scenes, seed = [], HELD_OUT_SEED
    while len(scenes) < n:
        want = 2 if len(scenes) < n_two else None
        scene = sample_scene(seed, n_objects=want)
        seed += 1
        if want is None and len(scene.objects) == 2:
            continue
        scenes.append(scene)
    return scenes


def held_out_prompts(n: int, two_object_share: float = 0.6) -> list[str]:
    """The captions of `held_out_scenes`."""
    return [scene.caption for scene in held_out_scenes(n, two_object_share)]


# With concepts=True every image also follows these concepts (crossattn.concepts): the world's whole vocabulary.
CONCEPTS = [*COLOURS, *SHAPES, "background"]


def evaluate(pipe, n: int = 100, steps: int = 20, guidance: float = 5.0, tau: float = DEFAULT_TAU,
             show: int = 0, concepts: bool = False, concept_method: str | None = None) -> tuple[dict, list]:
    """Run the evaluation: a JSON-ready dict of scores, and the first `show` (image, maps, prompt) triples.

    With `concepts`, also the concept maps' IoU (the same words, located as concepts) and the absent-concept
    control: for a shape the prompt does not name, its concept map's mean share on the drawn objects' pixels,
    next to the named shapes' share on their own objects; `concept_method` as in `crossattn.trace`.
    """
    colour_ok, shape_ok, relation_ok, agree, attention_relation_ok = Counts(), Counts(), Counts(), Counts(), Counts()
    ious: dict[str, list[float]] = {"colour word": [], "shape word": [], "colour+shape": [], "gaussian": [],
                                    "uniform": []}
    concept_ious: dict[str, list[float]] = {"colour word": [], "shape word": [], "colour+shape": []}
    shares: dict[str, list[float]] = {"named shape on its object": [], "absent shape on the objects": []}
    examples = []
    for k, prompt in enumerate(tqdm(held_out_prompts(n), desc="eval-shapes", unit="prompt")):
        image, maps = generate(pipe, prompt, seed=k, steps=steps, guidance=guidance,
                               concepts=CONCEPTS if concepts else None, concept_method=concept_method)
        truth = read_pixels(image, prompt)
        for colour, shape in truth.pairs:
            blob = truth.blobs.get((colour, shape))
            colour_ok.add(blob is not None)
            if blob is None:
                continue
            shape_ok.add(classify_shape(blob) == shape)
            h = blob.shape[0]
            for name, query in (("colour word", colour), ("shape word", shape), ("colour+shape", f"{colour} {shape}")):
                heat = maps.word(query).array
                ious[name].append(iou(heat >= tau * heat.max(), blob))
            if concepts:
                c, s_ = maps.concept(colour).raw, maps.concept(shape).raw
                for name, heat in (("colour word", c), ("shape word", s_), ("colour+shape", c + s_)):
                    concept_ious[name].append(iou(heat >= tau * heat.max(), blob))
                shares["named shape on its object"].append(float(s_[blob].mean()))
            base = gaussian_baseline(h)
            ious["gaussian"].append(iou(base >= tau * base.max(), blob))
            ious["uniform"].append(iou(np.ones_like(blob), blob))
        if concepts and truth.blobs:
            for absent in set(SHAPES) - {shape for _, shape in truth.pairs}:
                shares["absent shape on the objects"].append(float(maps.concept(absent).raw[truth.on_objects].mean()))
        if truth.relation:
            attention = placement.check(maps, truth.relation, tau=tau, margin=0.0).passed
            relation_ok.add(truth.relation_holds)
            attention_relation_ok.add(attention)
            agree.add(truth.relation_holds == attention)
        if len(examples) < show:
            examples.append((image, maps, prompt))
    result = {
        "prompts": n, "steps": steps, "guidance": guidance, "tau": tau,
        "colour_present": colour_ok.rate, "shape_right": shape_ok.rate, "relation_obeyed": relation_ok.rate,
        "relation_prompts_scored": relation_ok.n,
        "attention_says_relation_obeyed": attention_relation_ok.rate,
        "attention_pixel_verdict_agreement": agree.rate,
        "miou": {k: float(np.mean(v)) if v else None for k, v in ious.items()},
        "objects_scored": len(ious["shape word"]),
    }
    if concepts:
        result["concept_method"] = maps.concepts.info.concept_method
        result["concept_miou"] = {k: float(np.mean(v)) if v else None for k, v in concept_ious.items()}
        result["concept_share"] = {k: float(np.mean(v)) if v else None for k, v in shares.items()}
    return result, examples


def format_table(r: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    rows = [
        ("named colour present", pct(r["colour_present"]), "≥ 90 %"),
        ("shape right", pct(r["shape_right"]), "≥ 75 %"),
        (f"relation obeyed ({r['relation_prompts_scored']} two-object prompts)", pct(r["relation_obeyed"]), "≥ 75 %"),
        ("attention verdict agrees with pixels", pct(r["attention_pixel_verdict_agreement"]), ""),
    ]
    rows += [(f"mIoU, {k}", "-" if v is None else f"{v:.3f}", "≥ 0.60" if k == "colour+shape" else "")
             for k, v in r["miou"].items()]
    for label, key in (("concept mIoU", "concept_miou"), ("concept share", "concept_share")):
        label += f" ({r['concept_method']})" if key in r else ""
        rows += [(f"{label}, {k}", "-" if v is None else f"{v:.3f}", "") for k, v in r.get(key, {}).items()]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{'metric':<{width}}  {'value':>8}  target", "-" * (width + 20)]
    lines += [f"{a:<{width}}  {b:>8}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def save(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))

