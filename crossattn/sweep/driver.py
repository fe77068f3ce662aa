"""The sweep itself: `run` reads the items, skips the finished ones, feeds the rest to an engine, writes
each result as it comes (keeping summary.jsonl at most `FLUSH_EVERY_S` behind) and rebuilds the report;
`Outcome` is what it did."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..errors import InputError
from ..generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, check_settings
from ..models import DEFAULT_MODEL
from .engines import ATTEMPTS, ENGINES
from .items import Item, Settings, item_id, read_items
from .report import write_report
from .store import prepare, scan, write_item, write_summary_lines

if TYPE_CHECKING:
    from .worker import ItemResult

FLUSH_EVERY_S = 10.0


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
