"""The sweep folder on disk: atomic item writes (temp folder + one rename), what counts as a finished item
(`inspect_item`, against the summary layout the report reads), `scan` of DIR and the whole-file rewrite of
summary.jsonl. Everything a rerun or the report believes about DIR comes from here."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from .worker import ItemResult

SUMMARY = "summary.json"


def _unwritable(path: Path, exc: OSError) -> InputError:
    """A failed write (disk full, no permission...) as one line naming the file in its final place."""
    return InputError(f"cannot write {path}: {exc.strerror or exc}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _unwritable(path, exc) from None


def prepare(out: str | Path) -> Path:
    """Create DIR/items and an empty DIR/.tmp (what a killed run left half-written there is dropped)."""
    out = Path(out)
    try:
        (out / "items").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / ".tmp", ignore_errors=True)
        (out / ".tmp").mkdir()
    except OSError as exc:
        raise InputError(f"cannot write to --out {str(out)!r}: {exc.strerror or exc}") from None
    return out


def write_item(out: Path, result: ItemResult) -> bool:
    """Put one item's folder in place in a single rename; False if it was already finished (intact). A write
    that fails (disk full) leaves nothing behind and raises `InputError` naming the file."""
    final = out / "items" / result.id
    if final.exists() and inspect_item(final)[1] is None:
        return False
    tmp = out / ".tmp" / f"{result.id}.{uuid.uuid4().hex}"
    target = final  # what is being written, as it will be named
    try:
        tmp.mkdir(parents=True)
        for name, data in {**result.files, SUMMARY: json.dumps(result.summary, indent=1).encode()}.items():
            target = final / name
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        target = final
        if final.exists():  # damaged, or not written by a sweep: nothing in it can be trusted
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _unwritable(target, exc) from None
    return True


# What the report reads of a summary, with the types it needs; a summary that departs from it (truncated,
# crafted, hand-edited) is refused rather than trusted. A spec is a type (or a tuple of them), [spec] for a list
# of such, {str: spec} for a mapping from text to such, or a dict of field -> spec.
_RATE_FIELDS = {"statement": str, "passed": bool, "relation": str, "names": [str], "source": str}
_OBJECT_FIELDS = {"name": str, "head": str, "neglect": (int, float), "missing": bool, "wrong_attribute": bool}
_PIXELS = {"drawn": {str: bool}, "relation": ({"statement": str, "pixels": bool, "attention": bool}, type(None))}
SUMMARY_FIELDS = {"id": str, "prompt": str, "seed": int, "model": str, "steps": int, "status": str,
                  "files": {str: int}}
STATUS_FIELDS = {"error": {"error": str},
                 "ok": {"checks": [_RATE_FIELDS], "objects": [_OBJECT_FIELDS], "merged": [[str]], "failed": bool,
                        "verdicts": [str], "settled": {str: (int, type(None))}, "pixels": (_PIXELS, type(None))}}


def _mismatch(value, spec, where: str) -> str | None:
    """How `value` departs from `spec` (see SUMMARY_FIELDS), or None."""
    if isinstance(spec, tuple) and any(isinstance(s, (dict, list)) for s in spec):  # one of several layouts
        problems = [_mismatch(value, s, where) for s in spec]
        return None if None in problems else problems[0]
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{where} must be a list"
        return next(filter(None, (_mismatch(v, spec[0], f"{where}[{k}]") for k, v in enumerate(value))), None)
    if isinstance(spec, dict) and str in spec:
        if not isinstance(value, dict):
            return f"{where} must be an object"
        return next(filter(None, (_mismatch(v, spec[str], f"{where}[{k!r}]") for k, v in value.items())), None)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{where} must be an object"
        missing = [k for k in spec if k not in value]
        if missing:
            return f"{where} has no {missing[0]!r}"
        return next(filter(None, (_mismatch(value[k], s, f"{where}.{k}") for k, s in spec.items())), None)
    if isinstance(value, bool) and bool not in (spec if isinstance(spec, tuple) else (spec,)):
        return f"{where} must not be true/false"  # bool is an int to Python, not to the report
    return None if isinstance(value, spec) else f"{where} has the wrong type ({type(value).__name__})"


def _read_summary(folder: Path) -> tuple[dict | None, str | None]:
    """An item folder's summary and None, or None and what is wrong with it."""
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {SUMMARY} (not finished)"
    except OSError as exc:
        return None, f"{SUMMARY} cannot be read: {exc.strerror or exc}"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return None, f"{SUMMARY} is not valid JSON (cut short?): {exc}"
    problem = _mismatch(summary, SUMMARY_FIELDS, "summary")
    if problem is None:
        status = STATUS_FIELDS.get(summary["status"])
        problem = (f"summary.status is {summary['status']!r}, not 'ok' or 'error'" if status is None
                   else _mismatch(summary, status, "summary"))
    return (None, f"{SUMMARY}: {problem}") if problem else (summary, None)


def _file_problem(folder: Path, name: str, size: int) -> str | None:
    if os.path.isabs(name) or ".." in name.split("/"):  # (string operations: this runs for every file of DIR)
        return f"{SUMMARY} lists {name!r}, which is not inside the item folder"
    try:
        actual = os.stat(os.path.join(folder, name)).st_size
    except OSError:
        return f"{name} is missing"
    return None if actual == size else f"{name} has {actual:,} bytes, not the {size:,} written"


def inspect_item(folder: Path) -> tuple[dict | None, str | None]:
    """An item folder's summary and None when the item is finished, else None and what is wrong: finished means
    its summary parses, has the layout the report reads and names this folder, and every file it lists is there
    with the size it was written with."""
    summary, problem = _read_summary(folder)
    if problem is None and summary["id"] != folder.name:
        problem = f"{SUMMARY} says it is item {summary['id']!r}, but its folder is {folder.name!r}"
    if problem is None:
        problem = next(filter(None, (_file_problem(folder, n, size) for n, size in summary["files"].items())), None)
    return (None, problem) if problem else (summary, None)


def scan(out: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """The truth about DIR: id -> summary of every finished item, and folder name -> what is wrong for every
    damaged one (a rerun redoes those; the report lists them)."""
    done, damaged = {}, {}
    for folder in sorted(p for p in (out / "items").iterdir() if p.is_dir()):
        summary, problem = inspect_item(folder)
        if problem:
            damaged[folder.name] = problem
        else:
            done[folder.name] = summary
    return done, damaged


def _ordered(summaries: dict[str, dict]) -> list[dict]:
    return sorted(summaries.values(), key=lambda s: (s["prompt"], s["seed"], s["id"]))


def write_summary_lines(out: Path, summaries: dict[str, dict]) -> None:
    """Rewrite DIR/summary.jsonl whole (temp file + os.replace): never torn, never a line twice."""
    _write_atomic(out / "summary.jsonl", "".join(json.dumps(s) + "\n" for s in _ordered(summaries)))
