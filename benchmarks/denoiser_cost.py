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
trace's setup (construct, start, stop: hooks and model walks) is timed too, min of 20, and the ratio of a 20-step
generation's denoiser calls follows: (20 × traced call + setup) / (20 × plain call). The rest of a generation
(text encoding, the scheduler) is left out of the denominator, so that ratio is an upper bound.

    .venv/bin/python benchmarks/denoiser_cost.py --threads 1 --json benchmarks/results/denoiser_cost.json  # ≈ 1 min
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


def denoiser_costs(pipe, calls: int) -> dict[str, float]:
    """Min seconds of one denoiser call, each way (module docstring)."""
    inputs: dict[str, tuple] = {}
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    with crossattn.trace(pipe) as tr:
        grab = pipe.unet.register_forward_pre_hook(
            lambda m, args, kwargs: inputs.setdefault("first", (args, kwargs)), with_kwargs=True)
        hooked = [m for m in pipe.unet.modules() if m._forward_pre_hooks or m._forward_hooks]

        def measure(pipe_, step, timestep, kwargs):
            if step != 1:
                return kwargs
            args, kw = inputs["first"]
            with torch.no_grad():
                for _ in range(calls):
                    for way in WAYS:
                        for observer in tr._observers:
                            observer.direct = way == "direct"  # False: the mode, as switch_on decides
                        saved = [(m, m._forward_pre_hooks, m._forward_hooks) for m in hooked] if way == "plain" else []
                        for m, _, _ in saved:
                            m._forward_pre_hooks, m._forward_hooks = type(m._forward_hooks)(), type(m._forward_hooks)()
                        start = time.perf_counter()
                        pipe.unet(*args, **kw)
                        times[way].append(time.perf_counter() - start)
                        for m, pre, post in saved:
                            m._forward_pre_hooks, m._forward_hooks = pre, post
            return kwargs

        pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent",
             callback_on_step_end=measure)
        grab.remove()
    return {way: min(values) for way, values in times.items()}


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
    parser.add_argument("--calls", type=int, default=150, help="timed denoiser calls per way")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = crossattn.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    calls = denoiser_costs(pipe, args.calls)
    setup = setup_cost(pipe, 20)
    ratio = {way: calls[way] / calls["plain"] for way in WAYS[1:]}
    generation = {way: (STEPS * calls[way] + setup) / (STEPS * calls["plain"]) for way in WAYS[1:]}
    result = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "calls_per_way": args.calls, "denoiser_call_min_s": calls, "trace_setup_min_s": setup,
              "ratio_per_call": ratio, "steps": STEPS, "ratio_generation_upper_bound": generation}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"embedded UNet, 64 px, CFG: min of {args.calls} interleaved denoiser calls per way, "
          f"{result['threads']} thread(s); trace setup {setup * 1e3:.1f} ms (min of 20)")
    print(f"\n| way | denoiser call (ms) | ratio per call | {STEPS} calls + setup, ratio (upper bound) |")
    print("|---|---|---|---|")
    for way in WAYS:
        tail = f"×{ratio[way]:.3f} | ×{generation[way]:.3f}" if way in ratio else "— | —"
        print(f"| {way} | {calls[way] * 1e3:.2f} | {tail} |")


if __name__ == "__main__":
    main()
