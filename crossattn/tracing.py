"""`crossattn.trace(pipe)`: capture text attention during ordinary pipeline calls, then read heat maps.

On entry, the pipeline's family (`crossattn.families`) names the denoiser's layers that attend to the prompt.
Each keeps its own processor; a forward pre-hook and a forward hook (which always runs, exceptions included)
switch an `AttentionObserver` on and off around it, so the layer's `scaled_dot_product_attention` call is
seen and recorded as it happens (`crossattn.capture`). Only cross-attention processors that compute plain
attention *without* SDPA (`AttnProcessor`, `SlicedAttnProcessor`, xformers) are swapped, for the trace's
duration, for the same computation through SDPA (with the layer's own scale). More read-only pre-hooks:

- on the text encoders the family names: the token ids of each call (first call = prompts, second = negatives);
- on the denoiser: the step, the timestep, the image's token grid, the text length and, under
  classifier-free guidance, which rows (one batch: the second half) or which call (two calls per step:
  the first) carry the prompt.

On exit — normal, exception or Ctrl-C — the hooks are removed and any swapped processor objects put back.
A new pipeline call inside the same `with` starts a fresh recording (maps of the latest call).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .capture import AttentionObserver, PlainSDPAProcessor, Recorder, StepState
from .concepts import resolve_method
from .errors import InputError
from .families import family_of
from .heatmaps import HeatMaps
from .words import Word, words_from_segments

# Cross-attention processors that compute plain softmax attention without SDPA: swapped for the trace.
NON_SDPA_PLAIN = {"AttnProcessor", "SlicedAttnProcessor", "XFormersAttnProcessor"}
MASSES = ("raw", "text")


class Trace:
    """Recording state for one pipeline; use through `crossattn.trace`. Not thread-safe: one call at a time."""

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
        self._cfg = False
        self._swapped: dict | None = None
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
                engine = self.family.concept_engine(self.pipe, self, self.concepts, self.concept_method)
                self.recorder.listener = engine
                self._hooks.extend(engine.hooks())
            if swap:
                self.denoiser.set_attn_processor({**processors, **swap})
            for path, layer in self.layers.items():
                module = self.denoiser.get_submodule(path)
                observer = AttentionObserver(self.recorder, layer)
                self._observers.append(observer)
                self._hooks.append(module.register_forward_pre_hook(observer.switch_on))
                self._hooks.append(module.register_forward_hook(observer.switch_off, always_call=True))
            self._hooks.append(self.denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
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
        if self._swapped:
            self.denoiser.set_attn_processor({**_processors(self.denoiser), **self._swapped})
        self._swapped = None

    # ---- hooks (read-only on the inputs) ------------------------------------------------------------
    def _new_run(self) -> None:
        self.recorder.reset()
        self.concept_recorder.reset()
        for calls in self.calls.values():
            calls.clear()

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
            self._new_run()
        repeat = rec.step is not None and t == rec.step.timestep
        if rec.step is None:
            self._start_generation(x, args, kwargs)
        index = 0 if rec.step is None else rec.step.index + (not repeat)
        rows, slot = self._rows(x.shape[0], repeat)
        text_len = family.text_len(args, kwargs)
        kept, outside = self._kept, None
        if self._kept_max >= text_len:  # this call's text is shorter (true CFG: prompt and negative differ in length)
            kept, outside = self._kept.clamp_max(text_len - 1), self._kept >= text_len
        step = StepState(index, max(self._expected_steps(), index + 1), t, rows, slot, self._images,
                         family.grid(module, args, kwargs), text_len, kept, outside)
        rec.begin_step(step)
        if rec.listener is not None:
            self.concept_recorder.begin_step(step)
            if rows.stop > rows.start:
                rec.listener.begin_call(rows)

    def _rows(self, batch: int, repeat: bool) -> tuple[slice, slice]:
        """(attention rows to record, their slot in the recorder's images axis) for this denoiser call.

        The images axis holds the prompts' images, preceded by the negatives' with ``capture_uncond``.
        """
        n = self._images // 2 if self.capture_uncond and self._cfg else self._images
        if self.family.cfg == "calls":  # one call for the prompts, then one for the negatives
            if not repeat:
                return slice(0, batch), slice(self._images - n, self._images)
            return (slice(0, batch), slice(0, n)) if self.capture_uncond and self._cfg else (slice(0, 0), slice(0, 0))
        if repeat:  # a further call at the same timestep (e.g. SD3's skip-layer guidance): not a new view
            return slice(0, 0), slice(0, 0)
        prompts_first = self.family.cfg == "batch_prompts_first"
        if self._cfg and batch == n:  # a step without the negatives' half (Z-Image's CFG truncation)
            return slice(0, batch), slice(0, n) if prompts_first else slice(self._images - n, self._images)
        if self._cfg and not self.capture_uncond:
            return (slice(0, n) if prompts_first else slice(batch // 2, batch)), slice(0, n)
        return slice(0, batch), slice(0, batch)

    def _start_generation(self, x: torch.Tensor, args, kwargs) -> None:
        family = self.family
        first = family.encoders[0]
        if family.cfg == "calls":
            self._cfg = len(self.calls[first]) >= 2  # the negatives were encoded: true CFG runs
            batch_images = x.shape[0]
        else:
            self._cfg = self._batch_cfg(x)
            batch_images = x.shape[0] // 2 if self._cfg else x.shape[0]
        self._images = batch_images * (2 if self._cfg and self.capture_uncond else 1)
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

    def _batch_cfg(self, x: torch.Tensor) -> bool:
        """Is this denoiser batch [negatives, prompts] of classifier-free guidance?"""
        flag = getattr(self.pipe, "do_classifier_free_guidance", None)
        if isinstance(flag, bool):
            return flag and x.shape[0] % 2 == 0
        # No flag (PixArt, Sana, ...): under CFG the pipeline duplicates the latents into both halves.
        half = x.shape[0] // 2
        return x.shape[0] % 2 == 0 and half > 0 and torch.equal(x[:half], x[half:])

    def _expected_steps(self) -> int:
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
        return self._images // 2 if self._cfg and self.capture_uncond else self._images

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
        both = self.capture_uncond and self._cfg
        if negative and not both:
            raise InputError("negative maps need crossattn.trace(pipe, capture_uncond=True) and guidance > 1")
        # with both halves recorded, the images axis holds the negatives first, unless the family batches prompts first
        second = negative if self.family.cfg == "batch_prompts_first" else not negative
        row = n + image if both and second else image
        segments = self._segments(image, n, negative, prompt)
        column = {int(p): c for c, p in enumerate(self._kept.tolist())}
        tokens = ["?"] * len(column)
        for segment in segments:
            strings = segment.tokenizer.convert_ids_to_tokens(segment.ids)
            for i, p in enumerate(segment.positions):
                if p in column:
                    tokens[column[p]] = strings[i]
        if prompt is None and any(s.truncated for s in segments[:1]):
            warnings.warn(f"the prompt fills all {len(segments[0].ids)} token positions of the text encoder and may "
                          "have been cut: maps cover only what the model saw", stacklevel=2)
        meta = {
            "model": getattr(self.pipe, "name_or_path", None) or type(self.pipe).__name__,
            "pipeline": type(self.pipe).__name__,
            "family": self.family.name,
            "resolution_sites": self.family.resolution_sites,
            "sources": [s.source for s in segments],
            "mass": rec.mass,
            "prompt": prompt if prompt is not None else segments[0].tokenizer.decode(
                [t for i, t in enumerate(segments[0].ids[: segments[0].end + 1]) if i not in segments[0].skip],
                skip_special_tokens=True),
            "image_index": image,
            "negative": negative,
            "steps": rec.step.total,
            "timesteps": list(rec.timesteps),
            "guidance_scale": _guidance_scale(self.pipe),
            "coverage": self.coverage(),
        }
        maps = self._maps(rec, row, words_from_segments(segments, column), tokens, meta)
        if self.concepts and not negative:
            words = [Word(c, (k,), 0) for k, c in enumerate(self.concepts)]
            maps.concepts = self._maps(self.concept_recorder, row, words, list(self.concepts),
                                       {**meta, "kind": "concepts", "concepts": list(self.concepts),
                                        "concept_method": self.concept_method})
        return maps

    def _maps(self, rec: Recorder, row: int, words: list[Word], tokens: list[str], meta: dict) -> HeatMaps:
        """A `HeatMaps` of one images-axis row of a recorder."""
        total = rec.step.total
        bins = next(iter(rec.sums.values())).shape[0]
        members = [[] for _ in range(bins)]
        for s in range(min(total, len(rec.timesteps))):  # the steps that ran (all, unless stopped early)
            members[rec.bin_of(s, total)].append(s)
        trace = None
        if rec.trace and all(t is not None for t in rec.trace):
            trace = torch.stack([t[row] for t in rec.trace]).cpu()
        return HeatMaps(
            sums={k: t[:, row].unflatten(2, rec.sites[k].resolution).cpu() for k, t in rec.sums.items()},
            counts={k: np.asarray(c, dtype=np.int64) for k, c in rec.counts.items()},
            sites=dict(rec.sites),
            bin_steps=members,
            trace=trace,
            trace_counts=np.asarray(rec.trace_counts, dtype=np.int64),
            word_info=words,
            tokens=tokens,
            image_size=self._image_size(self.family.vae_scale(self.pipe), rec.step.grid),
            per_head=rec.per_head,
            per_layer=rec.per_layer,
            meta=meta,
        )

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
