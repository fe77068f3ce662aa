"""A second, independent oracle: crossattn's maps against attention-map-diffusers' maps of the same generation.

    .venv/bin/python benchmarks/oracle.py                     # every family; table + benchmarks/results/oracle.json
    .venv/bin/python benchmarks/oracle.py --families sd1 sd3  # some of them

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
from tests.families import pipelines  # noqa: E402

PROMPT = "a red circle left of a cyan square"
SEED = 0


@dataclass
class Case:
    """One family: how to build its pipeline and how to call it."""

    title: str
    build: Callable
    call: dict = field(default_factory=dict)


def _embedded_unet():
    return pipelines.quiet(crossattn.load_pipeline(device="cpu"))


def _embedded_mmdit():
    return pipelines.quiet(crossattn.load_pipeline("shapes-mmdit", device="cpu"))


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
    }
    if (asset_path("shapes-mmdit") / "model_index.json").exists():  # shipped once its training is done
        out["embedded-mmdit"] = Case("embedded shapes MMDiT", _embedded_mmdit,
                                     dict(height=64, width=64, num_inference_steps=20, guidance_scale=5.0))
    return out


# ---- the two tools, each on its own generation ------------------------------------------------------------
def generate(pipe, call: dict) -> torch.Tensor:
    return pipe(PROMPT, generator=torch.Generator().manual_seed(SEED), output_type="latent", **call).images


def ours_per_layer(tr) -> tuple[dict[str, torch.Tensor], list[str], list[int], int]:
    """crossattn's maps, one per layer: module path -> (pixels, kept tokens) mean over heads and steps.

    Also the kept tokens' strings, their positions in the denoiser's text input, and the number of steps.
    """
    maps = tr.heat_maps()
    path_of = {layer.name: path for path, layer in tr.layers.items()}
    per_layer = {}
    for name in maps.sites:  # per_layer=True: one site per layer
        token_maps = maps.filter(layers=[name]).data.token_maps()  # (h, w, tokens): mean over heads and steps
        per_layer[path_of[name]] = token_maps.flatten(0, 1).double()
    # Column c of the maps is text position kept[c] (start token, prompt tokens, end token).
    kept = tr.kept_positions
    return per_layer, list(maps.tokens), kept, len(tr.recorder.timesteps)


def peer_per_layer(peer_maps, kept: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """The peer's maps, one per layer: module path -> (pixels, kept tokens), averaged over all steps and of the
    last step alone (what its default, ``timesteps="last"``, keeps); and the steps recorded per layer."""
    steps: dict[str, list[torch.Tensor]] = {}
    for record in sorted((r for r in peer_maps.records if r.relation == "image->text" and r.data is not None),
                         key=lambda r: r.step_index):
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


def compare(pipe, call: dict) -> dict:
    """One generation traced by crossattn, one by the peer (same seed), one plain; their maps compared."""
    from attention_map_diffusers import AttentionCapture

    start = time.perf_counter()
    plain = generate(pipe, call)
    with crossattn.trace(pipe, per_layer=True, time_bins=1) as tr:
        ours_out = generate(pipe, call)
    with AttentionCapture(pipe, timesteps="all", max_capture_bytes=None) as cap:
        theirs_out = generate(pipe, call)
    identical = {"crossattn": torch.equal(plain, ours_out), "peer": torch.equal(plain, theirs_out)}
    joint = not all(identical.values())
    if joint:  # different trajectories would differ in attention too: compare on one generation instead
        with crossattn.trace(pipe, per_layer=True, time_bins=1) as tr, \
                AttentionCapture(pipe, timesteps="all", max_capture_bytes=None) as cap:
            generate(pipe, call)
    ours, tokens, kept, our_steps = ours_per_layer(tr)
    theirs, their_last, their_steps = peer_per_layer(cap.compute(), kept)
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
    result["seconds"] = time.perf_counter() - start
    return result


# ---- report -----------------------------------------------------------------------------------------------
def close_to_one(x: float) -> str:
    """1 ± a tiny difference, readable: "1 − 6.6e-13" rather than "1.0000000"."""
    d = x - 1.0
    if d == 0.0:
        return "1"
    return f"1 {'+' if d > 0 else '−'} {abs(d):.1e}" if abs(d) < 1e-4 else f"{x:.5f}"


def print_table(results: dict) -> None:
    print(f"crossattn vs attention-map-diffusers {results['peer_version']} — {results['date']}, prompt "
          f"{results['prompt']!r}, seed {SEED}")
    print("\n| family | layers compared | min r over tokens | mean r | mass ratio | max abs diff | outputs identical "
          "| note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["families"].values():
        if "error" in r:
            print(f"| {r['title']} | — | — | — | — | — | — | {r['error']} |")
            continue
        same = "yes" if all(r["outputs_identical_to_plain"].values()) else "no (joint run)"
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
    print("\nDefaults side by side: crossattn (every layer and step) vs the peer's default (its layers, last step):")
    print("\n| family | steps | min r over tokens | mean r | mass ratio |")
    print("|---|---|---|---|---|")
    for r in results["families"].values():
        if "defaults" in r:
            d = r["defaults"]
            print(f"| {r['title']} | {r['steps']['crossattn']} | {d['min_r']:.3f} | {d['mean_r']:.3f} | "
                  f"{d['mass_ratio']:.3f} |")


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
    results = {"date": date.today().isoformat(), "torch": torch.__version__, "peer_version": peer_version,
               "prompt": PROMPT, "seed": SEED, "families": {}}
    for key in args.families:
        case = available[key]
        try:
            results["families"][key] = {"title": case.title, "call": case.call,
                                        **compare(case.build(), case.call)}
        except Exception as exc:  # noqa: BLE001 - a tool failing on one family is a finding, not the end of the run
            results["families"][key] = {"title": case.title, "call": case.call,
                                        "error": f"{type(exc).__name__}: {exc}"}
        print(f"{case.title}: done", file=sys.stderr)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
