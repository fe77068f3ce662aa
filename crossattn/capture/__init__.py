"""Inside the denoiser: watch each text-attending layer's attention call, and accumulate what it attended to.

Data flows one way: `AttentionObserver` (one per traced layer, `observer.py`) → `Recorder` (fixed-size sums,
`recorder.py`), which forms each call's probabilities with `kernels.py` and hands the call on to its `Listener`,
if any. Nothing here knows about words, pictures, pipelines or model families: `crossattn.families` says which
layers to watch and how their sequences are laid out (a `Layer`), `crossattn.tracing` wires it all to a pipeline,
swapping a `PlainSDPAProcessor` (`plain_sdpa.py`) in for processors that compute attention without SDPA.

The observer watches the attention call instead of replacing the layer's processor, and the call itself produces
the layer's output, so traced outputs are bit-identical to untraced ones (`observer.py` says why). On the side it
forms the probabilities of the recorded rows' image queries on the prompt's text keys, exp(q·k·scale − lse), with
the log-sum-exp of a verified fused kernel, else of an explicit float32 pass (`kernels.py`; `Recorder.notes`
reports the latter).

Memory: the recorder never stores per-step full-resolution maps. Per image it holds
``time_bins × Σ_sites (h·w) × heads_kept × tokens × 4 bytes`` (a *site* is a group of layers summed
together — (block, resolution) on a UNet, a block kind on a transformer — or a single layer with
``per_layer=True``; ``heads_kept`` is 1 unless ``per_head=True``; ``tokens`` are the prompt's text positions
up to its end token, never the padding), plus a coarse per-step trace of
``steps × (≤ trace_size²) × tokens × 4 bytes``.
"""

from .kernels import SDPA as _SDPA
from .observer import AttentionObserver
from .plain_sdpa import PlainSDPAProcessor
from .recorder import LAYOUTS, Layer, Listener, Recorder, Site, StepState

# `_SDPA`: the attention function the observers watch for, for an intervention that calls it itself
__all__ = ["LAYOUTS", "_SDPA", "AttentionObserver", "Layer", "Listener", "PlainSDPAProcessor", "Recorder", "Site",
           "StepState"]
