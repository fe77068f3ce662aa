"""How well does `crossattn.explain` segment a given image? Zero-shot segmentation on rendered shapes-world scenes.

Scenes are *drawn*, never generated: held-out shapes-world scenes (`world.sample_scene` from the seeds
`crossattn eval-shapes` scores, so the captions are the same) with their exact object masks, and out-of-distribution
scenes drawn by this script's own PIL renderer (more objects than training had, a textured background,
anti-aliased edges, objects touching). Each object's IoU is taken between its mask and the word's map thresholded
at 0.4 × its peak (as `eval-shapes` does), for its colour word, its shape word and both merged; mIoU is the mean over
objects. Beside explain's maps, on the same scenes or captions:

- a centred Gaussian and a uniform map (baselines that know nothing of the image);
- the img2img baseline of issue 26: the model's own img2img pipeline built from the same components, strength
  0.3, 20 steps, guidance 5, traced (its maps against the given image's masks);
- generated images of the same captions (20 steps, guidance 5; objects found in the pixels as `eval-shapes`
  finds them): how much reading a given image loses or gains against reading one's own generation;
- concept maps (`explain(..., concepts=[the world's 9 words])`) of the same images (ConceptAttention's use);
- a grid of noise levels × number of levels with the time per image, from which the default was chosen;
- a same-colour control: the held-out two-object scenes of two different shapes, drawn as they are and again with
  both objects in the first one's colour (training never puts two objects of one colour in a scene), captioned
  alike. Per object, its shape word's map and its shape's concept map (each method): the IoU, and the
  *share* of the map's mass that lies on the object, beside the other object's shape word's share on it. A map
  that knows the shape puts most of its mass on its own object whatever the colours; one that finds its object
  by colour splits its mass between two objects of one colour. In one colour, also the word maps under the
  caption said without colours, and under a caption naming one shape alone ("a circle"), as a concept does.

UNet rows also give the maps of the finest cross-attention sites alone (`maps.filter(resolutions=[16])`: what
`explain` returns by default; the script asks for `sites="all"` and filters itself, so both are measured).

    .venv/bin/python benchmarks/explain_eval.py --n 100 --json benchmarks/results/explain_eval.json
    .venv/bin/python benchmarks/explain_eval.py --quick        # 12 scenes, a small grid: a minute or two
    .venv/bin/python benchmarks/explain_eval.py --n 100 --only same-colour --json benchmarks/results/explain_eval.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import crossattn  # noqa: E402
from crossattn.concepts import METHODS  # noqa: E402
from crossattn.explain import DEFAULT_LEVELS, _encode_image, _path_of, explain  # noqa: E402
from crossattn.families import family_of  # noqa: E402
from crossattn.generation import generate  # noqa: E402
from crossattn.shapes import evaluate as ev  # noqa: E402
from crossattn.shapes.world import (  # noqa: E402
    BACKGROUND,
    COLOURS,
    SHAPES,
    Scene,
    ShapeObject,
    in_one_colour,
    shapes_differ,
    without_colours,
)

TAU = 0.4
KINDS = ("colour", "shape", "colour+shape")
# Noise-level sets tried (levels are the denoiser's timestep as a fraction of its range; see crossattn.explain)
GRID = [(0.1,), (0.2,), (0.3,), (0.4,), (0.5,), (0.7,), (0.9,), (0.3, 0.1), (0.5, 0.3), (0.7, 0.5), (0.5, 0.3, 0.1),
        (0.7, 0.5, 0.3, 0.1)]
QUICK_GRID = [(0.1,), (0.3,), (0.5,), (0.3, 0.1), (0.5, 0.3, 0.1)]
IMG2IMG = dict(strength=0.3, num_inference_steps=20, guidance_scale=5.0)
SECTIONS = ("concepts", "same_colour", "cost")  # what --only can re-measure alone
OOD_KINDS = ("in distribution, PIL renderer", "more objects (4-5)", "textured background", "anti-aliased edges",
             "touching objects")


# ---- scenes ------------------------------------------------------------------------------------------------
def outline(obj: ShapeObject, scale: float) -> list[tuple[float, float]] | None:
    """The shapes world's geometry (a square's half side is 0.88 r; a triangle's base at 0.8 r below the centre),
    scaled; None for a circle."""
    cx, cy, r = obj.cx * scale, obj.cy * scale, obj.r * scale
    if obj.shape == "square":
        s = 0.88 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if obj.shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    return None


def draw(objects: list[ShapeObject], size: int = 64, supersample: int = 1,
         background: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """An independent renderer (PIL, not the world's OpenCV): the image and each object's mask. With
    `supersample` k the scene is drawn k times larger and box-filtered down (anti-aliased edges); a pixel belongs
    to an object's mask when the object covers at least half of it (what is left visible after later objects)."""
    big = size * supersample
    canvas = Image.new("RGB", (big, big), BACKGROUND)
    owner = Image.new("L", (big, big), 0)
    for k, obj in enumerate(objects, start=1):
        for target, fill in ((ImageDraw.Draw(canvas), COLOURS[obj.colour]), (ImageDraw.Draw(owner), k)):
            points = outline(obj, supersample)
            if points is None:
                r, cx, cy = obj.r * supersample, obj.cx * supersample, obj.cy * supersample
                target.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            else:
                target.polygon(points, fill=fill)
    image = np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) if supersample > 1 else np.asarray(canvas)
    owners = np.asarray(owner)
    masks = [np.asarray(Image.fromarray((owners == k).astype(np.uint8) * 255).resize((size, size),
                                                                                    Image.Resampling.BOX)) >= 128
             for k in range(1, len(objects) + 1)]
    if background is not None:  # texture only where no object is
        free = ~np.logical_or.reduce(masks) if supersample == 1 else np.all(image == BACKGROUND, axis=-1)
        image = np.where(free[..., None], background, image)
    return image.astype(np.uint8), masks


def texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A light textured background: diagonal stripes plus per-pixel noise around the world's background."""
    ys, xs = np.indices((size, size))
    stripes = 18 * np.sin((xs + ys) / 3.0)[..., None]
    noise = rng.normal(0, 10, (size, size, 3))
    return np.clip(np.array(BACKGROUND) - 25 + stripes + noise, 0, 255).astype(np.uint8)


def caption_of(objects: list[ShapeObject]) -> str:
    phrases = [f"a {o.colour} {o.shape}" for o in objects]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1] if len(phrases) > 2 else " and ".join(phrases)


def ood_scenes(kind: str, base: list[Scene], seed: int = 7) -> list[Scene]:
    """Out-of-distribution versions of the held-out scenes (same layouts and captions) or new layouts."""
    rng = np.random.default_rng(seed)
    out = []
    for scene in base:
        objects, caption, back, supersample = scene.objects, scene.caption, None, 1
        if kind == "more objects (4-5)":
            objects = many_objects(rng, int(rng.integers(4, 6)))
            caption = caption_of(objects)
        elif kind == "touching objects":
            objects = touching_pair(rng)
            caption = f"a {objects[0].phrase(False)} left of a {objects[1].phrase(False)}"
        elif kind == "textured background":
            back = texture(rng)
        elif kind == "anti-aliased edges":
            supersample = 4
        image, masks = draw(objects, supersample=supersample, background=back)
        out.append(Scene(image, caption, objects, masks))
    return out


def many_objects(rng: np.random.Generator, n: int, size: int = 64) -> list[ShapeObject]:
    """n non-overlapping small objects of distinct colours (training never has more than 3)."""
    colours = list(rng.choice(list(COLOURS), n, replace=False))
    while True:
        objects = []
        for colour in colours:
            r = float(rng.uniform(0.08, 0.1) * size)
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            objects.append(ShapeObject(str(rng.choice(SHAPES)), colour, "small", float(cx), float(cy), r))
        if all(np.hypot(a.cx - b.cx, a.cy - b.cy) > a.r + b.r + 2 for i, a in enumerate(objects)
               for b in objects[i + 1:]):
            return objects


def touching_pair(rng: np.random.Generator, size: int = 64) -> list[ShapeObject]:
    """Two objects side by side whose outlines touch (the world keeps them 2 px apart at least)."""
    colours = rng.choice(list(COLOURS), 2, replace=False)
    shapes = rng.choice(SHAPES, 2)
    r1, r2 = (float(rng.uniform(0.13, 0.17) * size) for _ in range(2))
    cy = float(rng.uniform(24, 40))
    left = size / 2 - (r1 + r2) / 2
    first = ShapeObject(str(shapes[0]), str(colours[0]), "large", left, cy, r1)
    # squares reach 0.88 r to the side, triangles r at their base: overlap slightly so the outlines meet
    reach = [0.88 if s == "square" else 1.0 for s in shapes]
    second = ShapeObject(str(shapes[1]), str(colours[1]), "large", left + reach[0] * r1 + reach[1] * r2 - 1, cy, r2)
    return [first, second]


# ---- scoring -----------------------------------------------------------------------------------------------
def queries(objects: list[ShapeObject]) -> list[dict[str, tuple[str, int]]]:
    """Per object, the (word, occurrence) to ask the maps for each kind: a repeated shape word is its k-th
    occurrence (colours are distinct within a scene)."""
    out, seen = [], {}
    for obj in objects:
        k = seen.get(obj.shape, 0)
        seen[obj.shape] = k + 1
        out.append({"colour": (obj.colour, 0), "shape": (obj.shape, k), "colour+shape": (f"{obj.colour} {obj.shape}",
                                                                                        0)})
    return out


def iou_of(heat: np.ndarray, mask: np.ndarray) -> float:
    return ev.iou(heat >= TAU * heat.max(), mask)


def score_maps(maps, objects: list[ShapeObject], masks: list[np.ndarray], scores: dict) -> None:
    """Add each object's IoU per word kind (and with the finest sites alone, on UNets) to `scores`."""
    views = {"": maps}
    if maps.info.resolution_sites:
        views[" (finest sites)"] = maps.filter(resolutions=[maps.resolutions[0]])
    for suffix, view in views.items():
        for query, mask in zip(queries(objects), masks):
            for kind, (word, occurrence) in query.items():
                scores.setdefault(kind + suffix, []).append(iou_of(view.word(word, occurrence).array, mask))


def score_concepts(maps, objects: list[ShapeObject], masks: list[np.ndarray], scores: dict) -> None:
    """Add each object's IoU of its colour's and shape's concept maps (and their sum), with every site and, on
    UNets, with the finest sites alone (explain's default there)."""
    views = {"": maps}
    if maps.info.resolution_sites:
        views[" (finest sites)"] = maps.filter(resolutions=[maps.resolutions[0]])
    for suffix, view in views.items():
        for obj, mask in zip(objects, masks):
            colour, shape = view.concept(obj.colour).raw, view.concept(obj.shape).raw
            for kind, heat in zip(KINDS, (colour, shape, colour + shape)):
                scores.setdefault(kind + suffix, []).append(iou_of(heat, mask))


def means(scores: dict) -> dict:
    return {k: round(float(np.mean(v)), 4) for k, v in scores.items()} | {"objects": len(next(iter(scores.values())))}


def timed(run: Callable, items: list) -> tuple[dict, float]:
    """Scores of `run(item, scores)` over the items, and the median seconds per item."""
    scores, seconds = {}, []
    for item in items:
        start = time.perf_counter()
        run(item, scores)
        seconds.append(time.perf_counter() - start)
    return means(scores), round(statistics.median(seconds), 4)


# ---- one model ---------------------------------------------------------------------------------------------
def evaluate_model(name: str, n: int, quick: bool, log: Callable[[str], None], only: str | None = None) -> dict:
    """Every measurement of the module doc on one model; with `only` (one of SECTIONS), that section alone."""
    pipe = crossattn.load_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    scenes = ev.held_out_scenes(n)  # the captions eval-shapes generates, with their drawings
    few = scenes[: min(n, 12 if quick else 30)]  # the costly comparisons (img2img, generation) run on these
    result: dict = {"model": name, "scenes": n, "subset": len(few), "tau": TAU, "default_levels": list(DEFAULT_LEVELS)}

    def explained(levels=None, **options):
        def run(scene, scores):
            maps = explain(pipe, scene.image, scene.caption, noise_levels=levels, sites="all", **options)
            (score_concepts if options.get("concepts") else score_maps)(maps, scene.objects, scene.masks, scores)
        return run

    sections = {"concepts": lambda: concept_maps(pipe, scenes, explained, log),
                "same_colour": lambda: same_colour(pipe, scenes, log), "cost": lambda: cost(pipe, scenes[0], log)}
    if only is not None:
        return {"model": name, "scenes": n, only: sections[only]()}
    grid = []
    for levels in QUICK_GRID if quick else GRID:
        scores, seconds = timed(explained(levels), scenes)
        grid.append({"levels": list(levels), "calls": len(levels), "seconds_per_image": seconds, "miou": scores})
        log(f"{name} levels {levels}: {scores} {seconds}s")
    result["noise_grid"] = grid
    result["explain"], result["explain_seconds"] = timed(explained(), scenes)
    result["explain_subset"], _ = timed(explained(), few)

    baselines: dict = {}
    for scene in scenes:
        for mask in scene.masks:
            gauss = ev.gaussian_baseline(mask.shape[0])
            baselines.setdefault("gaussian", []).append(iou_of(gauss, mask))
            baselines.setdefault("uniform", []).append(ev.iou(np.ones_like(mask), mask))
    result["baselines"] = means(baselines)

    for section in ("concepts", "same_colour"):
        result[section] = sections[section]()

    result["img2img"] = img2img_baseline(pipe, few)
    log(f"{name} img2img: {result['img2img']}")
    result["generated"] = generated(pipe, few)
    log(f"{name} generated: {result['generated']}")

    result["out_of_distribution"] = {}
    for kind in OOD_KINDS:
        drawn = ood_scenes(kind, few)
        result["out_of_distribution"][kind], _ = timed(explained(), drawn)
        log(f"{name} {kind}: {result['out_of_distribution'][kind]}")
    result["cost"] = sections["cost"]()
    return result


def concept_maps(pipe, scenes: list[Scene], explained: Callable, log: Callable[[str], None]) -> dict:
    """Concept maps of the world's 9 words on the same images, with each concept method the model offers."""
    out = {}
    for method in family_of(pipe).concept_methods:
        scores, seconds = timed(explained(concepts=ev.CONCEPTS, concept_method=method), scenes)
        out[method] = {"miou": scores, "seconds_per_image": seconds}
        log(f"concepts ({method}): {scores}")
    return out


def same_colour(pipe, scenes: list[Scene], log: Callable[[str], None]) -> dict:
    """The same-colour control of the module doc, on the scenes of two objects of different shapes: each
    scene as drawn and in one colour, its shape words' maps and its shapes' concept maps; in one colour, also
    the word maps under the caption said without colours, and under a caption naming one shape ("a circle")."""
    out: dict = {}

    def add(key: str, own: np.ndarray, theirs: np.ndarray, mask: np.ndarray) -> None:
        scores = out.setdefault(key, {})
        scores.setdefault("iou", []).append(iou_of(own, mask))
        scores.setdefault("share on its object", []).append(float(own[mask].sum() / own.sum()))
        scores.setdefault("other shape's share on it", []).append(float(theirs[mask].sum() / theirs.sum()))

    for scene in scenes:
        if len(scene.objects) != 2 or not shapes_differ(scene):
            continue
        for kind, drawn in (("as drawn", scene), ("same colour", in_one_colour(scene))):
            shapes = [obj.shape for obj in drawn.objects]
            for n, method in enumerate(family_of(pipe).concept_methods):
                maps = explain(pipe, drawn.image, drawn.caption, concepts=list(SHAPES), concept_method=method)
                for k, mask in enumerate(drawn.masks):
                    if n == 0:  # the word maps are the same whatever the concepts' method
                        add(f"{kind}: word", maps.word(shapes[k]).array, maps.word(shapes[1 - k]).array, mask)
                    add(f"{kind}: concept ({method})", maps.concept(shapes[k]).raw, maps.concept(shapes[1 - k]).raw,
                        mask)
            if kind == "same colour":
                plain = explain(pipe, drawn.image, without_colours(drawn).caption)
                alone = [explain(pipe, drawn.image, f"a {shape}").word(shape).array for shape in shapes]
                for k, mask in enumerate(drawn.masks):
                    add(f"{kind}: word, caption without colours", plain.word(shapes[k]).array,
                        plain.word(shapes[1 - k]).array, mask)
                    add(f"{kind}: word, caption naming one shape", alone[k], alone[1 - k], mask)
    out = {key: means(scores) for key, scores in out.items()}
    log(f"same colour: {out}")
    return out


def img2img_baseline(pipe, scenes: list[Scene]) -> dict:
    """Issue 26's baseline: the model's img2img pipeline from the same components, traced."""
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusionImg2ImgPipeline

    if hasattr(pipe, "unet"):
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    else:
        img2img = StableDiffusion3Img2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    state = {"calls": 0}

    def run(scene, scores):
        with crossattn.trace(img2img) as tr:
            img2img(scene.caption, image=Image.fromarray(scene.image), generator=torch.Generator().manual_seed(0),
                    **IMG2IMG)
        maps = tr.heat_maps()
        state["calls"] = maps.info.steps
        score_maps(maps, scene.objects, scene.masks, scores)

    scores, seconds = timed(run, scenes)
    return {"miou": scores, "seconds_per_image": seconds, "denoiser_calls": state["calls"],
            "batch_per_call": 2, **IMG2IMG}


def generated(pipe, scenes: list[Scene]) -> dict:
    """Generated images of the same captions, objects found in their pixels as eval-shapes finds them."""
    def run(scene, scores):
        image, maps = generate(pipe, scene.caption, seed=0)
        truth = ev.read_pixels(image, scene.caption)
        found = [(obj, truth.blobs[(obj.colour, obj.shape)]) for obj in scene.objects
                 if (obj.colour, obj.shape) in truth.blobs]
        if found:
            score_maps(maps, [o for o, _ in found], [b for _, b in found], scores)

    scores, seconds = timed(run, scenes)
    return {"miou": scores, "seconds_per_image": seconds, "steps": 20, "guidance": 5.0}


def cost(pipe, scene: Scene, log: Callable[[str], None], rounds: int = 20) -> dict:
    """Milliseconds, min and median over `rounds` interleaved rounds (on a shared host the min is the steadier
    figure): explain with the default levels; its parts outside the denoiser that it cannot skip (the VAE's
    encoding of the image, the caption's encoding); one bare denoiser call as explain makes it, untraced; and
    (median of 3) a 20-step guided generation. With explain's time in bare calls, whole and without the encoders;
    a traced call's time (what the second level adds) and the rest (explain less its calls and encoders)."""
    path, denoiser = _path_of(pipe), getattr(pipe, family_of(pipe).denoiser)
    picture = Image.fromarray(scene.image)
    calls = []
    hook = denoiser.register_forward_hook(lambda *args: calls.append(1))
    try:
        explain(pipe, scene.image, scene.caption)
    finally:
        hook.remove()
    with torch.no_grad():
        device = pipe._execution_device
        encoded, latent = path.encode(pipe, scene.caption, device), _encode_image(pipe, picture, device)
        parts = {"explain": lambda: explain(pipe, scene.image, scene.caption),
                 "explain_one_level": lambda: explain(pipe, scene.image, scene.caption, noise_levels=[0.3]),
                 "vae_encode": lambda: _encode_image(pipe, picture, device),
                 "text_encode": lambda: path.encode(pipe, scene.caption, device),
                 "execution_device": lambda: pipe._execution_device,
                 "denoiser_call": lambda: path.call(pipe, latent, 300.0, encoded)}
        times: dict[str, list[float]] = {name: [] for name in parts}
        for _ in range(rounds + 1):  # the first round warms up
            for name, run in parts.items():
                start = time.perf_counter()
                run()
                times[name].append(1000 * (time.perf_counter() - start))
    least = {name: min(t[1:]) for name, t in times.items()}
    # what each level past the first adds: one traced call
    traced_call = (least["explain"] - least["explain_one_level"]) / (len(calls) - 1)
    generations = []
    for _ in range(3):
        start = time.perf_counter()
        generate(pipe, scene.caption, seed=0)
        generations.append(time.perf_counter() - start)
    out = {"denoiser_calls_per_explain": len(calls), "rounds": rounds,
            "ms": {name: {"min": round(least[name], 2), "median": round(statistics.median(t[1:]), 2)}
                   for name, t in times.items()},
            "traced_call_ms": round(traced_call, 2),
            # all but the traced calls and the encoders: the trace's setup and maps, the checks, device lookup
            "rest_ms": round(least["explain"] - len(calls) * traced_call - least["vae_encode"] - least["text_encode"],
                             2),
            "explain_in_calls": round(least["explain"] / least["denoiser_call"], 2),
            "explain_without_encoders_in_calls": round(
                (least["explain"] - least["vae_encode"] - least["text_encode"]) / least["denoiser_call"], 2),
            "generate_20_steps_guidance_5_s": round(statistics.median(generations), 3)}
    log(f"cost: {out}")
    return out


# ---- report ------------------------------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    def cells(miou: dict, suffix: str = "") -> str:
        return " / ".join(f"{miou[k + suffix]:.3f}" for k in KINDS)

    lines = ["| maps (mIoU colour / shape / colour+shape) | " + " | ".join(r["model"] for r in results) + " |",
             "|---|" + "---|" * len(results)]

    def row(label: str, get: Callable[[dict], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(get, r) for r in results) + " |")

    def cell(get: Callable[[dict], str], r: dict) -> str:
        try:
            return get(r)
        except KeyError:  # a section this model's run did not measure
            return "—"

    levels = ", ".join(f"{v:g}" for v in DEFAULT_LEVELS)
    row(f"explain, default levels ({levels}), all sites, all scenes", lambda r: cells(r["explain"]))
    row("explain, default levels, finest sites only (UNet: explain's default)",
        lambda r: cells(r["explain"], " (finest sites)") if "colour (finest sites)" in r["explain"] else "—")
    row("explain, subset", lambda r: cells(r["explain_subset"]))
    row("img2img baseline (strength 0.3, 20 steps, guidance 5), subset", lambda r: cells(r["img2img"]["miou"]))
    row("img2img baseline, finest sites only (UNet), subset", lambda r: cells(r["img2img"]["miou"], " (finest sites)")
        if "colour (finest sites)" in r["img2img"]["miou"] else "—")
    row("generated images of the same captions, subset", lambda r: cells(r["generated"]["miou"]))
    row("generated, finest sites only (UNet), subset", lambda r: cells(r["generated"]["miou"], " (finest sites)")
        if "colour (finest sites)" in r["generated"]["miou"] else "—")
    for method in METHODS:
        row(f"concept maps ({method}), all sites", lambda r, m=method: cells(r["concepts"][m]["miou"]))
        row(f"concept maps ({method}), finest sites only (UNet)", lambda r, m=method: cells(
            r["concepts"][m]["miou"], " (finest sites)"))
    keys = ["as drawn: word", "same colour: word", "same colour: word, caption without colours",
            "same colour: word, caption naming one shape"]
    keys += [f"{kind}: concept ({method})" for method in METHODS for kind in ("as drawn", "same colour")]
    for key in keys:
        row(f"{key}: shape maps' IoU / share on its object / other shape's share on it",
            lambda r, key=key: " / ".join(f"{r['same_colour'][key][k]:.3f}" for k in (
                "iou", "share on its object", "other shape's share on it")))
    row("baseline: centred Gaussian / uniform (any word)",
        lambda r: f"{r['baselines']['gaussian']:.3f} / {r['baselines']['uniform']:.3f}")
    for kind in OOD_KINDS:
        row(f"out of distribution: {kind}, subset", lambda r, k=kind: cells(r["out_of_distribution"][k]))
    heads = " | ".join(f"{r['model']}: mIoU c+s (finest) / s per image with scoring" for r in results)
    lines += ["", f"| noise levels | calls | {heads} |", "|---|---|" + "---|" * len(results)]
    for entry in next((r["noise_grid"] for r in results if "noise_grid" in r), []):
        def grid_cell(r, levels=entry["levels"]):
            g = next((g for g in r["noise_grid"] if g["levels"] == levels), None)
            if g is None:
                return "—"
            finest = g["miou"].get("colour+shape (finest sites)")
            return f"{g['miou']['colour+shape']:.3f}" + (f" ({finest:.3f})" if finest else "") + \
                f" / {g['seconds_per_image']:.3f}"
        lines.append(f"| {', '.join(f'{v:g}' for v in entry['levels'])} | {entry['calls']} | "
                     + " | ".join(grid_cell(r) for r in results) + " |")
    lines += ["", "| cost | " + " | ".join(r["model"] for r in results) + " |", "|---|" + "---|" * len(
        results)]
    for key in ("explain", "explain_one_level", "vae_encode", "text_encode", "execution_device", "denoiser_call"):
        row(f"{key} (ms, min / median)", lambda r, k=key: " / ".join(str(r["cost"]["ms"][k][m]) for m in ("min",
                                                                                                        "median")))
    for key in ("denoiser_calls_per_explain", "traced_call_ms", "rest_ms", "explain_in_calls",
                "explain_without_encoders_in_calls",
                "generate_20_steps_guidance_5_s"):
        row(key, lambda r, k=key: str(r["cost"][k]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model (repeatable); default: both embedded models")
    parser.add_argument("--n", type=int, default=100, help="held-out scenes (default 100)")
    parser.add_argument("--quick", action="store_true", help="12 scenes and a small grid")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", choices=[s.replace("_", "-") for s in SECTIONS],
                        help="measure this section alone; with --json, replace it in that file's results")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: small models use threads badly, worse on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 12 if args.quick else args.n
    started = time.time()
    results = []
    only = args.only and args.only.replace("-", "_")
    earlier = json.loads(args.json.read_text()) if only and args.json and args.json.exists() else {}
    kept = {r["model"]: r for r in earlier.get("results", [])}
    for name in args.model or ["shapes-unet", "shapes-mmdit"]:
        result = evaluate_model(name, n, args.quick, lambda text: print(text, flush=True), only)
        if name in kept:  # --only: the earlier run's other sections, with this one new
            if kept[name].get("scenes") != n:
                raise SystemExit(f"--only {args.only}: {args.json} holds a {kept[name].get('scenes')}-scene run of "
                                 f"{name}, not {n}")
            result = kept[name] | {only: result[only]}
        results.append(result)
        kept[name] = result
        every = list(kept.values()) if only else results  # --only: the models not run this time stay as they were
        if args.json:  # after each model, so a long run keeps what it has
            args.json.parent.mkdir(parents=True, exist_ok=True)
            seconds = {f"{only}_only_seconds" if only else "seconds": round(time.time() - started)}
            # --only keeps the earlier run's other records (its time, notes, extra checks)
            args.json.write_text(json.dumps(earlier | {"results": every, "table": table(every),
                                                       "torch_threads": torch.get_num_threads()} | seconds, indent=1))
    print(table(every))


if __name__ == "__main__":
    main()
