"""`crossattn.trace(pipe)`: capture text attention during ordinary pipeline calls, then read heat maps.

On entry, the pipeline's family (`crossattn.families`) names the denoiser's layers that attend to the prompt.
Each keeps its own processor; a forward pre-hook and a forward hook (which always runs, exceptions included)
switch an `AttentionObserver` on and off around it, so the layer's `scaled_dot_product_attention` call is
seen and recorded as it happens (`crossattn.capture`). Only cross-attention processors that compute plain
attention *without* SDPA (`AttnProcessor`, `SlicedAttnProcessor`, xformers) are swapped, for the trace's
duration, for the same computation through SDPA (with the layer's own scale). More read-only pre-hooks:

- on the text encoders the family names: the token ids of each call (first call = prompts, second = negatives);
- on the pipeline's `encode_prompt` (wrapped for the trace's duration): the text embeddings it returns;
- on the denoiser: the step, the timestep, the image's token grid, the text length and which rows of its batch
  hold the prompt's text (`crossattn.rows`: matched against those embeddings, never guessed from the batch size).

On exit — normal, exception or Ctrl-C — the hooks are removed and any swapped processor objects put back.
A new pipeline call inside the same `with` starts a fresh recording (maps of the latest call).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import concepts as concept_maps
from .capture import AttentionObserver, PlainSDPAProcessor, Recorder, StepState
from .concepts import resolve_method
from .errors import InputError
from .families import family_of
from .heatmaps import HeatMaps, MapData, MapInfo
from .rows import NEGATIVE, PROMPT, RowFinder
from .words import Word, words_from_segments

# Cross-attention processors that compute plain softmax attention without SDPA: swapped for the trace.
NON_SDPA_PLAIN = {"AttnProcessor", "SlicedAttnProcessor", "XFormersAttnProcessor"}
MASSES = ("raw", "text")
TRUNCATION_NOTE = "the prompt fills all"  # how the note on a prompt the text encoder may have cut begins
# diffusers attention backends that run torch's scaled_dot_product_attention (`None`: the process-wide default)
SDPA_BACKENDS = {"native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math"}


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
        self.denoiser = getattr(pipe, self.family.denoiser)
        _check_traceable(self.denoiser)
        self.layers = self.family.layers(self.denoiser)
        if not self.layers:
            raise InputError(f"{type(self.denoiser).__name__} of {type(pipe).__name__} has no layers that attend to "
                             "the prompt")
        self.capture_uncond = capture_uncond
        self.recorder = Recorder(time_bins=time_bins, per_head=per_head, per_layer=per_layer, trace_size=trace_size,
                                 mass=mass, resolution_sites=self.family.resolution_sites)
        self.calls: dict[str, list[list[list[int]]]] = {name: [] for name in self.family.encoders}
        self.concepts = list(dict.fromkeys(c.strip() for c in concepts or []))
        self.concept_method = resolve_method(self.family, concept_method)
        # Concept maps accumulate like word maps, one "token" per concept and one head (`crossattn.concepts`).
        self.concept_recorder = Recorder(time_bins=time_bins, per_layer=per_layer, trace_size=trace_size,
                                         resolution_sites=self.family.resolution_sites)
        # Denoiser calls per generation, when the caller drives the denoiser itself (e.g. `explain`); None: read
        # from the pipeline's scheduler.
        self.expected_steps: int | None = None
        self._encoded: list = []  # what the pipeline's encode_prompt returned in this generation
        self._typed: str | list[str] | None = None  # the prompt(s) encode_prompt was given
        self._notes: dict[str, None] = {}  # what a user must know about how these maps were made (ordered set)
        self._setup_notes: list[str] = []  # the same, from how the trace was installed (e.g. a backend switched)
        self._backends: dict = {}  # processor -> its own attention backend, while switched to torch's SDPA
        self._compiled: dict = {}  # module -> its compiled forward, while it runs eagerly
        self._rows_state: _RowState | None = None
        self._kept: torch.Tensor | None = None  # text positions kept, set by each generation's first call
        self._checked_observable = False
        self._swapped: dict | None = None
        # (the pipeline's encode_prompt, whether it was an instance attribute) once wrapped; watching until stop()
        self._encode_original: tuple | None = None
        self._watching_encode = False
        self._hooks: list = []
        self._observers: list[AttentionObserver] = []

    # ---- install / restore --------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._swapped is not None:
            raise RuntimeError("this trace is already active")
        processors = _processors(self.denoiser)
        swap = {f"{path}.processor": PlainSDPAProcessor() for path in self.layers
                if type(processors.get(f"{path}.processor")).__name__ in NON_SDPA_PLAIN}
        self._swapped = {name: processors[name] for name in swap}
        try:
            if self.concepts:  # encoded before the hooks exist, so the prompt capture never sees them
                engine = concept_maps.engine(self.family, self.pipe, self.denoiser, self.layers, self.concept_recorder,
                                            self.concepts, self.concept_method)
                self.recorder.listener = engine
                self._hooks.extend(engine.hooks())
            if swap:
                self.denoiser.set_attn_processor({**processors, **swap})
            self._use_sdpa_backend()
            self._run_compiled_blocks_eagerly()
            for path, layer in self.layers.items():
                module = self.denoiser.get_submodule(path)
                observer = AttentionObserver(self.recorder, layer)
                self._observers.append(observer)
                # modes are a stack: the one switched on last is asked first and must be switched off first
                self._hooks.append(module.register_forward_pre_hook(observer.switch_on, prepend=not self.on_top))
                self._hooks.append(module.register_forward_hook(observer.switch_off, always_call=True,
                                                                prepend=self.on_top))
            self._hooks.append(self.denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
            self._hooks.append(self.denoiser.register_forward_hook(self._after_denoiser))
            self._wrap_encode_prompt()
            for name in self.family.encoders:
                encoder = getattr(self.pipe, name, None)
                if encoder is not None:
                    hook = encoder.register_forward_pre_hook(lambda m, a, k, n=name: self._on_text_encoder(n, a, k),
                                                             with_kwargs=True)
                    self._hooks.append(hook)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Remove the hooks, switch off an observer a KeyboardInterrupt left on, and put back any swapped
        processors (safe to call twice)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for observer in reversed(self._observers):
            observer.close()
        self._observers.clear()
        self.recorder.listener = None
        self._unwrap_encode_prompt()
        for processor, backend in self._backends.items():
            processor._attention_backend = backend
        self._backends.clear()
        for module, compiled in self._compiled.items():
            module._compiled_call_impl = compiled
        self._compiled.clear()
        if self._swapped:
            self.denoiser.set_attn_processor({**_processors(self.denoiser), **self._swapped})
        self._swapped = None

    def _wrap_encode_prompt(self) -> None:
        """Watch what the pipeline's `encode_prompt` returns (an instance attribute over the class's method;
        the arguments and results pass through untouched)."""
        original = getattr(self.pipe, "encode_prompt", None)
        if original is None:
            return
        self._encode_original = (original, "encode_prompt" in vars(self.pipe))
        self._watching_encode = True

        def encode_prompt(*args, **kwargs):
            if self._watching_encode:  # (a wrapper left under another trace's after stop() is inert)
                if self.recorder.step is not None:  # the previous generation is over
                    self._new_run()
            returned = original(*args, **kwargs)
            if self._watching_encode:
                if not self._encoded:  # the prompt as typed (the first call encodes prompts, later ones negatives)
                    self._typed = kwargs.get("prompt", args[0] if args else None)
                self._encoded.append(returned)
            return returned

        encode_prompt.crossattn_owner = self
        self.pipe.encode_prompt = encode_prompt

    def _unwrap_encode_prompt(self) -> None:
        if not self._watching_encode:
            return
        original, own = self._encode_original
        self._watching_encode = False
        current = vars(self.pipe).get("encode_prompt")
        if getattr(current, "crossattn_owner", None) is not self:
            return  # another trace wrapped ours and is still active: ours is now inert, theirs restores past it
        # skip wrappers of traces that already ended out of order (inert), back to the pipeline's own
        while (owner := getattr(original, "crossattn_owner", None)) is not None and not owner._watching_encode:
            original, own = owner._encode_original
        if own:
            self.pipe.encode_prompt = original
        else:
            vars(self.pipe).pop("encode_prompt", None)

    def _use_sdpa_backend(self) -> None:
        """Traced layers whose diffusers attention backend (flash, flex, sage, xformers, ...) would bypass torch's
        SDPA run through SDPA ("native") for the trace's duration: the capture sees only SDPA calls."""
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry  # only where diffusers is used

        default = str(getattr(_AttentionBackendRegistry._active_backend, "value", "native"))
        switched: dict[str, int] = {}
        for path in self.layers:
            processor = getattr(self.denoiser.get_submodule(path), "processor", None)
            if processor is None or not hasattr(processor, "_attention_backend"):
                continue
            own = processor._attention_backend
            backend = str(getattr(own, "value", own)) if own is not None else default
            if backend not in SDPA_BACKENDS:
                self._backends[processor] = own
                processor._attention_backend = "native"
                switched[backend] = switched.get(backend, 0) + 1
        for backend, n in switched.items():
            self._setup_notes.append(f"the attention backend '{backend}' of {n} traced layer(s) was switched to "
                                     "torch's SDPA ('native') for the trace, and given back after: the traced "
                                     "image can differ from one made with that backend within its precision")

    def _run_compiled_blocks_eagerly(self) -> None:
        """Blocks compiled with `module.compile()` (diffusers' `compile_repeated_blocks`) run their traced layers
        inside a compiled graph, where hooks and the observing mode are not executed: for the trace's duration they
        run eagerly (the same weights and processors), and get their compiled forward back after."""
        paths = list(self.layers)
        for name, module in self.denoiser.named_modules():
            compiled = getattr(module, "_compiled_call_impl", None)
            if compiled is not None and (not name or any(p == name or p.startswith(f"{name}.") for p in paths)):
                self._compiled[module] = compiled
                module._compiled_call_impl = None
        if self._compiled:
            self._setup_notes.append(f"{len(self._compiled)} compiled block(s) ran uncompiled for the trace (their "
                                     "attention is not observable inside a compiled graph), and were given back "
                                     "their compiled forward after: the traced image can differ from the compiled "
                                     "one within float rounding")

    # ---- hooks (read-only on the inputs) ------------------------------------------------------------
    def _new_run(self) -> None:
        self._restart_recording()
        self._encoded.clear()
        self._typed = None
        for calls in self.calls.values():
            calls.clear()

    def _restart_recording(self) -> None:
        self._checked_observable = False
        for observer in self._observers:
            observer.calls = 0
        self.recorder.reset()
        self.concept_recorder.reset()
        self._notes.clear()
        self._rows_state = None

    def _on_text_encoder(self, name: str, args, kwargs) -> None:
        if self.recorder.step is not None:  # the previous generation is over
            self._new_run()
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            self.calls[name].append(ids.tolist())

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
        step = StepState(index, max(self._expected_steps(), index + 1), t, rows, slot, self._rows_state.images,
                         family.grid(module, args, kwargs), text_len, kept, outside, count, x.shape[0])
        rec.begin_step(step)
        if rec.listener is not None:
            self.concept_recorder.begin_step(step)
            if rows.stop > rows.start:
                rec.listener.begin_call(rows)

    def _after_denoiser(self, module, args, output) -> None:
        """After the first denoiser call of a generation: refuse at once if no traced layer that ran was seen
        attending (an attention kernel crossattn cannot observe), rather than after the whole generation."""
        rec = self.recorder
        if rec.step is None or rec.step.index != 0 or self._checked_observable:
            return
        self._checked_observable = True
        ran = {o.layer.name for o in self._observers if o.calls}
        if not ran and not rec.coverage:
            raise InputError(f"no traced layer of {type(self.denoiser).__name__} ran its hooks in the first denoising "
                             "step (compiled code, or a wrapper that skips module hooks?): crossattn cannot see its "
                             "attention; trace the model uncompiled")
        unseen = sorted(ran - set(rec.coverage))
        if ran and len(unseen) == len(ran):
            raise InputError(f"none of the {len(ran)} traced layers of {type(self.denoiser).__name__} that ran "
                             "reached torch's scaled_dot_product_attention (a custom attention processor or kernel?): "
                             "crossattn cannot see their attention; use diffusers' default processors while tracing")
        if unseen:
            self._notes[f"{len(unseen)} traced layer(s) ran without reaching torch's SDPA and are not in the maps: "
                        f"{', '.join(unseen[:4])}{' …' if len(unseen) > 4 else ''}"] = None

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
        finder = RowFinder.from_encoded(self._encoded)
        self._rows_state = _RowState(finder, self.capture_uncond and finder.may_have_negatives)
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
        return self._rows_state.n

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
        total = len(_processors(self.denoiser))
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
        rec = self.recorder
        if not rec.sums:
            silent = [n for n, v in self.coverage()["recorded_calls"].items() if not v]
            if rec.step is not None and silent:
                raise RuntimeError(
                    f"nothing was captured: {len(silent)} layer(s) of {type(self.denoiser).__name__} ran, but their "
                    "attention never reached torch's scaled_dot_product_attention; use the default ('native') "
                    "attention backend / PyTorch SDPA processors while tracing")
            raise RuntimeError("nothing was captured: call the pipeline inside `with crossattn.trace(pipe):`")
        n = self.n_images
        if not -n <= image < n:
            raise InputError(f"image {image} out of range: the latest call generated {n} image(s)")
        image %= n
        state = self._rows_state
        if negative and not state.negatives_recorded:
            raise InputError("negative maps need crossattn.trace(pipe, capture_uncond=True) and a generation "
                             "with classifier-free guidance (guidance > 1)")
        row = state.slot(NEGATIVE if negative else PROMPT).start + image
        segments = self._segments(image, n, negative, prompt)
        column = {int(p): c for c, p in enumerate(self._kept.tolist())}
        tokens = ["?"] * len(column)
        for segment in segments:
            strings = segment.tokenizer.convert_ids_to_tokens(segment.ids)
            for i, p in enumerate(segment.positions):
                if p in column:
                    tokens[column[p]] = strings[i]
        notes = self._setup_notes + list(self._notes) + self._skipped_steps_notes() + rec.notes
        if any(s.truncated for s in segments[:1]):
            notes.insert(0, f"{TRUNCATION_NOTE} {len(segments[0].ids)} token positions of the text encoder and "
                         "may have been cut: maps cover only what the model saw")
        info = MapInfo(
            model=getattr(self.pipe, "name_or_path", None) or type(self.pipe).__name__,
            pipeline=type(self.pipe).__name__,
            family=self.family.name,
            resolution_sites=self.family.resolution_sites,
            sources=[s.source for s in segments],
            mass=rec.mass,
            prompt=prompt if prompt is not None else self._typed_prompt(image, n, negative) or
            segments[0].tokenizer.decode([t for i, t in enumerate(segments[0].ids[: segments[0].end + 1])
                                          if i not in segments[0].skip], skip_special_tokens=True),
            image_index=image,
            negative=negative,
            steps=rec.step.total,
            timesteps=list(rec.timesteps),
            guidance_scale=_guidance_scale(self.pipe),
            coverage=self.coverage(),
            notes=notes,
        )
        maps = self._maps(rec, row, words_from_segments(segments, column), tokens, info)
        if self.concepts and not negative:
            words = [Word(c, (k,), 0) for k, c in enumerate(self.concepts)]
            maps.concepts = self._maps(self.concept_recorder, row, words, list(self.concepts),
                                       replace(info, kind="concepts", concepts=list(self.concepts),
                                               concept_method=self.concept_method))
        return maps

    def _typed_prompt(self, image: int, n_images: int, negative: bool) -> str | None:
        """Image `image`'s prompt as the pipeline was given it (None for negatives, or when given embeddings)."""
        typed = self._typed
        if negative or typed is None:
            return None
        if isinstance(typed, str):
            return typed
        return typed[image // max(1, n_images // len(typed))] if typed else None

    def _skipped_steps_notes(self) -> list[str]:
        """Layers that recorded fewer steps than the generation ran (step caches, layer skipping): their maps are
        means over the steps they ran, which the note names."""
        steps = len(self.recorder.timesteps)
        short = {name: len(ran) for name, ran in self.recorder.ran_steps.items() if len(ran) < steps}
        if not short:
            return []
        listed = ", ".join(f"{name} {n}/{steps}" for name, n in list(short.items())[:6])
        return [f"{len(short)} layer(s) ran in fewer steps than the generation's {steps} (a step cache or layer "
                f"skipping): their maps average only the steps they ran ({listed}{' …' if len(short) > 6 else ''})"]

    def _maps(self, rec: Recorder, row: int, words: list[Word], tokens: list[str], info: MapInfo) -> HeatMaps:
        """A `HeatMaps` of one images-axis row of a recorder."""
        total = rec.step.total
        bins = next(iter(rec.sums.values())).shape[0]
        members = [[] for _ in range(bins)]
        for s in range(min(total, len(rec.timesteps))):  # the steps that ran (all, unless stopped early)
            members[rec.bin_of(s, total)].append(s)
        step_sums = None
        if rec.trace and all(t is not None for t in rec.trace):
            step_sums = torch.stack([t[row] for t in rec.trace]).cpu()
        data = MapData(
            sums={k: t[:, row].unflatten(2, rec.sites[k].resolution).cpu() for k, t in rec.sums.items()},
            counts={k: np.asarray(c, dtype=np.int64) for k, c in rec.counts.items()},
            sites=dict(rec.sites),
            bin_steps=members,
            step_sums=step_sums,
            step_counts=np.asarray(rec.trace_counts, dtype=np.int64),
            words=words,
            per_head=rec.per_head,
            per_layer=rec.per_layer,
        )
        return HeatMaps(data=data, tokens=tokens, info=info,
                        image_size=self._image_size(self.family.vae_scale(self.pipe), rec.step.grid))

    def _image_size(self, scale: int, grid: tuple[int, int]) -> tuple[int, int]:
        """The generated image's pixel size: token grid × patch × VAE factor (UNet: latent × VAE factor)."""
        patch = self.family.patch(self.denoiser)
        return grid[0] * patch * scale, grid[1] * patch * scale

    def _segments(self, image: int, n_images: int, negative: bool, prompt: str | None):
        family = self.family
        if prompt is not None:
            calls = {name: [[ids]] for name, ids in family.prompt_ids(self.pipe, prompt, self._text_len).items()}
            return family.segments(self.pipe, calls, 0, 0, self._text_len)
        call = 1 if negative else 0
        prompts = self.calls[family.encoders[0]]
        if len(prompts) <= call:
            raise InputError("no prompt tokens were captured (was the pipeline given prompt_embeds?); pass "
                             "heat_maps(prompt=...) with the prompt that produced the embeddings")
        per_prompt = max(1, n_images // len(prompts[call]))
        return family.segments(self.pipe, self.calls, call, image // per_prompt, self._text_len)


class _RowState:
    """Where the rows this generation records go: the images axis, fixed by the first call that shows them."""

    def __init__(self, finder: RowFinder, with_negatives: bool):
        self.finder = finder
        self.with_negatives = with_negatives  # the images axis has room for the negatives' images
        self.n = 0  # images per kind (the prompt's images); 0 until the first recorded call
        self.negatives_first: bool | None = None
        self.negatives_recorded = False
        self.passes: list = []  # ((kind, text row), latent row) recorded at the current timestep

    @property
    def images(self) -> int:
        return self.n * (2 if self.with_negatives else 1)

    def slot(self, kind: str) -> slice:
        first = self.negatives_first is not False  # negatives first unless a batch showed the prompts first
        start = self.n if self.with_negatives and (kind == PROMPT) == first else 0
        return slice(start, start + self.n)

    def place(self, prompt: list[int], negative: list[int]) -> tuple[slice, slice, bool]:
        if not prompt and not negative:
            return slice(0, 0), slice(0, 0), False
        for rows in (prompt, negative):
            if rows and rows != list(range(rows[0], rows[-1] + 1)):
                raise InputError(f"this batch's rows with the prompt's text ({rows}) are not one contiguous block: "
                                 "crossattn does not recognise the layout and will not guess it")
        n = len(prompt or negative)
        if self.n == 0:
            self.n = n
        if any(rows and len(rows) != self.n for rows in (prompt, negative)):
            raise InputError(f"a denoiser call held {len(prompt)} prompt and {len(negative)} negative rows after "
                             f"{self.n} image(s) per kind: crossattn does not recognise the layout")
        if negative:
            self.negatives_recorded = True
        if prompt and negative:
            order = negative[-1] + 1 == prompt[0]
            if not order and prompt[-1] + 1 != negative[0] or self.negatives_first not in (None, order):
                raise InputError("the negative and the prompt rows of a denoiser call are not side by side in a "
                                 "known order: crossattn does not recognise the layout")
            self.negatives_first = order
            start = min(prompt[0], negative[0])
            return slice(start, start + 2 * self.n), slice(0, 2 * self.n), True
        if self.negatives_first is None and self.with_negatives:
            self.negatives_first = True  # one call per kind: the images axis is [negatives, prompts]
        rows = prompt or negative
        return slice(rows[0], rows[-1] + 1), self.slot(PROMPT if prompt else NEGATIVE), bool(prompt)


def _check_traceable(denoiser) -> None:
    """Configurations the capture cannot follow, refused before anything runs."""
    if hasattr(denoiser, "_orig_mod"):  # torch.compile(model): hooks and modes inside one compiled graph
        raise InputError("a denoiser compiled whole with torch.compile cannot be traced (its attention calls run "
                         "inside one compiled graph): trace before compiling, or compile its repeated blocks "
                         "(denoiser.compile_repeated_blocks()), which crossattn traces exactly")
    for module in denoiser.modules():
        if getattr(getattr(module, "processor", None), "_parallel_config", None) is not None:
            raise InputError("context parallelism (sequences sharded over devices) is not supported: each device "
                             "sees only part of the image and text positions; trace without it")


def _processors(denoiser) -> dict:
    """Attention-processor path → processor; from the modules themselves where the model does not list them
    (Z-Image's transformer has no `attn_processors`)."""
    listed = getattr(denoiser, "attn_processors", None)
    if listed is not None:
        return listed
    return {f"{n}.processor": m.processor for n, m in denoiser.named_modules() if hasattr(m, "processor")}


def _guidance_scale(pipe) -> float | None:
    try:
        value = pipe.guidance_scale
    except AttributeError:
        return None
    return float(value) if isinstance(value, int | float) else None


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
        concept_method: how concepts are located: ``"outputs"`` (ConceptAttention; joint-attention
            transformers, their default) or ``"attention"`` (the attention the concepts would get as the prompt;
            UNets, and transformers on request). None: the family's default.

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
