"""The report files: `build_report` / `write_report` write DIR/report.json and the self-contained
DIR/report.html (plain HTML, inline CSS and SVG, images as data URIs) from the item folders alone."""

from __future__ import annotations

import base64
import html
import json
import urllib.parse
from pathlib import Path

from ..errors import InputError
from .store import _ordered, _write_atomic, scan, write_summary_lines
from .summary import WORST, aggregate

TABLE_ROWS = 40  # rows of a per-word table in the page (report.json has them all)
ERROR_ROWS = 200


def build_report(out: str | Path, worst: int = WORST) -> dict:
    """Rebuild DIR/summary.jsonl, DIR/report.json and the self-contained DIR/report.html from the item folders
    alone (nothing is generated); return the numbers (report.json; damaged folders are left out of the numbers
    and listed under "damaged")."""
    out = Path(out)
    if not (out / "items").is_dir():
        raise InputError(f"{out} has no items/ folder: not a sweep folder")
    summaries, damaged = scan(out)
    write_summary_lines(out, summaries)
    return write_report(out, summaries, damaged, worst)


def write_report(out: Path, summaries: dict[str, dict], damaged: dict[str, str], worst: int = WORST) -> dict:
    """Write DIR/report.json and DIR/report.html from the finished items' summaries and the damaged folders
    (`scan`); return the numbers."""
    numbers = aggregate(_ordered(summaries), worst, damaged)
    _write_atomic(out / "report.json", json.dumps(numbers, indent=1))
    _write_atomic(out / "report.html", render_html(out, numbers, summaries))
    return numbers


# ---- the page: plain HTML, inline CSS and SVG, images as data URIs ----------------------------------------------
# Gallery pictures keep their own size and aspect: the diagnosis picture's labels reach its edges.
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure.item{margin:0;max-width:100%;border:1px solid #ddd;padding:8px;border-radius:6px}
figure.item a.shots{display:flex;flex-wrap:wrap;gap:4px}
figure.item img{height:256px;width:auto;max-width:100%;object-fit:contain;image-rendering:pixelated}
figcaption{max-width:520px}
figcaption{font-size:12px}figcaption ul{padding-left:16px;margin:4px 0}.bad{color:#b00}code{font-size:12px}"""


def _esc(value) -> str:
    """Text for the page, in an element or a quoted attribute: item folders may be shared, so never markup."""
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(rate: dict | None) -> str:
    if not rate or rate["rate"] is None:
        return "-"
    return f"{100 * rate['rate']:.1f} % ({rate['hit']}/{rate['n']})"


def _tally_table(key: str, label: str, tally: dict[str, dict]) -> str:
    rows = [[k, _pct(v)] for k, v in list(tally.items())[:TABLE_ROWS]]
    more = f"<p>… and {len(tally) - TABLE_ROWS} more in report.json</p>" if len(tally) > TABLE_ROWS else ""
    return _table([key, label], rows) + more if rows else "<p>none</p>"


def _histogram_svg(bars: list[tuple[str, int]], width: int = 720, height: int = 200) -> str:
    """Vertical bars with their counts above and labels below, as inline SVG."""
    top, slot, base = max(c for _, c in bars) or 1, width / len(bars), height - 20
    parts = []
    for k, (label, count) in enumerate(bars):
        h = (base - 20) * count / top
        x = k * slot
        parts.append(f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{slot - 2:.1f}" height="{h:.1f}" '
                     f'fill="#4a78c2"/><text x="{x + slot / 2:.1f}" y="{base - h - 4:.1f}">{count}</text>'
                     f'<text x="{x + slot / 2:.1f}" y="{height - 5}">{_esc(label)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="steps at which positions settle" font-size="11" text-anchor="middle">{"".join(parts)}</svg>')


def _data_uri(path: Path) -> str | None:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" if path.exists() else None


def _figure(out: Path, s: dict) -> str:
    """One gallery entry: image and diagnosis picture (linking to the item's folder), prompt, what went wrong."""
    folder = f"items/{s['id']}/"
    link = _esc(urllib.parse.quote(folder))
    shots = "".join(f'<img alt="{name}" src="{uri}">' for name in ("image.png", "diagnosis.png")
                    if (uri := _data_uri(out / folder / name)))
    failed = [f"FAIL {c['statement']}" for c in s["checks"] if not c["passed"]]
    relation = (s.get("pixels") or {}).get("relation")
    if relation and relation["pixels"] != relation["attention"]:
        failed.append(f"the pixels say {relation['statement']!r} is {'' if relation['pixels'] else 'not '}obeyed, "
                      "the attention says the opposite")
    lines = "".join(f'<li class="bad">{_esc(t)}</li>' for t in failed)
    lines += "".join(f"<li>{_esc(t)}</li>" for t in s["verdicts"][:4])
    return (f'<figure class="item"><a class="shots" href="{link}">{shots}</a><figcaption><b>{_esc(s["prompt"])}</b> '
            f'seed {_esc(s["seed"])} · <a href="{link}"><code>{_esc(s["id"])}</code></a><ul>{lines}</ul></figcaption>'
            "</figure>")


def render_html(out: Path, numbers: dict, summaries: dict[str, dict]) -> str:
    """The report page: overview, relations, neglect, settle steps, worst items, errors, pixel truth."""
    rel, neg = numbers["relations"], numbers["neglect"]
    settle = [(str(step), count) for step, count in numbers["settle"]["histogram"]]
    settle += [("never", numbers["settle"]["never"])] if numbers["settle"]["never"] else []
    sections = [
        "<h1>crossattn sweep</h1>",
        '<p>Every line: <a href="summary.jsonl">summary.jsonl</a>; these numbers: <a href="report.json">report.json'
        '</a>; each item: <a href="items/">items/&lt;id&gt;/</a>.</p>',
        _table(["items", "ok", "errors", "models", "steps", "relation obeyed (attention)", "objects neglected",
                "items with a diagnosed failure"],
               [[numbers["items"], numbers["ok"], numbers["errors"], ", ".join(numbers["models"]),
                 ", ".join(map(str, numbers["steps"])), _pct(rel["overall"]), _pct(neg["objects"]),
                 _pct(numbers["diagnosis_failed"])]]),
        "<h2>Relations obeyed, by the attention verdict</h2>",
        _tally_table("relation", "obeyed", rel["by_type"]), _tally_table("statement from", "obeyed", rel["by_source"]),
        _tally_table("word", "obeyed in the checks naming it", rel["by_word"]),
        "<h2>Neglected objects (diagnosis)</h2>",
        f"<p>objects neglected: {_pct(neg['objects'])}; items with a neglected object: {_pct(neg['items'])}</p>",
        _tally_table("word", "neglected", neg["by_word"]),
        "<h2>Step at which each object's position settles</h2>",
        "<p>Per object: the first step from which its centroid stays within 10 % of the image side of where it "
        "ends up (placement timelines).</p>",
        _histogram_svg(settle) if settle else "<p>no timelines</p>",
        '<section id="gallery"><h2>Worst items</h2><div class="gallery">'
        + "".join(_figure(out, summaries[k]) for k in numbers["worst"]) + "</div></section>",
        f"<h2>Errors ({numbers['errors']})</h2>",
        _table(["id", "prompt", "seed", "error"],
               [[e["id"], e["prompt"], e["seed"], e["error"]] for e in numbers["error_list"][:ERROR_ROWS]]),
    ]
    if numbers["damaged"]:
        sections += [f"<h2>Damaged item folders ({len(numbers['damaged'])}): left out of every number above</h2>",
                     "<p>A rerun of the sweep does them again.</p>",
                     _table(["folder", "what is wrong"], [[d["folder"], d["problem"]] for d in numbers["damaged"]])]
    if numbers["pixels"]:
        px = numbers["pixels"]
        sections += ["<h2>Shapes world: attention verdicts against the pixels</h2>",
                     _table(["items", "named objects drawn", "relations scored", "attention agrees with pixels",
                             "pixels: obeyed", "attention: obeyed"],
                            [[px["items"], _pct(px["objects_drawn"]), px["agreement"]["n"], _pct(px["agreement"]),
                              _pct(px["pixels_say_obeyed"]), _pct(px["attention_says_obeyed"])]])]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>crossattn sweep</title>'
            f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")
