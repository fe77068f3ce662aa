"""What does capture cost? Time and memory: plain vs crossattn vs attention-map-diffusers, side by side in one run.

    .venv/bin/python benchmarks/overhead.py            # ≈ 18 min on a quiet 2-core CPU; table + results/overhead.json
    .venv/bin/python benchmarks/overhead.py --quick    # every row at tiny sizes, 1 repeat (≈ 1 min): checks the script
                                                       # (writes results/overhead_quick.json)
    .venv/bin/python benchmarks/overhead.py --only embedded --threads 1   # one model's rows (its 12 timed repeats;
                                                       # writes results/overhead_embedded.json)
    .venv/bin/python benchmarks/overhead.py --video --threads 1 --repeats 8   # the two video rows, (e) and (f)
                                                       # (≈ 3 min; writes results/overhead_video.json)

The 18 minutes are an estimate from per-step times (the JSON records each model's seconds): about 5 for the
UNet rows (as before: timing, 10/50-step memory, 512 px memory, overlays, two fresh-process RSS probes), 3 for
the SD3.5-width rows and 7 for the Flux-width ones, most of it their 50-step memory generations, and about 3 for
the two video rows.

Models (random weights except the first; weights do not change the cost):

(a) the embedded shapes-world UNet (crossattn/assets/shapes-unet), 64 px, 20 steps;
(b) the exact Stable Diffusion 1.5 architecture (UNet 320/640/1280/1280, 8 heads, 2 layers per block,
    cross-attention dim 768; SD VAE; CLIP ViT-L/14 text encoder), 256 px, 4 steps;
(c) an MMDiT at SD3.5-medium width (hidden 1536 = 24 heads × 64, joint_attention_dim 4096, caption projection
    1536, pooled 2048, RMS q/k norm, patch 2, VAE factor 8: 256 px → 32×32 latent → 16×16 tokens) and reduced
    depth: 2 joint blocks, the first with SD3.5's extra image self-attention, the second the text-closing one;
    text = 77 CLIP + 256 T5 positions; guidance 5 (batch of 2), 2 steps;
(d) a Flux.1-width transformer (hidden 3072 = 24 heads × 128, joint_attention_dim 4096, guidance embedding as
    in dev): two double-stream and two single-stream blocks, 256 px → 16×16 packed tokens, 256 T5 positions
    (schnell's length; dev's 512 makes the text half of the sequence bigger still), 2 steps;
(e) a Wan 2.1 1.3B-width video transformer (hidden 1536 = 12 heads × 128, FFN 8960, text_dim 4096 → 512 zero-padded
    UMT5 positions, patch 1×2×2, RMS q/k norm across heads) with 2 of its 30 blocks; the Wan VAE's factors (8×
    space, 4× time): 128 px, 9 frames → 3 latent frames × 8×8 tokens; CFG as Wan does it, two calls per step
    (guidance 5); 2 steps;
(f) a CogVideoX-2B-width transformer (hidden 1920 = 30 heads × 64, time embedding 512, text 4096 wide, exactly 226
    T5 positions, sincos positions, patch 2) with 2 of its 30 blocks, joint attention over [text, video]; VAE 8×
    space, 4× time: 128 px, 9 frames → 3 latent frames × 8×8 tokens; CFG as one batch of 2 (guidance 6); 2 steps.

Rows (e) and (f) are in the default set and alone with ``--video``. For them the peer is given
``relations=["video->text"]``: its default relation, image->text, is absent from a video layout, so by default it
would keep nothing. Their memory is read at 2 and 3 latent frames (5 and 9 frames), after steps 1 and 2 of one
generation each, and each row states crossattn's accumulator bytes per latent frame (a video's accumulators hold
every frame's map: frames × one frame's pixels × kept tokens × 4 bytes per time bin and site) and the increase from
2 to 3 frames, the measured cost of one more frame.

In (c) to (f) the text encoders are tiny stand-ins (they run once per call, outside the denoising loop); the
T5 stand-in has the real width 4096, so the denoiser gets text states of the real shape.

Time: the pipeline call with ``output_type="latent"`` (text encoding + denoising loop, no VAE decoding, so the
ratio is not diluted by work capture never touches), for three *tools*: plain, ``crossattn.trace(pipe)`` and
the peer, attention-map-diffusers' ``AttentionCapture(pipe)`` with its defaults (image→text maps, last step
only, "fast" mode: keeps each call's query and key, computes the maps in ``compute()`` afterwards; it swaps
its own processors in for all of the denoiser's, so its time includes theirs). Installing and removing each
tool is inside the timed span. Each repeat runs the three back to back, in forward order on
even repeats and reversed on odd ones; min and median over repeats after one warm-up of each. "Maps ready" is
what comes after the generation: ``tr.heat_maps().data.token_maps()`` for crossattn, ``capture.compute()`` for the
peer (its last step only, its default).

Memory: one generation of 50 steps with crossattn and the peer (``timesteps="all"``) attached at once, read
after step 10 and after step 50 through ``callback_on_step_end`` — what a 10-step and a 50-step generation
hold: neither tool sizes anything by the total step count except crossattn's time bins, min(4, steps), the
same 4 for both. crossattn: ``recorder.accumulator_bytes`` (fixed) and ``recorder.step_bytes`` (grows by one
coarse map per step). Peer: the bytes of the distinct tensor storages its records keep alive — every captured
call's query and key (with offload to the CPU on a CPU these are the model's own tensors, not copies, but they
stay allocated), both CFG halves, text and image positions: for all steps, and for the last step alone (what
its default holds); then the bytes of its maps after ``compute()`` (computed on a copy of the record list, so
the generation goes on undisturbed). The video rows' memory generations are 2 steps long, not 50 (see above).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: tiny text encoders and tokenizers are `tests.families.text`

import crossattn  # noqa: E402
from crossattn.cli import _quiet_libraries  # noqa: E402
from crossattn.shapes.model import MODEL_DIR, load_tokenizer, untrained_pipeline  # noqa: E402
from tests.families.pipelines import quiet  # noqa: E402

PROMPT = "a red circle left of a blue square"
HAS_PEER = importlib.util.find_spec("attention_map_diffusers") is not None
TOOLS = ("plain", "crossattn") + (("peer",) if HAS_PEER else ())


@dataclass
class Bench:
    """One model row: its pipeline and how it is called."""

    key: str  # key in the JSON
    title: str
    pipe: object
    size: int  # image side in pixels
    steps: int  # denoising steps of the timed runs
    call: dict = field(default_factory=dict)  # further pipeline options (guidance, text length, frames)
    peer: dict = field(default_factory=dict)  # the peer's options beyond its defaults (video: its relation)


# ---- pipelines -----------------------------------------------------------------------------------------------
def sd15_pipeline(tiny: bool = False):
    """SD 1.5's architecture, random weights (built from configs; nothing is downloaded); `tiny`: same layout,
    narrow."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    width, unet_channels, vae_channels = (32, (32, 32, 32, 32), (32,) * 4) if tiny else \
        (768, (320, 640, 1280, 1280), (128, 256, 512, 512))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=width, attention_head_dim=2 if tiny else 8,
                                layers_per_block=1 if tiny else 2, block_out_channels=unet_channels)
    vae = AutoencoderKL(block_out_channels=vae_channels, layers_per_block=1 if tiny else 2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=width, intermediate_size=37 if tiny else 3072,
                                        num_hidden_layers=2 if tiny else 12, num_attention_heads=4 if tiny else 12,
                                        hidden_act="quick_gelu", vocab_size=49408, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return quiet(pipe)


def embedded_pipeline():
    if (MODEL_DIR / "model_index.json").exists():
        pipe = crossattn.load_pipeline(device="cpu")
        name = "embedded shapes model"
    else:  # before the model is trained: same architecture, random weights (same cost)
        pipe = untrained_pipeline()
        name = "shapes architecture (untrained)"
    return quiet(pipe), name


def _factor8_vae(latent_channels: int):
    """A VAE with four levels (factor 8, as SD3's and Flux's) and few channels: only its config is used, since
    the timed calls stop at the latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         shift_factor=0.0, scaling_factor=1.0)


def sd35_width_pipeline(tiny: bool = False):
    """SD3.5-medium width, two joint blocks (see the module docstring); `tiny`: 2 heads × 32, joint dim 64."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from tests.families.text import clip_tokenizer, t5_tokenizer, text_config, tiny_t5

    torch.manual_seed(0)
    heads, head_dim, text_width, pooled = (2, 32, 64, 64) if tiny else (24, 64, 4096, 2048)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=head_dim, num_attention_heads=heads,
                                        joint_attention_dim=text_width, caption_projection_dim=heads * head_dim,
                                        pooled_projection_dim=pooled, pos_embed_max_size=96,
                                        qk_norm="rms_norm", dual_attention_layers=(0,))
    # two CLIPs whose pooled outputs concatenate to the transformer's pooled width (SD3: 768 + 1280 = 2048)
    clip = dict(hidden_act="gelu", projection_dim=pooled // 2)
    return quiet(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_factor8_vae(16),
        text_encoder=CLIPTextModelWithProjection(text_config(**clip)), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_config(**clip)), tokenizer_2=clip_tokenizer(),
        text_encoder_3=tiny_t5(text_width), tokenizer_3=t5_tokenizer()))


def flux_width_pipeline(tiny: bool = False):
    """Flux.1 width, two double- and two single-stream blocks (see the module docstring); `tiny`: 2 heads × 32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from tests.families.text import clip_tokenizer, t5_tokenizer, text_config, tiny_t5

    torch.manual_seed(0)
    heads, head_dim, text_width, rope = (2, 32, 64, (8, 12, 12)) if tiny else (24, 128, 4096, (16, 56, 56))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                         attention_head_dim=head_dim, num_attention_heads=heads,
                                         joint_attention_dim=text_width, pooled_projection_dim=32,
                                         guidance_embeds=True, axes_dims_rope=rope)
    return quiet(FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_factor8_vae(16),
        text_encoder=CLIPTextModel(text_config()), tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_t5(text_width), tokenizer_2=t5_tokenizer(), transformer=transformer))


def wan_width_pipeline(tiny: bool = False):
    """Wan 2.1 1.3B width, 2 blocks (see the module docstring); `tiny`: 2 heads × 12, text 32 wide. The VAE,
    tokenizer and scheduler are the tiny test pipeline's (the VAE's factors are Wan's; it never runs here)."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from tests.families import video
    from tests.families.text import tiny_t5

    torch.manual_seed(0)
    heads, head_dim, ffn, text_width = (2, 12, 32, 32) if tiny else (12, 128, 8960, 4096)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                        in_channels=16, out_channels=16, text_dim=text_width, freq_dim=256,
                                        ffn_dim=ffn, num_layers=2, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    small = video.build_tiny_wan()
    return quiet(WanPipeline(tokenizer=small.tokenizer, text_encoder=tiny_t5(text_width), vae=small.vae,
                             transformer=transformer, scheduler=small.scheduler))


def cogvideox_width_pipeline(tiny: bool = False, text_length: int = 226):
    """CogVideoX-2B width, 2 blocks (see the module docstring); `tiny`: 4 heads × 8, text 32 wide. The VAE (8×
    space, 4× time), tokenizer and scheduler are the tiny test pipeline's."""
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from tests.families import video
    from tests.families.text import tiny_t5

    torch.manual_seed(0)
    heads, head_dim, time_dim, text_width = (4, 8, 8, 32) if tiny else (30, 64, 512, 4096)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
                                              out_channels=16, time_embed_dim=time_dim, text_embed_dim=text_width,
                                              num_layers=2, sample_width=90, sample_height=60, sample_frames=49,
                                              patch_size=2, temporal_compression_ratio=4,
                                              max_text_seq_length=text_length, spatial_interpolation_scale=1.875)
    small = video.build_tiny_cogvideox()
    return quiet(CogVideoXPipeline(tokenizer=small.tokenizer, text_encoder=tiny_t5(text_width), vae=small.vae,
                                   transformer=transformer, scheduler=small.scheduler))


# ---- one call, with or without a tool -------------------------------------------------------------------------
def run(pipe, steps: int, size: int, tool: str = "plain", output_type: str = "latent", peer: dict | None = None,
        **call):
    """(seconds, pipeline output, the tool's handle) of one call; the tool is installed and removed inside the
    timed span. `peer`: the peer's options beyond its defaults."""
    kw = dict(num_inference_steps=steps, height=size, width=size, generator=torch.Generator().manual_seed(0),
              output_type=output_type, **({"guidance_scale": 7.5} | call))
    if tool == "plain":
        start = time.perf_counter()
        out = pipe(PROMPT, **kw)
        return time.perf_counter() - start, out, None
    if tool == "crossattn":
        handle = crossattn.trace(pipe)
    else:
        from attention_map_diffusers import AttentionCapture

        # its defaults: image->text (video rows: video->text), last step, mean over heads, fast mode
        handle = AttentionCapture(pipe, **(peer or {}))
    start = time.perf_counter()
    with handle:
        out = pipe(PROMPT, **kw)
    return time.perf_counter() - start, out, handle


def overhead(b: Bench, repeats: int) -> dict:
    """Plain vs each tool, interleaved (order reversed every other repeat), min and median after a warm-up."""
    for tool in TOOLS:
        run(b.pipe, b.steps, b.size, tool, peer=b.peer, **b.call)  # warm-up
    times = {tool: [] for tool in TOOLS}
    handles = {}
    for r in range(repeats):
        for tool in TOOLS if r % 2 == 0 else reversed(TOOLS):
            seconds, _, handles[tool] = run(b.pipe, b.steps, b.size, tool, peer=b.peer, **b.call)
            times[tool].append(seconds)
    out = {"steps": b.steps, "size": b.size, "repeats": repeats, "tools": list(TOOLS)}
    if "num_frames" in b.call:
        out["frames"] = b.call["num_frames"]
    for tool, values in times.items():
        out[f"{tool}_min_s"], out[f"{tool}_median_s"] = min(values), statistics.median(values)
    for tool in TOOLS[1:]:
        out[f"ratio_{tool}_min"] = out[f"{tool}_min_s"] / out["plain_min_s"]
        out[f"ratio_{tool}_median"] = out[f"{tool}_median_s"] / out["plain_median_s"]
    # what each tool still has to do once the generation is over, on the last timed run
    start = time.perf_counter()
    handles["crossattn"].heat_maps().data.token_maps()
    out["maps_ready_s"] = {"crossattn": time.perf_counter() - start}
    if "peer" in handles:
        start = time.perf_counter()
        handles["peer"].compute()
        out["maps_ready_s"]["peer"] = time.perf_counter() - start
    return out


# ---- memory ---------------------------------------------------------------------------------------------------
def held_bytes(records) -> int:
    """Bytes of the distinct storages that the peer's records keep alive (a view keeps its whole storage)."""
    storages = {}
    for record in records:
        for tensor in (record.data, record.q, record.k, record.attention_mask):
            if tensor is not None:
                storage = tensor.untyped_storage()
                storages[(tensor.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def peer_memory(capture) -> dict:
    """What the peer holds now (all steps so far, and the last step alone = its default), and its maps' bytes."""
    from attention_map_diffusers import AttentionCollector

    records = list(capture.records)
    last = max(r.step_index for r in records)
    held = {"peer_records": len(records), "peer_held_bytes_all_steps": held_bytes(records),
            "peer_own_count_bytes": capture.collector.capture_bytes,  # its own accounting, for comparison
            "peer_held_bytes_last_step": held_bytes([r for r in records if r.step_index == last])}
    copy = AttentionCollector(capture.config)  # compute() replaces records in its list: give it its own
    copy.records = list(records)
    start = time.perf_counter()
    maps = copy.compute()
    return held | {"peer_compute_all_steps_s": time.perf_counter() - start,
                   "peer_maps_bytes_all_steps": held_bytes(maps.records)}


def crossattn_memory(tr) -> dict:
    rec = tr.recorder
    tokens = next(iter(rec.sums.values())).shape[-1]
    # a video's site resolution is its stacked grid, (frames·h, w): these pixels count every frame
    pixels_per_resolution = {s.resolution[0] * s.resolution[1] for s in rec.sites.values()}
    out = {
        "accumulator_bytes": rec.accumulator_bytes, "trace_bytes": rec.step_bytes, "tokens_kept": tokens,
        "time_bins": rec.time_bins, "sites": sorted(rec.sites),
        # the budget: 4 bytes x tokens x sum over captured resolutions of latent pixels (77-token context)
        "budget_bytes_77_tokens": 4 * 77 * sum(pixels_per_resolution),
        "budget_bytes_kept_tokens": 4 * tokens * sum(pixels_per_resolution),
    }
    frames = rec.step.frames
    if frames > 1:  # a video: every frame has its own map in the accumulators (and in the per-step trace)
        bins = min(rec.time_bins, rec.step.total)
        out |= {"latent_frames": frames, "accumulator_bytes_per_frame": rec.accumulator_bytes / frames,
                # what the accumulators should hold: bins x sites x frames x one frame's pixels x tokens x 4 bytes
                "expected_accumulator_bytes": 4 * bins * tokens * sum(
                    s.resolution[0] * s.resolution[1] for s in rec.sites.values())}
    return out


def memory(b: Bench, size: int, snapshots: tuple[int, ...], **override) -> list[dict]:
    """One generation of max(snapshots) steps with both tools attached; what each holds after each snapshot step.
    `override`: call options that replace the row's (a video's `num_frames`)."""
    rows = []

    def read(pipe, i, t, kwargs):
        if i + 1 in snapshots:
            row = {"steps": i + 1, "size": size, **crossattn_memory(tr)}
            if cap is not None:
                row.update(peer_memory(cap))
            rows.append(row)
        return kwargs

    kw = dict(num_inference_steps=max(snapshots), height=size, width=size, generator=torch.Generator().manual_seed(0),
              output_type="latent", callback_on_step_end=read, **({"guidance_scale": 7.5} | b.call | override))
    cap = None
    with crossattn.trace(b.pipe) as tr:
        if HAS_PEER:
            from attention_map_diffusers import AttentionCapture

            with AttentionCapture(b.pipe, timesteps="all", max_capture_bytes=None, **b.peer) as cap:
                b.pipe(PROMPT, **kw)
        else:
            b.pipe(PROMPT, **kw)
    return rows


def render_cost(pipe, steps: int, size: int, repeats: int = 5) -> dict:
    _, out, tr = run(pipe, steps, size, "crossattn", output_type="pil")
    image = out.images[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        maps = tr.heat_maps()
        overlays = [m.overlay(image) for m in maps]
        times.append(time.perf_counter() - start)
    return {"words": len(overlays), "size": size, "all_overlays_min_s": min(times),
            "all_overlays_median_s": statistics.median(times)}


def per_frame_cost(rows: list[dict]) -> dict:
    """crossattn's accumulators per latent frame, from the last snapshot at each frame count, and the increase from
    the fewest to the most frames divided by the frames added (the peer's held bytes alongside)."""
    last = {}
    for m in rows:  # the later snapshot of each frame count wins
        last[m["latent_frames"]] = m
    few, many = last[min(last)], last[max(last)]
    added = many["latent_frames"] - few["latent_frames"]
    out = {"accumulator_bytes_per_frame": {f: m["accumulator_bytes_per_frame"] for f, m in sorted(last.items())},
           "accumulator_bytes_added_per_frame": (many["accumulator_bytes"] - few["accumulator_bytes"]) / added,
           "trace_bytes_added_per_frame": (many["trace_bytes"] - few["trace_bytes"]) / added,
           "accumulators_as_expected": all(m["accumulator_bytes"] == m["expected_accumulator_bytes"]
                                           for m in rows)}
    if "peer_held_bytes_last_step" in many:
        for k in ("peer_held_bytes_last_step", "peer_held_bytes_all_steps", "peer_maps_bytes_all_steps"):
            out[k.replace("peer_", "peer_added_per_frame_", 1)] = (many[k] - few[k]) / added
    return out


def peak_rss_probe(tool: str, size: int, steps: int) -> int:
    """Peak RSS (KiB) of a fresh process that builds SD 1.5 and generates once, plain or traced."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import overhead as o, resource; "
            f"o.torch.set_num_threads({torch.get_num_threads()}); o.run(o.sd15_pipeline(), {steps}, {size}, {tool!r}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


# ---- the run --------------------------------------------------------------------------------------------------
MODELS = ("embedded", "sd15", "sd35_width", "flux_width", "wan_width", "cogvideox_width")
VIDEO = ("wan_width", "cogvideox_width")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per tool (the embedded model: 4×)")
    parser.add_argument("--quick", action="store_true",
                        help="every row at tiny sizes, 1 repeat, no 512 px / RSS probes: checks the script")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice, one per core); on a host busy with other "
                             "work, 2 threads on 2 cores can make small models 10-50x slower (OpenMP threads "
                             "waiting for each other), and 1 gives steadier, different figures")
    parser.add_argument("--only", nargs="+", choices=MODELS, default=MODELS,
                        help="these models' rows only (e.g. `--only embedded --repeats 3`: its 12 timed repeats)")
    parser.add_argument("--video", action="store_true",
                        help="the video rows only (= --only wan_width cogvideox_width; writes overhead_video.json)")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/overhead.json "
                                                     "(overhead_quick.json with --quick, overhead_<models>.json "
                                                     "with --only, so a check never overwrites the real figures)")
    args = parser.parse_args()
    video_only = args.video
    if video_only:
        args.only = VIDEO
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json is None:
        name = "overhead_quick" if args.quick else "overhead" if set(args.only) == set(MODELS) else \
            "overhead_video" if video_only else "overhead_" + "_".join(args.only)
        args.json = str(ROOT / "benchmarks" / "results" / f"{name}.json")
    torch.set_flush_denormal(True)
    _quiet_libraries()
    quick = args.quick
    repeats = 1 if quick else args.repeats
    started = time.perf_counter()
    result = {"date": date.today().isoformat(), "cpu_cores": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "prompt": PROMPT, "quick": quick,
              "tools": list(TOOLS)}
    if HAS_PEER:
        from importlib.metadata import version

        result["peer"] = f"attention-map-diffusers {version('attention-map-diffusers')}"
    snapshots = (10, 50)  # memory is read after these steps of one generation
    size = 64 if quick else 256
    tiny = " (tiny)" if quick else ""
    text = dict(max_sequence_length=16 if quick else 256)

    def done(key: str, since: float) -> None:
        result[key]["seconds"] = time.perf_counter() - since
        print(f"{result[key]['model']}: {result[key]['seconds']:.0f} s", file=sys.stderr)

    if "embedded" in args.only:
        since = time.perf_counter()
        pipe, name = embedded_pipeline()
        b = Bench("embedded", name, pipe, 64, 4 if quick else 20)
        result[b.key] = {"model": name, "time": overhead(b, repeats * (1 if quick else 4)),
                         "memory": memory(b, 64, snapshots) + ([] if quick else memory(b, 128, (20,))),
                         "render": render_cost(pipe, b.steps, 64)}
        done(b.key, since)
        del pipe, b

    if "sd15" in args.only:
        since = time.perf_counter()
        b = Bench("sd15", "SD 1.5 architecture, random weights" + tiny, sd15_pipeline(quick), size,
                  2 if quick else 4)
        result[b.key] = {"model": b.title, "time": overhead(b, repeats),
                         "memory": memory(b, size, snapshots) + ([] if quick else memory(b, 512, (2,))),
                         "render": render_cost(b.pipe, 2, size)}
        del b
        if not quick:
            result["sd15"]["peak_rss_kib"] = {"plain": peak_rss_probe("plain", 256, 3),
                                              "traced": peak_rss_probe("crossattn", 256, 3)}
        done("sd15", since)

    transformers = (  # built one at a time: the Flux-width one alone holds 4 GB of float32 weights
        ("sd35_width", "MMDiT, SD3.5-medium width, 2 joint blocks", sd35_width_pipeline, 2,
         dict(guidance_scale=5.0, **text)),
        ("flux_width", "Flux.1 width, 2 double + 2 single blocks", flux_width_pipeline, 2,
         dict(guidance_scale=3.5, **text)),
    )
    for key, title, build, steps, call in transformers:
        if key not in args.only:
            continue
        since = time.perf_counter()
        b = Bench(key, title + tiny, build(quick), size, steps, call)
        result[key] = {"model": b.title, "time": overhead(b, repeats), "memory": memory(b, size, snapshots)}
        done(key, since)
        del b

    videos = (  # 9 frames -> 3 latent frames (both VAEs compress time 4x: (9 - 1) / 4 + 1)
        ("wan_width", "Wan 2.1 1.3B width, 2 blocks", wan_width_pipeline,
         dict(guidance_scale=5.0, max_sequence_length=16 if quick else 512)),
        ("cogvideox_width", "CogVideoX-2B width, 2 blocks", cogvideox_width_pipeline,
         dict(guidance_scale=6.0, max_sequence_length=226)),
    )
    for key, title, build, call in videos:
        if key not in args.only:
            continue
        since = time.perf_counter()
        video_size = 64 if quick else 128
        b = Bench(key, title + tiny, build(quick), video_size, 2, call | {"num_frames": 9},
                  peer={"relations": ["video->text"]})
        # memory at 2 and 3 latent frames, 2 steps each: what one more frame costs
        rows = [m for frames in (5, 9) for m in memory(b, video_size, (1, 2), num_frames=frames)]
        result[key] = {"model": b.title, "time": overhead(b, repeats), "memory": rows,
                       "per_frame": per_frame_cost(rows)}
        done(key, since)
        del b

    result["rss_this_process_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["wall_s"] = time.perf_counter() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print_table(result)



def print_table(r: dict) -> None:
    peer = f"; peer: {r['peer']}" if "peer" in r else ""
    print(f"crossattn capture overhead — {r['date']}, {r['cpu_cores']} CPU threads, torch {r['torch']}{peer}"
          + (" (--quick: tiny sizes, 1 repeat)" if r.get("quick") else ""))
    print("\n| model | size | steps | tool | plain min / median (s) | traced min / median (s) | ratio min | "
          "ratio median | maps ready after (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in [m for m in MODELS if m in r]:
        t = r[key]["time"]
        for tool in t["tools"][1:]:
            size = f"{t['size']} px" + (f" × {t['frames']} frames" if "frames" in t else "")
            print(f"| {r[key]['model']} | {size} | {t['steps']} | {tool} | {t['plain_min_s']:.3f} / "
                  f"{t['plain_median_s']:.3f} | {t[f'{tool}_min_s']:.3f} / {t[f'{tool}_median_s']:.3f} | "
                  f"{t[f'ratio_{tool}_min']:.3f} | {t[f'ratio_{tool}_median']:.3f} | {t['maps_ready_s'][tool]:.4f} |")
    print("\n| model | size | steps | crossattn accumulators (B) | crossattn trace (B) | tokens kept | "
          "peer default: last step (B) | peer all steps (B) | peer maps after compute() (B) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in [m for m in MODELS if m in r]:
        for m in r[key]["memory"]:
            held = [f"{m[k]:,}" if k in m else "—" for k in ("peer_held_bytes_last_step", "peer_held_bytes_all_steps",
                                                             "peer_maps_bytes_all_steps")]
            size = f"{m['size']} px" + (f" × {m['latent_frames']} latent frames" if "latent_frames" in m else "")
            print(f"| {r[key]['model']} | {size} | {m['steps']} | {m['accumulator_bytes']:,} | "
                  f"{m['trace_bytes']:,} | {m['tokens_kept']} | {' | '.join(held)} |")
    video = [key for key in VIDEO if key in r]
    if video:
        print("\nPer latent frame (video rows): crossattn's accumulators per frame at each frame count, and what one "
              "more frame adds (from 2 to 3 latent frames, after 2 steps):")
        print("\n| model | crossattn accumulators per frame (B) | crossattn + 1 frame: accumulators / trace (B) | "
              "as bins × sites × frames × pixels × tokens × 4 | peer + 1 frame: last step / all steps / maps (B) |")
        print("|---|---|---|---|---|")
        for key in video:
            c = r[key]["per_frame"]
            each = ", ".join(f"{v:,.0f} ({f} frames)" for f, v in c["accumulator_bytes_per_frame"].items())
            peer = " / ".join(f"{c[k]:,.0f}" for k in ("peer_added_per_frame_held_bytes_last_step",
                                                      "peer_added_per_frame_held_bytes_all_steps",
                                                      "peer_added_per_frame_maps_bytes_all_steps") if k in c) or "—"
            print(f"| {r[key]['model']} | {each} | {c['accumulator_bytes_added_per_frame']:,.0f} / "
                  f"{c['trace_bytes_added_per_frame']:,.0f} | {'yes' if c['accumulators_as_expected'] else 'no'} | "
                  f"{peer} |")
    rendered = [m for m in ("embedded", "sd15") if m in r]
    if rendered:
        print("\n| model | size | words | all overlays min / median (s) |")
        print("|---|---|---|---|")
    for key in rendered:
        c = r[key]["render"]
        print(f"| {r[key]['model']} | {c['size']} px | {c['words']} | {c['all_overlays_min_s']:.4f} / "
              f"{c['all_overlays_median_s']:.4f} |")
    if "peak_rss_kib" in r.get("sd15", {}):
        rss = r["sd15"]["peak_rss_kib"]
        print(f"\nSD 1.5 arch, 256 px, 3 steps, fresh process peak RSS: plain {rss['plain'] / 1024:.0f} MiB, "
              f"traced {rss['traced'] / 1024:.0f} MiB (difference {(rss['traced'] - rss['plain']) / 1024:+.0f} MiB)")
    print(f"\nwhole run: {r['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
