"""Text tables of analysis results, as the CLI prints them and the demo shows them."""

from __future__ import annotations

from .diagnosis import Diagnosis

TABLE_HEADERS = ["object", "centroid (x, y)", "bbox x0,y0,x1,y1", "area", "region", "position decided"]


def fmt_point(p) -> str:
    return "-" if p is None else f"({p[0]:.1f}, {p[1]:.1f})"


def table_rows(data: dict) -> list[list[str]]:
    """One row per object of a `report`, as the CLI prints it and the demo shows it (`TABLE_HEADERS`)."""
    decided = {t["word"]: t for t in data["timelines"]}
    rows = []
    for row in data["words"]:
        t = decided.get(row["word"], {})
        when = f"step {t['decided_at'] + 1} of {t['steps']}" if t.get("decided_at") is not None else "-"
        bbox = "-" if row["bbox"] is None else ",".join(str(v) for v in row["bbox"])
        rows.append([row["word"], fmt_point(row["centroid"]), bbox, f"{row['area']:.1%}", row["region"], when])
    return rows


def format_report(data: dict) -> str:
    """A plain-text table of a `report`: one row per object, then one line per statement and note."""
    rows = [TABLE_HEADERS] + table_rows(data)
    widths = [max(len(r[k]) for r in rows) for k in range(len(TABLE_HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in rows]
    if data["checks"]:
        lines.append("")
        lines += [f"{'PASS' if c['passed'] else 'FAIL'}  {c['statement']}  ({c['reason']})" for c in data["checks"]]
    lines += [f"note: {n}" for n in data.get("notes", [])]
    return "\n".join(lines)


def diagnosis_text(d: Diagnosis) -> str:
    """A text report: one line per object with its scores, then the verdicts."""
    rows = [f"{'object':<18} {'neglect':>8} {'missing':>8}  leakage"]
    for o in d.objects:
        leak = ", ".join(f"{k} {v:.0%}" for k, v in o.leakage.items()) or "-"
        rows.append(f"{o.name:<18} {o.neglect:>8.2f} {'yes' if o.missing else 'no':>8}  {leak}")
    pairs = [f"{a} / {b}: mask IoU {v:.2f}" for (a, b), v in d.merging.items()]
    return "\n".join(rows + pairs + [""] + [f"- {line}" for line in d.verdicts()]
                     + [f"note: {n}" for n in d.notes])

