"""What does capture cost on a GPU? Plain vs traced, with the fused kernels' log-sum-exp and with the explicit
float32 path, on a Flux.1-width transformer and an SDXL-width UNet at 1024 px in bf16 (random weights).

    .venv/bin/python benchmarks/cuda.py --json benchmarks/results/cuda.json   # ≈ 3 min on an H100/H200-class GPU
    .venv/bin/python benchmarks/cuda.py --device cpu --quick                   # tiny models (checks the script)

Models (weights do not change the cost; built directly on the device):

- Flux.1 width (hidden 3072 = 24 heads × 128, T5 width 4096, guidance embedding as in dev), 2 double- and 2
  single-stream blocks, 1024 px → 64×64 = 4096 image tokens, 512 T5 positions (dev's length), guidance 3.5;
- SDXL's UNet as published (320/640/1280 channels, 10 transformer layers in the deepest blocks, heads of 64,
  context 2048, text_time conditioning), 1024 px → 128×128 latents, guidance 5 (a batch of 2).

The text encoders are tiny stand-ins with the real output widths (they run once per call, outside the loop);
the timed call stops at the latents (``output_type="latent"``), so the ratio is not diluted by the VAE.

Each repeat runs plain, traced (log-sum-exp path) and traced (explicit path: `kernels._FLASH_LSE = False`)
back to back, in forward order on even repeats and reversed on odd ones, after one warm-up of each (which also
verifies the fused kernel on each call signature); times are CUDA-synchronised; min over repeats. Each traced
output must equal the plain one (`torch.equal`). Peak memory: `torch.cuda.max_memory_allocated` of one call of
each, from a reset. The JSON also says which kernel gave the log-sum-exp (`Recorder.lse_sources`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

# A script run from this folder has it first on sys.path, so torch's `from cuda.bindings import ...` (CUDA
# Python, optional) finds this file: refuse to be that package before importing anything that imports torch.
if __name__ == "cuda":
    raise ImportError("benchmarks/cuda.py is a script, not the cuda-python package")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead  # noqa: E402  (its builders; it puts the repository on sys.path)

import crossattn  # noqa: E402
from crossattn.capture import kernels  # noqa: E402
from crossattn.cli import _quiet_libraries  # noqa: E402

PROMPT = overhead.PROMPT
MODES = ("plain", "lse", "explicit")  # traced with the log-sum-exp path, traced with the explicit path


def sdxl_width_pipeline(tiny: bool = False):
    """SDXL's UNet architecture (random weights) with tiny text encoders of SDXL's output widths (768 + 1280,
    pooled 1280); `tiny`: the test suite's tiny SDXL."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tests.families.pipelines import build_tiny_sdxl, quiet
    from tests.families.text import clip_tokenizer, text_config

    if tiny:
        return build_tiny_sdxl()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    return quiet(StableDiffusionXLPipeline(
        vae=overhead._factor8_vae(4), text_encoder=CLIPTextModel(text_config(hidden_size=768)),
        text_encoder_2=CLIPTextModelWithProjection(text_config(hidden_size=1280, projection_dim=1280)),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)))


def call(pipe, mode: str, steps: int, size: int, extra: dict):
    """(seconds, latents, the trace or None) of one synchronised pipeline call in `mode`."""
    kw = dict(num_inference_steps=steps, height=size, width=size, output_type="latent",
              generator=torch.Generator(pipe.device).manual_seed(0), **extra)
    kernels._FLASH_LSE = mode != "explicit"
    try:
        sync(pipe.device)
        start = time.perf_counter()
        if mode == "plain":
            out, tr = pipe(PROMPT, **kw).images, None
        else:
            with crossattn.trace(pipe) as tr:
                out = pipe(PROMPT, **kw).images
        sync(pipe.device)
        return time.perf_counter() - start, out, tr
    finally:
        kernels._FLASH_LSE = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(pipe, steps: int, size: int, repeats: int, extra: dict) -> dict:
    outputs, sources = {}, {}
    for mode in MODES:  # warm-up; the traced ones verify the fused kernel on each signature
        _, outputs[mode], tr = call(pipe, mode, steps, size, extra)
        if tr is not None:
            sources[mode] = dict(tr.recorder.lse_sources)
    times = {mode: [] for mode in MODES}
    for r in range(repeats):
        for mode in MODES if r % 2 == 0 else reversed(MODES):
            times[mode].append(call(pipe, mode, steps, size, extra)[0])
    row = {"steps": steps, "size": size, "repeats": repeats, "lse_sources": sources,
           "equal": {mode: torch.equal(outputs[mode], outputs["plain"]) for mode in MODES[1:]}}
    for mode, values in times.items():
        row[f"{mode}_min_s"], row[f"{mode}_median_s"] = min(values), statistics.median(values)
    for mode in MODES[1:]:
        row[f"ratio_{mode}_min"] = row[f"{mode}_min_s"] / row["plain_min_s"]
    if pipe.device.type == "cuda":
        for mode in MODES:
            torch.cuda.reset_peak_memory_stats(pipe.device)
            call(pipe, mode, steps, size, extra)
            row[f"{mode}_peak_bytes"] = torch.cuda.max_memory_allocated(pipe.device)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models, 64 px, 2 steps, 1 repeat, float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    _quiet_libraries()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/cuda.py: no CUDA device here (torch sees none); it measures the CUDA path: run it "
                         "where a GPU is, or `--device cpu --quick` to check the script itself")
    quick = args.quick
    dtype = torch.float32 if quick else torch.bfloat16
    size, steps, repeats = (64, 2, 1) if quick else (1024, args.steps, args.repeats)
    result = {"date": date.today().isoformat(), "torch": torch.__version__, "device": str(device),
              "card": torch.cuda.get_device_name(device) if device.type == "cuda" else
              platform.processor() or platform.machine(),
              "dtype": str(dtype).removeprefix("torch."), "quick": quick, "models": {}}
    models = (("flux_width", "Flux.1 width, 2 double + 2 single blocks", overhead.flux_width_pipeline,
               dict(guidance_scale=3.5, max_sequence_length=16 if quick else 512)),
              ("sdxl_width", "SDXL UNet architecture", sdxl_width_pipeline, dict(guidance_scale=5.0)))
    for key, title, build, extra in models:
        with torch.device(device):  # parameters made where they run: no slow CPU initialisation
            pipe = build(quick).to(device, dtype)
        result["models"][key] = {"model": title + (" (tiny)" if quick else ""), **measure(pipe, steps, size, repeats,
                                                                                          extra)}
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


def print_table(r: dict) -> None:
    print(f"crossattn on {r['card']} ({r['device']}), {r['dtype']}, torch {r['torch']}, {r['date']}"
          + (" (--quick: tiny models)" if r["quick"] else ""))
    print("\n| model | size | steps | plain min (s) | traced, log-sum-exp: min (s) / ratio | traced, explicit: min (s) "
          "/ ratio | outputs equal (lse / explicit) | peak memory plain / lse / explicit (GiB) | log-sum-exp from |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in r["models"].values():
        peak = " / ".join(f"{row[f'{m}_peak_bytes'] / 2**30:.2f}" for m in MODES) if "plain_peak_bytes" in row else "—"
        source = ", ".join(row["lse_sources"].get("lse", {})) or "—"
        print(f"| {row['model']} | {row['size']} px | {row['steps']} | {row['plain_min_s']:.3f} | "
              f"{row['lse_min_s']:.3f} / ×{row['ratio_lse_min']:.3f} | {row['explicit_min_s']:.3f} / "
              f"×{row['ratio_explicit_min']:.3f} | {'yes' if row['equal']['lse'] else 'NO'} / "
              f"{'yes' if row['equal']['explicit'] else 'NO'} | {peak} | {source} |")


if __name__ == "__main__":
    main()
