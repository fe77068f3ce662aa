"""The report's numbers: `aggregate` turns finished items' summary lines into JSON-ready rates (relations,
neglect, settle steps, pixel truth), the error list and the worst items (`badness`). No files, no HTML."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..words import word_ref

WORST = 12  # items in the gallery


def _rate(hit: int, n: int) -> dict:
    return {"n": n, "hit": hit, "rate": round(hit / n, 4) if n else None}


def _tally(pairs: Iterable[tuple[str, bool]]) -> dict[str, dict]:
    """key -> rate of True, most frequent keys first."""
    n, hit = Counter(), Counter()
    for key, ok in pairs:
        n[key] += 1
        hit[key] += bool(ok)
    return {k: _rate(hit[k], n[k]) for k in sorted(n, key=lambda k: (-n[k], k))}


def head_word(name: str) -> str:
    """The noun a statement's phrase stands for: its last word ("red circle#1" -> "circle")."""
    return word_ref(name)[0].split()[-1].lower()


def badness(s: dict) -> tuple[int, float]:
    """How wrong an item went: failed checks + diagnosed failures (+ a pixel verdict the attention
    contradicts), then the highest neglect score."""
    relation = (s.get("pixels") or {}).get("relation")
    count = (sum(not c["passed"] for c in s["checks"]) + len(s["merged"])
             + sum(o["missing"] + o["wrong_attribute"] for o in s["objects"])
             + bool(relation and relation["pixels"] != relation["attention"]))
    return count, max((o["neglect"] for o in s["objects"]), default=0.0)


def _worst_first(s: dict) -> tuple:
    count, neglect = badness(s)
    return -count, -neglect, s["prompt"], s["seed"]


def _pixel_numbers(ok: list[dict]) -> dict | None:
    truths = [s["pixels"] for s in ok if s.get("pixels")]
    if not truths:
        return None
    relations = [t["relation"] for t in truths if t["relation"]]
    drawn = [v for t in truths for v in t["drawn"].values()]
    return {"items": len(truths), "objects_drawn": _rate(sum(drawn), len(drawn)),
            "agreement": _rate(sum(r["pixels"] == r["attention"] for r in relations), len(relations)),
            "pixels_say_obeyed": _rate(sum(r["pixels"] for r in relations), len(relations)),
            "attention_says_obeyed": _rate(sum(r["attention"] for r in relations), len(relations))}


def aggregate(summaries: list[dict], worst: int = WORST, damaged: dict[str, str] | None = None) -> dict:
    """The report's numbers from summary lines (JSON-ready); `damaged`: folder -> what is wrong with it."""
    ok = [s for s in summaries if s["status"] == "ok"]
    checks = [c for s in ok for c in s["checks"]]
    objects = [o for s in ok for o in s["objects"]]
    settled = Counter(v for s in ok for v in s["settled"].values())
    last = max([s["steps"] for s in ok if s["settled"]], default=0)
    return {
        "items": len(summaries), "ok": len(ok), "errors": len(summaries) - len(ok),
        "models": sorted({s["model"] for s in summaries}), "steps": sorted({s["steps"] for s in summaries}),
        "relations": {"overall": _rate(sum(c["passed"] for c in checks), len(checks)),
                      "by_type": _tally((c["relation"], c["passed"]) for c in checks),
                      "by_source": _tally((c["source"], c["passed"]) for c in checks),
                      "by_word": _tally((head_word(n), c["passed"]) for c in checks for n in c["names"])},
        "neglect": {"objects": _rate(sum(o["missing"] for o in objects), len(objects)),
                    "items": _rate(sum(any(o["missing"] for o in s["objects"]) for s in ok), len(ok)),
                    "by_word": _tally((o["head"].lower(), o["missing"]) for o in objects)},
        "diagnosis_failed": _rate(sum(s["failed"] for s in ok), len(ok)),
        "settle": {"histogram": [[step + 1, settled[step]] for step in range(last)], "never": settled[None]},
        "pixels": _pixel_numbers(ok),
        "error_list": [{"id": s["id"], "prompt": s["prompt"], "seed": s["seed"], "error": s["error"]}
                       for s in summaries if s["status"] == "error"],
        "worst": [s["id"] for s in sorted(ok, key=_worst_first)[:worst]],
        "damaged": [{"folder": f"items/{k}", "problem": why} for k, why in sorted((damaged or {}).items())],
    }
