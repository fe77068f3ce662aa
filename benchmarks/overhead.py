"""What does capture cost? Time, memory and rendering, plain vs traced, side by side in one process.

    .venv/bin/python benchmarks/overhead.py                 # prints a table, writes benchmarks/results/overhead.json
    .venv/bin/python benchmarks/overhead.py --quick         # fewer repeats, no 512 px / RSS probes

Models: (a) the embedded shapes-world pipeline (assets/shapes-model), (b) a pipeline with the exact
Stable Diffusion 1.5 architecture (UNet 320/640/1280/1280, 8 heads, 2 layers per block, cross-attention
dim 768; SD VAE; CLIP ViT-L/14 text encoder) with random weights — weights do not change the cost.
Timings are of the denoising loop (``output_type="latent"``), the only part capture touches, so the ratio
is not diluted by VAE decoding. Each repeat runs plain and traced back to back, alternating which goes
first; we report min and median over repeats after one warm-up of each.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import crossattn  # noqa: E402
from crossattn.shapes.model import MODEL_DIR, load_tokenizer, untrained_pipeline  # noqa: E402

PROMPT = "a red circle left of a blue square"


def sd15_pipeline():
    """SD 1.5's architecture, random weights (built from configs; nothing is downloaded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, hidden_act="quick_gelu", vocab_size=49408,
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embedded_pipeline():
    if (MODEL_DIR / "model_index.json").exists():
        pipe = crossattn.load_pipeline(device="cpu")
        name = "embedded shapes model"
    else:  # before the model is trained: same architecture, random weights (same cost)
        pipe = untrained_pipeline()
        name = "shapes architecture (untrained)"
    pipe.set_progress_bar_config(disable=True)
    return pipe, name


def run(pipe, steps: int, size: int, traced: bool, output_type: str = "latent", exact: bool = True):
    kw = dict(num_inference_steps=steps, height=size, width=size, generator=torch.Generator().manual_seed(0),
              output_type=output_type, guidance_scale=7.5)
    if not traced:
        start = time.perf_counter()
        out = pipe(PROMPT, **kw)
        return time.perf_counter() - start, out, None
    start = time.perf_counter()
    with crossattn.trace(pipe, exact=exact) as tr:
        out = pipe(PROMPT, **kw)
    return time.perf_counter() - start, out, tr


def overhead(pipe, steps: int, size: int, repeats: int) -> dict:
    """Plain vs traced (exact mode, the default) vs traced (exact=False), interleaved, min and median."""
    variants = {"plain": dict(traced=False), "exact": dict(traced=True), "fast": dict(traced=True, exact=False)}
    for kw in variants.values():
        run(pipe, steps, size, **kw)  # warm-up
    times = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(run(pipe, steps, size, **variants[name])[0])
    out = {"steps": steps, "size": size, "repeats": repeats}
    for name, values in times.items():
        out[f"{name}_min_s"], out[f"{name}_median_s"] = min(values), statistics.median(values)
    for name in ("exact", "fast"):
        out[f"ratio_{name}_min"] = out[f"{name}_min_s"] / out["plain_min_s"]
        out[f"ratio_{name}_median"] = out[f"{name}_median_s"] / out["plain_median_s"]
    return out


def memory(pipe, steps: int, size: int) -> dict:
    _, _, tr = run(pipe, steps, size, True)
    rec = tr.recorder
    tokens = next(iter(rec.sums.values())).shape[-1]
    pixels_per_resolution = {s.resolution[0] * s.resolution[1] for s in rec.sites.values()}
    return {
        "steps": steps, "size": size, "accumulator_bytes": rec.accumulator_bytes, "trace_bytes": rec.trace_bytes,
        "tokens_kept": tokens, "time_bins": rec.time_bins, "sites": sorted(rec.sites),
        # the budget: 4 bytes x tokens x sum over captured resolutions of latent pixels (77-token context)
        "budget_bytes_77_tokens": 4 * 77 * sum(pixels_per_resolution),
        "budget_bytes_kept_tokens": 4 * tokens * sum(pixels_per_resolution),
    }


def render_cost(pipe, steps: int, size: int, repeats: int = 5) -> dict:
    _, out, tr = run(pipe, steps, size, True, output_type="pil")
    image = out.images[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        maps = tr.heat_maps()
        overlays = [m.overlay(image) for m in maps]
        times.append(time.perf_counter() - start)
    return {"words": len(overlays), "size": size, "all_overlays_min_s": min(times),
            "all_overlays_median_s": statistics.median(times)}


def peak_rss_probe(traced: bool, size: int, steps: int) -> int:
    """Peak RSS (KiB) of a fresh process that builds SD 1.5 and generates once, plain or traced."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import overhead as o, resource; "
            f"o.run(o.sd15_pipeline(), {steps}, {size}, {traced}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats; skip 512 px and the RSS probes")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    repeats = 2 if args.quick else args.repeats
    result = {"date": date.today().isoformat(), "cpu_cores": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "prompt": PROMPT}

    small, small_name = embedded_pipeline()
    result["embedded"] = {"model": small_name,
                          "time": overhead(small, steps=20, size=64, repeats=repeats * 4),
                          "memory": [memory(small, s, 64) for s in (10, 50)] + [memory(small, 20, 128)],
                          "render": render_cost(small, 20, 64)}
    del small
    big = sd15_pipeline()
    result["sd15"] = {"model": "SD 1.5 architecture, random weights",
                      "time": overhead(big, steps=4, size=256, repeats=repeats),
                      "memory": [memory(big, s, 256) for s in (10, 50)]
                      + ([] if args.quick else [memory(big, 2, 512)]),
                      "render": render_cost(big, 2, 256)}
    del big
    if not args.quick:
        result["sd15"]["peak_rss_kib"] = {"plain": peak_rss_probe(False, 256, 3),
                                          "traced": peak_rss_probe(True, 256, 3)}
    result["rss_this_process_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print_table(result)


def print_table(r: dict) -> None:
    print(f"crossattn capture overhead — {r['date']}, {r['cpu_cores']} CPU threads, torch {r['torch']}")
    print("\n| model | size | steps | mode | plain min / median (s) | traced min / median (s) | ratio min | "
          "ratio median |")
    print("|---|---|---|---|---|---|---|---|")
    for key in ("embedded", "sd15"):
        t = r[key]["time"]
        for mode in ("exact", "fast"):
            print(f"| {r[key]['model']} | {t['size']} px | {t['steps']} | {mode} | {t['plain_min_s']:.3f} / "
                  f"{t['plain_median_s']:.3f} | {t[f'{mode}_min_s']:.3f} / {t[f'{mode}_median_s']:.3f} | "
                  f"{t[f'ratio_{mode}_min']:.3f} | {t[f'ratio_{mode}_median']:.3f} |")
    print("\n| model | size | steps | accumulators (B) | trace (B) | tokens kept | budget 4·77·Σpx (B) |")
    print("|---|---|---|---|---|---|---|")
    for key in ("embedded", "sd15"):
        for m in r[key]["memory"]:
            print(f"| {r[key]['model']} | {m['size']} px | {m['steps']} | {m['accumulator_bytes']:,} | "
                  f"{m['trace_bytes']:,} | {m['tokens_kept']} | {m['budget_bytes_77_tokens']:,} |")
    print("\n| model | size | words | all overlays min / median (s) |")
    print("|---|---|---|---|")
    for key in ("embedded", "sd15"):
        c = r[key]["render"]
        print(f"| {r[key]['model']} | {c['size']} px | {c['words']} | {c['all_overlays_min_s']:.4f} / "
              f"{c['all_overlays_median_s']:.4f} |")
    if "peak_rss_kib" in r["sd15"]:
        rss = r["sd15"]["peak_rss_kib"]
        print(f"\nSD 1.5 arch, 256 px, 3 steps, fresh process peak RSS: plain {rss['plain'] / 1024:.0f} MiB, "
              f"traced {rss['traced'] / 1024:.0f} MiB (difference {(rss['traced'] - rss['plain']) / 1024:+.0f} MiB)")


if __name__ == "__main__":
    main()
