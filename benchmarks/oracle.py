"""A second, independent oracle: crossattn's maps against attention-map-diffusers' maps of the same generation.

    .venv/bin/python benchmarks/oracle.py                     # every family; table + benchmarks/results/oracle.json
    .venv/bin/python benchmarks/oracle.py --families sd1 sd3  # some of them
    .venv/bin/python benchmarks/oracle.py --families wan cogvideox hunyuanvideo   # the video families (≈ 15 s)

The JSON is merged: the families run replace their rows, the others' rows stay (each row has its own date).

`tests/reference.py` checks crossattn against a recomputation that still borrows crossattn's reading of the
layout (which rows, which positions). attention-map-diffusers (PyPI ``attention-map-diffusers==1.0.0``, by
other authors) reads it its own way: it *replaces* the processor of every attention module of the denoiser
with its own copy; for each call whose layout it knows to hold image queries and text keys ("image->text"),
its default "fast" mode keeps that call's query and key tensors, and ``compute()`` later forms
softmax(Q·Kᵀ·scale + mask) over *all* keys in float32, keeps the image-query × text-key block and averages
the heads: one (batch, 1, image tokens, text positions) tensor per layer and step. By default it keeps the last
step only (``timesteps="last"``); here ``timesteps="all"``. It keeps every row of the batch, both halves of
classifier-free guidance.

Both are reduced to one definition: the raw attention probability on each kept prompt token (crossattn's
kept positions: start token, the prompt's tokens, end token; never padding), of the conditional row (one
image per call: under CFG the batch is [negative, prompt], so the prompt is the last row), averaged over heads
and steps per layer, then over the layers *both* captured, per resolution (UNet layers at the same resolution
are averaged; resolutions are concatenated pixel by pixel, never interpolated). Per token: the Pearson r of
the two maps over pixels and the mass ratio (sum of crossattn's / sum of the peer's); per family: the overall
mass ratio and the largest absolute difference. Layers only one tool captured are listed; where the peer has
fewer, crossattn's map over *all* its layers is also correlated with the peer's. A second table puts the two
defaults side by side: crossattn's map (every layer, every step) against the peer's default (its layers, last
step only) — a difference of what is averaged, not of correctness.

The three generations (plain, crossattn, peer) share prompt and seed; their outputs are compared bit for
bit. If a traced output differed from the plain one, the tools would have seen different trajectories, so
the comparison is then redone with both attached to one generation (recorded as ``"joint_run": true``).

Families: the embedded shapes UNet (``crossattn.load_pipeline()``), and tiny random-weight SD 1.x, SDXL, SD3,
Flux.1, PixArt-α and Sana pipelines (``tests/families/pipelines.py``), a few seconds each on a CPU.

Video families: the tiny Wan 2.1, CogVideoX (2B layout) and HunyuanVideo pipelines (``tests/families/video.py``,
called with its ``CALLS`` sizes and 4 steps) — the three video denoisers the peer has video processors for
(``attention_map_diffusers/processors/video.py``; AnimateDiff's spatial cross-attention it records as
"image->text" of separate images, the frames being batch rows, with no frame layout, and on LTX-Video's
``LTXVideoAttnProcessor`` it refuses to start: "coverage is incomplete"; neither is compared here). The
peer records "video->text" for them: Wan's ``attn2`` (cross: every key is text, the zero padding to
``max_sequence_length`` included), CogVideoX's joint ``attn1`` ([text, video]) and HunyuanVideo's double- and
single-stream ``attn`` ([video, text], the padding masked), one (batch, 1, video tokens, text positions) map per
call, its video tokens in the model's (frames, height, width) order (its renderer reshapes them so). crossattn
stacks the same frames along the height (``maps.frame(i)``). So each tool's map of a layer is laid out frame
after frame, and the agreement is computed **per frame**: crossattn's frame i against the peer's frame i, same
definition as above. CFG: CogVideoX runs one batch [negative, prompt] (the last row is the prompt's, as for the
images); HunyuanVideo is guidance-distilled (one call, no negative); Wan runs **two calls** per step, the prompt's
first, each of batch 1 — the peer numbers them (``metadata["denoiser_call_index"]``: 0 = prompt, 1 = negative), and
the prompt's call is what is compared here.

What the peer shows a user is another matter: its ``save()`` renders, per relation, the mean of every record it
kept (``_aggregate_compatible`` after ``_select_guidance_records``; that picks the conditional calls only when
they are tagged, which 1.0.0 does for HunyuanVideo 1.5 alone, and halves a batch only when it has two rows per
video). So for each video family the peer's saved map (``save(..., videos=[video])``, computed here by the same
two functions, not rendered) is also compared, frame by frame, with crossattn's prompt map, and for Wan with the
mean of crossattn's prompt and negative maps (``capture_uncond=True``, a fourth generation): the measured
counterpart of "it averages Wan's two CFG calls under the prompt's labels". Also measured: how many text
positions it labels as tokens, and the share of its saved map's text mass on positions past the prompt's kept ones
(Wan: the zero padding, which its layout counts as text; CogVideoX: T5 ``<pad>`` tokens, encoded and unmasked, so
live keys of the model; HunyuanVideo: masked padding, so 0). crossattn keeps the prompt's positions and reports
their raw probabilities, the rest of the mass unassigned (``mass="text"`` renormalises instead).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the tiny pipelines are `tests.families`, from the root

import crossattn  # noqa: E402
from crossattn.cli import _quiet_libraries  # noqa: E402
from crossattn.models import asset_path  # noqa: E402
from tests.families import pipelines, video  # noqa: E402

PROMPT = "a red circle left of a cyan square"
SEED = 0


@dataclass
class Case:
    """One family: how to build its pipeline and how to call it."""

    title: str
    build: Callable
    call: dict = field(default_factory=dict)
    cfg_calls: bool = False  # CFG as two denoiser calls per step, the prompt's first (Wan)


def _embedded_unet():
    return pipelines.quiet(crossattn.load_pipeline(device="cpu"))


def _embedded_mmdit():
    return pipelines.quiet(crossattn.load_pipeline("shapes-mmdit", device="cpu"))


def _video_call(name: str) -> dict:
    """`tests.families.video.CALLS[name]` for 4 steps; the pipeline's own negative prompt, as the image rows."""
    call = {k: v for k, v in video.CALLS[name].items() if k != "negative"} | {"num_inference_steps": 4}
    if name == "hunyuanvideo":
        call["prompt_template"] = video.hunyuan_template()
    return call


def cases() -> dict[str, Case]:
    tiny = dict(height=32, width=32, num_inference_steps=4)
    dit = dict(tiny, max_sequence_length=24)
    out = {
        "embedded": Case("embedded shapes UNet", _embedded_unet,
                         dict(height=64, width=64, num_inference_steps=20, guidance_scale=5.0)),
        "sd1": Case("tiny SD 1.x (UNet)", pipelines.build_tiny_sd, dict(tiny, guidance_scale=7.5)),
        "sdxl": Case("tiny SDXL (UNet)", pipelines.build_tiny_sdxl, dict(tiny, guidance_scale=5.0)),
        "sd3": Case("tiny SD3 (MMDiT)", pipelines.build_tiny_sd3, dict(dit, guidance_scale=5.0)),
        "flux": Case("tiny Flux.1", pipelines.build_tiny_flux, dict(dit, guidance_scale=3.5)),
        "pixart": Case("tiny PixArt-α", pipelines.build_tiny_pixart,
                       dict(dit, guidance_scale=4.5, use_resolution_binning=False)),
        "sana": Case("tiny Sana", pipelines.build_tiny_sana,
                     dict(dit, guidance_scale=4.5, use_resolution_binning=False)),
        "wan": Case("tiny Wan 2.1 (video)", video.build_tiny_wan, _video_call("wan"), cfg_calls=True),
        "cogvideox": Case("tiny CogVideoX (video)", video.build_tiny_cogvideox, _video_call("cogvideox")),
        "hunyuanvideo": Case("tiny HunyuanVideo (video)", video.build_tiny_hunyuanvideo,
                             _video_call("hunyuanvideo")),
    }
    if (asset_path("shapes-mmdit") / "model_index.json").exists():  # shipped once its training is done
        out["embedded-mmdit"] = Case("embedded shapes MMDiT", _embedded_mmdit,
                                     dict(height=64, width=64, num_inference_steps=20, guidance_scale=5.0))
    return out


# ---- the two tools, each on its own generation ------------------------------------------------------------
VIDEO_FAMILIES = ("wan", "cogvideox", "hunyuanvideo")
RELATIONS = ("image->text", "video->text")  # the peer's names for image (video) queries on text keys


def generate(pipe, call: dict) -> torch.Tensor:
    out = pipe(PROMPT, generator=torch.Generator().manual_seed(SEED), output_type="latent", **call)
    return out.images if hasattr(out, "images") else out.frames  # video pipelines return `frames`


def ours_per_layer(tr, negative: bool = False) -> tuple[dict[str, torch.Tensor], list[str], list[int], int, int]:
    """crossattn's maps, one per layer: module path -> (pixels, kept tokens) mean over heads and steps; a video's
    frames one after the other along the pixels (frame-major, as the model's token sequence).

    Also the kept tokens' strings, their positions in the denoiser's text input, the number of steps and frames.
    `negative`: the negative prompt's maps (the trace needs ``capture_uncond=True``).
    """
    maps = tr.heat_maps(negative=negative)
    frames = [maps.frame(i) for i in range(maps.frames)]  # an image: itself
    path_of = {layer.name: path for path, layer in tr.layers.items()}
    per_layer = {}
    for name in maps.sites:  # per_layer=True: one site per layer
        # (h, w, tokens) per frame: mean over heads and steps
        token_maps = [f.filter(layers=[name]).data.token_maps().flatten(0, 1) for f in frames]
        per_layer[path_of[name]] = torch.cat(token_maps).double()
    # Column c of the maps is text position kept[c] (start token, prompt tokens, end token).
    kept = tr.kept_positions
    return per_layer, list(maps.tokens), kept, len(tr.recorder.timesteps), maps.frames


def peer_per_layer(peer_maps, kept: list[int], call_index: int | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """The peer's maps, one per layer: module path -> (pixels, kept tokens), averaged over all steps and of the
    last step alone (what its default, ``timesteps="last"``, keeps); and the steps recorded per layer.

    `call_index`: keep only the records of that denoiser call of each step (CFG as separate calls: 0 = prompt).
    A video's pixels are its tokens in the model's (frames, height, width) order, frame after frame."""
    steps: dict[str, list[torch.Tensor]] = {}
    records = [r for r in peer_maps.records if r.relation in RELATIONS and r.data is not None
               and (call_index is None or r.metadata.get("denoiser_call_index") == call_index)]
    for record in sorted(records, key=lambda r: r.step_index):
        path = record.layer_id.split(".", 1)[1]  # "unet.down_blocks…" / "transformer.transformer_blocks…"
        conditional = record.data[-1, 0]  # one image: the prompt's row is the last (CFG: [negative, prompt])
        steps.setdefault(path, []).append(conditional.double()[:, kept])
    mean = {path: torch.stack(maps).mean(0) for path, maps in steps.items()}
    last = {path: maps[-1] for path, maps in steps.items()}
    counts = {len(maps) for maps in steps.values()}
    return mean, last, counts.pop() if len(counts) == 1 else sorted(counts)


def reduce(per_layer: dict[str, torch.Tensor], layers: list[str]) -> torch.Tensor:
    """Mean over `layers` per resolution, resolutions concatenated along the pixel axis: (pixels, tokens)."""
    by_size: dict[int, list[torch.Tensor]] = {}
    for path in layers:
        by_size.setdefault(per_layer[path].shape[0], []).append(per_layer[path])
    return torch.cat([torch.stack(by_size[n]).mean(0) for n in sorted(by_size, reverse=True)])


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(a.norm() * b.norm())
    if norm == 0.0:  # a flat map: r is undefined; agreement then means both are flat and equal
        return 1.0 if torch.allclose(a, b) else float("nan")
    return float((a * b).sum()) / norm


def summary(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    """Per-token Pearson r (min, mean) and the overall mass ratio of two (pixels, tokens) maps."""
    rs = [pearson(ours[:, i], theirs[:, i]) for i in range(ours.shape[1])]
    return {"min_r": min(rs), "mean_r": sum(rs) / len(rs), "mass_ratio": float(ours.sum() / theirs.sum())}


def agreement(ours: torch.Tensor, theirs: torch.Tensor, tokens: list[str]) -> dict:
    """`summary`, plus each token's r and mass ratio and the largest absolute difference."""
    per_token = [{"token": t, "r": pearson(ours[:, i], theirs[:, i]),
                  "mass_ratio": float(ours[:, i].sum() / theirs[:, i].sum())} for i, t in enumerate(tokens)]
    return summary(ours, theirs) | {"max_abs_diff": float((ours - theirs).abs().max()),
                                    "max_value": float(theirs.abs().max()), "per_token": per_token}


def per_frame(ours: torch.Tensor, theirs: torch.Tensor, frames: int, tokens: list[str]) -> list[dict]:
    """`agreement` of each frame: the (frames·pixels, tokens) maps cut into `frames` equal parts, in order (the
    video transformers have one resolution, so `reduce` keeps each layer's frame-major order)."""
    return [agreement(o, t, tokens) for o, t in zip(ours.chunk(frames), theirs.chunk(frames), strict=True)]


def peer_saved_map(peer_maps, kept: list[int]) -> tuple[torch.Tensor, dict]:
    """The map the peer's ``save(..., videos=[video])`` renders as its aggregate: (video tokens, kept positions).

    Computed by its own two functions (not rendered): `_select_guidance_records` (conditional calls only when
    tagged as such) and `_aggregate_compatible` (with one video: a batch of 2 rows is halved to its second),
    which averages every record left. Also: how many text positions it has, and the share of its mass past the
    prompt's kept positions."""
    from attention_map_diffusers.visualization import _aggregate_compatible, _select_guidance_records

    records = [r for r in peer_maps.records if r.relation == "video->text" and r.data is not None]
    _, data, count = _aggregate_compatible(_select_guidance_records(records, None), None, 1)
    data = data[-1].double()  # (video tokens, text positions)
    calls = sorted({r.metadata.get("denoiser_call_index") for r in records})
    return data[:, kept], {"records_averaged": count, "records_per_call_index": {
        str(c): sum(r.metadata.get("denoiser_call_index") == c for r in records) for c in calls},
        "text_positions": data.shape[1], "prompt_positions": len(kept),
        "mass_share_past_prompt": float(1 - data[:, kept].sum() / data.sum())}


def compare(pipe, call: dict, *, cfg_calls: bool = False) -> dict:
    """One generation traced by crossattn, one by the peer (same seed), one plain; their maps compared.

    `cfg_calls`: CFG is two denoiser calls per step, the prompt's first: the peer's records of the prompt's call
    are compared, and (videos) a fourth generation traced with ``capture_uncond=True`` gives crossattn's negative
    maps, to measure what the peer's saved map is."""
    from attention_map_diffusers import AttentionCapture

    start = time.perf_counter()
    plain = generate(pipe, call)
    with crossattn.trace(pipe, per_layer=True, time_bins=1) as tr:
        ours_out = generate(pipe, call)
    with AttentionCapture(pipe, relations=RELATIONS, timesteps="all", max_capture_bytes=None) as cap:
        theirs_out = generate(pipe, call)
    identical = {"crossattn": torch.equal(plain, ours_out), "peer": torch.equal(plain, theirs_out)}
    joint = not all(identical.values())
    if joint:  # different trajectories would differ in attention too: compare on one generation instead
        with crossattn.trace(pipe, per_layer=True, time_bins=1) as tr, \
                AttentionCapture(pipe, relations=RELATIONS, timesteps="all", max_capture_bytes=None) as cap:
            generate(pipe, call)
    ours, tokens, kept, our_steps, frames = ours_per_layer(tr)
    peer_maps = cap.compute()
    theirs, their_last, their_steps = peer_per_layer(peer_maps, kept, 0 if cfg_calls else None)
    common = [path for path in ours if path in theirs]
    result = {
        "outputs_identical_to_plain": identical,
        "max_abs_output_diff": {"crossattn": float((plain - ours_out).abs().max()),
                                "peer": float((plain - theirs_out).abs().max())},
        "joint_run": joint,
        "steps": {"crossattn": our_steps, "peer": their_steps},
        "layers_crossattn": len(ours), "layers_peer": len(theirs), "layers_compared": len(common),
        "only_crossattn": [p for p in ours if p not in theirs],
        "only_peer": [p for p in theirs if p not in ours],
        # modules the peer swapped a processor in for (every attention module of the denoiser)
        "peer_processors_replaced": cap.coverage.get("captured_modules"),
        "tokens": tokens,
    }
    if common:
        result.update(agreement(reduce(ours, common), reduce(theirs, common), tokens))
        if result["only_crossattn"]:  # how much the layers the peer misses change the map
            every = reduce(ours, list(ours))
            result["all_crossattn_layers_vs_peer"] = summary(every, reduce(theirs, common))
        # the two defaults side by side: crossattn's every layer and step, the peer's layers at its last step
        result["defaults"] = summary(reduce(ours, list(ours)), reduce(their_last, common))
    if frames > 1:
        video_grids = {(r.q_shape.frames, r.q_shape.height, r.q_shape.width)
                       for r in peer_maps.records if r.relation == "video->text"}
        result["frames"] = frames
        result["peer_video_grids"] = sorted(video_grids)  # (frames, height, width) of its query tokens
        if common:
            result["per_frame"] = per_frame(reduce(ours, common), reduce(theirs, common), frames, tokens)
            result["peer_saved"] = saved_map_vs_ours(pipe, call, peer_maps, ours, common, tokens, kept, frames,
                                                     cfg_calls, plain)
    result["seconds"] = time.perf_counter() - start
    return result


def saved_map_vs_ours(pipe, call: dict, peer_maps, ours: dict, common: list[str], tokens: list[str],
                      kept: list[int], frames: int, cfg_calls: bool, plain: torch.Tensor) -> dict:
    """The peer's saved map against crossattn's prompt map, per frame; with `cfg_calls`, also against the mean of
    crossattn's prompt and negative maps (one more generation, ``capture_uncond=True``)."""
    saved, facts = peer_saved_map(peer_maps, kept)
    prompt = reduce(ours, common)
    out = facts | {"vs_prompt": per_frame(prompt, saved, frames, tokens)}
    if cfg_calls:
        with crossattn.trace(pipe, per_layer=True, time_bins=1, capture_uncond=True) as tr:
            traced = generate(pipe, call)
        with_prompt, _, kept_u, _, _ = ours_per_layer(tr)
        with_negative, negative_tokens, _, _, _ = ours_per_layer(tr, negative=True)
        # the prompt's positions are kept either way (the negative's, if longer, are added after them)
        columns = [kept_u.index(p) for p in kept]
        prompt_u = reduce(with_prompt, common)[:, columns]
        negative_u = reduce(with_negative, common)[:, columns]
        out |= {"uncond_run_identical_to_plain": torch.equal(plain, traced),
                # capture_uncond records more, never differently: its prompt map is the one compared above
                "uncond_run_prompt_max_abs_diff": float((prompt_u - prompt).abs().max()),
                "negative_tokens": [negative_tokens[c] for c in columns],
                "vs_negative": per_frame(negative_u, saved, frames, tokens),
                "vs_mean_of_prompt_and_negative": per_frame((prompt_u + negative_u) / 2, saved, frames, tokens)}
    return out


# ---- report -----------------------------------------------------------------------------------------------
def close_to_one(x: float) -> str:
    """1 ± a tiny difference, readable: "1 − 6.6e-13" rather than "1.0000000"."""
    d = x - 1.0
    if d == 0.0:
        return "1"
    return f"1 {'+' if d > 0 else '−'} {abs(d):.1e}" if abs(d) < 1e-4 else f"{x:.5f}"


def print_table(results: dict, keys: list[str]) -> None:
    print(f"crossattn vs attention-map-diffusers {results['peer_version']} — {results['date']}, prompt "
          f"{results['prompt']!r}, seed {SEED}")
    rows = [results["families"][k] for k in keys]
    images = [results["families"][k] for k in keys if k not in VIDEO_FAMILIES]
    videos = [results["families"][k] for k in keys if k in VIDEO_FAMILIES]
    if images:
        print_image_table(images)
    if videos:
        print_video_tables(videos)
    print("\nDefaults side by side: crossattn (every layer and step) vs the peer's default (its layers, last step):")
    print("\n| family | steps | min r over tokens | mean r | mass ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "defaults" in r:
            d = r["defaults"]
            print(f"| {r['title']} | {r['steps']['crossattn']} | {d['min_r']:.3f} | {d['mean_r']:.3f} | "
                  f"{d['mass_ratio']:.3f} |")


def print_image_table(rows: list[dict]) -> None:
    print("\n| family | layers compared | min r over tokens | mean r | mass ratio | max abs diff | outputs identical "
          "| note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['title']} | — | — | — | — | — | — | {r['error']} |")
            continue
        same = _identical(r)
        notes = []
        if r["only_crossattn"]:
            other = r["all_crossattn_layers_vs_peer"]
            notes.append(f"peer misses {len(r['only_crossattn'])} layer(s) ({', '.join(r['only_crossattn'])}); "
                         f"with them crossattn's map: min r {other['min_r']:.4f}, mass ratio "
                         f"{other['mass_ratio']:.3f}")
        if r["only_peer"]:
            notes.append(f"crossattn misses {', '.join(r['only_peer'])}")
        if "min_r" not in r:
            print(f"| {r['title']} | 0 of {r['layers_crossattn']} | — | — | — | — | {same} | {'; '.join(notes)} |")
            continue
        print(f"| {r['title']} | {r['layers_compared']} of {r['layers_crossattn']} (peer {r['layers_peer']}) | "
              f"{close_to_one(r['min_r'])} | {close_to_one(r['mean_r'])} | {close_to_one(r['mass_ratio'])} | "
              f"{r['max_abs_diff']:.1e} | {same} | "
              f"{'; '.join(notes)} |")


def _identical(r: dict) -> str:
    return "yes" if all(r["outputs_identical_to_plain"].values()) else "no (joint run)"


def _frame_cells(a: dict) -> str:
    return f"{close_to_one(a['min_r'])} | {close_to_one(a['mean_r'])} | {a['max_abs_diff']:.1e}"


def print_video_tables(rows: list[dict]) -> None:
    print("\nVideo, per frame: crossattn's frame i vs the peer's frame i (the prompt's rows / call):")
    print("\n| family | frame | layers compared | min r over tokens | mean r | mass ratio | max abs diff | "
          "outputs identical |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r or "per_frame" not in r:
            print(f"| {r['title']} | — | — | — | — | — | — | {r.get('error', 'no layer in common')} |")
            continue
        same = _identical(r)
        for i, f in enumerate(r["per_frame"]):
            print(f"| {r['title']} | {i} of {r['frames']} | {r['layers_compared']} of {r['layers_crossattn']} "
                  f"(peer {r['layers_peer']}) | {close_to_one(f['min_r'])} | {close_to_one(f['mean_r'])} | "
                  f"{close_to_one(f['mass_ratio'])} | {f['max_abs_diff']:.1e} | {same} |")
    print("\nWhat the peer saves (its save() aggregate: every record it kept, averaged) vs crossattn, per frame; "
          "each comparison: min r over tokens, mean r, max abs diff:")
    print("\n| family | frame | records averaged (per call index) | vs prompt: min r | mean r | max abs diff | "
          "vs negative: min r | mean r | max abs diff | vs (prompt + negative) / 2: min r | mean r | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r.get("peer_saved")
        if s is None:
            continue
        for i, f in enumerate(s["vs_prompt"]):
            neg = _frame_cells(s["vs_negative"][i]) if "vs_negative" in s else "— | — | —"
            mean = _frame_cells(s["vs_mean_of_prompt_and_negative"][i]) if "vs_negative" in s else "— | — | —"
            calls = ", ".join(f"{k}: {v}" for k, v in s["records_per_call_index"].items())
            print(f"| {r['title']} | {i} | {s['records_averaged']} ({calls}) | {_frame_cells(f)} | {neg} | "
                  f"{mean} |")
    print("\n| family | peer's text positions | prompt's (crossattn's kept) | share of the peer's saved text mass on "
          "positions past the prompt's |")
    print("|---|---|---|---|")
    for r in rows:
        if "peer_saved" in r:
            s = r["peer_saved"]
            print(f"| {r['title']} | {s['text_positions']} | {s['prompt_positions']} | "
                  f"{s['mass_share_past_prompt']:.3f} |")


def main() -> None:
    available = cases()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", choices=sorted(available), default=list(available))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "oracle.json"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    _quiet_libraries()
    try:
        from importlib.metadata import version

        peer_version = version("attention-map-diffusers")
    except Exception as exc:  # noqa: BLE001 - any failure means: not installed
        raise SystemExit(f"attention-map-diffusers is not installed ({exc}): "
                         ".venv/bin/pip install --no-deps attention-map-diffusers==1.0.0") from exc
    today = date.today().isoformat()
    results = {"date": today, "torch": torch.__version__, "peer_version": peer_version,
               "prompt": PROMPT, "seed": SEED, "families": {}}
    path = Path(args.json)
    # merge: keep the rows of the families not run now (made with the same prompt and seed), each with its date
    if path.exists():
        old = json.loads(path.read_text())
        if (old.get("prompt"), old.get("seed")) == (PROMPT, SEED):
            results["families"] = {k: {"date": old.get("date")} | v for k, v in old.get("families", {}).items()}
    for key in args.families:
        case = available[key]
        row = {"title": case.title, "date": today, "call": recorded(case.call)}
        try:
            results["families"][key] = row | compare(case.build(), case.call, cfg_calls=case.cfg_calls)
        except Exception as exc:  # noqa: BLE001 - a tool failing on one family is a finding, not the end of the run
            results["families"][key] = row | {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{case.title}: done", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print_table(results, args.families)


def recorded(call: dict) -> dict:
    """The call options as the JSON keeps them: a prompt template by its crop_start, not its text."""
    if "prompt_template" in call:
        call = call | {"prompt_template": {"crop_start": call["prompt_template"]["crop_start"]}}
    return call


if __name__ == "__main__":
    main()
