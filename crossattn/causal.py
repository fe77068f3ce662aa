"""Do the maps explain? Counterfactual generations per word, and repair of neglected objects.

Attention maps say where the model looked; they do not prove that looking there made the picture. `effects`
regenerates with the same seed once per word, the word taken away, and measures where the picture changed:

- ``how="prompt"``: the word deleted from the prompt and the prompt re-encoded — its meaning gone wherever the
  text encoder put it (a causal encoder such as CLIP also carries it into the tokens after it);
- ``how="attention"``: the word's attention scaled by ``scale`` with `crossattn.intervene` — only the effect that
  flows through the word's own text positions, the part its map can account for.

Each word gets a *change map* (how much each pixel changed, in [0, 1]) and its *agreement* with the word's
attention map (Pearson r): where the map is right about cause, the two coincide. `repair` uses the same lever the
other way: objects the diagnosis finds neglected get their words' attention boosted early in the generation, one
extra generation, no gradients.

    >>> import crossattn
    >>> pipe = crossattn.load_pipeline()
    >>> eff = crossattn.effects(pipe, "a red circle left of a blue square", ["blue square"], num_inference_steps=6)
    >>> eff["blue square"].change.shape, eff["blue square"].change.dtype
    ((64, 64), dtype('float32'))
"""

from __future__ import annotations

import math
import re

from PIL import Image

from . import placement
from .diagnosis import Calibration, Diagnosis, diagnose
from .effects import Effect, Effects, Repair, change_map, pearson
from .errors import InputError
from .families import family_of
from .generation import generate
from .heatmaps import HeatMaps
from .intervention import AFTER, END, intervene
from .words import word_ref

HOWS = ("prompt", "attention")
# Chosen by benchmarks/causal_eval.py: the grid cell (shares < 1) with the most missing objects back while no drawn
# object is lost in >= 90 % of cases, pooled over both embedded models: boost ×5 in the first half of the steps
# (21/56 back, 51/55 without loss).
REPAIR_SCALE = 5.0
REPAIR_SHARE = 0.5


def delete_word(prompt: str, word: str) -> str:
    """The prompt without one occurrence of a word or phrase ("cat#1": the second "cat") and the article right
    before it, spaces and commas tidied.

    Raises InputError if the word is not in the prompt, or if nothing would be left to generate from.
    """
    name, occurrence = word_ref(word)
    parts = name.split()
    if not parts:
        raise InputError("an empty word cannot be deleted from the prompt")
    pattern = r"(?<![\w])" + r"\s+".join(re.escape(p) for p in parts) + r"(?![\w])"
    found = list(re.finditer(pattern, prompt, flags=re.IGNORECASE))
    if occurrence >= len(found):
        raise InputError(f"{word!r} is not in the prompt {prompt!r}" if not found else
                         f"{name!r} occurs {len(found)} time(s) in the prompt; {word!r} is out of range")
    m = found[occurrence]
    # where the phrase ends a noun phrase, its article goes with it ("a red circle, a blue square" - "blue square"
    # = "a red circle"; "a red circle" - "red" keeps its "a"); no space is left before punctuation
    after = prompt[m.end():]
    ends = re.match(r"\s*(?:$|[,.;:!?]|(?:and|or|left|right|above|below|of|on|in|with|to|next|near|behind|under|"
                    r"over|beside|at)\b)", after, flags=re.IGNORECASE)
    before = prompt[: m.start()]
    if ends:
        before = re.sub(r"(?:^|(?<=\s))(?:a|an|the)\s*$", "", before, flags=re.IGNORECASE)
    left = re.sub(r"\s+", " ", before + " " + after).strip()
    left = re.sub(r"\s+([,.;:!?])", r"\1", left).strip(" ,;:")
    if not any(ch.isalnum() for ch in left):
        raise InputError(f"deleting {word!r} leaves nothing of the prompt {prompt!r}: a counterfactual needs a "
                         "prompt (use how='attention' to remove only its attention)")
    return left


def images_only(pipe, what: str) -> None:
    """Refuse a video pipeline: the change maps compare one image with another."""
    if family_of(pipe).video:
        raise InputError(f"{what} compares images; {type(pipe).__name__} makes videos, which the causal checks do "
                         "not handle yet")


PIPE_OPTIONS = {"num_inference_steps": "steps", "guidance_scale": "guidance", "negative_prompt": "negative_prompt"}


def generate_options(pipe_kwargs: dict) -> dict:
    """The pipeline keywords these functions take, as `generate` names them (it seeds and checks them the same
    way for the plain and the counterfactual generations)."""
    unknown = sorted(set(pipe_kwargs) - set(PIPE_OPTIONS) - {"width", "height"})
    if unknown:
        raise InputError(f"unsupported pipeline option(s) {unknown}: use {', '.join(PIPE_OPTIONS)}, width, height")
    out = {PIPE_OPTIONS[k]: v for k, v in pipe_kwargs.items() if k in PIPE_OPTIONS}
    if "width" in pipe_kwargs or "height" in pipe_kwargs:
        if not {"width", "height"} <= set(pipe_kwargs):
            raise InputError("give both width and height, or neither (the model's native size)")
        out["size"] = (pipe_kwargs["width"], pipe_kwargs["height"])
    return out


def effects(pipe, prompt: str, words: list[str] | None = None, *, how: str = "prompt", scale: float = 0.0,
            steps: tuple[int, int | None] = (0, None), seed: int = 0, **pipe_kwargs) -> Effects:
    """The traced plain generation plus one counterfactual generation per word or phrase (same seed).

    Args:
        words: words or phrases of the prompt ("blue circle", "cat#1"); None: its objects (noun phrases).
        how: ``"prompt"`` (delete the word, re-encode) or ``"attention"`` (scale its attention, `intervene`).
        scale, steps: the attention scale and step window (start, stop) for ``how="attention"``.
        pipe_kwargs: num_inference_steps, guidance_scale, negative_prompt, width and height.

    Costs 1 + len(words) generations. See the module's docstring for an example.
    """
    images_only(pipe, "effects")
    if how not in HOWS:
        raise InputError(f"how must be one of {', '.join(HOWS)}, got {how!r}")
    if how == "prompt" and (scale != 0.0 or tuple(steps) != (0, None)):
        raise InputError("scale and steps apply to how='attention'; how='prompt' deletes the word outright")
    if not math.isfinite(scale) or scale < 0:
        raise InputError(f"scale must be a finite number >= 0, got {scale!r}")
    options = generate_options(pipe_kwargs)
    if words is not None and not words:
        raise InputError("no words given: name words or phrases of the prompt, or None for its objects")
    special = [w for w in words or [] if not isinstance(w, str) or w == END or AFTER.fullmatch(w)]
    if special and how == "prompt":
        raise InputError(f"{special[0]!r} names text positions, not words: it works with how='attention'")
    counterfactuals = {w: delete_word(prompt, w) for w in words or []} if how == "prompt" else {}
    checked = [w for w in words or [] if w not in special] or None  # intervene checks the special keys itself
    image, maps = generate(pipe, prompt, seed=seed, words=checked, **options)
    words = list(words or placement.objects(maps))
    out = Effects(prompt, how, scale, tuple(steps), seed, image, maps)
    for word in words:
        if how == "prompt":
            edited = counterfactuals.get(word) or delete_word(prompt, word)
            other, _ = generate(pipe, edited, seed=seed, **options)
        else:
            edited = prompt
            with intervene(pipe, {word: scale}, steps=steps):
                other, _ = generate(pipe, prompt, seed=seed, **options)
        change = change_map(image, other)
        # positions that are not a word ("<end>", "<after:W>", a number) have no attention map to compare with
        attention = None if word in special else maps.word(*word_ref(word)).raw
        out.words[word] = Effect(str(word), other, change, None if attention is None else pearson(attention, change),
                                 edited)
    return out


def diagnose_causally(pipe, image: Image.Image, maps: HeatMaps, objects: list[str] | None = None) -> Diagnosis:
    """`crossattn.diagnose` with a causal neglect verdict: one more generation per object, its words' attention
    removed (`intervene`, scale 0, all steps, same seed); an object whose removal changes its own attention region
    little, relative to the prompt's other objects, was neglected.

    Score (``o.causal_neglect``): 1 − (mean pixel change inside the object's attention region when its words are
    ablated) / (the largest such change among the prompt's objects). On benchmarks/causal_eval.py's failure-prone
    shapes-world generations its neglect ROC AUC is 0.927 against the attention score's 0.782 with the embedded
    UNet (300 objects, 42 missing), but 0.732 against 0.819 with the embedded MMDiT (150 objects, 14 missing): a
    gain on that UNet, not a rule (a note says so); ``o.missing`` is its verdict at the shipped threshold
    (`Calibration`: the lowest right at least half the time on the UNet's cases), ``o.confidence["neglect"]`` the
    share of real failures at its score. Leakage (where a causal score did worse: ROC AUC 0.53 against 0.76,
    benchmarks/causal_leakage.py), merging and relations are the attention diagnosis's. `image` and `maps` are a
    generation of `pipe` by
    `crossattn.generation.generate` (its settings, in ``maps.info``, are repeated with each object removed). Costs
    len(objects) more generations.

        >>> import crossattn
        >>> from crossattn.generation import generate
        >>> pipe = crossattn.load_pipeline()
        >>> image, maps = generate(pipe, "a red circle left of a blue square", seed=0, steps=8)
        >>> d = crossattn.diagnose_causally(pipe, image, maps)
        >>> [round(o.causal_neglect, 2) >= 0 for o in d.objects]
        [True, True]
    """
    images_only(pipe, "diagnose_causally")
    info = maps.info
    if info.seed is None or info.size is None or info.explained:
        raise InputError("diagnose_causally needs the maps of a generation made by crossattn.generation.generate "
                         "(its seed and settings repeat it with each object removed)")
    options = dict(seed=info.seed, steps=info.steps, guidance=info.guidance_scale, size=tuple(info.size),
                   negative_prompt=info.negative_prompt)
    calibration = Calibration.load()
    d = diagnose(maps, objects, calibration=calibration)
    regions = []
    for o in d.objects:
        with intervene(pipe, {o.name: 0.0}):
            ablated, _ = generate(pipe, info.prompt, **options)
        change = change_map(image, ablated)
        regions.append(float(change[o.mask].mean()) if o.mask is not None and o.mask.any() else 0.0)
    largest = max(regions, default=0.0)
    threshold = calibration.thresholds.get("causal_neglect", math.inf)
    for o, region in zip(d.objects, regions):
        o.causal_neglect = 1 - region / max(largest, 1e-9)
        o.missing = o.causal_neglect >= threshold
        o.confidence["neglect"] = calibration.confidence("causal_neglect", o.causal_neglect)
    d.notes.append(f"neglect from {len(d.objects)} causal checks (each object's attention removed: "
                   f"{len(d.objects)} more generations); this score was validated on the embedded UNet (ROC AUC "
                   "0.93 against the attention's 0.78) and ranked missing objects worse than the attention on the "
                   "embedded MMDiT (0.73 against 0.82)")
    return d


def repair(pipe, prompt: str, *, seed: int = 0, scale: float = REPAIR_SCALE, share: float = REPAIR_SHARE,
           **pipe_kwargs) -> Repair:
    """Diagnose one generation; if objects were neglected, regenerate with their words' attention multiplied by
    `scale` in the first `share` of the steps, and diagnose the regeneration from the steps after the boost.

    One extra generation when something was neglected, none otherwise (then ``image is image_before`` and
    ``boosted`` is empty). Forward only: no gradient steps on the latent (unlike Attend-and-Excite).

        >>> import crossattn
        >>> r = crossattn.repair(crossattn.load_pipeline(), "a red circle left of a blue square", num_inference_steps=6)
        >>> sorted(r.boosted) == sorted(set(r.boosted) & {o.name for o in r.before.objects if o.missing})
        True
    """
    images_only(pipe, "repair")
    if not math.isfinite(scale) or scale <= 1:
        raise InputError(f"a repair boosts attention: scale must be a finite number > 1, got {scale!r}")
    if not 0 < share < 1:
        raise InputError(f"share must be between 0 and 1 (the early part of the steps boosted), got {share!r}")
    options = generate_options(pipe_kwargs)
    image, maps = generate(pipe, prompt, seed=seed, **options)
    before = diagnose(maps)
    total = len(maps.data.step_counts)
    window = (0, max(1, min(total - 1, round(total * share))))
    neglected = {o.name: scale for o in before.objects if o.missing}
    if not neglected:
        return Repair(prompt, image, image, before, before, {}, window, maps, maps)
    with intervene(pipe, neglected, steps=window):
        fixed, fixed_maps = generate(pipe, prompt, seed=seed, **options)
    after = diagnose(fixed_maps, objects=[o.name for o in before.objects], steps=list(range(window[1], total)))
    return Repair(prompt, image, fixed, before, after, neglected, window, maps, fixed_maps)
