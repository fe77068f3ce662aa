"""Sweeps: many prompts × seeds, one traced generation each, resumable, in-process or on Ray; one report.

    crossattn sweep prompts.txt --out sweeps/a --seeds 0-7             # in-process, one pipeline
    crossattn sweep prompts.jsonl --out sweeps/a --ray --workers 4     # the same items on a local Ray runtime
    crossattn sweep prompts.csv --out sweeps/a --ray=auto              # ... or on an existing Ray cluster
    crossattn sweep --out sweeps/a --report-only                       # rebuild summary.jsonl and report.html

**Items.** PROMPTS is a text file (one prompt a line; blank lines are skipped), JSONL (``{"prompt": ...,
"expect": [...], "seed": 3}``) or CSV (columns ``prompt``, ``expect`` with statements separated by ``;``,
``seed`` or ``seeds``). An item is one (prompt, seed); rows without seeds get ``--seeds`` (``0-7``,
``0,3,5``). Prompts and statements are taken in Unicode NFKC with whitespace runs made one space (`normal_text`).
Its id is a short hash of prompt, seed, statements, model and every option that changes results, so the same
item lands in the same folder from any run and either engine. Bad settings (steps, guidance, size) and seeds are
refused with `InputError` (`generate`'s own checks and messages) before any item is generated.

**On disk** (``DIR``)::

    items/<id>/image.png, maps.safetensors, heatmaps.json, diagnosis.json, [concepts/]   (HeatMaps.save)
    items/<id>/placement.json   placement.report: objects, checks of the statements, timelines
    items/<id>/diagnosis.png    the image with each object's region and verdict (the report's gallery)
    items/<id>/summary.json     the item's summary line, with the size of every file above ("files")
    summary.jsonl               one line per finished item, sorted by (prompt, seed, id)
    report.html, report.json    the aggregate (self-contained page; its numbers as JSON)

**Resume and atomicity.** An item is written into ``DIR/.tmp/`` and renamed into ``items/<id>`` in one
``rename``, so a folder under ``items/`` is complete whenever the process dies (even SIGKILL). An item is
finished when its ``summary.json`` parses, has the report's layout, names its folder and every file it lists
is there with its size (`inspect_item`); a rerun skips finished items and does damaged ones again (saying which:
`Outcome.redone`), and the report leaves damaged folders out of its numbers and lists them. ``summary.jsonl`` is
only ever rewritten whole from the finished items (temp file + ``os.replace``): at the start, every 10 s and at
the end. An item that raises is finished too, with its error (an `InputError`'s message, else the exception's
type and message, and the traceback); delete its folder to try it again. A write that fails (disk full) stops
the sweep with one line naming the file and leaves no temporary file. One sweep process per DIR at a time
(``.tmp/`` is cleared at the start and removed at the end).

**Engines.** Both run `Worker.run`, which returns the item's files as bytes and its summary; the driver
writes them (`write_item`), so outputs are identical (bit for bit on CPUs where both use as many torch threads:
float sums split differently over threads) and DIR need not be shared with Ray's nodes. ``ray``: one
actor (one pipeline) per ``workers``, ``num_gpus=1`` each when the cluster has GPUs (default: one actor per
GPU), else an equal share of a node's CPUs; a worker that dies (out of memory, kill -9...) is restarted by Ray
and the items it held are tried again once it is back, up to `ATTEMPTS` times each; items still unfinished
are counted (`Outcome.lost`, `Outcome.missing`), the sweep is not `complete` and ``crossattn sweep`` exits with
status 3. ``crossattn`` must be importable on the nodes.

    >>> import tempfile
    >>> from crossattn import sweep
    >>> out = tempfile.mkdtemp()
    >>> prompts = ["a red circle left of a blue square", "a green triangle"]
    >>> done = sweep.run(prompts, out, seeds=[0], steps=4, progress=False)
    >>> done.ran, done.errors, len(open(f"{out}/summary.jsonl").readlines())
    (2, 0, 2)
    >>> sweep.run(prompts[:1], out, seeds=[0, 1], steps=4, progress=False).skipped   # seed 0 was done
    1
    >>> numbers = sweep.build_report(out)                                            # from DIR alone
    >>> numbers["items"], sorted(numbers["relations"]["by_type"])
    (3, ['left_of'])
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import html
import json
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
import unicodedata
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import diagnosis, pictures, placement
from .errors import InputError, UnknownWordError, one_line
from .generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, check_inputs, check_settings, generate, native_size
from .models import DEFAULT_MODEL, load_pipeline
from .render import png_bytes
from .shapes.evaluate import read_pixels
from .words import word_ref

SUMMARY = "summary.json"
FLUSH_EVERY_S = 10.0
IN_FLIGHT = 2  # tasks queued per Ray actor: the next item is ready while the driver writes the last
ATTEMPTS = 3  # times an item is tried on Ray when its worker dies under it
STARTUP_TIMEOUT_S = 900
MAX_SEEDS = 1_000_000


# ---- items ---------------------------------------------------------------------------------------------------
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


# ---- one item: the worker --------------------------------------------------------------------------------------
@dataclass
class ItemResult:
    """What a worker sends back: the item folder's files (relative path -> bytes) and its summary."""

    id: str
    files: dict[str, bytes]
    summary: dict


def error_text(exc: BaseException) -> str:
    """An `InputError`'s message (the user's input was wrong), or the exception's type and message."""
    return one_line(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {one_line(exc)}"


def _relation_kind(statement: str) -> str:
    _, relation, obj = placement.parse_statement(statement)
    return {"side": f"on the {obj}", "in": "in a box"}.get(relation, relation)


def _saved_maps(maps, diagnosis) -> dict[str, bytes]:
    """The files `HeatMaps.save` writes (maps, heatmaps.json, diagnosis.json, concepts/), as bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        maps.save(tmp, diagnosis=diagnosis)
        return {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}


def pixel_truth(image, maps) -> dict | None:
    """On shapes-world prompts (`parse_caption` reads them): which named objects the image draws, and for a
    drawn two-object relation the verdict of the pixels next to the attention's (`shapes.evaluate.read_pixels`)."""
    truth = read_pixels(image, maps.info.prompt)
    if truth is None:
        return None
    out: dict = {"drawn": {f"{c} {s}": (c, s) in truth.blobs for c, s in truth.pairs}, "relation": None}
    if truth.relation:
        try:
            attention = placement.check(maps, truth.relation, margin=0.0).passed
        except UnknownWordError:  # an object past the text encoder's 77 tokens has no map
            return out
        out["relation"] = {"statement": truth.relation, "pixels": bool(truth.relation_holds),
                           "attention": bool(attention)}
    return out


def _record(item: Item, data: dict, diagnosis, image, maps) -> dict:
    """The result part of an item's summary: checks, diagnosis, settle steps, pixel truth, notes."""
    checks = [{"statement": c["statement"], "passed": c["passed"], "relation": _relation_kind(c["statement"]),
               "names": placement.statement_words(c["statement"]),
               "source": "given" if c["statement"] in item.expect else "prompt"} for c in data["checks"]]
    objects = [{"name": o.name, "head": o.head, "neglect": round(o.neglect, 4), "missing": o.missing,
                "wrong_attribute": o.wrong_attribute} for o in diagnosis.objects]
    return {"status": "ok", "checks": checks, "objects": objects, "merged": [list(p) for p in diagnosis.merged],
            "failed": diagnosis.failed, "verdicts": diagnosis.verdicts(),
            "settled": {t["word"]: t["decided_at"] for t in data["timelines"]},
            "pixels": pixel_truth(image, maps), "notes": maps.info.notes + data["notes"]}


class Worker:
    """One pipeline, and one item at a time through it: the local engine runs one in-process, the Ray engine
    one per actor. It sets `torch.set_flush_denormal(True)` for its process, as the CLI does (denormal
    attention probabilities are ~10× slower on CPUs), so that both engines compute alike."""

    def __init__(self, settings: Settings, threads: int | None = None):
        torch.set_flush_denormal(True)  # Ray runs an actor's methods on the thread that ran __init__
        if threads:
            torch.set_num_threads(threads)
        self.settings = settings
        self.pipe = load_pipeline(settings.model, device=settings.device)
        self.pipe.set_progress_bar_config(disable=True)

    def run(self, item: Item) -> ItemResult:
        """Generate one item; an exception of the item's own becomes its recorded error."""
        s = self.settings
        start = time.perf_counter()
        try:
            files, record = self._generate(item)
        except Exception as exc:
            files, record = {}, {"status": "error", "error": error_text(exc)}
            if not isinstance(exc, InputError):  # a bug: keep what is needed to find it
                record["traceback"] = traceback.format_exc()
        summary = {"id": item_id(item, s), "prompt": item.prompt, "seed": item.seed, "expect": list(item.expect),
                   **s.identity(), **record, "seconds": round(time.perf_counter() - start, 3),
                   "files": {name: len(data) for name, data in sorted(files.items())}}  # what `inspect_item` checks
        return ItemResult(summary["id"], files, summary)

    def check(self, seeds: Iterable[int]) -> None:
        """Refuse bad shared settings (steps, guidance, size) and bad item seeds with `generate`'s own checks
        (`check_inputs`, so the messages are the CLI's), before any item is generated: otherwise every item
        would be recorded with the same error. The prompt is a stand-in: prompts are each item's own input."""
        s = self.settings
        size = s.size or native_size(self.pipe)
        for seed in sorted(set(seeds)):
            check_inputs(self.pipe, "a", size, s.steps, s.guidance, seed=seed)

    def _generate(self, item: Item) -> tuple[dict[str, bytes], dict]:
        s = self.settings
        named = [n for st in item.expect for n in placement.statement_words(st)]  # checked before compute
        image, maps = generate(self.pipe, item.prompt, seed=item.seed, steps=s.steps, guidance=s.guidance,
                               size=s.size, words=named, concepts=list(s.concepts) or None)
        maps.info.model = s.model
        data = placement.report(maps, list(item.expect), from_prompt=s.expect_from_prompt)
        verdict = diagnosis.diagnose(maps)
        files = {"image.png": png_bytes(image), **_saved_maps(maps, verdict),
                 "placement.json": json.dumps(data, indent=1).encode(),
                 "diagnosis.png": png_bytes(pictures.diagnosis_picture(verdict, image, tile=256))}
        return files, _record(item, data, verdict, image, maps)

    def peak_rss_mib(self) -> float:
        """This process's peak resident memory (Linux reports KiB)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the folder: atomic item writes, what is finished, summary.jsonl ------------------------------------------
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


# ---- engines -------------------------------------------------------------------------------------------------
class LocalEngine:
    """One `Worker` in this process."""

    def __init__(self, settings: Settings, workers: int | None = None, address: str | None = None):
        if (workers or 1) != 1 or address:
            raise InputError("--workers and a Ray address need --ray: the local engine runs one pipeline")
        self.settings, self.lost, self.peak_rss_mib = settings, 0, []

    def __enter__(self) -> LocalEngine:
        self.worker = Worker(self.settings)
        return self

    def check(self, seeds: Iterable[int]) -> None:
        self.worker.check(seeds)

    def map(self, items: list[Item]) -> Iterator[ItemResult]:
        return map(self.worker.run, items)

    def __exit__(self, *exc) -> None:
        self.peak_rss_mib = [self.worker.peak_rss_mib()]  # of this whole process


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("the Ray engine needs Ray: pip install 'crossattn[ray]'") from None
    return ray


def _largest_node_cpus(ray) -> float:
    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0)


class RayEngine:
    """An actor pool on Ray: a local runtime without `address`, else the cluster at `address` ("auto",
    "host:6379", "ray://host:10001" with ray[client]). A Ray already initialised by the caller is used as is."""

    def __init__(self, settings: Settings, workers: int | None = None, address: str | None = None):
        if workers is not None and workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        self.settings, self.workers, self.address = settings, workers, address
        self.lost, self.peak_rss_mib, self.ray = 0, [], import_ray()

    def __enter__(self) -> RayEngine:
        ray = self.ray
        self.owns = not ray.is_initialized()
        if self.owns:
            where = {"address": self.address} if self.address else {"num_cpus": os.cpu_count(),
                                                                    "include_dashboard": False}
            # Workers' output stays in Ray's logs: their errors come back as exceptions or recorded item errors.
            ray.init(**where, logging_level="ERROR", log_to_driver=False)
        self.actors = []
        try:
            self._start_actors()
        except BaseException:
            self._close()
            raise
        return self

    def _start_actors(self) -> None:
        ray = self.ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = self.workers or max(gpus, 1)
        if gpus and n > gpus:
            raise InputError(f"--workers {n}: the Ray cluster has {gpus} GPUs (one pipeline per GPU)")
        cpus = min(ray.cluster_resources().get("CPU", 1.0) / n, _largest_node_cpus(ray))
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": cpus}
        threads = None if gpus else max(1, int(cpus))
        # A worker process that dies (out of memory, a crash, kill -9) comes back with its pipeline reloaded, and
        # Ray resubmits the items it held once it is back (not to the dead or restarting process), up to
        # ATTEMPTS times each: an item that kills its worker every time is given up on, not retried forever.
        actor = ray.remote(Worker).options(**options, max_restarts=-1, max_task_retries=ATTEMPTS - 1)
        self.actors = [actor.remote(self.settings, threads) for _ in range(n)]
        try:
            ray.get([a.peak_rss_mib.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)  # pipelines loaded
        except ray.exceptions.GetTimeoutError:
            raise InputError(f"Ray could not start {n} workers ({options}) in {STARTUP_TIMEOUT_S} s: "
                             f"the cluster has {ray.cluster_resources()}") from None

    def check(self, seeds: Iterable[int]) -> None:
        try:
            self.ray.get(self.actors[0].check.remote(list(seeds)))
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):  # the worker's refusal as itself: one line, not Ray's traceback
                raise exc.cause from None
            raise

    def map(self, items: list[Item]) -> Iterator[ItemResult]:
        ray, queue, pending = self.ray, iter(items), {}

        def submit(actor) -> None:
            item = next(queue, None)
            if item is not None:
                pending[actor.run.remote(item)] = actor

        for actor in self.actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            submit(pending.pop(ref))
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:  # its worker died under it ATTEMPTS times (or Ray failed): not its fault
                self.lost += 1
                continue
            yield result

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:  # a clean finish: each worker's peak memory, to size the next run
                self.peak_rss_mib = self.ray.get([a.peak_rss_mib.remote() for a in self.actors], timeout=60)
        finally:
            self._close()

    def _close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.owns:
            self.ray.shutdown()


ENGINES = {"local": LocalEngine, "ray": RayEngine}


# ---- the sweep -------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a `run` did. `lost`: items whose worker died under them `ATTEMPTS` times; `redone`: id -> what was
    wrong with the folder a run before left (`inspect_item`), for the items done again. A sweep is `complete`
    when every item is finished; the CLI exits 3 when it is not."""

    out: Path
    items: int
    ran: int
    skipped: int
    errors: int
    lost: int
    startup_s: float
    seconds: float
    peak_rss_mib: list[float] = field(default_factory=list)
    report: dict | None = None
    redone: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        """Items neither finished before nor now."""
        return self.items - self.ran - self.skipped

    @property
    def complete(self) -> bool:
        return self.missing == 0

    def describe(self) -> str:
        """One line (and one more per item that was redone because its folder was damaged)."""
        lost = f" ({self.lost} lost: their worker died under them {ATTEMPTS} times)" if self.lost else ""
        missing = f"; INCOMPLETE: {self.missing} items not finished{lost}, rerun to do them" if self.missing else ""
        report = f"; report: {self.out / 'report.html'}" if self.report is not None else ""
        redone = "".join(f"\nredone items/{k}: it was damaged: {why}" for k, why in self.redone.items())
        return (f"sweep {self.out}: {self.items} items, {self.ran} generated now, {self.skipped} finished before, "
                f"{self.errors} with errors{missing}{report}{redone}")


def run(items: str | Path | Iterable[str | dict | Item], out: str | Path, engine: str = "local", *,
        seeds: Iterable[int] = (0,), model: str | None = None, steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE, size: tuple[int, int] | None = None, expect_from_prompt: bool = False,
        concepts: Iterable[str] = (), address: str | None = None, workers: int | None = None,
        device: str | None = None, progress: bool = True, report: bool = True) -> Outcome:
    """Run a sweep into `out` and (with `report`) rebuild its report; see the module doc for the layout.

    `items`: a prompts file name, or prompts / row dicts (``prompt``, ``expect``, ``seed``/``seeds``) / `Item`s;
    `engine`: "local" (one pipeline in this process) or "ray" (`workers` actors; `address` of a cluster, or
    a local runtime). Items finished in `out` before are skipped, damaged ones done again; nothing is started
    when none is left. Bad settings or seeds raise `InputError` before any item is generated.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; use 'local' or 'ray'")
    settings = Settings(model or DEFAULT_MODEL, steps, guidance, tuple(size) if size else None,
                        tuple(concepts), expect_from_prompt, device)
    pool = ENGINES[engine](settings, workers, address)  # checks its options before anything is written
    unique = {item_id(i, settings): i for i in read_items(items, seeds)}
    for seed in {i.seed for i in unique.values()}:  # before the model loads; the size needs it (pool.check)
        check_settings(steps, guidance, seed)
    out = prepare(out)
    done, damaged = scan(out)
    todo = {k: i for k, i in unique.items() if k not in done}
    started, startup = time.perf_counter(), 0.0
    try:
        write_summary_lines(out, done)  # repairs a file that a killed run left behind its item folders
        if todo:
            with pool:
                startup = time.perf_counter() - started
                pool.check(i.seed for i in todo.values())
                _drain(pool.map(list(todo.values())), out, done, len(todo), progress, engine)
        write_summary_lines(out, done)
    except BaseException:
        with contextlib.suppress(InputError):  # keep what finished; the first error (disk full?) is the news
            write_summary_lines(out, done)
        raise
    finally:
        shutil.rmtree(out / ".tmp", ignore_errors=True)  # empty unless a write failed or the run was stopped
    return Outcome(out, len(unique), ran=sum(k in done for k in todo), skipped=len(unique) - len(todo),
                   errors=sum(done[k]["status"] == "error" for k in unique if k in done), lost=pool.lost,
                   startup_s=startup, seconds=time.perf_counter() - started, peak_rss_mib=pool.peak_rss_mib,
                   report=write_report(out, done, {k: why for k, why in damaged.items() if k not in done})
                   if report else None,  # done: every finished item of DIR, this run's or not
                   redone={k: damaged[k] for k in todo if k in damaged and k in done})


def _drain(results: Iterator[ItemResult], out: Path, done: dict[str, dict], total: int, progress: bool,
           engine: str) -> None:
    """Write results as they come, under a progress bar; keep summary.jsonl at most FLUSH_EVERY_S behind."""
    flushed, errors = time.monotonic(), 0
    with tqdm(total=total, desc=f"sweep ({engine})", unit="item", disable=not progress) as bar:
        for result in results:
            if write_item(out, result):
                done[result.id] = result.summary
                errors += result.summary["status"] == "error"
            bar.update(1)
            bar.set_postfix(errors=errors, refresh=False)
            if time.monotonic() - flushed > FLUSH_EVERY_S:
                write_summary_lines(out, done)
                flushed = time.monotonic()


# ---- the report ----------------------------------------------------------------------------------------------
WORST = 12  # items in the gallery
TABLE_ROWS = 40  # rows of a per-word table in the page (report.json has them all)
ERROR_ROWS = 200


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
