"""`Trace`: install the hooks on a pipeline, follow each generation it runs, give everything back on exit.

A generation, as the hooks see it: the text encoders and `encode_prompt` run first (`prompt_watch.py` keeps their
ids and embeddings); the denoiser's first call then fixes the text positions kept and where the recorded batch
rows go (`row_slots.py`), and each call after it opens a step on the recorder, which the layers' observers fill
(`crossattn.capture`). After that, a text encoder or `encode_prompt` call, or a timestep that rises, starts the
next generation's recording. `heat_maps()` reads the latest one (`maps.py`). What the trace switches, or
refuses, to see the attention at all is in `configuration.py`.
"""

from __future__ import annotations

import torch

from .. import concepts as concept_maps
from ..capture import AttentionObserver, Recorder, StepState
from ..capture import observer as observing
from ..concepts import resolve_method
from ..errors import InputError
from ..families import family_of
from ..heatmaps import HeatMaps
from ..rows import NEGATIVE, PROMPT, RowFinder
from . import configuration as config
from . import maps
from .prompt_watch import PromptWatch
from .row_slots import RowState

MASSES = ("raw", "text")


class Trace:
    """Recording state for one pipeline; use through `crossattn.trace`. Not thread-safe: one call at a time."""

    # Where this object's attention mode sits among others on the same layer: an intervention's is always above
    # a trace's, whichever was entered first, so the trace records the attention the intervention made.
    on_top = False

    def __init__(self, pipe, *, time_bins: int = 4, per_head: bool = False, per_layer: bool = False,
                 trace_size: int = 16, capture_uncond: bool = False, mass: str = "raw",
                 concepts: list[str] | None = None, concept_method: str | None = None):
        if time_bins < 1:
            raise InputError(f"time_bins must be >= 1, got {time_bins}")
        if mass not in MASSES:
            raise InputError(f"mass must be one of {MASSES}, got {mass!r}")
        self.pipe = pipe
        self.family = family_of(pipe)
        refused = self.family.refused(pipe)
        if refused:
            raise InputError(f"{type(pipe).__name__} is not supported yet: {refused}")
        self.denoiser = getattr(pipe, self.family.denoiser)
        # Experts that take over some steps (Wan 2.2's low-noise transformer): the same layers, traced alike, into
        # the same sites: the maps cover every step, whichever expert ran it.
        self._denoisers = [self.denoiser] + [getattr(pipe, name) for name in self.family.experts(pipe)]
        self.layers = self.family.layers(self.denoiser)
        expert_layers = [self.family.layers(expert) for expert in self._denoisers[1:]]
        for denoiser, layers in zip(self._denoisers, [self.layers, *expert_layers], strict=True):
            config.check_traceable(denoiser, layers)
        if any(layers.keys() != self.layers.keys() for layers in expert_layers):
            raise InputError(f"the experts of {type(pipe).__name__} have different attention layers: crossattn "
                             "traces experts of one architecture")
        if not self.layers:
            raise InputError(f"{type(self.denoiser).__name__} of {type(pipe).__name__} has no layers that attend to "
                             "the prompt")
        self.capture_uncond = capture_uncond
        self.recorder = Recorder(time_bins=time_bins, per_head=per_head, per_layer=per_layer, trace_size=trace_size,
                                 mass=mass, resolution_sites=self.family.resolution_sites)
        self._prompts = PromptWatch(pipe, self.family.encoders, self._before_encoding)
        self.concepts = list(dict.fromkeys(c.strip() for c in concepts or []))
        self.concept_method = resolve_method(self.family, concept_method)
        # Concept maps accumulate like word maps, one "token" per concept and one head (`crossattn.concepts`).
        self.concept_recorder = Recorder(time_bins=time_bins, per_layer=per_layer, trace_size=trace_size,
                                         resolution_sites=self.family.resolution_sites)
        # Denoiser calls per generation, when the caller drives the denoiser itself (e.g. `explain`); None: read
        # from the pipeline's scheduler.
        self.expected_steps: int | None = None
        self._notes: dict[str, None] = {}  # what a user must know about how these maps were made (ordered set)
        self._setup_notes: list[str] = []  # the same, from how the trace was installed (e.g. a backend switched)
        self._backends: dict = {}  # processor -> its own attention backend, while switched to torch's SDPA
        self._compiled: dict = {}  # module -> its compiled forward, while it runs eagerly
        self._rows_state: RowState | None = None
        # set by each generation's first denoiser call: the denoiser's text length, the text positions kept
        self._text_len = 0
        self._kept: torch.Tensor | None = None
        self._kept_max = 0
        self._batch_frames = 1  # frames of one video that sit in the batch as rows of their own (AnimateDiff)
        self._checked_observable = False
        # while started: processor path -> the processor a PlainSDPAProcessor stands in for; None otherwise
        self._swapped: list | None = None  # while started: (denoiser, the processors swapped out of it)
        self._hooks: list = []
        self._observers: list[AttentionObserver] = []

    @property
    def calls(self) -> dict[str, list[list[list[int]]]]:
        """Text encoder -> the token ids of each of its calls in this generation (first = prompts, then
        negatives)."""
        return self._prompts.calls

    # ---- install / restore --------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._swapped is not None:
            raise RuntimeError("this trace is already active")
        self._swapped = []
        observing.hold()
        try:
            if self.concepts:  # encoded before the hooks exist, so the prompt capture never sees them
                engine = concept_maps.engine(self.family, self.pipe, self.denoiser, self.layers, self.concept_recorder,
                                            self.concepts, self.concept_method)
                self.recorder.listener = engine
                self._hooks.extend(engine.hooks())
            for denoiser in self._denoisers:
                self._watch(denoiser)
            self._setup_notes = list(dict.fromkeys(self._setup_notes))  # experts switched alike: said once
            self._prompts.watch(self._hooks)
        except BaseException:
            self.stop()
            raise

    def _watch(self, denoiser: torch.nn.Module) -> None:
        """Put one denoiser's traced layers under observation (processors, backends and compiled blocks made
        observable first), and its call under the step hooks."""
        modules = {path: denoiser.get_submodule(path) for path in self.layers}
        swap = config.plain_sdpa_swaps(modules)
        current = config.processors(denoiser) if swap else {}  # a walk of the whole model: only when needed
        self._swapped.append((denoiser, {name: current[name] for name in swap}))
        if swap:  # new processors in the same modules
            denoiser.set_attn_processor({**current, **swap})
        self._setup_notes += config.use_sdpa_backend(modules, self._backends)
        self._setup_notes += config.run_compiled_blocks_eagerly(denoiser, self.layers, self._compiled)
        for path, layer in self.layers.items():
            module = modules[path]
            observer = AttentionObserver(self.recorder, layer)
            self._observers.append(observer)
            # modes are a stack: the one switched on last is asked first and must be switched off first
            self._hooks.append(module.register_forward_pre_hook(observer.switch_on, prepend=not self.on_top))
            self._hooks.append(module.register_forward_hook(observer.switch_off, always_call=True,
                                                            prepend=self.on_top))
        self._hooks.append(denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
        self._hooks.append(denoiser.register_forward_hook(self._after_denoiser))

    def stop(self) -> None:
        """Remove the hooks, switch off an observer a KeyboardInterrupt left on, and put back any swapped
        processors (safe to call twice)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for observer in reversed(self._observers):
            observer.close()
        self._observers.clear()
        if self._swapped is not None:
            observing.release()
        self.recorder.listener = None
        self._prompts.stop()
        config.give_back_backends(self._backends)
        config.give_back_compiled(self._compiled)
        for denoiser, swapped in self._swapped or []:
            if swapped:
                denoiser.set_attn_processor({**config.processors(denoiser), **swapped})
        self._swapped = None

    # ---- hooks (read-only on the inputs) ------------------------------------------------------------
    def _before_encoding(self) -> None:
        if self.recorder.step is not None:  # the previous generation is over
            self._new_run()

    def _new_run(self) -> None:
        self._restart_recording()
        self._prompts.clear()

    def _restart_recording(self) -> None:
        self._checked_observable = False
        for observer in self._observers:
            observer.restart()
        self.recorder.reset()
        self.concept_recorder.reset()
        self._notes.clear()
        self._rows_state = None

    def _on_denoiser(self, module, args, kwargs) -> None:
        family, rec = self.family, self.recorder
        x = family.first_input(args, kwargs)
        t = family.timestep(args, kwargs)
        if rec.step is not None and t > rec.step.timestep:  # timesteps only fall within one generation
            self._restart_recording()
        repeat = rec.step is not None and t == rec.step.timestep
        if rec.step is None:
            self._start_generation(x, args, kwargs)
        index = 0 if rec.step is None else rec.step.index + (not repeat)
        rows, slot, count = self._rows(x, family.text_input(args, kwargs), repeat)
        text_len = family.text_len(args, kwargs)
        kept, outside = self._kept, None
        if self._kept_max >= text_len:  # this call's text is shorter (true CFG: prompt and negative differ in length)
            kept, outside = self._kept.clamp_max(text_len - 1), self._kept >= text_len
        frames = family.frames(module, args, kwargs)
        # frames in the batch (AnimateDiff): each is a row of its own, as an image would be; in the sequence: one grid
        self._batch_frames = frames if family.frames_in_batch else 1
        step = StepState(index, max(self._expected_steps(), index + 1), t, rows, slot, self._rows_state.images,
                         family.grid(module, args, kwargs), text_len, kept, outside, count, x.shape[0],
                         1 if family.frames_in_batch else frames)
        rec.begin_step(step)
        if rec.listener is not None:
            self.concept_recorder.begin_step(step)
            if rows.stop > rows.start:
                rec.listener.begin_call(rows)

    def _after_denoiser(self, module, args, output) -> None:
        """After the first denoiser call of a generation: refuse at once if no traced layer that ran was seen
        attending, rather than after the whole generation (`config.unobserved_note`)."""
        rec = self.recorder
        if rec.step is None or rec.step.index != 0 or self._checked_observable:
            return
        self._checked_observable = True
        note = config.unobserved_note(self.denoiser, self._observers, rec.coverage)
        if note:
            self._notes[note] = None

    def _rows(self, x: torch.Tensor, text, repeat: bool) -> tuple[slice, slice, bool]:
        """(batch rows to record, their slot in the recorder's images axis, whether they include the prompt's)
        for this denoiser call (see `crossattn.rows`).

        The images axis holds the prompt's images; with ``capture_uncond`` also the negatives', in the order the
        batch first shows them (negatives first where each has its own call).
        """
        state = self._rows_state
        if not repeat:
            state.passes.clear()
        earlier = {kind for kind, _ in state.passes}  # recorded by an earlier call in this step
        wanted = (PROMPT, NEGATIVE) if self.capture_uncond else (PROMPT,)
        chosen: dict[str, list[int]] = {PROMPT: [], NEGATIVE: []}
        for r, kind in enumerate(state.finder.kinds(text)):
            if kind is None:
                self._notes["batch rows that held neither the prompt's nor the negative prompt's text were not "
                            "recorded"] = None
            elif kind[0] not in wanted:
                continue
            elif any(k == kind and torch.equal(latent, x[r]) for k, latent in state.passes):
                self._notes["a further pass with the prompt's text and latent in the same step (a guidance pass "
                            "such as PAG's perturbed one or skip-layer guidance) was not recorded"] = None
            elif kind in earlier:
                self._notes["a further denoiser call in the same step on another latent (e.g. a second-order "
                            "scheduler's) was not recorded: each step's maps come from its first call"] = None
            else:
                state.passes.append((kind, x[r]))
                chosen[kind[0]].append(r)
        return state.place(chosen[PROMPT], chosen[NEGATIVE])

    def _start_generation(self, x: torch.Tensor, args, kwargs) -> None:
        family = self.family
        first = family.encoders[0]
        finder = RowFinder.from_encoded(self._prompts.encoded)
        self._rows_state = RowState(finder, self.capture_uncond and finder.may_have_negatives)
        text_len = family.text_len(args, kwargs)
        self._text_len = text_len
        kept: set[int] = set()
        for call in range(min(len(self.calls[first]), 2 if self.capture_uncond else 1)):
            for prompt in range(len(self.calls[first][call])):
                for segment in family.segments(self.pipe, self.calls, call, prompt, text_len):
                    kept.update(segment.kept_positions())
        # nothing captured (the pipeline got prompt_embeds): keep every text position
        self._kept = torch.tensor(sorted(kept) if kept else range(text_len), dtype=torch.long, device=x.device)
        self._kept_max = max(kept, default=text_len - 1)

    def _expected_steps(self) -> int:
        if self.expected_steps is not None:
            return self.expected_steps
        try:
            return int(self.pipe.num_timesteps)
        except (AttributeError, TypeError):
            timesteps = getattr(self.pipe.scheduler, "timesteps", None)
            return 0 if timesteps is None else len(timesteps)

    # ---- results ------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the recorder (accumulators + per-step trace)."""
        return self.recorder.nbytes

    @property
    def n_images(self) -> int:
        if not self.recorder.sums:
            return 0
        return self._rows_state.n // self._batch_frames  # a video whose frames are batch rows is one image

    @property
    def kept_positions(self) -> list[int]:
        """The denoiser's text positions the maps keep, in column order (token column c of `heat_maps()` is text
        position ``kept_positions[c]``): start, prompt and end tokens (the negative's too, with capture_uncond), or
        every position when the pipeline got embeddings; [] before the first generation (which sets them)."""
        return [] if self._kept is None else self._kept.tolist()

    def coverage(self) -> dict:
        """Which layers were recorded and how often; which were watched but never seen attending to the text."""
        counts = self.recorder.coverage
        recorded = {self.layers[p].name: counts.get(self.layers[p].name, {}).get("recorded", 0) for p in self.layers}
        silent = [name for name, n in recorded.items() if n == 0]
        total = len(config.processors(self.denoiser))
        return {
            "family": self.family.name,
            "recorded_calls": recorded,
            "not_observed": {name: "its attention never reached torch's scaled_dot_product_attention (another "
                             "attention backend or kernel?)" for name in silent},
            "skipped_calls": {k: v["skipped"] for k, v in counts.items() if v.get("skipped")},
            "other_attention_layers": total - len(self.layers),
            "other_attention_layers_why": "they attend from image to image only (self-attention), not to the text",
        }

    def heat_maps(self, image: int = 0, *, negative: bool = False, prompt: str | None = None) -> HeatMaps:
        """Heat maps of image `image` of the latest pipeline call.

        `negative=True` gives the negative prompt's half (needs ``capture_uncond=True`` and CFG).
        `prompt` names the words when the pipeline got `prompt_embeds` instead of a prompt.
        """
        return maps.heat_maps(self, image, negative, prompt)


def trace(pipe, *, time_bins: int = 4, per_head: bool = False, per_layer: bool = False, trace_size: int = 16,
          capture_uncond: bool = False, mass: str = "raw", concepts: list[str] | None = None,
          concept_method: str | None = None) -> Trace:
    """Capture per-word attention to the prompt while `pipe` generates; use as a context manager.

    Args:
        pipe: a diffusers pipeline of a supported family: Stable Diffusion 1.x/2.x/XL (and img2img, inpaint,
            ControlNet, IP-Adapter), SD3/3.5, Flux.1, PixArt-α/Σ, Sana, ... (``crossattn.families``).
        time_bins: full-resolution maps are kept per time bin (equal ranges of steps); memory ∝ bins.
        per_head: keep heads apart (memory × heads) so `filter(heads=...)` works.
        per_layer: keep each layer apart instead of summing per site (block, resolution) so
            `filter(layers=...)` works.
        trace_size: the per-step trace is avg-pooled to at most this many pixels per side.
        capture_uncond: also record the negative prompt's half of classifier-free guidance.
        mass: ``"raw"``: a token's map is the attention probability on it. ``"text"``: that probability
            divided by the query's total on the text positions — in joint attention an image query also
            attends to image keys, so its text slice does not sum to 1; this makes it (per layer and step).
        concepts: words or phrases to locate whether or not the prompt says them (``maps.concept("sky")``);
            they follow the generation on the side and never change it (see `crossattn.concepts`).
        concept_method: how concepts are located: ``"prompt"`` (each concept read as a prompt of its own: the
            attention its words would get; the default), ``"outputs"`` (ConceptAttention; joint-attention
            transformers) or ``"attention"`` (a softmax over the concepts' last-word keys alone). None: the
            family's default.

    Example:
        >>> import torch, crossattn
        >>> pipe = crossattn.load_pipeline()             # the embedded shapes-world model
        >>> with crossattn.trace(pipe) as tr:
        ...     image = pipe("a red circle left of a blue square",
        ...                  generator=torch.Generator().manual_seed(0)).images[0]
        >>> maps = tr.heat_maps()
        >>> maps.words
        ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square']
        >>> maps.word("circle").array.shape
        (64, 64)
    """
    return Trace(pipe, time_bins=time_bins, per_head=per_head, per_layer=per_layer, trace_size=trace_size,
                 capture_uncond=capture_uncond, mass=mass, concepts=concepts, concept_method=concept_method)
