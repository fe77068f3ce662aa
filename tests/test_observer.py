"""How a layer's attention call is seen: direct through `torch.nn.functional` when the trace alone watches, else
through the mode. Both give the same maps bit for bit, and every other watcher (somebody's wrapper, a mode entered
inside the layer, a processor that binds SDPA itself) sees or does what it would without the trace."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import crossattn
from crossattn.capture import observer
from crossattn.capture.kernels import SDPA
from tests.families.pipelines import build_tiny_sd
from tests.helpers import seeded

PROMPT = "a red circle left of a cyan square"
BOUND = torch._C._nn.scaled_dot_product_attention  # SDPA bound once, as a third-party processor might


def run(pipe, steps: int = 3) -> torch.Tensor:
    return pipe(PROMPT, num_inference_steps=steps, generator=seeded(), output_type="latent").images


def attn2(pipe) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.unet.named_modules() if name.endswith("attn2")}


@contextlib.contextmanager
def somebodys_wrapper():
    """Another library's wrapper around `F.scaled_dot_product_attention`: the trace must leave it in place."""
    original, calls = F.scaled_dot_product_attention, []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = wrapper
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original


def same_recording(a, b) -> bool:
    return a.sums.keys() == b.sums.keys() and all(torch.equal(a.sums[k], b.sums[k]) for k in a.sums) and \
        a.counts == b.counts and a.coverage == b.coverage


@pytest.fixture
def by_mode(tiny_sd):
    """The recorder of a generation traced through the mode on every layer (somebody's wrapper forces it)."""
    with somebodys_wrapper() as calls, crossattn.trace(tiny_sd) as tr:
        out = run(tiny_sd)
        assert {o.direct for o in tr._observers} == {None}  # never probed: the mode throughout
    assert calls  # their wrapper was called, and is gone with them
    return tr.recorder, out


def test_layers_go_direct_and_record_what_the_mode_records_bit_for_bit(tiny_sd, by_mode):
    plain = run(tiny_sd)
    with crossattn.trace(tiny_sd) as tr:
        out = run(tiny_sd)
        assert {o.direct for o in tr._observers} == {True}
    assert torch.equal(out, plain) and torch.equal(by_mode[1], plain)
    assert same_recording(tr.recorder, by_mode[0])
    assert F.scaled_dot_product_attention is SDPA and getattr(observer._running, "observer", None) is None


def test_a_processor_that_binds_sdpa_itself_keeps_the_mode(tiny_sd, by_mode):
    class BoundSDPAProcessor:
        """Cross-attention as `AttnProcessor2_0` computes it on these layers, with SDPA bound at import."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            b = hidden_states.shape[0]

            def heads(x):
                return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

            out = BOUND(heads(attn.to_q(hidden_states)), heads(attn.to_k(encoder_hidden_states)),
                        heads(attn.to_v(encoder_hidden_states)))
            return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))

    originals = {name: m.processor for name, m in attn2(tiny_sd).items()}
    try:
        for m in attn2(tiny_sd).values():
            m.set_processor(BoundSDPAProcessor())
        with crossattn.trace(tiny_sd) as tr:
            out = run(tiny_sd)
            assert {o.direct for o in tr._observers} == {False}  # the probe saw calls that did not come through F
    finally:
        for name, m in attn2(tiny_sd).items():
            m.set_processor(originals[name])
    assert torch.equal(out, by_mode[1])  # the same computation
    assert same_recording(tr.recorder, by_mode[0])


class Inner(TorchFunctionMode):
    """A mode entered inside the layer from the second denoiser call on, comparing calls with
    `F.scaled_dot_product_attention` as diffusers' attention skipping does; `skip`: answer zeros instead."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip, self.seen = skip, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.seen += 1
            if self.skip:
                return torch.zeros_like(args[0])
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def inner_mode(pipe, skip: bool):
    mode, calls, hooks = Inner(skip), [0], []

    def on(module, args):
        calls[0] += 1
        if calls[0] > len(hooks) // 2:  # from the second denoiser call on (one call a step with CFG)
            mode.__enter__()
            module._inner = True

    def off(module, args, output):
        if getattr(module, "_inner", False):
            module._inner = False
            mode.__exit__(None, None, None)

    for m in attn2(pipe).values():
        hooks += [m.register_forward_pre_hook(on), m.register_forward_hook(off, always_call=True)]
    try:
        yield mode
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("skip", [False, True], ids=["passing-through", "skipping"])
def test_a_mode_entered_inside_a_direct_layer_sees_the_call_first(tiny_sd, by_mode, skip):
    with inner_mode(tiny_sd, skip) as alone:  # registered before the trace's hooks: entered after, left before
        expected = run(tiny_sd)
    with inner_mode(tiny_sd, skip) as inner, crossattn.trace(tiny_sd) as tr:
        out = run(tiny_sd)
        assert {o.direct for o in tr._observers} == {False}  # went back to the mode once the inner one appeared
    assert torch.equal(out, expected) and inner.seen == alone.seen > 0
    if skip:  # skipped calls never reach SDPA: only the first step is recorded, and the maps say so
        assert set(map(frozenset, tr.recorder.ran_steps.values())) == {frozenset({0})}
        assert any("fewer steps" in note for note in tr.heat_maps().notes)
    else:
        assert same_recording(tr.recorder, by_mode[0])


def test_an_interrupt_inside_a_direct_layer_leaves_torch_as_it_was(tiny_sd):
    target = next(iter(attn2(tiny_sd).values())).to_out[0]
    calls = [0]

    def interrupt(module, args):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt

    hook = target.register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), crossattn.trace(tiny_sd):
            run(tiny_sd)
    finally:
        hook.remove()
    assert F.scaled_dot_product_attention is SDPA and getattr(observer._running, "observer", None) is None
    assert observer._active == 0
    assert torch._C._len_torch_function_stack() == 0


def test_a_direct_trace_in_one_thread_leaves_another_threads_attention_alone(tiny_sd):
    """While one thread's traced layer has `_dispatch` in place, another thread's model calls the same function:
    its calls pass through untouched, and the trace records its own generation only, as it would alone."""
    other = build_tiny_sd()
    with crossattn.trace(tiny_sd) as tr:
        run(tiny_sd, steps=6)
    alone, plain = tr.recorder, run(other, steps=6)
    out, errors = {}, []

    def work(name, pipe, traced):
        try:
            with crossattn.trace(pipe) if traced else contextlib.nullcontext() as t:
                out[name] = [run(pipe, steps=6) for _ in range(1 if traced else 3)][-1]
            out[name + " trace"] = t
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=item) for item in (("a", tiny_sd, True), ("b", other, False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert torch.equal(out["b"], plain)
    together = out["a trace"].recorder
    assert together.coverage == alone.coverage and together.counts == alone.counts
    assert all(torch.allclose(together.sums[k], alone.sums[k], atol=1e-6) for k in alone.sums)
