"""Do the maps explain? The "What if" panel (take one word away, regenerate with the generation's own settings and
seed, see what changed and where) and the "Repair" button (boost the attention of the objects the diagnosis found
neglected). Both run beside the generation a session holds (`Result`), on its model, one request at a time with
the generations (they swap the same pipeline's processors)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .. import placement
from ..causal import HOWS, delete_word, effects, repair
from ..errors import InputError
from ..pictures import effect_picture, repair_picture
from ..words import find_word, slug, word_ref
from .checks import NO_RESULT, Checks, number
from .guard import friendly, lenient
from .limits import Loaded, Models
from .store import Result
from .video import refuse_video

HOW_LABELS = {"prompt": "delete it from the prompt", "attention": "scale its attention"}
SCALE_RANGE = (0, 3)
MODEL_LOCK = "model"  # the concurrency group of every event that runs the pipeline: one at a time


@dataclass(frozen=True)
class Settings:
    """The generation's own settings, as `effects` and `repair` take them: the counterfactual differs only in the
    word taken away."""

    prompt: str
    seed: int
    steps: int
    options: dict

    @classmethod
    def of(cls, result: Result) -> Settings:
        info = result.maps.info
        width, height = info.size
        options = {"num_inference_steps": len(result.maps.data.step_counts), "guidance_scale": info.guidance_scale,
                   "width": width, "height": height}
        if info.negative_prompt:
            options["negative_prompt"] = info.negative_prompt
        return cls(info.prompt, info.seed, options["num_inference_steps"], options)


def step_range(text: str, steps: int) -> tuple[int, int | None]:
    """'START:STOP' (0-based, STOP excluded; either may be left out) as `effects` takes it, within `steps`."""
    allowed = f"write START:STOP with 0 <= START < STOP <= {steps} (its steps), e.g. 0:{max(1, steps // 2)}"
    start, colon, stop = (text or "").strip().partition(":")
    try:
        first = int(start) if start.strip() else 0
        last = int(stop) if stop.strip() else steps
    except ValueError:
        raise InputError(f"bad step range {text!r}: {allowed}") from None
    if not colon or not 0 <= first < last <= steps:
        raise InputError(f"step range {text!r} is outside this generation's {steps} steps: {allowed}")
    return first, last


def check_word(result: Result, word: str, how: str) -> str:
    """The word or phrase if the generation's maps have it (and, to delete it, if the prompt keeps a rest)."""
    if not (word or "").strip():
        raise InputError("pick a word or object of the prompt")
    find_word(result.maps.data.words, *word_ref(word))
    if how == "prompt":
        delete_word(result.maps.info.prompt, word)
    return word


def check_how(how: str) -> str:
    if how not in HOWS:
        raise InputError(f"how must be one of {', '.join(HOWS)}, got {how!r}")
    return how


@dataclass(frozen=True)
class Question:
    """A What-if request that passed every check."""

    word: str
    how: str
    scale: float
    steps: tuple[int, int | None]


FIELDS = ["state", "word", "how", "scale", "window"]


def check_question(result: Result | None, word: str, how: str, scale: object,
                   window: str) -> tuple[Question | None, Checks]:
    """The question if it can be asked of this generation, with the checks' messages by field."""
    checks = Checks()
    if result is None:
        checks.errors["word"] = NO_RESULT
        return None, checks
    checks("word", refuse_video, result, "What if")
    if checks.errors:
        return None, checks
    how = checks("how", check_how, how)
    word = checks("word", check_word, result, word, how)
    if how != "attention":  # deleting a word removes it outright: scale and steps do not apply
        return (None if checks.errors else Question(word, "prompt", 0.0, (0, None))), checks
    scale = checks("scale", number, scale, "scale", *SCALE_RANGE)
    steps = checks("window", step_range, window, Settings.of(result).steps)
    return (None if checks.errors else Question(word, how, scale, steps)), checks


class CausalPanels:
    """The Repair button under the diagnosis of the generation page, and the What-if panel further down."""

    def __init__(self, models: Models, state: gr.State):
        self.models, self.state = models, state

    def build_repair(self) -> None:
        """Under the diagnosis: the button (shown only when it found neglect) and its answer (shown once given)."""
        self.repair = gr.Button("Repair", visible=False, elem_id="repair")
        with gr.Row(visible=False) as self.repair_row:
            self.repaired = gr.Image(label="Before | repaired", type="filepath", elem_id="repair-picture",
                                     elem_classes="pixels", scale=2)
            self.repair_text = gr.Markdown(elem_id="repair-text")

    def build_what_if(self) -> None:
        gr.Markdown("## What if — take a word away and regenerate with the same seed\n"
                    "Where the picture changes is what the word caused; its attention map should agree (r).")
        with gr.Row():
            self.word = gr.Dropdown(label="Word or object", choices=[], interactive=True, elem_id="whatif-word")
            self.how = gr.Radio([(label, how) for how, label in HOW_LABELS.items()], value="prompt", label="How",
                                elem_id="whatif-how")
            self.scale = gr.Slider(*SCALE_RANGE, value=0, step=0.1, label="Attention scale (0 = removed)",
                                   elem_id="whatif-scale", info="scale its attention only")
            self.window = gr.Textbox(label="Steps (START:STOP, from 0)", value=":", elem_id="whatif-window",
                                     info="scale its attention only; ':' = every step")
        self.ask = gr.Button("What if?", elem_id="whatif-run")
        with gr.Row():
            self.picture = gr.Image(label="Attention | change | counterfactual", type="filepath",
                                    elem_id="whatif-picture", elem_classes="pixels", scale=2)
            self.answer = gr.Markdown(elem_id="whatif-answer")

    def wire(self) -> None:
        inputs = [self.state, self.word, self.how, self.scale, self.window]
        # preprocess=False: the values reach `check_question` as sent, which names what is wrong with each
        self.ask.click(friendly(self.on_ask), inputs=inputs, outputs=[self.picture, self.answer], api_name="what_if",
                       concurrency_limit=1, concurrency_id=MODEL_LOCK, validator=self.validate, preprocess=False,
                       show_progress="full")
        self.repair.click(friendly(self.on_repair), inputs=[self.state],
                          outputs=[self.repair_row, self.repaired, self.repair_text], api_name="repair",
                          concurrency_limit=1, concurrency_id=MODEL_LOCK, show_progress="full")

    def updates(self, result: Result) -> dict:
        """After a generation: its words to pick from (objects first) and no answers of the previous one."""
        maps = result.maps
        choices = list(dict.fromkeys(placement.objects(maps) + maps.names))
        return {self.word: gr.update(choices=choices, value=choices[0] if choices else None), self.picture: None,
                self.answer: "", self.repair_row: gr.update(visible=False), self.repaired: None, self.repair_text: ""}

    def repair_button(self, neglected: list[str]) -> dict:
        """Shown only beside a diagnosis that found neglect."""
        label = f"Repair: boost {', '.join(neglected)}" if neglected else "Repair"
        return {self.repair: gr.update(visible=bool(neglected), value=label)}

    @property
    def outputs(self) -> list:
        return [self.word, self.picture, self.answer, self.repair_row, self.repaired, self.repair_text]

    @lenient
    def validate(self, result: Result | None, word: str, how: str, scale: object, window: str) -> list[dict]:
        return check_question(result, word, how, scale, window)[1].verdicts(FIELDS)

    def loaded(self, result: Result) -> Loaded:
        return self.models.get(result.maps.info.model)

    def on_ask(self, result: Result | None, word: str, how: str, scale: object, window: str) -> tuple:
        question, checks = check_question(result, word, how, scale, window)
        checks.refuse()
        settings, loaded = Settings.of(result), self.loaded(result)
        with loaded.lock:
            eff = effects(loaded.pipe, settings.prompt, [question.word], how=question.how, scale=question.scale,
                          steps=question.steps, seed=settings.seed, **settings.options)
        effect = eff[question.word]
        what = (f"deleted from the prompt (“{effect.prompt}”)" if question.how == "prompt" else
                f"its attention ×{question.scale:g} in steps {question.steps[0]}:{question.steps[1]}")
        r = "undefined (a flat map)" if effect.agreement is None else f"{effect.agreement:.2f}"
        answer = (f"**{question.word}** {what}, seed {settings.seed}: mean change {effect.change.mean():.3f}, "
                  f"max {effect.change.max():.3f}; agreement of its attention map with the change: r = {r}.")
        name = f"whatif_{slug(question.word)}_{question.how}"
        return result.save(effect_picture(eff, question.word), name), answer

    def on_repair(self, result: Result | None) -> tuple:
        if result is None:
            raise InputError(NO_RESULT)
        settings, loaded = Settings.of(result), self.loaded(result)
        with loaded.lock:
            r = repair(loaded.pipe, settings.prompt, seed=settings.seed, **settings.options)
        if not r.boosted:
            return gr.update(visible=True), None, "Nothing was neglected in the whole generation: nothing to repair."
        boosted = ", ".join(f"{word} ×{scale:g}" for word, scale in r.boosted.items())
        still = [name for name in r.boosted if name not in r.recovered]
        lines = [f"- boosted: {boosted} in steps {r.steps[0]}:{r.steps[1]}",
                 f"- recovered: {', '.join(r.recovered) or 'none'}"]
        lines += [f"- still missing: {', '.join(still)}"] if still else []
        return gr.update(visible=True), result.save(repair_picture(r), "repair"), "\n".join(lines)

