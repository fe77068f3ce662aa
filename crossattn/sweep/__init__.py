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

# One module per job; they import each other downwards only (items <- worker <- engines; store, summary <- report;
# all of them <- driver). Every public name of the one-file module this was stays here, as `crossattn.sweep.<name>`.
from .driver import FLUSH_EVERY_S, Outcome, run
from .engines import ATTEMPTS, ENGINES, IN_FLIGHT, STARTUP_TIMEOUT_S, LocalEngine, RayEngine, import_ray
from .items import MAX_SEEDS, Item, Settings, item_id, normal_text, parse_seeds, read_items
from .report import CSS, ERROR_ROWS, TABLE_ROWS, build_report, render_html, write_report
from .store import (
    STATUS_FIELDS,
    SUMMARY,
    SUMMARY_FIELDS,
    inspect_item,
    prepare,
    scan,
    write_item,
    write_summary_lines,
)
from .summary import WORST, aggregate, badness, head_word
from .worker import ItemResult, Worker, error_text, pixel_truth

__all__ = [
    "ATTEMPTS", "CSS", "ENGINES", "ERROR_ROWS", "FLUSH_EVERY_S", "IN_FLIGHT", "MAX_SEEDS", "STARTUP_TIMEOUT_S",
    "STATUS_FIELDS", "SUMMARY", "SUMMARY_FIELDS", "TABLE_ROWS", "WORST",
    "Item", "ItemResult", "LocalEngine", "Outcome", "RayEngine", "Settings", "Worker",
    "aggregate", "badness", "build_report", "error_text", "head_word", "import_ray", "inspect_item", "item_id",
    "normal_text", "parse_seeds", "pixel_truth", "prepare", "read_items", "render_html", "run", "scan",
    "write_item", "write_report", "write_summary_lines",
]
