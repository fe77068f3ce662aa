"""Do per-frame maps find each frame's own objects? Ground truth for video without training a video model.

`crossattn.load_pipeline("shapes-video")` is AnimateDiff over the embedded shapes UNet with a motion adapter whose
output projections are zero: each motion module adds nothing, so every frame is the image model's own picture of
its own noise (tested: the frames equal the image pipeline's outputs exactly, `tests/test_video.py`). The frames of
one clip are therefore *different* shapes-world scenes of the same caption, each with its pixel truth
(`shapes.evaluate.read_pixels`). For every frame and every drawn object, the IoU of the object's map
(colour + shape words, thresholded at 0.4 × its peak, as `eval-shapes` does) with the object's pixels is taken:

- with the frame's own map (`maps.frame(i)`): it must find that frame's objects (mIoU near the image eval's);
- with the next frame's map on this frame (`maps.frame(i + 1)`, cyclic): what a map that ignored the frame would
  score — the own map must beat it;
- with the clip's mean map (`maps.word(...)`): the average over frames, for scale;

and, on the same captions and seeds, the image pipeline's own maps (the image eval's number, measured here).

    .venv/bin/python benchmarks/video_eval.py --n 30 --json benchmarks/results/video_eval.json
    .venv/bin/python benchmarks/video_eval.py --quick      # 4 captions: a minute
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
from tqdm import tqdm

import crossattn
from crossattn.generation import generate
from crossattn.geometry import DEFAULT_TAU
from crossattn.shapes.evaluate import held_out_prompts, iou, read_pixels


def object_ious(frame_image, caption: str, maps_of: dict) -> dict[str, list[float]]:
    """IoU of each drawn object of one frame with each named map source's map of that object."""
    truth = read_pixels(frame_image, caption)
    out = {name: [] for name in maps_of}
    for (colour, shape), blob in truth.blobs.items():
        for name, maps in maps_of.items():
            heat = maps.word(f"{colour} {shape}").array
            out[name].append(iou(heat >= DEFAULT_TAU * heat.max(), blob))
    return out


def evaluate(n: int, frames: int, steps: int, guidance: float) -> dict:
    video, image = crossattn.load_pipeline("shapes-video"), crossattn.load_pipeline()
    for pipe in (video, image):
        pipe.set_progress_bar_config(disable=True)
    scores = {"own frame": [], "next frame's map": [], "clip mean": [], "image pipeline": []}
    per_frame = [[] for _ in range(frames)]
    started = time.perf_counter()
    for k, caption in enumerate(tqdm(held_out_prompts(n), desc="shapes-video", unit="clip")):
        clip, maps = generate(video, caption, seed=k, steps=steps, guidance=guidance, frames=frames)
        for i, picture in enumerate(clip):
            got = object_ious(picture, caption, {"own frame": maps.frame(i),
                                                 "next frame's map": maps.frame((i + 1) % frames),
                                                 "clip mean": maps})
            for name, values in got.items():
                scores[name] += values
            per_frame[i] += got["own frame"]
        picture, own = generate(image, caption, seed=k, steps=steps, guidance=guidance)
        scores["image pipeline"] += object_ious(picture, caption, {"image pipeline": own})["image pipeline"]
    return {
        "date": date.today().isoformat(), "model": "shapes-video", "clips": n, "frames": frames, "steps": steps,
        "guidance": guidance, "tau": DEFAULT_TAU, "seconds": round(time.perf_counter() - started, 1),
        "objects": {name: len(v) for name, v in scores.items()},
        "miou": {name: float(np.mean(v)) if v else None for name, v in scores.items()},
        "miou_per_frame": [float(np.mean(v)) if v else None for v in per_frame],
        "own_beats_next": float(np.mean([a > b for a, b in zip(scores["own frame"], scores["next frame's map"])])),
    }


def table(r: dict) -> str:
    rows = ["| map | objects | mIoU (colour + shape) |", "|---|---|---|"]
    rows += [f"| {name} | {r['objects'][name]} | {v:.3f} |" for name, v in r["miou"].items() if v is not None]
    frames = " / ".join(f"{v:.3f}" for v in r["miou_per_frame"] if v is not None)
    rows.append(f"\nper frame (own map): {frames}; own map beats the next frame's on {r['own_beats_next']:.0%} of "
                f"objects ({r['clips']} clips × {r['frames']} frames, {r['steps']} steps, {r['seconds']} s)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="clips (held-out shapes-world captions)")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="4 clips")
    args = parser.parse_args()
    result = evaluate(4 if args.quick else args.n, args.frames, args.steps, args.guidance)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
