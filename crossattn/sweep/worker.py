"""One item through one pipeline: `Worker` (what both engines run, in-process or as a Ray actor) and the
`ItemResult` it sends back (files as bytes and the summary line), so that the driver alone writes to disk.

Ray pickles `Worker`, `Item`, `Settings` and `ItemResult` by their module path (``crossattn.sweep.worker``,
``crossattn.sweep.items``): keep them importable at module level here."""

from __future__ import annotations

import json
import resource
import tempfile
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import diagnosis, pictures, placement
from ..errors import InputError, UnknownWordError, one_line
from ..generation import Request, run
from ..models import load_pipeline
from ..render import png_bytes
from ..shapes.evaluate import read_pixels
from .items import Item, Settings, item_id


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
        """Refuse bad shared settings (steps, guidance, size) and bad item seeds with `Request.make`'s own checks
        (so the messages are the CLI's), before any item is generated: otherwise every item would be recorded
        with the same error. The prompt is a stand-in: prompts are each item's own input."""
        s = self.settings
        for seed in sorted(set(seeds)):
            request = Request.make(self.pipe, "a", seed=seed, steps=s.steps, guidance=s.guidance, size=s.size)
            if request.frames is not None:
                raise InputError(f"sweeps work on image pipelines; {type(self.pipe).__name__} makes videos")

    def _request(self, item: Item) -> Request:
        """The item's generation, validated (the words its statements name must be in its prompt)."""
        s = self.settings
        named = [n for st in item.expect for n in placement.statement_words(st)]
        return Request.make(self.pipe, item.prompt, seed=item.seed, steps=s.steps, guidance=s.guidance, size=s.size,
                            words=named, model=s.model, concepts=list(s.concepts))

    def _generate(self, item: Item) -> tuple[dict[str, bytes], dict]:
        s = self.settings
        image, maps = run(self._request(item))
        data = placement.report(maps, list(item.expect), from_prompt=s.expect_from_prompt)
        verdict = diagnosis.diagnose(maps)
        files = {"image.png": png_bytes(image), **_saved_maps(maps, verdict),
                 "placement.json": json.dumps(data, indent=1).encode(),
                 "diagnosis.png": png_bytes(pictures.diagnosis_picture(verdict, image, tile=256))}
        return files, _record(item, data, verdict, image, maps)

    def peak_rss_mib(self) -> float:
        """This process's peak resident memory (Linux reports KiB)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
