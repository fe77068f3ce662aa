"""`crossattn sweep`: prompts × seeds, resumable, locally or on Ray, then an HTML report."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from ..generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, parse_size
from ..words import split_list
from .common import MODEL_HELP, command


def add(sub) -> None:
    w = command(sub, "sweep", "generate and check prompts × seeds (resumable; --ray for many workers), then write an "
                         "HTML report")
    w.add_argument("prompts", nargs="?", help="text file (one prompt a line), .jsonl or .csv with prompt, "
                                              "expect (';'-separated in CSV), seed or seeds")
    w.add_argument("--out", required=True, help="sweep folder (items/, summary.jsonl, report.html); required")
    w.add_argument("--seeds", default="0", help="seeds of prompts that give none: 0-7, 0,3,5 ...")
    w.add_argument("--model", default=None, help=MODEL_HELP)
    w.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps")
    w.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    w.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    w.add_argument("--expect-from-prompt", action="store_true",
                   help="also check the relations the prompt states (always done for items without statements)")
    w.add_argument("--concepts", default=None, help="comma-separated concepts to follow (maps in concepts/; "
                                                    "default: none)")
    w.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: a local runtime, or the cluster at ADDRESS (auto, host:6379); "
                        "write --ray=ADDRESS before PROMPTS (default: no Ray, one local worker)")
    w.add_argument("--workers", type=int, default=None,
                   help="Ray actors, one pipeline each (default: one per GPU of the cluster, else 1)")
    w.add_argument("--report-only", action="store_true", help="rebuild summary.jsonl and report.html from --out")
    w.set_defaults(func=run)


def run(args) -> int:
    from .. import sweep

    if args.report_only:
        numbers = sweep.build_report(args.out)
        print(f"rebuilt {Path(args.out) / 'report.html'} and summary.jsonl from {numbers['items']} items "
              f"({numbers['errors']} with errors)")
        for d in numbers["damaged"]:
            print(f"crossattn: damaged, left out (a rerun redoes it): {d['folder']}: {d['problem']}", file=sys.stderr)
        return 0
    if not args.prompts:
        raise InputError("give a PROMPTS file (or --report-only to rebuild the report of --out)")
    outcome = sweep.run(args.prompts, args.out, "ray" if args.ray is not None else "local",
                        seeds=sweep.parse_seeds(args.seeds), model=args.model, steps=args.steps,
                        guidance=args.guidance, size=parse_size(args.size) if args.size else None,
                        expect_from_prompt=args.expect_from_prompt, concepts=split_list(args.concepts),
                        address=args.ray or None, workers=args.workers)
    print(outcome.describe())
    return 0 if outcome.complete else 3  # items missing (a worker lost them): never a silent success
