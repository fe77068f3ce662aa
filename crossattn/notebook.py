"""Maps that explore themselves in a notebook: what `HeatMaps._repr_html_` shows.

One self-contained block of HTML — no widget extension, no server, no external URL, so it works offline, in a
notebook saved and reopened, and in any page that shows trusted HTML output: the image (inlined as a data URI)
with the prompt's words as chips above it; hover or click a word to see its map over the image; a slider over the
time bins; a choice of layer (or site) and head where they were kept apart (``per_layer`` / ``per_head``); the
concept maps as a second row of chips.

The maps travel as bytes, not pictures: per word, site, time bin and head, the summed attention on the site's grid
as uint8 with its own scale. A few lines of vanilla JavaScript add up the selected blocks as `HeatMaps.word` does
(bilinear upsampling to the finest selected grid, half-pixel centres as torch's), normalise by the peak and colour
the result with `crossattn.render`'s colour map; the browser scales the grid up to the picture. Grids finer than
`MAX_GRID` are averaged down, and further (32, 16, 8) while the bytes exceed `BUDGET`, so that a per-layer,
per-head trace of a large model stays a few MB.

    >>> import numpy as np, torch
    >>> from crossattn.capture import Site
    >>> from crossattn.heatmaps import HeatMaps, MapData
    >>> from crossattn.words import Word
    >>> data = MapData(sums={"up": torch.rand(2, 1, 8, 8, 3)}, counts={"up": np.ones(2)},
    ...                sites={"up": Site("up", "up", (8, 8))}, bin_steps=[[0], [1]], step_sums=None,
    ...                step_counts=np.ones(2, np.int64), words=[Word("cat", (1,), 0)])
    >>> maps = HeatMaps(data=data, tokens=["<s>", "cat", "</s>"], image_size=(64, 64))
    >>> page = explore(maps).html
    >>> page.startswith("<div") and "cat" in page and "http" not in page
    True
"""

from __future__ import annotations

import base64
import html
import io
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import phrases, render
from .words import ref_name

if TYPE_CHECKING:
    from .heatmaps import HeatMaps

MAX_GRID = 64  # longest side of a site's grid as shipped
BUDGET = 3 << 20  # bytes of map data (before base64) above which grids are shipped coarser
DISPLAY = 384  # long side of the picture on the page, in CSS pixels
PHOTO = 128  # images with a longer side than this are inlined as JPEG, smaller ones as PNG (crisp pixels)


@dataclass(frozen=True)
class Explorable:
    """The explorable view of some maps; a notebook shows it (``_repr_html_``), `html` is the markup itself."""

    html: str

    def _repr_html_(self) -> str:
        return self.html


def explore(maps: HeatMaps, image: Image.Image | np.ndarray | None = None, cmap: str = "jet") -> Explorable:
    """The explorable view of `maps` over `image` (on grey when None): show it as a notebook cell's result."""
    lut = render.colorize(np.linspace(0, 1, 256, dtype=np.float32)[None], cmap)[0]
    sets = {"words": _pack(maps, _entries(maps))}
    if maps.concepts is not None:
        sets["concepts"] = _pack(maps.concepts, _entries(maps.concepts))
    height, width = maps.image_size
    scale = DISPLAY / max(height, width)
    config = {"sets": sets, "lut": _b64(lut.tobytes()), "start": _start(maps), "bins": maps.data.bin_steps,
              "alpha": 0.5 if image is not None else 1.0}
    root = f"crossattn-{uuid.uuid4().hex[:12]}"
    return Explorable(_PAGE.format(
        root=root,
        css=_CSS.replace("#ROOT", f"#{root}"),
        prompt=html.escape(maps.info.prompt or " ".join(maps.words)),
        width=round(width * scale), height=round(height * scale),
        image=_image_tag(image),
        chips=_chips("words", "", sets["words"]) + (_chips("concepts", "concepts:", sets["concepts"])
                                                    if "concepts" in sets else ""),
        controls=_controls(maps, image is not None),
        notes="".join(f"<li>{html.escape(n)}</li>" for n in maps.notes),
        config=json.dumps(config).replace("<", "\\u003c"),  # no "</script>" or "<!--" in the data: it stays data
        script=_SCRIPT.replace("ROOT", root),
    ))


def _entries(maps: HeatMaps) -> list[tuple[str, str, tuple[int, ...]]]:
    """(label, name, token positions) of each word: "a", "a#1" for its repeat."""
    return [(w.text, ref_name(w.text, w.occurrence), w.positions) for w in maps.data.words]


def _start(maps: HeatMaps) -> int:
    """The word shown first: the head noun of the prompt's first object, else the first word."""
    names = [ref_name(w.text.lower(), w.occurrence) for w in maps.data.words]
    for phrase in phrases.parse_prompt(maps.info.prompt or " ".join(maps.words)).objects:
        for wanted in (ref_name(phrase.head, phrase.occurrence), phrase.head):
            if wanted in names:
                return names.index(wanted)
    return 0


def _pack(maps: HeatMaps, entries: list[tuple[str, str, tuple[int, ...]]]) -> dict:
    """The maps' sums per (entry, site, bin, head) as uint8 blocks with one float32 scale each."""
    n_tokens = len(maps.tokens)
    pick = torch.zeros(n_tokens, max(len(entries), 1))
    for k, (_, _, positions) in enumerate(entries):
        pick[list(positions), k] = 1.0
    for cap in (MAX_GRID, 32, 16, 8):
        grids = {k: _shipped(s.resolution, cap) for k, s in maps.sites.items()}
        size = len(entries) * sum(t.shape[0] * t.shape[1] * np.prod(grids[k]) for k, t in maps.data.sums.items())
        if size <= BUDGET:
            break
    data, scales, sites = [], [], []
    offset = soffset = 0
    for name, t in maps.data.sums.items():
        _, heads, h, w, _ = t.shape
        per_entry = (t.float() @ pick).permute(4, 0, 1, 2, 3)[: len(entries)]  # (entries, bins, heads, h, w)
        gh, gw = grids[name]
        if (gh, gw) != (h, w):
            per_entry = F.interpolate(per_entry.reshape(-1, 1, h, w), size=(gh, gw), mode="area")
        blocks = per_entry.reshape(-1, gh * gw).clamp_min(0)
        peak = blocks.amax(1, keepdim=True)
        quantized = torch.where(peak > 0, blocks / peak.clamp_min(1e-30) * 255, 0).round().to(torch.uint8)
        data.append(quantized.numpy().tobytes())
        scales.append(peak[:, 0].numpy().astype("<f4").tobytes())
        sites.append({"name": name, "h": gh, "w": gw, "heads": heads, "offset": offset, "soffset": soffset})
        offset += quantized.numel()
        soffset += quantized.shape[0]
    return {"entries": [{"label": label, "name": name} for label, name, _ in entries], "sites": sites,
            "heads": maps.data.heads, "bins": len(maps.data.bin_steps), "data": _b64(b"".join(data)),
            "scales": _b64(b"".join(scales))}


def _shipped(resolution: tuple[int, int], cap: int) -> tuple[int, int]:
    """A grid's size as shipped: its long side at most `cap`, the aspect kept."""
    h, w = resolution
    factor = min(1.0, cap / max(h, w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image_tag(image: Image.Image | np.ndarray | None) -> str:
    if image is None:
        return '<div class="ca-blank" title="no image: crossattn.notebook.explore(maps, image) shows it"></div>'
    picture = Image.fromarray(render.as_rgb(image))
    buffer = io.BytesIO()
    if max(picture.size) > PHOTO:
        render.scale_to(picture, min(DISPLAY * 2, max(picture.size))).save(buffer, format="JPEG", quality=85)
        kind, style = "jpeg", ""
    else:
        picture.save(buffer, format="PNG")
        kind, style = "png", ' style="image-rendering: pixelated"'
    source = f"data:image/{kind};base64,{_b64(buffer.getvalue())}"
    return f'<img class="ca-image" alt="generated image" src="{source}"{style}>'


def _chips(kind: str, title: str, packed: dict) -> str:
    buttons = "".join(
        f'<button type="button" class="ca-chip" data-set="{kind}" data-entry="{k}" title="{html.escape(e["name"])}">'
        f"{html.escape(e['label'])}</button>" for k, e in enumerate(packed["entries"]))
    lead = f'<span class="ca-lead">{html.escape(title)}</span>' if title else ""
    return f'<div class="ca-chips ca-{kind}">{lead}{buttons}</div>'


def _controls(maps: HeatMaps, has_image: bool) -> str:
    parts = [f'<label>time <input class="ca-time" type="range" min="0" max="{len(maps.data.bin_steps)}" value="0" '
             f'step="1"></label><span class="ca-time-text"></span>']
    if len(maps.sites) > 1:
        kind = "layer" if maps.data.per_layer else "site"
        options = "".join(f'<option value="{html.escape(k)}">{html.escape(k)}</option>' for k in maps.sites)
        parts.append(f'<label>{kind} <select class="ca-site"><option value="">all {kind}s</option>{options}'
                     "</select></label>")
    if maps.data.per_head and maps.data.heads > 1:
        options = "".join(f'<option value="{h}">{h}</option>' for h in range(maps.data.heads))
        parts.append(f'<label>head <select class="ca-head"><option value="-1">all heads</option>{options}'
                     "</select></label>")
    if has_image:
        parts.append('<label>opacity <input class="ca-alpha" type="range" min="0" max="1" step="0.05" value="0.5">'
                     "</label>")
    return "".join(parts)


_PAGE = """<div id="{root}" class="crossattn-explorer"><style>{css}</style>
<div class="ca-prompt">{prompt}</div>
{chips}
<div class="ca-stage" style="width:{width}px;height:{height}px">{image}<canvas class="ca-map"></canvas></div>
<div class="ca-controls">{controls}</div>
<div class="ca-info"></div>
<ul class="ca-notes">{notes}</ul>
<script type="application/json" class="ca-config">{config}</script>
<script>{script}</script></div>"""

_CSS = """#ROOT{font:13px/1.4 system-ui,sans-serif;color:#222;max-width:100%}
#ROOT .ca-prompt{font-style:italic;margin:2px 0 6px}
#ROOT .ca-chips{display:flex;flex-wrap:wrap;gap:4px;margin:0 0 6px;align-items:center}
#ROOT .ca-lead{color:#555;margin-right:4px}
#ROOT .ca-chip{border:1px solid #999;border-radius:10px;background:#f4f4f4;padding:1px 9px;cursor:pointer;font:inherit}
#ROOT .ca-chip:hover{background:#e0e8ff}
#ROOT .ca-chip.ca-on{background:#2a5bd7;border-color:#2a5bd7;color:#fff}
#ROOT .ca-stage{position:relative;background:#808080}
#ROOT .ca-image,#ROOT .ca-blank,#ROOT .ca-map{position:absolute;left:0;top:0;width:100%;height:100%}
#ROOT .ca-controls{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0;align-items:center}
#ROOT select{max-width:260px}
#ROOT .ca-info{color:#555}
#ROOT .ca-notes{color:#8a5a00;margin:4px 0;padding-left:18px}"""

# Reads the config above; draws the shown entry's map: the selected blocks summed per site, each site upsampled
# (bilinear, half-pixel centres) to the finest selected grid and added, normalised by the peak, coloured.
_SCRIPT = """(function () {
const root = document.getElementById("ROOT");
const cfg = JSON.parse(root.querySelector(".ca-config").textContent);
const bytes = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
const lut = bytes(cfg.lut);
for (const set of Object.values(cfg.sets)) {
  set.q = bytes(set.data);
  set.s = new Float32Array(bytes(set.scales).buffer);
}
const canvas = root.querySelector(".ca-map"), ctx = canvas.getContext("2d");
const ui = (name) => root.querySelector(".ca-" + name);
const chips = Array.from(root.querySelectorAll(".ca-chip"));
let pinned = {set: "words", entry: cfg.start}, shown = pinned;
canvas.style.opacity = cfg.alpha;

function resize(src, h, w, H, W) {
  if (h === H && w === W) return src;
  const out = new Float32Array(H * W), idx = (n, size, scale) => {
    const f = Math.max((n + 0.5) * scale - 0.5, 0), i0 = Math.min(Math.floor(f), size - 1);
    return [i0, Math.min(i0 + 1, size - 1), f - i0];
  };
  for (let y = 0; y < H; y++) {
    const [y0, y1, ly] = idx(y, h, h / H);
    for (let x = 0; x < W; x++) {
      const [x0, x1, lx] = idx(x, w, w / W);
      out[y * W + x] = (1 - ly) * ((1 - lx) * src[y0 * w + x0] + lx * src[y0 * w + x1])
                     + ly * ((1 - lx) * src[y1 * w + x0] + lx * src[y1 * w + x1]);
    }
  }
  return out;
}

function mapOf(set, entry) {
  const bin = +ui("time").value - 1, site = ui("site") ? ui("site").value : "";
  const head = ui("head") && set.heads > 1 ? +ui("head").value : -1, nb = set.bins;
  let chosen = set.sites.filter((s) => !site || s.name === site);
  if (head >= 0) chosen = chosen.filter((s) => s.heads > head);
  if (!chosen.length) return null;
  const target = chosen.reduce((a, s) => (s.h * s.w > a.h * a.w ? s : a));
  const total = new Float32Array(target.h * target.w);
  for (const s of chosen) {
    const hw = s.h * s.w, acc = new Float32Array(hw);
    for (let b = 0; b < nb; b++) {
      if (bin >= 0 && b !== bin) continue;
      for (let h = 0; h < s.heads; h++) {
        if (head >= 0 && h !== head) continue;
        const k = (entry * nb + b) * s.heads + h, scale = set.s[s.soffset + k] / 255;
        if (!scale) continue;
        for (let i = 0, o = s.offset + k * hw; i < hw; i++) acc[i] += set.q[o + i] * scale;
      }
    }
    const up = resize(acc, s.h, s.w, target.h, target.w);
    for (let i = 0; i < total.length; i++) total[i] += up[i];
  }
  return {grid: total, h: target.h, w: target.w};
}

function draw() {
  const set = cfg.sets[shown.set], bin = +ui("time").value;
  if (!set.entries.length) { ui("info").textContent = "the prompt has no words to map"; return; }
  const steps = bin ? cfg.bins[bin - 1] : cfg.bins.flat();
  ui("time-text").textContent = (bin ? "bin " + bin + " of " + cfg.bins.length + ": " : "all bins: ")
    + (steps.length ? "steps " + Math.min(...steps) + "-" + Math.max(...steps) : "no steps");
  const m = mapOf(set, shown.entry), label = set.entries[shown.entry].name;
  if (!m) {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ui("info").textContent = label + ": not in this selection";
    return;
  }
  canvas.width = m.w; canvas.height = m.h;
  let peak = 0;
  for (const v of m.grid) peak = Math.max(peak, v);
  const pixels = ctx.createImageData(m.w, m.h);
  m.grid.forEach((v, i) => {
    const c = 3 * Math.min(255, Math.floor((peak > 0 ? v / peak : 0) * 255));
    pixels.data.set([lut[c], lut[c + 1], lut[c + 2], 255], 4 * i);
  });
  ctx.putImageData(pixels, 0, 0);
  ui("info").textContent = (shown.set === "concepts" ? "concept " : "") + label
    + (peak > 0 ? ": normalised to its peak" : ": no attention in this selection");
}

function show(target) { shown = target; draw(); }
for (const chip of chips) {
  const target = {set: chip.dataset.set, entry: +chip.dataset.entry};
  chip.addEventListener("mouseenter", () => show(target));
  chip.addEventListener("mouseleave", () => show(pinned));
  chip.addEventListener("click", () => {
    pinned = target;
    chips.forEach((c) => c.classList.toggle("ca-on", c === chip));
    show(pinned);
  });
}
for (const name of ["time", "site", "head"]) if (ui(name)) ui(name).addEventListener("input", draw);
if (ui("alpha")) ui("alpha").addEventListener("input", () => { canvas.style.opacity = ui("alpha").value; });
chips.forEach((c) => c.classList.toggle("ca-on", c.dataset.set === "words" && +c.dataset.entry === cfg.start));
draw();
})();"""
