"""Everything that draws the results of an analysis: segmentations, centroid tracks, diagnoses, causal effects
and repairs. Drawing only: the numbers come from `crossattn.placement`, `crossattn.diagnosis` and
`crossattn.effects`; the primitives (colour maps, overlays, labels) from `crossattn.render`."""

from __future__ import annotations

import re

import cv2
import numpy as np
from PIL import Image, ImageDraw

from . import render
from .diagnosis import Diagnosis
from .effects import Effects, Repair
from .geometry import Track
from .heatmaps import HeatMaps

# Colours for regions and paths, each with a name, so that a region is never painted in a colour the prompt
# names for another object (the yellow square painted green): those are left out of the palette.
PALETTE = {"red": (230, 25, 75), "green": (60, 180, 75), "blue": (0, 130, 200), "yellow": (255, 225, 25),
           "purple": (145, 30, 180), "orange": (245, 130, 48), "cyan": (70, 240, 240), "magenta": (240, 50, 230),
           "olive": (128, 128, 0), "navy": (0, 0, 128), "teal": (0, 128, 128), "brown": (170, 110, 40),
           "pink": (250, 190, 212), "lime": (210, 245, 60), "maroon": (128, 0, 0), "grey": (128, 128, 128)}


def palette_for(names: list[str]) -> list[tuple[int, int, int]]:
    """One colour per name, avoiding colours the names mention ("yellow square" never gets yellow)."""
    said = {w for n in names for w in re.findall(r"[a-z]+", n.lower())}
    usable = [rgb for colour, rgb in PALETTE.items() if colour not in said] or list(PALETTE.values())
    return [usable[k % len(usable)] for k in range(len(names))]


def segmentation_picture(image: Image.Image | np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.55,
                         tile: int = 384) -> Image.Image:
    """Labels coloured over the image, each region named in place, with a legend underneath."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    big = cv2.resize(labels.astype(np.uint8), base.size, interpolation=cv2.INTER_NEAREST)
    palette = palette_for(names)
    colours = np.array([(0, 0, 0)] + palette, np.float32)
    pixels = np.asarray(base).astype(np.float32)
    painted = np.where(big[..., None] > 0, (1 - alpha) * pixels + alpha * colours[big], pixels)
    row_h = max(18, tile // 16)
    label_font = render.font(int(row_h * 0.7))
    legend = [f"{name}  {float((labels == k).mean()):.0%}" for k, name in enumerate(["background"] + names)]
    width = max([base.width] + [12 + row_h + int(label_font.getlength(t)) + 6 for t in legend])  # never cut
    out = Image.new("RGB", (width, base.height + row_h * (len(names) + 1) + 4), "white")
    out.paste(Image.fromarray(painted.round().astype(np.uint8)), (0, 0))
    anchors, named = [], []
    for k, name in enumerate(names, start=1):  # the name at the region's centre, moved aside where names crowd
        ys, xs = np.nonzero(big == k)
        if len(xs):
            anchors.append((float(xs.mean()), float(ys.mean())))
            named.append(name)
    render.draw_labels(out, anchors, named, int(row_h * 0.7), canvas=(0, 0, base.width, base.height))
    draw = ImageDraw.Draw(out)
    for k, text in enumerate(legend):
        y = base.height + k * row_h + row_h // 2 + 2
        colour = (255, 255, 255) if k == 0 else palette[k - 1]
        draw.rectangle([6, y - row_h // 3, 6 + row_h // 1.5, y + row_h // 3], fill=colour, outline="black")
        render.draw_text(out, (12 + row_h, y), text, label_font, anchor="lm")
    return out


def track_picture(image: Image.Image | np.ndarray, lines: list[Track], tile: int = 384) -> Image.Image:
    """Each word's centroid path over the image: dots from dark (early) to bright (late), a ring at the end."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    scale = base.width / render.as_rgb(image).shape[1]
    canvas = np.asarray(base).copy()
    palette = palette_for([line.word for line in lines])
    for line, colour in zip(lines, palette):
        pts = [(int(x * scale), int(y * scale)) for x, y in line.centroids if not np.isnan(x)]
        for i in range(1, len(pts)):
            cv2.line(canvas, pts[i - 1], pts[i], colour, 1, cv2.LINE_AA)
        for i, p in enumerate(pts):
            shade = 0.35 + 0.65 * (i + 1) / len(pts)
            cv2.circle(canvas, p, 3, tuple(int(c * shade) for c in colour), -1, cv2.LINE_AA)
        if pts:
            cv2.circle(canvas, pts[-1], 7, colour, 2, cv2.LINE_AA)
    label_font = render.font(14)
    texts = [f"{line.word}: " + (f"position decided at step {line.decided_at + 1} of {line.steps}"
                                 if line.decided_at is not None else "never settled") for line in lines]
    width = max([base.width] + [int(label_font.getlength(t)) + 36 for t in texts])  # the legend is never cut
    out = Image.new("RGB", (width, base.height + 22 * len(lines) + 10), "white")
    out.paste(Image.fromarray(canvas), (0, 0))
    draw = ImageDraw.Draw(out)
    for k, (text, colour) in enumerate(zip(texts, palette)):
        y = base.height + 6 + 22 * k + 8
        draw.rectangle([6, y - 6, 18, y + 6], fill=colour)
        render.draw_text(out, (26, y), text, label_font, anchor="lm")
    return out


def diagnosis_picture(d: Diagnosis, image: Image.Image | np.ndarray, tile: int = 384) -> Image.Image:
    """The image with each object's region outlined and labelled with its verdict."""
    base = render.scale_to(Image.fromarray(render.as_rgb(image)), tile)
    canvas = np.asarray(base).copy()
    colours = palette_for([o.name for o in d.objects])
    anchors, texts = [], []
    for o, colour in zip(d.objects, colours):
        if o.mask is None or not o.mask.any():
            continue
        big = cv2.resize(o.mask.astype(np.uint8), base.size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, 2, cv2.LINE_AA)
        ys, xs = np.nonzero(big)
        verdict = "missing?" if o.missing else "wrong colour?" if o.wrong_attribute else "ok"
        anchors.append((float(xs.mean()), float(ys.min())))  # at the top of its outline, moved aside if crowded
        texts.append(f"{o.name}: {verdict}")
    out = Image.fromarray(canvas)
    render.draw_labels(out, anchors, texts, max(11, tile // 30))
    return out


def effect_picture(eff: Effects, word: str, tile: int = 256, cmap: str = "jet") -> Image.Image:
    """One word: its attention over the plain image | where the picture changed | the counterfactual image."""
    effect = eff[word]
    attention = eff.maps.word(word).overlay(eff.image, cmap=cmap)
    peak = float(effect.change.max())
    change = Image.fromarray(render.colorize(effect.change / peak if peak > 0 else effect.change, cmap))
    r = "r n/a" if effect.agreement is None else f"r = {effect.agreement:.2f}"
    what = f"without '{word}'" if eff.how == "prompt" else f"'{word}' attention x{eff.scale:g}"
    return render.grid([render.labelled(attention, f"attention: {word}", tile),
                        render.labelled(change, f"change (max {peak:.2f}), {r}", tile),
                        render.labelled(effect.image, what, tile)], cols=3)


def repair_picture(r: Repair, tile: int = 256) -> Image.Image:
    """Before | after, each captioned with what the diagnosis found missing (ASCII: the label font has no ×, —)."""
    def caption(d) -> str:
        missing = [o.name for o in d.objects if o.missing]
        return "missing: " + ", ".join(missing) if missing else "nothing missing"

    boosted = ", ".join(f"{w} x{s:g}" for w, s in r.boosted.items()) or "nothing boosted"
    before = render.labelled(r.image_before, f"before: {caption(r.before)}", tile)
    after = render.labelled(r.image, f"repaired ({boosted}): {caption(r.after)}", tile)
    return render.grid([before, after], cols=2)



# ---- videos -------------------------------------------------------------------------------------------------
def frame_covers(maps: HeatMaps) -> list[list[int]]:
    """Per frame of the maps, the decoded frames it covers (`info.output_frames`; one each where none is said)."""
    return maps.info.output_frames or [[k] for k in range(maps.frames)]


def latent_frame_of(maps: HeatMaps, frame: int) -> int:
    """The maps' frame that covers decoded frame `frame` (a latent frame covers several when the model compresses
    time: its map is shown on each of them, repeated, never interpolated)."""
    covers = frame_covers(maps)
    return next((k for k, decoded in enumerate(covers) if frame in decoded), len(covers) - 1)


def video_overlay(frames: list[Image.Image], maps: HeatMaps, word: str, alpha: float = 0.5,
                  cmap: str = "jet") -> list[Image.Image]:
    """Each decoded frame with the map of the latent frame that covers it, for one word (frames of a GIF)."""
    per_frame = [maps.frame(k).word(word).array for k in range(maps.frames)]
    return [render.overlay(f, per_frame[latent_frame_of(maps, i)], alpha=alpha, cmap=cmap)
            for i, f in enumerate(frames)]


def frames_grid(frames: list[Image.Image], maps: HeatMaps, words: list[str] | None = None, alpha: float = 0.5,
                cmap: str = "jet", tile: int = 160) -> Image.Image:
    """Frames × words: one column per frame of the maps (over the first decoded frame it covers), one row per word
    (all the prompt's words by default), the frames themselves on top."""
    words = words or maps.names
    covers = frame_covers(maps)
    shown = [frames[min(c[0], len(frames) - 1)] for c in covers]
    top = [render.labelled(f, f"frame {c[0]}" if len(c) == 1 else f"frames {c[0]}-{c[-1]}", tile)
           for f, c in zip(shown, covers)]
    rows = [render.labelled(maps.frame(k).word(w).overlay(shown[k], alpha, cmap, size=tile), w, tile)
            for w in words for k in range(maps.frames)]
    return render.grid(top + rows, cols=maps.frames)


def save_gif(frames: list[Image.Image], path, fps: float = 8.0) -> None:
    """Frames as a looping GIF (every viewer plays it; no video codec needed)."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
