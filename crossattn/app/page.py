"""The generation page: its sections, the callbacks that fill them and their wiring."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import gradio as gr

from .. import placement, render, reports
from ..errors import InputError
from ..generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, run
from ..heatmaps import HeatMaps
from ..words import slug
from . import video
from .checks import CONCEPT_METHODS, NO_RESULT, check_generation, check_view, size_info
from .explaining import ExplainTab
from .guard import Stopped, abandoned, friendly, lenient
from .limits import FILES_TTL_S, GUIDANCE_RANGE, SESSION_TTL_S, Models
from .store import Result
from .views import (
    BIG,
    BIG_LABEL,
    View,
    brief,
    concept_items,
    diagnosis_views,
    gallery_items,
    layer_head_cells,
    notes_text,
    placement_views,
    selected_figure,
    step_view,
    time_views,
    write_zip,
)
from .whatif import MODEL_LOCK, CausalPanels

EXAMPLES = [
    "a red circle left of a blue square",
    "a small green triangle above a yellow circle",
    "a large cyan square right of a red triangle",
    "a blue square on the right",
    "a yellow square, a green circle and a blue triangle",
]

CONCEPT_METHOD_INFO = ("prompt (the default): each concept read as a prompt of its own; outputs: ConceptAttention "
                       "(transformers); attention: a softmax over the concepts alone")

def step_slider(steps: int, value: int) -> dict:
    """A 1-based step slider over `steps` steps; hidden for a single step (a slider needs min < max)."""
    if steps == 1:
        return gr.update(visible=False, value=1)
    return gr.update(visible=True, minimum=1, maximum=steps, value=value)


def picture_and_text(title: str, picture: tuple[str, str], text: tuple[str, str]) -> tuple[gr.Image, gr.Markdown]:
    """A section: its title, then a picture beside a text, each given as (label, element id)."""
    gr.Markdown(title)
    with gr.Row():
        image = gr.Image(label=picture[0], type="filepath", elem_id=picture[1], scale=1)
        words = gr.Markdown(label=text[0], elem_id=text[1])
    return image, words


class DemoApp:
    """The page's components (one method per section) and the callbacks that fill them."""

    def __init__(self, models: Models):
        self.models = models
        self.default = models.get(None)  # loaded before the first request: the first click is fast

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="crossattn — where did each word go?", delete_cache=(FILES_TTL_S, FILES_TTL_S)) as page:
            self.state = gr.State(None, time_to_live=SESSION_TTL_S)
            self.causal, self.explaining = CausalPanels(self.models, self.state), ExplainTab(self.models)
            with gr.Tabs() as self.tabs:
                with gr.Tab("Generate an image", id="generate"):
                    gr.Markdown("# crossattn — where did each word of the prompt go?\n"
                                "Generate an image; every word gets a heat map of the pixels that attended to it. "
                                "Scroll down for who owns each pixel, where each object landed, when that was "
                                "decided, what a word caused, and what each layer and head saw.")
                    self.inputs_section()
                    self.filters_section()
                    self.words_section()
                    self.placement_section()
                    self.diagnosis_section()
                    self.causal.build_repair()
                    self.time_section()
                    self.model_section()
                    self.causal.build_what_if()
                    self.downloads_section()
                with gr.Tab("Explain an image", id="explain"):
                    self.explaining.build()
            self.wire()
            self.causal.wire()
            self.explaining.wire()
        return page

    # ---- sections ----
    def inputs_section(self) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                self.request_form()
                self.words = gr.Textbox(label="Words to show (comma-separated; empty = all; Enter to apply)", value="",
                                        elem_id="words")
                self.expect = gr.Textbox(label="Intended layout (one per line, e.g. “circle left_of square”, "
                                               "“circle on the left”, “circle in 0,0,0.5,1”); empty = read from prompt",
                                         value="", lines=2, elem_id="expect")
                self.concepts = gr.Textbox(label="Locate other words (comma-separated; need not be in the prompt)",
                                           value="", elem_id="concepts",
                                           info="concept maps: e.g. “sky, background, square”")
                self.concept_method = gr.Radio(CONCEPT_METHODS, value=CONCEPT_METHODS[0], label="How to locate them",
                                               elem_id="concept-method", info=CONCEPT_METHOD_INFO)
                self.keep_heads = gr.Checkbox(label="Keep every layer and head",
                                              info="for the model view below; slower and heavier")
                with gr.Row():
                    self.run = gr.Button("Generate", variant="primary")
                    self.stop = gr.Button("Stop", variant="stop")
                self.status = gr.Markdown(elem_id="status")  # which prompt the views show; that Stop stopped
                gr.Examples(EXAMPLES, inputs=[self.prompt])
            with gr.Column(scale=1):
                with gr.Row():  # a video: the frame every view shows, beside the whole video
                    self.image = gr.Image(label="Generated image", type="filepath", height=420,
                                          elem_id="generated-image", elem_classes="pixels")
                    self.video = video.video_panel()
                self.notes = gr.Markdown(label="Notes", elem_id="notes")
                self.send = gr.Button("Explain this image in the “Explain an image” tab", size="sm",
                                      elem_id="send-to-explain")

    def request_form(self) -> None:
        """What to generate and with which model; the limits shown are those of the default model here."""
        limits = self.default.limits
        self.prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=2, elem_id="prompt")
        self.negative = gr.Textbox(label="Negative prompt", value="")
        with gr.Row():
            self.seed = gr.Number(label="Seed", value=0, precision=0, elem_id="seed")
            self.dice = gr.Button("Random seed", size="sm")
        with gr.Row():
            self.steps = gr.Slider(1, limits.max_steps, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
            self.guidance = gr.Slider(*GUIDANCE_RANGE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale",
                                      elem_id="guidance")
        with gr.Row():
            self.size = gr.Textbox(label="Image size (WIDTHxHEIGHT)", value="", elem_id="size",
                                   info=size_info(self.default))
            self.frames = video.frames_field(self.default)  # shown for video models only
        with gr.Row():
            self.model = gr.Dropdown(self.models.choices, value=self.models.default, label="Model", elem_id="model")
            self.other_model = gr.Textbox(label="Other model (hub id or folder)", value="", elem_id="other-model",
                                          visible=self.models.allow_any)

    def filters_section(self) -> None:
        with gr.Accordion("Display and filters (every view redraws from the stored maps)", open=True):
            with gr.Row():
                self.alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay alpha")
                self.cmap = gr.Dropdown(list(render.COLORMAPS), value="jet", label="Colour map")
                self.resolutions = gr.CheckboxGroup(label="Resolutions (none ticked = all)", choices=[])
                self.blocks = gr.CheckboxGroup(label="Blocks (none ticked = all)", choices=[])
                self.first_step = gr.Slider(1, DEFAULT_STEPS, value=1, step=1, label="First step", elem_id="first-step")
                self.last_step = gr.Slider(1, DEFAULT_STEPS, value=DEFAULT_STEPS, step=1, label="Last step",
                                           elem_id="last-step")
                self.frame_slider = video.frame_slider()

    def words_section(self) -> None:
        gr.Markdown("## Words — click one to select it")
        with gr.Row():
            self.gallery = gr.Gallery(label="Per-word heat maps", columns=5, height="auto", allow_preview=False,
                                      elem_id="word-gallery", elem_classes="pixels")
            with gr.Column():
                self.selected = gr.Dropdown(label="Selected word", choices=[], interactive=True, elem_id="selected")
                self.big = gr.Image(label=BIG_LABEL, type="filepath", height=420, elem_id="selected-map")
        self.concept_gallery = gr.Gallery(label="Other words located (concept maps: each pixel's share among them)",
                                          columns=5, height="auto", allow_preview=False, visible=False,
                                          elem_id="concept-gallery", elem_classes="pixels")

    def placement_section(self) -> None:
        self.segmentation, self.checks = picture_and_text(
            "## Who owns each pixel, and where did each object land?",
            ("Segmentation (one region per object phrase)", "segmentation"), ("Layout checks", "checks"))
        self.table = gr.Dataframe(headers=reports.TABLE_HEADERS, label="Placement", interactive=False, wrap=True,
                                  elem_id="placement-table")

    def diagnosis_section(self) -> None:
        self.diagnosis_picture, self.verdicts = picture_and_text(
            "## Diagnosis — why did it go wrong?", ("Each object's region, with its verdict", "diagnosis-picture"),
            ("Verdicts", "verdicts"))

    def time_section(self) -> None:
        gr.Markdown("## Time — how the selected word's map evolved over the denoising steps")
        with gr.Row():
            with gr.Column():
                self.step = gr.Slider(1, DEFAULT_STEPS, value=DEFAULT_STEPS, step=1, label="Step",
                                      elem_id="time-slider")
                self.frame = gr.Image(label="Map at this step", type="filepath", elem_id="time-frame")
            self.animation = gr.Image(label="Animation", type="filepath", elem_id="animation")
            self.paths = gr.Image(label="Centroid paths (dark = early, ring = final)", type="filepath",
                                  elem_id="paths")

    def model_section(self) -> None:
        with gr.Column(visible=False) as self.model_view:
            gr.Markdown("## Model view — the selected word per layer (rows) and head (columns); click to enlarge")
            with gr.Row():
                self.grid = gr.Gallery(label="Layers × heads", columns=4, height="auto", allow_preview=False,
                                       elem_id="layer-head-grid", elem_classes="pixels", scale=1)
                self.cell = gr.Image(label="Layer and head", type="filepath", elem_id="cell", scale=1)
            self.legend = gr.Markdown(label="Layers")

    def downloads_section(self) -> None:
        gr.Markdown("## Downloads")
        with gr.Row():
            self.prepare = gr.Button("Prepare downloads")
            self.download = gr.File(label="Everything at the current settings (zip)", elem_id="downloads")

    # ---- wiring ----
    @property
    def view_inputs(self) -> dict[str, gr.components.Component]:
        return {"words": self.words, "expect": self.expect, "alpha": self.alpha, "cmap": self.cmap,
                "resolutions": self.resolutions, "blocks": self.blocks, "first_step": self.first_step,
                "last_step": self.last_step, "selected": self.selected, "step": self.step, "frame": self.frame_slider}

    @property
    def generate_inputs(self) -> dict[str, gr.components.Component]:
        """The request's controls, by the parameter names of `on_generate` (and of the API)."""
        return {"prompt": self.prompt, "negative": self.negative, "seed": self.seed, "steps": self.steps,
                "guidance": self.guidance, "size": self.size, "model": self.model, "other_model": self.other_model,
                "words": self.words, "expect": self.expect, "keep_heads": self.keep_heads, "concepts": self.concepts,
                "concept_method": self.concept_method, "frames": self.frames}

    @property
    def selection_outputs(self) -> list:
        return [self.state, self.selected, self.big, self.frame, self.animation, self.grid, self.cell, self.legend]

    def wire(self) -> None:
        # preprocess=False: the request reaches `check_generation` as sent, which says what is wrong with each value
        # (Gradio's preprocessing would round a seed of 1.5 to 2 and answer "7", "abc" or NaN with a generic error).
        generation = self.run.click(
            friendly(self.on_generate), inputs=list(self.generate_inputs.values()),
            outputs=[self.state, self.image, self.notes, self.status, self.resolutions, self.blocks, self.first_step,
                     self.last_step, self.step, self.model_view, self.grid, self.concept_gallery, self.video,
                     self.frame_slider, *self.causal.outputs],
            api_name="generate", concurrency_limit=1, concurrency_id=MODEL_LOCK, show_progress="full",
            # the progress (and a stopped run's end) on the picture, not on the status line that Stop writes to
            show_progress_on=[self.image], validator=self.validate_generation, preprocess=False,
        )
        everything = [*self.selection_outputs, self.gallery, self.segmentation, self.table, self.checks, self.paths,
                      self.concept_gallery, self.diagnosis_picture, self.verdicts, self.causal.repair, self.image]
        generation.success(friendly(self.on_render), inputs=[self.state], inputs_kwargs=self.view_inputs,
                           outputs=everything, api_name="render", validator=self.view_validator("words"))
        self.stop.click(self.on_stop, inputs=[self.state, self.prompt], outputs=[self.status], cancels=[generation],
                        api_visibility="private")
        self.dice.click(lambda: random.randint(0, 2**31 - 1), outputs=self.seed, api_visibility="private")
        self.send.click(friendly(self.on_send), inputs=[self.state, self.frame_slider],
                        outputs=[self.explaining.picture, self.explaining.caption, self.tabs], api_visibility="private")
        self.model.input(friendly(self.on_model), inputs=[self.model], outputs=[self.size, self.frames],
                         api_visibility="private")
        private = dict(inputs=[self.state], inputs_kwargs=self.view_inputs, api_visibility="private",
                       trigger_mode="always_last")
        # .input and .submit fire on user edits only: .change would also fire when a generation updates a control.
        # One event per control, so that "generate an image first" is shown under the control just used.
        display = {"alpha": self.alpha.input, "cmap": self.cmap.input, "resolutions": self.resolutions.input,
                   "blocks": self.blocks.input, "first_step": self.first_step.input,
                   "last_step": self.last_step.input, "words": self.words.submit, "expect": self.expect.blur,
                   "frame": self.frame_slider.input}
        for name, trigger in display.items():
            trigger(friendly(self.on_render), outputs=everything, validator=self.view_validator(name), **private)
        self.selected.input(friendly(self.on_select), outputs=self.selection_outputs,
                            validator=self.view_validator("selected"), **private)
        self.gallery.select(friendly(self.on_pick_word), outputs=self.selection_outputs, **private)
        self.concept_gallery.select(friendly(self.on_pick_concept), outputs=[self.big], **private)
        self.step.input(friendly(self.on_step), outputs=[self.frame], validator=self.view_validator("step"),
                        **private)
        self.grid.select(friendly(self.on_pick_cell), outputs=[self.cell], **private)
        self.prepare.click(friendly(self.on_prepare), inputs=[self.state], inputs_kwargs=self.view_inputs,
                           outputs=[self.download], api_name="prepare_downloads")

    # ---- checks before anything runs: their messages are shown under the fields they are about ----
    @lenient
    def validate_generation(self, *values) -> list[dict]:
        """A model typed in is not loaded here (that waits in the queue, where `on_generate` checks again)."""
        fields = list(self.generate_inputs)
        request = dict(zip(fields, values, strict=True))
        for unused in ("negative", "keep_heads", "concepts"):  # anything goes
            del request[unused]
        return check_generation(self.models, **request, load=False)[1].verdicts(fields)

    def view_validator(self, field: str) -> Callable:
        """The check of a redraw asked for by `field` (the control just used)."""

        def validate(result: Result | None, **view) -> list[dict]:
            return check_view(result, View(**view), field).verdicts(["state", *self.view_inputs])

        return lenient(validate)

    # ---- callbacks ----
    def on_generate(self, prompt: str, negative: str, seed: float, steps: float, guidance: float, size: str,
                    model: str, other_model: str, words: str, expect: str, keep_heads: bool, concepts: str = "",
                    concept_method: str = CONCEPT_METHODS[0], frames: object = None,
                    progress=gr.Progress()) -> dict:  # noqa: B008 (how Gradio hands out progress bars)
        """Check everything, generate one image (or video) with its maps, and set the filter panel up for them."""
        job, checks = check_generation(self.models, prompt, seed, steps, guidance, size, model, other_model,
                                       words, expect, concept_method, negative=negative, concepts=concepts,
                                       frames=frames)
        checks.refuse()
        request = job.request

        def on_step(done: int, total: int) -> None:
            if abandoned():
                raise Stopped(f"generation stopped after step {done} of {total}: cancelled or the client left")
            progress((done, total), desc="denoising", unit="steps")

        progress(0, desc="waiting for the model")
        with job.loaded.lock:
            output, maps = run(request, on_step=on_step, per_layer=keep_heads is True, per_head=keep_heads is True)
        result = Result.new(output, maps)  # a video keeps every frame
        resolutions = [f"{h}x{w}" for h, w in maps.resolutions]
        steps = request.steps
        return {
            self.state: result,
            self.image: video.generated_image(result),
            self.notes: notes_text(maps),
            self.status: f"Showing {brief(prompt)} (seed {request.seed}, {steps} step{'s' * (steps != 1)}"
                          f"{video.frames_text(result)}, {maps.info.model}).",
            self.resolutions: gr.update(choices=resolutions, value=resolutions,
                                        visible=maps.info.resolution_sites),
            self.blocks: gr.update(choices=maps.blocks, value=maps.blocks),
            self.first_step: step_slider(steps, 1),
            self.last_step: step_slider(steps, steps),
            self.step: step_slider(steps, steps),
            self.model_view: gr.update(visible=maps.data.per_head),
            self.grid: gr.update(columns=maps.data.heads),
            self.concept_gallery: gr.update(visible=maps.concepts is not None),
            self.video: video.video_update(result),
            self.frame_slider: video.frame_slider_update(result),
        } | self.causal.updates(result)

    def on_send(self, result: Result | None, frame: float = 0) -> tuple:
        """The generated image (a video: the frame shown) and its prompt to the Explain tab, which is then shown."""
        if result is None:
            raise InputError(NO_RESULT)
        shot = result.at(frame)
        return shot.save(shot.image, "image"), (result.maps.info.prompt or ""), gr.Tabs(selected="explain")

    def on_model(self, model: str) -> tuple:
        """Another model picked: the size hint names the sizes that one can make; Frames is shown for a video."""
        loaded = self.models.get(model)
        return gr.update(info=size_info(loaded)), video.frames_update(loaded)

    def on_stop(self, result: Result | None, prompt: str) -> str:
        """Stop pressed: say that nothing new was made and which prompt the views still show."""
        if result is None:
            return "Stopped: no image was made."
        shown = (result.maps.info.prompt or "")
        if shown.strip() == (prompt or "").strip():
            return f"Stopped: no new image was made; the views still show {brief(shown)} as before."
        return (f"Stopped: {brief(prompt)} was not generated; the views below still show the previous prompt, "
                f"{brief(shown)}.")

    def on_render(self, result: Result | None, **view) -> dict:
        """Every view, from the stored maps at the current settings (a video: those of the frame picked, each view
        drawn as for an image, and that frame in the image area)."""
        if result is None:
            raise InputError(NO_RESULT)
        view = View(**view)
        shot = result.at(view.frame)  # the result itself for an image
        maps = view.filtered(shot.maps)
        shown_frame = {self.image: video.shown_frame(result, view.frame)}  # a video: the frame picked
        if not maps.words:
            return {self.state: replace(result, shown=[], cells=[]), self.selected: gr.update(choices=[], value=None),
                    self.gallery: [], self.big: None, self.frame: None, self.animation: None, self.grid: [],
                    self.cell: None, self.legend: "", self.segmentation: None, self.table: None,
                    self.checks: "_No words to map._", self.paths: None, self.concept_gallery: [],
                    self.diagnosis_picture: None, self.verdicts: "_No words to map._"} | \
                self.causal.repair_button([]) | shown_frame
        shown = view.shown(result)
        segmentation, table, checks, paths = placement_views(shot, maps, view)
        out = self.selection(replace(result, shown=shown), maps, view)
        picture, verdicts, neglected = diagnosis_views(shot, maps)
        if result.frames is not None:  # Repair compares images (`causal.images_only`): not offered for a video
            neglected = []
        return out | {self.gallery: gallery_items(shot, maps, shown, view), self.segmentation: segmentation,
                      self.table: table, self.checks: checks, self.paths: paths,
                      self.concept_gallery: concept_items(shot, maps, view), self.diagnosis_picture: picture,
                      self.verdicts: verdicts} | self.causal.repair_button(neglected) | shown_frame

    def selection(self, result: Result, maps: HeatMaps, view: View) -> dict:
        """The views of the selected word: enlarged map, time, model view (the first object by default). `maps`:
        those of the frame picked, filtered; the state keeps `result` whole (a video: every frame)."""
        shot = result.at(view.frame)
        objects = placement.objects(maps)
        choices = list(dict.fromkeys(result.shown + objects))
        name = view.selected if view.selected in choices else (objects or choices)[0]
        frame, animation = time_views(shot, maps, name, view)
        out = {self.selected: gr.update(choices=choices, value=name), self.frame: frame, self.animation: animation,
               self.big: gr.update(value=selected_figure(shot, maps, name, view), label=BIG_LABEL),
               self.cell: None}
        cells = []
        if maps.data.per_head:
            items, cells, legend = layer_head_cells(shot, maps, name, view)
            out |= {self.grid: items, self.legend: legend}
        return out | {self.state: replace(result, cells=cells)}

    def on_select(self, result: Result | None, **view) -> dict:
        """A word picked from the list: its enlarged map, time and model views."""
        if result is None:
            raise InputError(NO_RESULT)
        if not result.shown:  # a prompt without words: nothing to select
            return gr.skip()
        view = View(**view)
        return self.selection(result, view.filtered(result.at(view.frame).maps), view)

    def on_pick_word(self, result: Result | None, evt: gr.SelectData, **view) -> dict:
        """A gallery click: the word of the clicked tile, as the gallery shows it (not as the words box reads now)."""
        if result is None or not 0 <= evt.index < len(result.shown):
            raise InputError("that tile is gone: generate again or pick a word from the list")
        return self.on_select(result, **(view | {"selected": result.shown[evt.index]}))

    def on_pick_concept(self, result: Result | None, evt: gr.SelectData, **view) -> dict:
        """A click on a concept map: that map large, with its colour bar, where the selected word's map is."""
        concepts = result.maps.concepts.words if result is not None and result.maps.concepts is not None else []
        if not 0 <= evt.index < len(concepts):
            raise InputError("that concept map is gone: generate again")
        name, view = concepts[evt.index], View(**view)
        shot = result.at(view.frame)
        figure = shot.maps.concept(name).figure(shot.image, view.alpha, view.cmap, tile=BIG)
        return {self.big: gr.update(value=shot.save(figure, f"concept_{slug(name)}_large"),
                                    label=f"Located word “{name}”, large (concept map)")}

    def on_step(self, result: Result | None, **view) -> dict:
        """The step slider moved: the selected word's map at that step."""
        if result is None:
            raise InputError(NO_RESULT)
        if not result.shown:  # a prompt without words: no map to show
            return gr.skip()
        view = View(**view)
        shot = result.at(view.frame)
        maps = view.filtered(shot.maps)
        return {self.frame: step_view(shot, maps, view.selected or result.shown[0], view)}

    def on_pick_cell(self, result: Result | None, evt: gr.SelectData, **view) -> dict:
        """A model-view click: that layer and head of the selected word, large, named in the label."""
        if result is None or not 0 <= evt.index < len(result.cells):
            raise InputError("that cell is gone: generate again")
        layer, head = result.cells[evt.index]
        view = View(**view)
        shot = result.at(view.frame)
        maps = view.filtered(shot.maps)
        if layer not in maps.sites or head >= maps.data.sums[layer].shape[1]:
            raise InputError("that tile shows no map: its layer has fewer heads or is filtered out")
        row = list(maps.sites).index(layer)
        m = maps.filter(layers=[layer], heads=[head]).word(view.selected)
        figure = replace(m, word=f"{view.selected}: L{row} head {head}").figure(shot.image, view.alpha, view.cmap,
                                                                                 BIG)
        return {self.cell: gr.update(value=shot.save(figure, f"{slug(view.selected)}_L{row}_h{head}_large"),
                                     label=f"layer L{row} = {layer}, head {head}")}

    def on_prepare(self, result: Result | None, **view) -> dict:
        """The one zip of everything, written now (never on a mere display change)."""
        if result is None:
            raise InputError("generate an image first")
        return {self.download: write_zip(result, View(**view))}

