"""Pictures from arrays: upsampling, colour maps, overlays, labelled grids and colour bars (opencv + pillow).

Everything here takes plain numpy arrays and PIL images; nothing knows about pipelines or prompts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError

COLORMAPS = {
    name: getattr(cv2, f"COLORMAP_{name.upper()}")
    for name in ("jet", "turbo", "inferno", "magma", "viridis", "plasma", "hot", "cividis", "bone")
}


def upsample(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D map to `size` = (height, width) with bicubic interpolation, clipped at 0.

    Bicubic keeps peaks rounder than bilinear on 8×8 → 512×512; its small overshoot below zero is clipped.
    """
    if array.shape == tuple(size):
        return array.astype(np.float32, copy=True)
    out = cv2.resize(array.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0, None)


def colorize(array: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 (H, W, 3) with an OpenCV colour map."""
    if cmap not in COLORMAPS:
        raise InputError(f"unknown colour map {cmap!r}; choose one of: {', '.join(COLORMAPS)}")
    scaled = np.clip(np.nan_to_num(array) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, COLORMAPS[cmap]), cv2.COLOR_BGR2RGB)


def as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or an array (uint8, or float in [0, 1]) as RGB uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array * 255, 0, 255).round().astype(np.uint8)
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]


def overlay(image: Image.Image | np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """Blend the colour-mapped `heat` (values in [0, 1], any size) over `image`."""
    if not 0 <= alpha <= 1:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    base = as_rgb(image).astype(np.float32)
    heat = upsample(heat, base.shape[:2])
    blended = (1 - alpha) * base + alpha * colorize(heat, cmap).astype(np.float32)
    return Image.fromarray(blended.round().astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG file bytes (what Jupyter's _repr_png_ returns)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# Every picture drawn here lists the text it carries, with its box, under this key of `Image.info` (read it with
# `labels`): what a test needs to check that no two labels overlap and none is cut, without reading pixels. The
# boxes are those of the picture as drawn (PIL copies `info` into a resized copy, but not the new positions).
LABELS = "crossattn.labels"
MIN_FONT = 9  # below this a label is shortened with "…" rather than shrunk further


@dataclass(frozen=True)
class Label:
    """A piece of text drawn on a picture: its box (x0, y0, x1, y1; x1, y1 exclusive) and the area it must stay in."""

    text: str
    box: tuple[int, int, int, int]
    canvas: tuple[int, int, int, int]


def labels(image: Image.Image) -> list[Label]:
    """The labels drawn on a picture made here (see `LABELS`)."""
    return list(image.info.get(LABELS, []))


def _record(image: Image.Image, found: Sequence[Label]) -> None:
    image.info[LABELS] = labels(image) + list(found)


def fit_text(text: str, size: int, width: float) -> tuple[str, ImageFont.ImageFont]:
    """`text` and a font no larger than `size` with which it is at most `width` pixels wide: smaller type first,
    then, at `MIN_FONT`, the text shortened with "…"."""
    face = font(size)
    while face.getlength(text) > width and size > MIN_FONT:
        size -= 1
        face = font(size)
    while face.getlength(text) > width and len(text) > 1:
        text = text[:-2] + "…"
    return text, face


def draw_text(image: Image.Image, xy: tuple[float, float], text: str, face: ImageFont.ImageFont, anchor: str = "mm",
              canvas: tuple[int, int, int, int] | None = None, fill: str | tuple = "black") -> Label:
    """Plain text on `image`, recorded as a label of `canvas` (default: the whole picture)."""
    draw = ImageDraw.Draw(image)
    draw.text(xy, text, fill=fill, font=face, anchor=anchor)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=face, anchor=anchor)
    label = Label(text, (x0, y0, x1, y1), canvas or (0, 0, image.width, image.height))
    _record(image, [label])
    return label


def _nearest_free(anchor: tuple[float, float], size: tuple[int, int], canvas: tuple[int, int, int, int],
                  taken: list[tuple[int, int, int, int]], step: int = 2) -> tuple[tuple[int, int, int, int], bool]:
    """The box of `size` inside `canvas` whose centre is nearest `anchor` and that keeps 1 px clear of every box
    in `taken`; (box, True), or (the nearest box, False) when no free place is left."""
    (w, h), (cx0, cy0, cx1, cy1) = size, canvas
    xs = np.unique(np.append(np.arange(cx0, max(cx0, cx1 - w) + 1, step), max(cx0, cx1 - w)))
    ys = np.unique(np.append(np.arange(cy0, max(cy0, cy1 - h) + 1, step), max(cy0, cy1 - h)))
    x, y = np.meshgrid(xs, ys)
    free = np.ones(x.shape, bool)
    for x0, y0, x1, y1 in taken:
        free &= (x > x1) | (x + w < x0) | (y > y1) | (y + h < y0)
    distance = (x + w / 2 - anchor[0]) ** 2 + (y + h / 2 - anchor[1]) ** 2
    k = np.unravel_index(np.argmin(np.where(free, distance, np.inf) if free.any() else distance), x.shape)
    left, top = int(x[k]), int(y[k])
    return (left, top, left + w, top + h), bool(free.any())


def draw_labels(image: Image.Image, anchors: Sequence[tuple[float, float]], texts: Sequence[str], size: int,
                canvas: tuple[int, int, int, int] | None = None) -> list[Label]:
    """Each text on a white box with a thin outline, as near its anchor as it can be without covering another
    label or leaving `canvas` (default: the whole picture); the type shrinks when a crowded picture needs it."""
    canvas = canvas or (0, 0, image.width, image.height)
    width = canvas[2] - canvas[0] - 10  # the box adds 3 px of padding and a 1 px outline each side, and a margin
    for attempt in range(size, MIN_FONT - 1, -1):
        fitted = [fit_text(t, attempt, width) for t in texts]
        boxes, all_free = [], True
        for anchor, (text, face) in zip(anchors, fitted):
            x0, y0, x1, y1 = face.getbbox(text)
            box, free = _nearest_free(anchor, (int(x1 - x0) + 8, int(y1 - y0) + 6), canvas, boxes)
            boxes.append(box)
            all_free &= free
        if all_free:
            break
    draw = ImageDraw.Draw(image)
    placed = []
    for (text, face), (x0, y0, x1, y1) in zip(fitted, boxes):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill="white", outline="black")
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), text, fill="black", font=face, anchor="mm")
        placed.append(Label(text, (x0, y0, x1, y1), canvas))
    _record(image, placed)
    return placed


def scale_to(image: Image.Image, tile: int) -> Image.Image:
    """Scale so the long side is `tile` pixels (nearest-neighbour when enlarging small images: crisp pixels)."""
    w, h = image.size
    factor = tile / max(w, h)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return image.resize(size, Image.NEAREST if factor > 1 else Image.LANCZOS)


def labelled(image: Image.Image, text: str, tile: int = 256) -> Image.Image:
    """The image scaled to `tile` with `text` in a strip underneath (smaller, then shortened, if it is too long)."""
    image = scale_to(image, tile)
    strip = max(18, tile // 10)
    out = Image.new("RGB", (image.width, image.height + strip), "white")
    out.paste(image, (0, 0))
    text, face = fit_text(text, int(strip * 0.7), image.width - 4)
    draw_text(out, (image.width / 2, image.height + strip / 2), text, face)
    return out


def grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 4) -> Image.Image:
    """Tiles in rows of `cols` (default: a near-square layout), on white."""
    if not images:
        raise ValueError("grid needs at least one image")
    cols = cols or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / cols))
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    out = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), "white")
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        left, top = pad + c * (w + pad), pad + r * (h + pad)
        out.paste(im, (left, top))
        _record(out, [_moved(label, left, top) for label in labels(im)])  # the tiles' labels, where they now are
    return out


def _moved(label: Label, dx: int, dy: int) -> Label:
    x0, y0, x1, y1 = label.box
    c0, d0, c1, d1 = label.canvas
    return Label(label.text, (x0 + dx, y0 + dy, x1 + dx, y1 + dy), (c0 + dx, d0 + dy, c1 + dx, d1 + dy))


def with_colorbar(image: Image.Image, label: str, cmap: str = "jet", tile: int = 384) -> Image.Image:
    """The image scaled to `tile`, a title above it and a vertical colour bar (0 → 1) on its right."""
    image = scale_to(image, tile)
    bar_w, margin, title_h = max(12, tile // 24), max(8, tile // 40), max(20, tile // 12)
    ramp = np.linspace(1, 0, image.height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    bar = Image.fromarray(colorize(ramp, cmap))
    tick_font = font(max(10, tile // 28))
    tick_w = int(tick_font.getlength("1.0")) + 6
    below = int(tick_font.size) // 2 + 2  # room under the bar for the lower half of the "0.0" label
    title_font = font(int(title_h * 0.6))
    width = max(image.width + margin + bar_w + tick_w + margin, int(title_font.getlength(label)) + 8)
    out = Image.new("RGB", (width, image.height + title_h + below), "white")
    out.paste(image, (0, title_h))
    x = image.width + margin
    out.paste(bar, (x, title_h))
    draw_text(out, (width / 2 if width > image.width + 2 * margin + bar_w + tick_w else image.width / 2, title_h / 2),
              label, title_font)
    for value in (1.0, 0.5, 0.0):
        y = title_h + (1 - value) * (image.height - 1)
        draw_text(out, (x + bar_w + 3, y), f"{value:.1f}", tick_font, anchor="lm")
    return out
