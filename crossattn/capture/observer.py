"""The observer: a `TorchFunctionMode` active while one traced layer runs, which hands the layer's attention calls
to its recorder.

Why a mode and not a replacement processor: every model family has its own processor (rotary embeddings, q/k
norms, joint text+image sequences, added K/V, IP-Adapter branches), and a copy of "plain attention" would reach
only the plainest. The layer keeps its own processor; the mode (torch's public hook into every torch call) sees
the final query, key, value and mask that reach `F.scaled_dot_product_attention`, and the recorder lets that very
call produce the layer's output: traced outputs are bit-identical to untraced ones, by construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from .kernels import SDPA

if TYPE_CHECKING:
    from .recorder import Layer, Recorder


class AttentionObserver(TorchFunctionMode):
    """Active while one traced layer runs: passes every torch call through, and hands the layer's
    `scaled_dot_product_attention` calls to the recorder (which runs them unchanged)."""

    def __init__(self, recorder: Recorder, layer: Layer):
        super().__init__()
        self.recorder = recorder
        self.layer = layer
        self.on = False
        self.calls = 0  # forward calls of the layer in this generation (did it run at all?)

    def switch_on(self, module, args) -> None:  # forward pre-hook of the layer (returns None: inputs untouched)
        self.calls += 1
        self.__enter__()
        self.on = True

    def switch_off(self, module, args, output) -> None:  # forward hook, registered with always_call=True
        self.close()
        rec = self.recorder
        if rec.listener is not None and rec.step is not None and rec.step.rows.stop > rec.step.rows.start and \
                output is not None:
            rec.listener.layer_done(self.layer, module, output)  # outside the mode: its own attention is not seen

    def close(self) -> None:
        """Switch off, if on. The trace's exit calls this too: torch runs ``always_call`` hooks after an
        `Exception`, not after a KeyboardInterrupt, which would leave the mode on for the rest of the process."""
        if self.on:
            self.on = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # every torch call of the layer passes here: kept to one comparison (`observe` takes SDPA's arguments)
        if func is SDPA:
            return self.recorder.observe(self.layer, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def others_watching() -> bool:
    """Whether another observer (a second trace's, or an intervention's) watches the attention call being handled:
    torch takes the mode handling a call off the mode stack while it runs, so any observer left there is another."""
    return any(isinstance(mode, AttentionObserver) for mode in _get_current_function_mode_stack())
