"""The observer: sees one traced layer's attention calls while the layer runs, and hands them to its recorder.

Why not a replacement processor: every model family has its own processor (rotary embeddings, q/k norms, joint
text+image sequences, added K/V, IP-Adapter branches), and a copy of "plain attention" would reach only the
plainest. The layer keeps its own processor; the observer sees the final query, key, value and mask that reach
`F.scaled_dot_product_attention`, and the recorder lets that very call produce the layer's output: traced outputs
are bit-identical to untraced ones, by construction.

Two ways to see the call, chosen per layer:
- *the mode*: a `TorchFunctionMode` (torch's public hook into every torch call) active while the layer runs. It
  sees SDPA however the processor reaches it, and composes with other modes (a second trace, an intervention,
  diffusers' guiders and layer skipping), but every torch call of the layer passes through it: about 20 per layer
  at a few µs each, a third of capture's cost on small models.
- *direct*: while the layer runs, `torch.nn.functional.scaled_dot_product_attention` is `_dispatch`, which hands
  the call to the observer; nothing else is intercepted. This is only right when the processor looks the function
  up on `torch.nn.functional` at call time (diffusers' do) and no other mode watches. So the first call of each
  layer in each generation runs under both (a probe), and the layer goes direct only when every SDPA call the mode
  saw came through `_dispatch`, with only one trace active, no other mode on the stack and nobody else's wrapper
  in `torch.nn.functional`. A mode entered inside the layer later (layer skipping switched on for some passes)
  still sees the call first, as it would without us.
  The function is process-wide while a layer runs: another thread's calls find `_dispatch` and pass through it
  (`_running` is per thread), but a mode in another thread that compares calls with the attribute (diffusers'
  layer skipping) would not recognise them during that time; run such guidance in the traced thread.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from .kernels import SDPA

if TYPE_CHECKING:
    from .recorder import Layer, Recorder

_active = 0  # started traces (and interventions): with more than one, every layer keeps the mode
# `.observer`: the observer of the layer this thread runs now through `_dispatch`, if any. Per thread: while one
# thread's layer has `_dispatch` in place, another thread's calls (a second trace there keeps the mode) pass through.
_running = threading.local()
_modes = torch._C._len_torch_function_stack  # how many torch function modes are active (0: none)


def hold() -> None:
    """A trace starts (`release` when it stops)."""
    global _active
    _active += 1


def release() -> None:
    global _active
    _active -= 1


def _dispatch(query, key, value, *args, **kwargs):
    """`F.scaled_dot_product_attention` while a layer runs direct (or is probed): the call goes to its observer."""
    observer = getattr(_running, "observer", None)
    if observer is None:
        return SDPA(query, key, value, *args, **kwargs)
    if observer.probing or _modes():
        # Probing (our mode is active), or a mode entered inside the layer since the probe: each mode must see the
        # builtin called and find it at its usual place (diffusers' layer skipping compares with it); ours, put at
        # the bottom if it was not active, sees the call last, as it would from switch_on. A mode inside the
        # layer: it keeps the mode until the next generation's probe.
        observer.through += 1
        if not observer.probing or _modes() != 1:
            observer.direct = False
        with _builtin(), _at_bottom(None if observer.probing else observer):
            return SDPA(query, key, value, *args, **kwargs)
    _running.observer = None  # whatever the recorder calls runs as it would outside the layer
    try:
        return observer.recorder.observe(observer.layer, query, key, value, *args, **kwargs)
    finally:
        _running.observer = observer


@contextmanager
def _builtin():
    F.scaled_dot_product_attention = SDPA
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _dispatch


@contextmanager
def _at_bottom(mode: TorchFunctionMode | None):
    """`mode` at the bottom of torch's mode stack for the duration (nothing when None)."""
    if mode is None:
        yield
        return
    above = [torch._C._pop_torch_function_stack() for _ in range(_modes())]
    for m in [mode, *reversed(above)]:
        torch._C._push_on_torch_function_stack(m)
    try:
        yield
    finally:
        for _ in range(len(above) + 1):
            torch._C._pop_torch_function_stack()
        for m in reversed(above):
            torch._C._push_on_torch_function_stack(m)


class AttentionObserver(TorchFunctionMode):
    """One traced layer's observer: switched on and off by the layer's forward hooks; hands the layer's
    `scaled_dot_product_attention` calls to the recorder (which runs them unchanged)."""

    def __init__(self, recorder: Recorder, layer: Layer):
        super().__init__()
        self.recorder = recorder
        self.layer = layer
        self.on = False  # the mode is active
        self.window = False  # `_dispatch` is in place for this layer
        self.calls = 0  # forward calls of the layer in this generation (did it run at all?)
        self.direct: bool | None = None  # None: not probed yet in this generation
        self.probing = False
        self.seen = self.through = 0  # in a probe: SDPA calls the mode saw, and those that came through `_dispatch`

    def restart(self) -> None:
        """A new generation: count its calls, and probe the layer again."""
        self.calls, self.direct = 0, None

    def switch_on(self, module, args) -> None:  # forward pre-hook of the layer (returns None: inputs untouched)
        self.calls += 1
        alone = _active == 1 and not _modes() and getattr(_running, "observer", None) is None
        # `is SDPA`: not wrapped by someone else (they keep their wrapper, and we the mode)
        if alone and self.direct is not False and F.scaled_dot_product_attention is SDPA:
            _running.observer, self.window = self, True
            F.scaled_dot_product_attention = _dispatch
            self.probing = self.direct is None
            if not self.probing:
                return
            self.seen = self.through = 0
        self.__enter__()
        self.on = True

    def switch_off(self, module, args, output) -> None:  # forward hook, registered with always_call=True
        if self.probing and self.seen and self.direct is None:
            self.direct = self.seen == self.through
        self.close()
        rec = self.recorder
        if rec.listener is not None and rec.step is not None and rec.step.rows.stop > rec.step.rows.start and \
                output is not None:
            rec.listener.layer_done(self.layer, module, output)  # switched off: its own attention is not seen

    def close(self) -> None:
        """Switch off, if on. The trace's exit calls this too: torch runs ``always_call`` hooks after an
        `Exception`, not after a KeyboardInterrupt, which would leave the mode on for the rest of the process."""
        if self.on:
            self.on = False
            self.__exit__(None, None, None)
        if self.window:
            self.window = self.probing = False
            _running.observer = None
            F.scaled_dot_product_attention = SDPA

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # every torch call of the layer passes here: kept to one comparison (`observe` takes SDPA's arguments)
        if func is SDPA:
            self.seen += 1
            return self.recorder.observe(self.layer, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def others_watching() -> bool:
    """Whether another observer (a second trace's, or an intervention's) watches the attention call being handled:
    torch takes the mode handling a call off the mode stack while it runs, so any observer left there is another."""
    return _modes() > 0 and any(isinstance(mode, AttentionObserver) for mode in _get_current_function_mode_stack())
