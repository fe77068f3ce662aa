"""What every command shares: loading, the output folder and its record, validated requests, argument types,
help formatting."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from ..generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_SEED, Request, parse_size, run
from ..models import DEFAULT_MODEL, EMBEDDED, available_devices, check_device
from ..render import COLORMAPS


def _quiet_libraries() -> None:
    """Third-party notices (torchvision/accelerate advice, loading bars) are not the user's business here."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def _load(args):
    from ..models import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)  # our own tqdm bar below
    return pipe


# Which run wrote an output folder (command and prompt), and every name a command writes there: results of
# two runs side by side would read as one result, so a run replaces all of them or none.
RUN_FILE = "crossattn-run.json"
OUTPUTS = ("image.png", "grid.png", "overlays", "maps.safetensors", "maps.npz", "heatmaps.json", "concepts",
           "diagnosis.json", "diagnosis.png", "placement.json", "segmentation.png", "timeline.png", "effects",
           "effects.json", "changes.npz", "image_before.png", "repair.png", "video.gif", RUN_FILE)


def _writable(folder: str) -> Path:
    """The output folder, created and checked for writing before any compute is spent."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".crossattn-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to --out {folder!r}: {exc.strerror or exc}") from None
    return out


def _output_folder(args) -> Path:
    """--out, writable and free for this run, before any compute is spent: a folder holding another command's
    or another prompt's results (or results it cannot tell) is refused unless --overwrite; the same command on
    the same prompt (another seed, say) replaces its own results."""
    out = _writable(args.out)
    found = [name for name in OUTPUTS if (out / name).exists()]
    if not found or args.overwrite:
        return out
    try:
        run = json.loads((out / RUN_FILE).read_text())
        same = run["command"] == args.command and run["prompt"] == args.prompt
        held = f"the results of `crossattn {run['command']}` for “{run['prompt']}”"
    except (OSError, ValueError, KeyError, TypeError):  # older or foreign results: no (readable) record of the run
        same, held = False, ", ".join(found[:3]) + (" …" if len(found) > 3 else "")
    if not same:
        raise InputError(f"--out {args.out!r} already holds {held}: give another --out, or add --overwrite to "
                         "replace them")
    return out


def _clear(out: Path, args) -> None:
    """Remove every result a previous run left in `out` (none may survive beside this run's), then record
    this run."""
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (out / RUN_FILE).write_text(json.dumps({"command": args.command, "prompt": args.prompt, "seed": args.seed,
                                            "model": args.model or DEFAULT_MODEL}, indent=1))


def _note(text: str) -> None:
    print(f"crossattn: note: {text}", file=sys.stderr)


def _request(args, words: list[str] | None = None, concepts: list[str] | None = None,
             concept_method: str | None = None, videos: bool = False) -> Request:
    """The pipeline loaded and the request validated, before any compute; its notes for the user are printed
    (stderr, one line each). A video pipeline is refused unless the command writes `videos`."""
    pipe = _load(args)
    request = Request.make(pipe, args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                           size=parse_size(args.size) if args.size else None, negative_prompt=args.negative,
                           words=words, model=args.model or DEFAULT_MODEL, concepts=concepts,
                           concept_method=concept_method, frames=args.frames)
    if request.frames is not None and not videos:
        raise InputError(f"crossattn {args.command} works on images; {type(pipe).__name__} makes videos: crossattn "
                         "generate writes their maps frame by frame (crossattn.placements(maps.frame(i)) in Python)")
    for note in request.notes:
        _note(note)
    return request


def _generate(args, words: list[str] | None = None, **request_options):
    """Load, validate (before any compute), generate under a tqdm bar; returns (image, maps, pipeline). Each note for
    the user (stderr, one line) is printed once: the input's before the compute, the trace's after it."""
    from tqdm import tqdm

    request = _request(args, words, **request_options)
    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:
        image, maps = run(request, on_step=lambda i, n: bar.update(1))
    for note in maps.info.notes:
        if note not in request.notes:
            _note(note)
    return image, maps, request.pipe


def _pipe_and_options(args) -> tuple:
    """The pipeline and the pipeline options of a causal command, checked before any compute."""
    request = _request(args)
    width, height = request.size
    options = dict(num_inference_steps=request.steps, guidance_scale=request.guidance, width=width, height=height)
    if request.negative_prompt:
        options["negative_prompt"] = request.negative_prompt
    return request.pipe, options


def _whole_number(low: int, high: int, written: str | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (`written`: how the message writes `high`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {written or high}, got {value}")
        return value

    return parse


_seed = _whole_number(0, MAX_SEED, f"{MAX_SEED} (2**63 - 1)")
_port = _whole_number(1, 65535)


def _device(text: str) -> str:
    try:
        check_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _cmap(text: str) -> str:
    if text not in COLORMAPS:
        raise argparse.ArgumentTypeError(f"unknown colour map {text!r}; choose one of: {', '.join(COLORMAPS)}")
    return text


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line, like every other bad input (argparse would print the usage first)."""

    def error(self, message: str):
        print(f"crossattn: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class DefaultsHelp(argparse.HelpFormatter):
    """--help shows every option's default: its value, or — where it has none (None, an empty list) — what
    `unset` says, unless the option's own help already says what it defaults to."""

    unset = ""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.nargs == 0 or "default" in text:  # flags are off unless given
            return text
        if action.default is None or action.default == []:
            return f"{text} {self.unset}".strip()
        return f"{text} (default: %(default)s)".strip()


class RecipeHelp(DefaultsHelp):
    unset = "(default: the --recipe's value, else the built-in recipe's)"


MODEL_HELP = f"embedded model ({', '.join(EMBEDDED)}), local pipeline folder or hub id (default: {DEFAULT_MODEL})"


def device_help() -> str:
    return f"cpu, cuda, cuda:1, mps … (default: cuda if available, else cpu; here: {', '.join(available_devices())})"


def command(sub, name: str, text: str, formatter: type[argparse.HelpFormatter] = DefaultsHelp):
    """One sub-command's parser, its help shown in `crossattn --help` and its own."""
    return sub.add_parser(name, help=text, description=text, formatter_class=formatter)


def generation_args(p: argparse.ArgumentParser) -> None:
    """The options of every command that generates: the prompt and how to generate it, and where results go."""
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--seed", type=_seed, default=0, help="random seed")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    p.add_argument("--negative", default=None, help="negative prompt (default: none)")
    p.add_argument("--frames", type=int, default=None, help="video pipelines: frames to make (default: the "
                                                             "pipeline's)")
    p.add_argument("--out", default=f"out/{p.prog.split()[-1]}",
                   help="output folder; one that holds another command's or prompt's results is refused")
    p.add_argument("--overwrite", action="store_true", help="replace whatever results --out holds")
    p.add_argument("--device", type=_device, default=None, help=device_help())
