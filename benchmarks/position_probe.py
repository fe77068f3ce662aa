"""Does a shapes-world model know *where*? A one-minute probe of why relations are (not) obeyed.

The full evaluation (`crossattn eval-shapes`) says whether "a red circle left of a blue square" is drawn
that way. This probe says where the information is lost, stage by stage, by swapping one word of a caption
and measuring how much each stage's output changes (relative L2 change, 0 = the word is ignored):

1. text encoder: its output for the caption (all 77 positions);
2. UNet: its v-prediction from the same noise at t = 999 (pure noise, where the layout is chosen) and t = 500;
3. pixels: for "a <colour> <shape> on the left/right/at the top/bottom", how often the object's centroid
   lands in the named half.

At pure noise (t = 999) the best v-prediction is minus the caption's mean image; a model that instead draws a
sharp object wherever the noise suggests (the layout comes from the noise, not the words) scores *worse* there
than the average training image, which knows no caption at all. A line compares the two losses, and another
asks the direct question: on held-out two-object prompts, does the t = 999 prediction (decoded, with the
evaluation's guidance 5) put the first named colour's mass on the stated side of the second's? The same test
on the decoded mean latent of a few true layouts of each caption is the ceiling (not 100 %: a mean latent
decodes to a blur).

A colour swap is the yardstick: the model obeys colours, so a position swap that changes stage 2 far less
than a colour swap means the UNet does not steer the layout from the words. A last line checks the obvious
suspect, that the UNet cannot tell where a pixel is (its attention has no positional encoding; only
zero padding breaks the symmetry): a linear probe reads each pixel's x position from the features that
enter the mid and up cross-attention layers at t = 999 (R² on held-out noise; 1 = known exactly).

    .venv/bin/python benchmarks/position_probe.py [--model PATH] [--json benchmarks/results/position_probe.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import crossattn
from crossattn.geometry import relation_gap
from crossattn.shapes.evaluate import centroid, colour_masks, largest_blob
from crossattn.shapes.train import reference_batch, to_tensor
from crossattn.shapes.world import COLOURS, HELD_OUT_SEED, parse_caption, sample_scene

SWAPS = {  # (caption, the same caption with one word swapped)
    "position word": ("a red circle on the left", "a red circle on the right"),
    "relation word": ("a red circle left of a blue square", "a red circle right of a blue square"),
    "colour word": ("a red circle on the left", "a green circle on the left"),
}
PLACES = {"on the left": lambda x, y: x < 32, "on the right": lambda x, y: x > 32,
          "at the top": lambda x, y: y < 32, "at the bottom": lambda x, y: y > 32}
OBJECTS = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle"), ("cyan", "square")]


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def encode(pipe, captions: str | list[str]) -> torch.Tensor:
    """The text encoder's hidden states for captions padded to 77 tokens, as the pipeline computes them."""
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0]


@torch.no_grad()
def probe(pipe) -> dict:
    noise = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(pipe.device, pipe.unet.dtype)
    result: dict = {"text encoder": {}, "unet t=999": {}, "unet t=500": {}}
    for name, (a, b) in SWAPS.items():
        ea, eb = encode(pipe, a), encode(pipe, b)
        result["text encoder"][name] = relative_change(ea, eb)
        for t in (999, 500):
            steps = torch.full((len(noise),), t, device=pipe.device)
            va = pipe.unet(noise, steps, ea.expand(len(noise), -1, -1)).sample
            vb = pipe.unet(noise, steps, eb.expand(len(noise), -1, -1)).sample
            result[f"unet t={t}"][name] = relative_change(va, vb)
    placed = {}
    for place, holds in PLACES.items():
        hits = []
        for k, (colour, shape) in enumerate(OBJECTS):
            image = pipe(f"a {colour} {shape} {place}", num_inference_steps=20, guidance_scale=5.0,
                         generator=torch.Generator().manual_seed(k), output_type="np").images[0]
            blob = largest_blob(colour_masks((image * 255).round().astype(np.uint8))[colour])
            if blob.sum() >= 16:
                hits.append(holds(*centroid(blob)))
        placed[place] = float(np.mean(hits)) if hits else None
    result["object lands in the named half"] = placed
    result["x position readable from features (R2)"] = position_r2(pipe, encode(pipe, "a red circle"))
    result["pure-noise loss (t=999)"] = pure_noise_loss(pipe)
    result["relation in the t=999 prediction"] = layout_step_relation(pipe)
    return result


def colour_centroid(images: torch.Tensor, colour: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (x, y) of each image's soft membership to a palette colour: a blurry mean image has no clean
    blobs to segment, but its colour mass still sits somewhere."""
    rgb = torch.tensor(COLOURS[colour], dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
    weight = torch.exp(-((images.float().cpu() - rgb) ** 2).sum(1) / 0.3)  # (n, h, w)
    ys, xs = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in weight.shape[1:]), indexing="ij")
    total = weight.sum((1, 2))
    return (weight * xs).sum((1, 2)) / total, (weight * ys).sum((1, 2)) / total


def relation_share(images: torch.Tensor, captions: list[str]) -> float:
    """Share of images whose first named colour's mass lies on the caption's side of the second's."""
    hits = []
    for image, caption in zip(images, captions):
        pairs, relation = parse_caption(caption)
        (ax, ay), (bx, by) = (colour_centroid(image[None], colour) for colour, _ in pairs)
        hits.append(relation_gap((float(ax), float(ay)), (float(bx), float(by)), relation) > 0)
    return float(np.mean(hits))


@torch.no_grad()
def layout_step_relation(pipe, n: int = 40, noises: int = 3, layouts: int = 5, guidance: float = 5.0) -> dict:
    """On n held-out two-object prompts: relation share of the decoded t = 999 x0-prediction (classifier-free
    guidance as in the evaluation, `noises` noise draws each), and of the decoded mean of `layouts` true
    latents per caption (`world.resample_layout`), the mean image the prediction should approach."""
    scenes = [sample_scene(HELD_OUT_SEED + 7_000_000 + i, n_objects=2) for i in range(n)]
    captions = [scene.caption for scene in scenes]
    vae, scale = pipe.vae, pipe.vae.config.scaling_factor
    images = torch.cat([to_tensor(np.stack([s.image for s in scenes]))[:, None],
                        reference_batch(scenes, captions, layouts - 1, seed=0)], 1)  # (n, layouts, 3, 64, 64)
    latents = vae.encode(images.flatten(0, 1).to(pipe.device, vae.dtype)).latent_dist.mean
    means = vae.decode(latents.unflatten(0, (n, layouts)).mean(1)).sample.clamp(-1, 1)
    text = encode(pipe, captions + [""] * n)
    a = pipe.scheduler.alphas_cumprod[999].to(pipe.device)
    shares = []
    for k in range(noises):
        noise = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(k)).to(pipe.device, pipe.unet.dtype)
        v = pipe.unet(noise.repeat(2, 1, 1, 1), torch.full((2 * n,), 999, device=pipe.device), text).sample
        v = v[n:] + guidance * (v[:n] - v[n:])
        x0 = a.sqrt() * noise - (1 - a).sqrt() * v
        shares.append(relation_share(vae.decode(x0 / scale).sample.clamp(-1, 1), captions))
    return {"model": float(np.mean(shares)), "mean of true layouts": relation_share(means, captions), "prompts": n}


def pure_noise_loss(pipe, n: int = 128) -> dict[str, float]:
    """At t = 999 on n held-out scenes: the model's v loss, and that of predicting the scenes' mean image."""
    # seeds above every training and evaluation seed (drawn directly: the training sampler refuses held-out seeds)
    scenes = [sample_scene(2_000_000_000 + i) for i in range(n)]
    images, captions = to_tensor(np.stack([s.image for s in scenes])), [s.caption for s in scenes]
    latents = pipe.vae.encode(images.to(pipe.device, pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)).to(latents)
    a = pipe.scheduler.alphas_cumprod[999].to(latents)
    target = a.sqrt() * noise - (1 - a).sqrt() * latents
    v = pipe.unet(a.sqrt() * latents + (1 - a).sqrt() * noise, torch.full((n,), 999, device=pipe.device),
                  encode(pipe, captions)).sample
    mean_image = -(1 - a).sqrt() * latents.mean(0, keepdim=True)
    return {"model": float(((v - target) ** 2).mean()), "mean image": float(((mean_image - target) ** 2).mean())}


def position_r2(pipe, text: torch.Tensor, n: int = 64) -> dict[str, float]:
    """Per cross-attention layer of the mid and up blocks: R² of a ridge probe from its input features (one
    vector per pixel) to the pixel's x coordinate, fitted on 3/4 of n pure-noise latents, scored on the rest."""
    layers = {name: m for name, m in pipe.unet.named_modules() if name.endswith("attn2")
              and not name.startswith("down_blocks")}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.__setitem__(name, args[0]))
             for name, m in layers.items()]
    try:
        noise = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(1)).to(pipe.device, pipe.unet.dtype)
        pipe.unet(noise, torch.full((n,), 999, device=pipe.device), text.expand(n, -1, -1))
    finally:
        for hook in hooks:
            hook.remove()
    scores, fit = {}, 3 * n // 4
    for name, feats in inputs.items():  # (n, pixels, channels)
        side = round(feats.shape[1] ** 0.5)
        x = np.tile((np.arange(side) + 0.5) / side, side)
        design = np.concatenate([feats.float().cpu().numpy(), np.ones((*feats.shape[:2], 1))], axis=-1)
        a, b = design[:fit].reshape(-1, design.shape[-1]), design[fit:].reshape(-1, design.shape[-1])
        coef = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ np.tile(x, fit))
        truth = np.tile(x, n - fit)
        residual = ((b @ coef - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
        scores[name.removesuffix(".attn2")] = float(1 - residual)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped shapes model)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    pipe = crossattn.load_pipeline(args.model, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    result = probe(pipe)
    print(f"{'relative change when swapping the':<36}" + "".join(f"{name:>16}" for name in SWAPS))
    for stage in ("text encoder", "unet t=999", "unet t=500"):
        print(f"{stage:<36}" + "".join(f"{result[stage][name]:>16.4f}" for name in SWAPS))
    print("object lands in the named half (chance 0.5): "
          + ", ".join(f"{k} {v:.2f}" for k, v in result["object lands in the named half"].items()))
    print("x position readable from the features entering cross-attention at t=999 (R²): "
          + ", ".join(f"{k.replace('transformer_blocks.0', 'tb0')} {v:.2f}"
                      for k, v in result["x position readable from features (R2)"].items()))
    noise_loss = result["pure-noise loss (t=999)"]
    print(f"v loss at pure noise (t=999): model {noise_loss['model']:.3f}, the mean training image "
          f"{noise_loss['mean image']:.3f} (lower is better; the model should beat the caption-blind mean)")
    layout = result["relation in the t=999 prediction"]
    print(f"relation obeyed by the colour mass of the t=999 prediction ({layout['prompts']} held-out prompts): model "
          f"{layout['model']:.2f}, mean of true layouts {layout['mean of true layouts']:.2f} (chance 0.5)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model or "embedded:shapes-model", **result}, indent=1))


if __name__ == "__main__":
    main()
