"""`crossattn.trace(pipe)`: capture cross-attention during ordinary pipeline calls, then read heat maps.

On entry the cross-attention layers of the denoiser (``attn2`` in UNet transformer blocks, found through
``Attention.is_cross_attention``) get a `CaptureProcessor` through the public ``set_attn_processor``;
self-attention keeps the pipeline's own processor (SDPA, xformers, ...). Two forward pre-hooks, which only
read their inputs, tell the recorder what it needs:

- on the text encoder: the token ids of each call (first call = prompts, second = negative prompts);
- on the denoiser: the step, the timestep, the latent size and, under classifier-free guidance, which half
  of the batch is conditional (``pipe.do_classifier_free_guidance``).

On exit — normal, exception or Ctrl-C — the exact original processor objects are put back and the hooks
removed. A new pipeline call inside the same `with` starts a fresh recording (maps of the latest call).
SDXL: words are mapped through the first tokenizer (both tokenizers split the prompt identically; the
second only pads differently).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .capture import CaptureProcessor, Recorder, StepState, depth_of
from .heatmaps import HeatMaps
from .words import tokenize_prompt, words_from_ids

# Cross-attention processors that compute plain softmax attention: replacing them keeps the model's output.
# Others (IP-Adapter, custom edits) change the computation, so tracing them would silently change the image.
REPLACEABLE = {"AttnProcessor2_0", "AttnProcessor", "XFormersAttnProcessor", "SlicedAttnProcessor",
               "FusedAttnProcessor2_0", "AttnProcessorNPU", "CaptureProcessor"}


def _denoiser(pipe) -> torch.nn.Module:
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if model is not None and hasattr(model, "attn_processors"):
            return model
    raise TypeError(
        f"{type(pipe).__name__} has no `unet` or `transformer` with attention processors; crossattn.trace "
        "works with diffusers pipelines such as StableDiffusionPipeline and StableDiffusionXLPipeline"
    )


class Trace:
    """Recording state for one pipeline; use through `crossattn.trace`. Not thread-safe: one call at a time."""

    def __init__(self, pipe, *, time_bins: int = 4, per_head: bool = False, per_layer: bool = False,
                 trace_size: int = 16, capture_uncond: bool = False, exact: bool = True):
        if time_bins < 1:
            raise ValueError(f"time_bins must be >= 1, got {time_bins}")
        self.pipe = pipe
        self.denoiser = _denoiser(pipe)
        self.capture_uncond = capture_uncond
        self.exact = exact
        self.recorder = Recorder(time_bins=time_bins, per_head=per_head, per_layer=per_layer,
                                 trace_size=trace_size)
        self.prompt_ids: list[list[list[int]]] = []  # per text-encoder call: one id list per prompt
        self._cfg = False
        self._originals: dict | None = None
        self._hooks: list = []

    # ---- install / restore --------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._originals is not None:
            raise RuntimeError("this trace is already active")
        originals = dict(self.denoiser.attn_processors)
        n_down = len(getattr(self.denoiser, "down_blocks", [])) or 1
        processors, depths = {}, []
        for name, proc in originals.items():
            layer = name.removesuffix(".processor")
            if getattr(self.denoiser.get_submodule(layer), "is_cross_attention", False):
                if type(proc).__name__ not in REPLACEABLE:
                    raise TypeError(
                        f"{layer} uses {type(proc).__name__}, which computes more than plain attention; tracing "
                        f"would replace it and change the output. Supported: {', '.join(sorted(REPLACEABLE))}"
                    )
                depth = depth_of(layer, n_down)
                depths.append(depth)
                processors[name] = CaptureProcessor(self.recorder, layer, depth, self.exact)
            else:
                processors[name] = proc
        if not depths:
            raise ValueError(f"{type(self.denoiser).__name__} has no cross-attention layers to trace")
        self.recorder.trace_depth = max(depths)
        self._originals = originals
        try:
            self.denoiser.set_attn_processor(dict(processors))
            self._hooks.append(self.denoiser.register_forward_pre_hook(self._on_denoiser, with_kwargs=True))
            encoder = getattr(self.pipe, "text_encoder", None)
            if encoder is not None:
                self._hooks.append(encoder.register_forward_pre_hook(self._on_text_encoder, with_kwargs=True))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Put the original processors back and remove the hooks (safe to call twice)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._originals is not None:
            self.denoiser.set_attn_processor(dict(self._originals))  # set_attn_processor pops from its dict
            self._originals = None

    # ---- hooks (read-only on the inputs) ------------------------------------------------------------
    def _new_run(self) -> None:
        self.recorder.reset()
        self.prompt_ids = []

    def _on_text_encoder(self, module, args, kwargs) -> None:
        if self.recorder.step is not None:  # the previous generation is over
            self._new_run()
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            self.prompt_ids.append(ids.tolist())

    def _on_denoiser(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        t = float(torch.as_tensor(timestep).flatten()[0]) if timestep is not None else 0.0
        rec = self.recorder
        if rec.step is not None and t > rec.step.timestep:  # timesteps only fall within one generation
            self._new_run()
        if rec.step is None:
            self._start_generation(args, kwargs)
        index = 0 if rec.step is None else rec.step.index + 1
        batch = sample.shape[0]
        rows = slice(batch // 2, batch) if self._cfg and not self.capture_uncond else slice(0, batch)
        rec.begin_step(StepState(index, max(self._expected_steps(), index + 1), t, rows, tuple(sample.shape[-2:])))

    def _start_generation(self, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        try:
            cfg = bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # pipelines without CFG
            cfg = False
        self._cfg = cfg and sample.shape[0] % 2 == 0
        context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        calls = self.prompt_ids[: 2 if self.capture_uncond else 1]
        if calls:  # keep the tokens up to the longest prompt's end token; padding carries no word
            eos = getattr(getattr(self.pipe, "tokenizer", None), "eos_token_id", None)
            ends = [row.index(eos) + 1 if eos in row else len(row) for call in calls for row in call]
            self.recorder.n_tokens = max(ends)
        else:
            self.recorder.n_tokens = context.shape[1] if context is not None else 77

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
        rec = self.recorder
        if not rec.sums:
            return 0
        rows = next(iter(rec.sums.values())).shape[1]
        return rows // 2 if self._cfg and self.capture_uncond else rows

    def heat_maps(self, image: int = 0, *, negative: bool = False, prompt: str | None = None) -> HeatMaps:
        """Heat maps of image `image` of the latest pipeline call.

        `negative=True` gives the unconditional/negative half (needs ``capture_uncond=True`` and CFG).
        `prompt` overrides the captured tokens (needed when the pipeline got `prompt_embeds`).
        """
        rec = self.recorder
        if not rec.sums:
            raise RuntimeError("nothing was captured: call the pipeline inside `with crossattn.trace(pipe):`")
        n = self.n_images
        if not -n <= image < n:
            raise IndexError(f"image {image} out of range: the latest call generated {n} image(s)")
        image %= n
        row = image
        if negative:
            if not (self.capture_uncond and self._cfg):
                raise ValueError("negative maps need crossattn.trace(pipe, capture_uncond=True) and guidance > 1")
        elif self.capture_uncond and self._cfg:
            row = n + image  # the pipeline puts the unconditional half first
        tokenizer = self.pipe.tokenizer
        ids = self._ids_for(image, n, negative, prompt)
        if prompt is None and ids[-1] == tokenizer.eos_token_id and tokenizer.pad_token_id not in ids[:-1]:
            warnings.warn(f"the prompt fills all {len(ids)} token positions of the text encoder and may "
                          "have been cut: maps cover only what the model saw", stacklevel=2)
        total = rec.step.total if rec.step else 0
        bins = next(iter(rec.sums.values())).shape[0]
        members = [[] for _ in range(bins)]
        for s in range(total):
            members[rec.bin_of(s, total)].append(s)
        sums = {}
        for k, t in rec.sums.items():
            h, w = rec.sites[k].resolution
            sums[k] = t[:, row].unflatten(2, (h, w)).cpu()
        trace = None
        if rec.trace and all(t is not None for t in rec.trace):
            trace = torch.stack([t[row] for t in rec.trace]).cpu()
        scale = getattr(self.pipe, "vae_scale_factor", 8)
        lh, lw = rec.step.latent_hw
        return HeatMaps(
            sums=sums,
            counts={k: np.asarray(c, dtype=np.int64) for k, c in rec.counts.items()},
            sites=dict(rec.sites),
            bin_steps=members,
            trace=trace,
            trace_counts=np.asarray(rec.trace_counts, dtype=np.int64),
            word_info=words_from_ids(tokenizer, ids),
            tokens=tokenizer.convert_ids_to_tokens(ids[: rec.n_tokens]),
            image_size=(lh * scale, lw * scale),
            per_head=rec.per_head,
            per_layer=rec.per_layer,
            meta={
                "model": getattr(self.pipe, "name_or_path", None) or type(self.pipe).__name__,
                "pipeline": type(self.pipe).__name__,
                "prompt": tokenizer.decode(ids, skip_special_tokens=True),
                "image_index": image,
                "negative": negative,
                "steps": total,
                "timesteps": list(rec.timesteps),
                "guidance_scale": getattr(self.pipe, "_guidance_scale", None),
            },
        )

    def _ids_for(self, image: int, n_images: int, negative: bool, prompt: str | None) -> list[int]:
        if prompt is not None:
            return tokenize_prompt(self.pipe.tokenizer, prompt)
        call = 1 if negative else 0
        if len(self.prompt_ids) <= call:
            raise ValueError(
                "no prompt tokens were captured (was the pipeline given prompt_embeds?); pass "
                "heat_maps(prompt=...) with the prompt that produced the embeddings"
            )
        prompts = self.prompt_ids[call]
        return prompts[image // max(1, n_images // len(prompts))]


def trace(pipe, *, time_bins: int = 4, per_head: bool = False, per_layer: bool = False, trace_size: int = 16,
          capture_uncond: bool = False, exact: bool = True) -> Trace:
    """Capture per-word cross-attention while `pipe` generates; use as a context manager.

    Args:
        pipe: a diffusers pipeline with a UNet (StableDiffusion*, StableDiffusionXL*, img2img, inpaint).
        time_bins: full-resolution maps are kept per time bin (equal ranges of steps); memory ∝ bins.
        per_head: keep heads apart (memory × heads) so `filter(heads=...)` works.
        per_layer: keep each layer apart instead of summing per (block, resolution).
        trace_size: the per-step trace is avg-pooled to at most this many pixels per side.
        capture_uncond: also record the unconditional/negative half of a CFG batch.
        exact: keep diffusers' SDPA call for the layer output, so traced outputs are bit-identical to
            untraced ones (the probabilities cost one extra Q·Kᵀ over 77 keys). ``exact=False`` computes the
            probabilities once and reuses them for the output: cheaper on small models, equal to within
            float rounding (~1e-6 relative).

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
                 capture_uncond=capture_uncond, exact=exact)
