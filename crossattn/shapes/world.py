"""The shapes world: seeded scenes of flat-coloured shapes with captions and exact per-object masks.

Every scene is drawn without anti-aliasing on a plain background, so each object's mask is exactly the
set of pixels painted in its colour. That is what makes the world a ground truth for heat maps.

    >>> from crossattn.shapes.world import sample_scene
    >>> scene = sample_scene(seed=3)
    >>> scene.caption, scene.image.shape, len(scene.masks) == len(scene.objects)
    ('a small red circle at the top', (64, 64, 3), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..geometry import RELATIONS, relation_gap

IMAGE_SIZE = 64
BACKGROUND = (240, 240, 236)
# Colours far apart in RGB so a generated image can be segmented by nearest palette colour.
# "cyan" is split by the CLIP tokenizer into "cy" + "an": a multi-token word on purpose.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 205, 20),
    "cyan": (30, 210, 220),
}
SHAPES = ("circle", "square", "triangle")
# Object "radius" (half the extent) as a fraction of the image side.
SIZES: dict[str, tuple[float, float]] = {"small": (0.09, 0.12), "large": (0.15, 0.19)}
RELATION_WORDS = {r: r.replace("_", " ") for r in RELATIONS}  # how a caption says each relation: "left of"
# Single-object position phrases, and the region of the image they promise.
POSITIONS = {"on the left": (0, 0.4), "on the right": (0.6, 1), "at the top": (0, 0.4), "at the bottom": (0.6, 1)}

# Seed ranges. Every scene comes from one integer seed. Evaluation draws from HELD_OUT_SEED up; training only
# below it, in these streams (per run seed r, step k, batch size b, item i of a batch starting at seed s):
#   VAE batches        r·10,000,019 + k·b                 (+ the scaling-factor batch at 123,456,789)
#   denoiser batches   r·10,000,019 + 7,777,777 + k·b
#   placing redraws    500,000,000 + 8·(s + i) + j         (j-th redraw until the caption places its objects)
#   dropped captions' reference scenes: uniform below HELD_OUT_SEED
# `training_scene` refuses any seed at or above HELD_OUT_SEED, so no option can train on a held-out scene.
HELD_OUT_SEED = 1_000_000_000
SCALING_SEED = 123_456_789
PLACING_SEED = 500_000_000


def vae_batch_seed(run_seed: int, step: int, batch: int) -> int:
    return run_seed * 10_000_019 + step * batch


def denoiser_batch_seed(run_seed: int, step: int, batch: int) -> int:
    return run_seed * 10_000_019 + 7_777_777 + step * batch


def training_scene(seed: int) -> Scene:
    """`sample_scene` for training: refuses the held-out seeds that `crossattn eval-shapes` scores on."""
    if not 0 <= seed < HELD_OUT_SEED:
        raise ValueError(f"training would draw scene seed {seed:,}, in the held-out range (>= {HELD_OUT_SEED:,}); "
                         "use a smaller run seed or fewer steps")
    return sample_scene(seed)


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; centre and radius in pixels of the scene's image."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float

    def phrase(self, with_size: bool) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """An image (H, W, 3 uint8), its caption, its objects and one bool mask (H, W) per object."""

    image: np.ndarray
    caption: str
    objects: list[ShapeObject]
    masks: list[np.ndarray]
    relation: str | None = None  # "left_of" etc. between objects[0] and objects[1]
    extra: dict = field(default_factory=dict)


def _polygon(obj: ShapeObject) -> np.ndarray | None:
    cx, cy, r = obj.cx, obj.cy, obj.r
    if obj.shape == "square":
        s = r * 0.88  # a square of the same "radius" looks bigger than a circle; shrink it a little
        pts = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    elif obj.shape == "triangle":
        pts = [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    else:
        return None
    return np.round(np.array(pts)).astype(np.int32)


def draw_object(canvas: np.ndarray, obj: ShapeObject, colour: tuple[int, ...]) -> None:
    """Paint `obj` onto `canvas` in place (no anti-aliasing, so masks match pixels exactly)."""
    poly = _polygon(obj)
    if poly is None:
        cv2.circle(canvas, (round(obj.cx), round(obj.cy)), round(obj.r), colour, -1, lineType=cv2.LINE_8)
    else:
        cv2.fillPoly(canvas, [poly], colour, lineType=cv2.LINE_8)


def render(objects: list[ShapeObject], size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw objects on the background; returns the image and one mask per object."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    masks = []
    for obj in objects:
        draw_object(image, obj, COLOURS[obj.colour])
        mask = np.zeros((size, size), np.uint8)
        draw_object(mask, obj, (1,))
        masks.append(mask.astype(bool))
    return image, masks


def _overlaps(a: ShapeObject, b: ShapeObject) -> bool:
    return np.hypot(a.cx - b.cx, a.cy - b.cy) < a.r + b.r + 2


def _place(rng: np.random.Generator, size: int, size_name: str) -> tuple[float, float, float]:
    """A radius within the size class and a centre that keeps the object inside the image."""
    lo, hi = SIZES[size_name]
    r = rng.uniform(lo, hi) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    return float(cx), float(cy), float(r)


def _random_object(rng: np.random.Generator, size: int, colour: str) -> ShapeObject:
    size_name = str(rng.choice(list(SIZES)))
    cx, cy, r = _place(rng, size, size_name)
    return ShapeObject(str(rng.choice(SHAPES)), colour, size_name, cx, cy, r)


def _valid_layout(objects: list[ShapeObject], relation: str | None, size: int) -> bool:
    """No two objects overlap, and the first two satisfy `relation` if there is one."""
    if any(_overlaps(a, b) for i, a in enumerate(objects) for b in objects[i + 1 :]):
        return False
    return relation is None or _satisfies(objects[0], objects[1], relation, size)


def _satisfies(a: ShapeObject, b: ShapeObject, relation: str, size: int) -> bool:
    """A clear relation: the gap along the relation's axis is large and the offset across it small."""
    main = relation_gap((a.cx, a.cy), (b.cx, b.cy), relation)
    cross = b.cy - a.cy if relation in ("left_of", "right_of") else b.cx - a.cx
    return main > 0.25 * size and abs(cross) < 0.6 * abs(main)


def _single_position(obj: ShapeObject, size: int) -> str | None:
    """A position phrase that clearly holds for this object, or None."""
    fx, fy = obj.cx / size, obj.cy / size
    options = []
    if fx < 0.38:
        options.append("on the left")
    if fx > 0.62:
        options.append("on the right")
    if fy < 0.38:
        options.append("at the top")
    if fy > 0.62:
        options.append("at the bottom")
    return options[0] if len(options) == 1 else None


def sample_scene(seed: int, size: int = IMAGE_SIZE, n_objects: int | None = None) -> Scene:
    """Sample one scene deterministically from `seed` (1–3 objects of distinct colours)."""
    rng = np.random.default_rng(seed)
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3], p=[0.3, 0.55, 0.15]))
    colours = list(rng.choice(list(COLOURS), n_objects, replace=False))
    relation = str(rng.choice(list(RELATION_WORDS))) if n_objects == 2 else None
    for _ in range(1000):  # rejection sampling; a valid layout is found within a few tries
        objects = [_random_object(rng, size, c) for c in colours]
        if _valid_layout(objects, relation, size):
            break
    else:  # pragma: no cover - the constraints above always admit layouts
        raise RuntimeError(f"could not place {n_objects} objects for seed {seed}")
    with_size = [bool(rng.random() < 0.5) for _ in objects]
    phrases = [f"a {o.phrase(s)}" for o, s in zip(objects, with_size)]
    if n_objects == 1:
        position = _single_position(objects[0], size)
        caption = phrases[0] + (f" {position}" if position and rng.random() < 0.7 else "")
    elif n_objects == 2:
        caption = f"{phrases[0]} {RELATION_WORDS[relation]} {phrases[1]}"
    else:
        caption = f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
    image, masks = render(objects, size)
    return Scene(image, caption, objects, masks, relation)


def position_phrase(caption: str) -> str | None:
    """The single-object position phrase a caption ends with ("on the left", ...), or None."""
    return next((p for p in POSITIONS if caption.endswith(f" {p}")), None)


def resample_layout(scene: Scene, rng: np.random.Generator) -> Scene:
    """Another scene with the same caption: the same objects, newly placed (and newly sized where the caption
    does not name the size), under the same relation or position phrase.

    Used by training to estimate the mean image of a caption (see `train.Recipe.reference_layouts`). A single
    object whose caption names no position is placed anywhere, slightly unlike `sample_scene`, which names a
    clear position 70 % of the time.
    """
    size = scene.image.shape[0]
    named = [f"{o.size} {o.colour} {o.shape}" in scene.caption for o in scene.objects]
    position = position_phrase(scene.caption)
    for _ in range(1000):
        objects = []
        for obj, size_named in zip(scene.objects, named):
            size_name = obj.size if size_named else str(rng.choice(list(SIZES)))
            objects.append(ShapeObject(obj.shape, obj.colour, size_name, *_place(rng, size, size_name)))
        if _valid_layout(objects, scene.relation, size) and (
            position is None or _single_position(objects[0], size) == position
        ):
            break
    else:  # pragma: no cover - the scene itself shows the constraints admit layouts
        raise RuntimeError(f"could not re-place the objects of {scene.caption!r}")
    image, masks = render(objects, size)
    return Scene(image, scene.caption, objects, masks, scene.relation)


def in_one_colour(scene: Scene) -> Scene:
    """The scene with every object in its first object's colour, redrawn and recaptioned ("a red circle left of
    a red square"): colour no longer tells the objects apart, only their shapes and places do. `sample_scene`
    draws none such (each object has its own colour); training adds them with `Recipe.same_colour_share`, and
    benchmarks/explain_eval.py's same-colour control reads them."""
    colour = scene.objects[0].colour
    objects = [replace(obj, colour=colour) for obj in scene.objects]
    image, masks = render(objects, scene.image.shape[0])
    # colour words appear in captions only as their objects' colours
    caption = " ".join(colour if word in COLOURS else word for word in scene.caption.split(" "))
    return Scene(image, caption, objects, masks, scene.relation)


def without_colours(scene: Scene) -> Scene:
    """The scene captioned without its colour words ("a small circle left of a square"): its shape words alone
    name the objects, as a concept "circle" does. `sample_scene` names every colour; training adds such captions
    with `Recipe.colourless_share`."""
    caption = " ".join(word for word in scene.caption.split(" ") if word not in COLOURS)
    return Scene(scene.image, caption, scene.objects, scene.masks, scene.relation)


def shapes_differ(scene: Scene) -> bool:
    """Are the scene's objects all of different shapes?"""
    return len({obj.shape for obj in scene.objects}) == len(scene.objects)


def naming_one(scene: Scene, k: int) -> Scene:
    """The scene captioned with its k-th object's shape alone ("a circle"), every object still drawn: a shape word
    with no rival in the caption, as a concept is. Only for scenes whose shapes differ (the grounding masks find
    an object's word by its shape's occurrence). Training adds such captions with `Recipe.one_shape_share`."""
    if not shapes_differ(scene):
        raise ValueError(f"naming_one needs objects of different shapes: {scene.caption!r}")
    return Scene(scene.image, f"a {scene.objects[k].shape}", scene.objects, scene.masks, None)


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None]:
    """The (colour, shape) pairs a caption names, in order, and its relation key if any.

    >>> parse_caption("a small red circle left of a cyan square")
    ([('red', 'circle'), ('cyan', 'square')], 'left_of')
    """
    words = caption.replace(",", " ").split()
    pairs = [(w, words[i + 1]) for i, w in enumerate(words[:-1]) if w in COLOURS and words[i + 1] in SHAPES]
    text = " ".join(words)
    relation = next((key for key, phrase in RELATION_WORDS.items() if f" {phrase} " in f" {text} "), None)
    return pairs, relation
