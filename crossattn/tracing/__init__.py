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

The modules, in reading order:

- `tracer.py`: `Trace` (install, the hooks, give back) and `trace()`;
- `configuration.py`: what is switched to see the attention (backends, compiled blocks, plain processors), what
  is refused (a denoiser compiled whole, context parallelism, layers never seen attending), the step-cache note;
- `prompt_watch.py`: the text encoders' ids and `encode_prompt`'s embeddings;
- `row_slots.py`: where each denoiser call's recorded rows go on the recorder's images axis;
- `maps.py`: one image's row of the recorder, with its words and notes, as a `HeatMaps`.
"""

from .configuration import NON_SDPA_PLAIN, SDPA_BACKENDS
from .maps import TRUNCATION_NOTE
from .tracer import MASSES, Trace, trace

__all__ = ["MASSES", "NON_SDPA_PLAIN", "SDPA_BACKENDS", "TRUNCATION_NOTE", "Trace", "trace"]
