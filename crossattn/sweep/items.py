"""Sweep items: the shared `Settings`, one `Item` (prompt, seed, statements), its id, and reading them from a
prompts file (text, JSONL, CSV) or from Python values. Nothing here loads a model: bad input is refused before
any work starts."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..generation import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..models import DEFAULT_MODEL

MAX_SEEDS = 1_000_000


@dataclass(frozen=True)
class Settings:
    """What every item of a sweep shares. All but `device` change results, so they go into item ids."""

    model: str = DEFAULT_MODEL
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    size: tuple[int, int] | None = None  # (width, height); None: the model's native size
    concepts: tuple[str, ...] = ()
    expect_from_prompt: bool = False
    device: str | None = None

    def identity(self) -> dict:
        """The settings that change results, as JSON values (what item ids hash and summaries carry)."""
        return {"model": self.model, "steps": self.steps, "guidance": self.guidance,
                "size": list(self.size) if self.size else None, "concepts": list(self.concepts),
                "expect_from_prompt": self.expect_from_prompt}


def normal_text(text: str) -> str:
    """`text` in Unicode NFKC with runs of whitespace made one space and the ends stripped: prompts that differ
    only there ("a  red circle ", composed or decomposed "é", full-width letters) are the same item."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


@dataclass(frozen=True)
class Item:
    """One generation of a sweep: a prompt, a seed and the layout statements to check (kept in `normal_text`
    form, which is what is generated, hashed into the id and written to the summary)."""

    prompt: str
    seed: int
    expect: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", normal_text(self.prompt))
        object.__setattr__(self, "expect", tuple(normal_text(e) for e in self.expect))


def item_id(item: Item, settings: Settings) -> str:
    """12 hex digits of SHA-256 over the item and the result-changing settings (stable across runs and engines)."""
    key = {"prompt": item.prompt, "seed": item.seed, "expect": list(item.expect), **settings.identity()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def parse_seeds(text: str) -> list[int]:
    """'0-3,10' -> [0, 1, 2, 3, 10] (ranges inclusive, repeats dropped)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        low, high = (int(m[1]), int(m[2] or m[1])) if m else (1, 0)
        if high < low:
            raise InputError(f"bad seeds {text!r}: write e.g. 0-7, 0,3,5 or 0-3,10")
        if len(seeds) + high - low >= MAX_SEEDS:
            raise InputError(f"bad seeds {text!r}: at most {MAX_SEEDS:,} seeds per prompt")
        seeds += range(low, high + 1)
    return list(dict.fromkeys(seeds))


def _row_seeds(value) -> list[int] | None:
    """A row's own seeds: an int, a list of ints or a seeds string; None when the row gives none."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    if isinstance(value, str):
        return parse_seeds(value)
    raise InputError(f"bad seeds {value!r}: a whole number, a list of them or a string like '0-7'")


def _row_expect(value) -> tuple[str, ...]:
    """Statements as a list, or one string with several separated by ';'."""
    if value is None:
        return ()
    parts = value.split(";") if isinstance(value, str) else value
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise InputError(f"bad expect {value!r}: a list of statements or one string separated by ';'")
    return tuple(p.strip() for p in parts if p.strip())


def _items_of_row(row: dict, where: str, seeds: list[int]) -> list[Item]:
    if not isinstance(row, dict) or "prompt" not in row:
        raise InputError(f"{where}: each row needs a 'prompt'")
    if not isinstance(row["prompt"], str):
        raise InputError(f"{where}: 'prompt' must be text, got {row['prompt']!r}")
    try:
        own = _row_seeds(row["seeds"] if row.get("seeds") not in (None, "") else row.get("seed"))
        expect = _row_expect(row.get("expect"))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return [Item(row["prompt"], seed, expect) for seed in (own or seeds)]


def _rows(path: Path) -> Iterator[tuple[dict, str]]:
    """(row, where) per prompt of a text, JSONL or CSV file."""
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "prompt" not in (reader.fieldnames or []):
            raise InputError(f"{path}: the CSV needs a 'prompt' column (and optionally expect, seed or seeds)")
        for n, row in enumerate(reader, start=2):
            yield row, f"{path}:{n}"
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix.lower() != ".jsonl":
            yield {"prompt": line.strip()}, f"{path}:{n}"
            continue
        try:
            yield json.loads(line), f"{path}:{n}"
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not JSON ({exc.msg})") from None


def read_items(source: str | Path | Iterable[str | dict | Item], seeds: Iterable[int] = (0,)) -> list[Item]:
    """Items from a prompts file (a str or Path is a file name) or from prompts, row dicts or `Item`s;
    prompts without seeds of their own get `seeds`."""
    seeds = list(seeds)
    if isinstance(source, (str, Path)):
        rows = _rows(Path(source))
    else:
        rows = (({"prompt": r} if isinstance(r, str) else r, f"item {k}") for k, r in enumerate(source))
    items: list[Item] = []
    for row, where in rows:
        items += [row] if isinstance(row, Item) else _items_of_row(row, where, seeds)
    return items
