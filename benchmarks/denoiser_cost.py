"""What capture adds to each denoiser call of the embedded UNet, measured where whole-generation times are too noisy
to tell 3 % apart (on a shared 2-core host the plain generation's own median swings by ±10 % between runs).

Inside one traced generation (at its second step, from a step-end callback) the UNet is called again on the inputs
of its first call, many times, three ways interleaved:
- *plain*: the trace's hooks taken off the modules for the call (nothing observed, nothing recorded);
- *direct*: the trace as it runs alone: SDPA reached through `torch.nn.functional` (`capture/observer.py`);
- *mode*: the same trace through its `TorchFunctionMode`, as when another trace, an intervention or a guider's
  mode is active.
Each call is a whole denoiser call with classifier-free guidance (batch 2): the step hooks, every traced layer's
observation and recording. Min over the calls of each way; their ratio is capture's cost per denoiser call. The
traced layers are then timed alone the same three ways (their own inputs), and the trace's step hooks alone:
short calls find the host's quiet moments far more often, so the layers' differences plus the step hooks are
the cost per call again, from steadier parts. The trace's setup (construct, start, stop: hooks and model walks)
is timed too, min of 20, and a 20-step generation's ratio follows from the parts: (20 × (plain call + added) +
setup) / (20 × plain call). The rest of a generation (text encoding, the scheduler) is left out of the
denominator, so that ratio is an upper bound, given the plain call's min (which a busy host can only raise).

    .venv/bin/python benchmarks/denoiser_cost.py --threads 1 --json benchmarks/results/denoiser_cost.json  # ≈ 2 min
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch

import crossattn

PROMPT = "a red circle left of a blue square"
WAYS = ("plain", "direct", "mode")
STEPS = 20


def costs(pipe, calls: int, layer_calls: int) -> tuple[dict[str, float], dict[str, dict[str, float]], float]:
    """Min seconds of one denoiser call each way, of one call of each traced layer each way, and of the trace's
    step hooks (module docstring), all measured at the same step of one traced generation."""
    inputs: dict[str, tuple] = {}
    whole: dict[str, list[float]] = {way: [] for way in WAYS}
    layers: dict[str, dict[str, list[float]]] = {}
    hooks: list[float] = []
    with crossattn.trace(pipe) as tr:
        modules = {"denoiser": pipe.unet} | {path: pipe.unet.get_submodule(path) for path in tr.layers}
        grabs = [m.register_forward_pre_hook(lambda m, args, kwargs, path=path: inputs.setdefault(path, (args, kwargs)),
                                             with_kwargs=True) for path, m in modules.items()]
        hooked = [m for m in pipe.unet.modules() if m._forward_pre_hooks or m._forward_hooks]

        def timed(module, args, kwargs, way: str) -> float:
            for observer in tr._observers:
                observer.direct = way == "direct"  # False: the mode, as switch_on decides
            saved = [(m, m._forward_pre_hooks, m._forward_hooks) for m in hooked] if way == "plain" else []
            for m, _, _ in saved:
                m._forward_pre_hooks, m._forward_hooks = type(m._forward_hooks)(), type(m._forward_hooks)()
            start = time.perf_counter()
            module(*args, **kwargs)
            seconds = time.perf_counter() - start
            for m, pre, post in saved:
                m._forward_pre_hooks, m._forward_hooks = pre, post
            return seconds

        def measure(pipe_, step, timestep, kwargs):
            if step != 1:
                return kwargs
            for grab in grabs:
                grab.remove()
            args, kw = inputs["denoiser"]
            with torch.no_grad():
                for k in range(calls):
                    for j, way in enumerate(WAYS):
                        # each call a little later in the schedule: the trace takes it for the next step and records
                        # it (at one timestep, a further call with the prompt's text is a pass it skips)
                        later = (args[0], args[1] - 1e-3 * (len(WAYS) * k + j + 1), *args[2:])
                        whole[way].append(timed(pipe.unet, later, kw, way))
                # the layers are called in the state the last traced call left: recording the prompt's row
                for _ in range(layer_calls):
                    for path in tr.layers:
                        for way in WAYS:
                            layers.setdefault(path, {w: [] for w in WAYS})[way].append(
                                timed(modules[path], *inputs[path], way))
                # the step hooks alone (what a denoiser call adds besides its layers), each at a new timestep
                for k in range(layer_calls):
                    later = (args[0], args[1] - 1e-3 * (len(WAYS) * calls + k + 1), *args[2:])
                    start = time.perf_counter()
                    tr._on_denoiser(pipe.unet, later, kw)
                    tr._after_denoiser(pipe.unet, later, None)
                    hooks.append(time.perf_counter() - start)
            return kwargs

        pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent",
             callback_on_step_end=measure)
    return {way: min(v) for way, v in whole.items()}, \
        {path: {way: min(v) for way, v in ways.items()} for path, ways in layers.items()}, min(hooks)


def setup_cost(pipe, repeats: int) -> float:
    """Min seconds to construct, start and stop a trace (no generation)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with crossattn.trace(pipe):
            pass
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calls", type=int, default=100, help="timed denoiser calls per way")
    parser.add_argument("--layer-calls", type=int, default=300, help="timed calls per traced layer and way")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = crossattn.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    calls, layers, hooks = costs(pipe, args.calls, args.layer_calls)
    setup = setup_cost(pipe, 20)
    plain = calls["plain"]
    ratio = {way: calls[way] / plain for way in WAYS[1:]}
    # the same from parts: a layer call (~0.5 ms) finds the host's quiet moments far more often than a whole
    # denoiser call (~45 ms), so the layers' differences plus the step hooks are the steadier figure
    added = {way: sum(t[way] - t["plain"] for t in layers.values()) + hooks for way in WAYS[1:]}
    from_parts = {way: (plain + added[way]) / plain for way in added}
    generation = {way: (STEPS * (plain + added[way]) + setup) / (STEPS * plain) for way in added}
    result = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "calls_per_way": args.calls, "layer_calls_per_way": args.layer_calls, "denoiser_call_min_s": calls,
              "layers_min_s": layers, "step_hooks_min_s": hooks, "trace_setup_min_s": setup,
              "ratio_per_call": ratio, "added_per_call_from_parts_s": added, "ratio_per_call_from_parts": from_parts,
              "steps": STEPS, "ratio_generation_from_parts_upper_bound": generation}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"embedded UNet, 64 px, CFG: min of {args.calls} interleaved denoiser calls and of {args.layer_calls} calls "
          f"of each of its {len(layers)} traced layers, per way; {result['threads']} thread(s); step hooks "
          f"{hooks * 1e6:.0f} µs, trace setup {setup * 1e3:.1f} ms (mins)")
    print(f"\n| way | denoiser call (ms) | ratio per call | added per call, from parts (µs) | ratio from parts "
          f"| {STEPS} calls + setup, from parts (upper bound) |")
    print("|---|---|---|---|---|---|")
    for way in WAYS:
        tail = f"×{ratio[way]:.3f} | {added[way] * 1e6:.0f} | ×{from_parts[way]:.3f} | ×{generation[way]:.3f}" \
            if way in ratio else "— | — | — | —"
        print(f"| {way} | {calls[way] * 1e3:.2f} | {tail} |")


if __name__ == "__main__":
    main()
