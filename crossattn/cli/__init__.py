"""Command line: ``crossattn generate "PROMPT"`` and friends.

Bad input (an `InputError`) → one line ``crossattn: error: ...`` on stderr, exit status 2, checked before any
compute is spent where it can be. Anything else is a bug: one line ``crossattn: internal error: ...``, exit
status 1, and the traceback with ``--debug``. Ctrl-C → exit status 130. ``crossattn diagnose`` exits with 3
when it finds a failure (after ``--repair``: one that remains), ``crossattn sweep`` when items are missing.
"""

from __future__ import annotations

import sys
import traceback

from ..errors import InputError, one_line
from . import demo, diagnose, effects, eval_shapes, explain, generate, placement, sweep, train_shapes
from .common import DefaultsHelp, OneLineParser, _quiet_libraries

__all__ = ["build_parser", "main"]

# In `crossattn --help` order; each module adds its sub-command (`add`) and runs it (`run`).
COMMANDS = (generate, placement, diagnose, explain, effects, sweep, demo, eval_shapes, train_shapes)


def build_parser():
    """The whole command line: one sub-parser per module of `COMMANDS`."""
    parser = OneLineParser(prog="crossattn", description="Per-word attention heat maps for diffusion models.",
                           formatter_class=DefaultsHelp)
    parser.add_argument("--debug", action="store_true", help="show the traceback of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    import torch

    # Tiny attention probabilities become denormal floats, which CPUs process ~10x slower; flushing them to
    # zero changes no visible result (they are below 1e-38).
    torch.set_flush_denormal(True)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("crossattn: interrupted", file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"crossattn: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not the user's input
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (rerun with --debug for the traceback)"
        print(f"crossattn: internal error: {type(exc).__name__}: {one_line(exc)}{hint}", file=sys.stderr)
        return 1
    return status or 0
