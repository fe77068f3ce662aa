"""Pictures from arrays: upsampling, colour maps, overlays, labelled grids and colour bars (opencv + pillow).

Everything here takes plain numpy arrays and PIL images; nothing knows about pipelines or prompts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

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


def text_box(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font: ImageFont.ImageFont) -> None:
    """`text` centred on `centre` on a white box with a thin outline: readable over any picture."""
    x0, y0, x1, y1 = draw.textbbox(centre, text, font=font, anchor="mm")
    draw.rectangle([x0 - 3, y0 - 2, x1 + 3, y1 + 2], fill="white", outline="black")
    draw.text(centre, text, fill="black", font=font, anchor="mm")


def scale_to(image: Image.Image, tile: int) -> Image.Image:
    """Scale so the long side is `tile` pixels (nearest-neighbour when enlarging small images: crisp pixels)."""
    w, h = image.size
    factor = tile / max(w, h)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return image.resize(size, Image.NEAREST if factor > 1 else Image.LANCZOS)


def labelled(image: Image.Image, text: str, tile: int = 256) -> Image.Image:
    """The image scaled to `tile` with `text` in a strip underneath."""
    image = scale_to(image, tile)
    strip = max(18, tile // 10)
    out = Image.new("RGB", (image.width, image.height + strip), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((image.width / 2, image.height + strip / 2), text, fill="black", font=font(int(strip * 0.7)),
              anchor="mm")
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
        out.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return out


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
    draw = ImageDraw.Draw(out)
    draw.text((width / 2 if width > image.width + 2 * margin + bar_w + tick_w else image.width / 2, title_h / 2), label,
              fill="black", font=title_font, anchor="mm")
    for value in (1.0, 0.5, 0.0):
        y = title_h + (1 - value) * (image.height - 1)
        draw.text((x + bar_w + 3, y), f"{value:.1f}", fill="black", font=tick_font, anchor="lm")
    return out
