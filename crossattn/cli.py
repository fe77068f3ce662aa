"""Command line: ``crossattn generate "PROMPT"`` and friends.

Bad input (an `InputError`) → one line ``crossattn: error: ...`` on stderr, exit status 2, checked before any
compute is spent where it can be. Anything else is a bug: one line ``crossattn: internal error: ...``, exit
status 1, and the traceback with ``--debug``. Ctrl-C → exit status 130. ``crossattn diagnose`` exits with 3
when it finds a failure (after ``--repair``: one that remains), ``crossattn sweep`` when items are missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import diagnosis, geometry, pictures, placement, reports
from .concepts import METHODS
from .errors import InputError, one_line
from .generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_SEED, check_inputs, generate, native_size, parse_size
from .geometry import DEFAULT_TAU
from .models import DEFAULT_MODEL, EMBEDDED, available_devices, check_device
from .render import COLORMAPS
from .words import slug, split_list


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
    from .models import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)  # our own tqdm bar below
    return pipe


# Which run wrote an output folder (command and prompt), and every name a command writes there: results of
# two runs side by side would read as one result, so a run replaces all of them or none.
RUN_FILE = "crossattn-run.json"
OUTPUTS = ("image.png", "grid.png", "overlays", "maps.safetensors", "maps.npz", "heatmaps.json", "concepts",
           "diagnosis.json", "diagnosis.png", "placement.json", "segmentation.png", "timeline.png", "effects",
           "effects.json", "changes.npz", "image_before.png", "repair.png", RUN_FILE)


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


def _checked(args, words: list[str] | None = None, concept_method: str | None = None) -> tuple:
    """(pipeline, size, the input's notes): loaded, and the request checked before any compute; the notes are
    printed (stderr, one line each)."""
    pipe = _load(args)
    size = parse_size(args.size) if args.size else native_size(pipe)
    said = check_inputs(pipe, args.prompt, size, args.steps, args.guidance, words, seed=args.seed,
                        concept_method=concept_method)
    for note in said:
        _note(note)
    return pipe, size, said


def _generate(args, words: list[str] | None = None, **trace_options):
    """Load, validate (before any compute), generate under a tqdm bar; returns (image, maps). Each note for
    the user (stderr, one line) is printed once: the input's before the compute, the trace's after it."""
    from tqdm import tqdm

    pipe, size, said = _checked(args, words, trace_options.get("concept_method"))
    with tqdm(total=args.steps, desc="denoising", unit="step") as bar:
        image, maps = generate(pipe, args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                               size=size, negative_prompt=args.negative, on_step=lambda i, n: bar.update(1),
                               **trace_options)
    for note in maps.info.notes:
        if note not in said:
            _note(note)
    maps.info.model = args.model or DEFAULT_MODEL
    return image, maps


def cmd_generate(args) -> None:
    words = split_list(args.words) or None
    out = _output_folder(args)
    image, maps = _generate(args, words, concepts=split_list(args.concepts) or None,
                            concept_method=args.concept_method)
    _clear(out, args)
    image.save(out / "image.png")
    written = _write_maps(out, image, maps, args, words)
    print(f"wrote {out}: image.png, {', '.join(written)}")


def _write_maps(out: Path, image, maps, args, words: list[str] | None = None) -> list[str]:
    """Overlays (one per word, then per concept), the grid and the maps themselves; returns what was written."""
    (out / "overlays").mkdir()
    chosen = [maps.word(w) for w in words] if words else list(maps)
    tile = max(256, *image.size)
    for k, m in enumerate(chosen):
        m.figure(image, alpha=args.alpha, cmap=args.cmap, tile=tile).save(
            out / "overlays" / f"{k:02d}_{slug(m.word)}.png")
    located = list(maps.concepts) if maps.concepts is not None else []
    for k, m in enumerate(located):
        m.figure(image, alpha=args.alpha, cmap=args.cmap, tile=tile).save(
            out / "overlays" / f"concept{k:02d}_{slug(m.word)}.png")
    maps.grid(image, words=words, alpha=args.alpha, cmap=args.cmap).save(out / "grid.png")
    maps.save(out, fmt=args.format, diagnosis=diagnosis.diagnose(maps))  # the verdict travels with its maps
    also = f" and {len(located)} concepts" if located else ""
    return ["grid.png", f"overlays/ ({len(chosen)} words{also})", f"maps.{args.format}", "heatmaps.json"] + \
        (["concepts/"] if located else [])


def cmd_explain(args) -> None:
    from .explain import explain, read_image

    picture, said = read_image(args.image)  # unreadable files fail here, before the model loads
    for note in said:  # what reading it converted (transparency, 16-bit, rotation ...)
        _note(note)
    args.prompt = args.caption  # what the output folder's record names
    out = _output_folder(args)
    pipe = _load(args)
    levels = [float(x) for x in split_list(args.levels)] if args.levels else None
    maps = explain(pipe, picture, args.caption, noise_levels=levels, seed=args.seed,
                   concepts=split_list(args.concepts) or None, concept_method=args.concept_method)
    for note in maps.notes:
        if note not in said:
            _note(note)
    _clear(out, args)
    picture.save(out / "image.png")
    written = ["image.png"] + _write_maps(out, picture, maps, args)
    data = placement.report(maps, [], from_prompt=True)
    if data["words"]:
        labels, names = placement.segmentation(maps)
        pictures.segmentation_picture(picture, labels, names).save(out / "segmentation.png")
        written.append("segmentation.png")
    (out / "placement.json").write_text(json.dumps(data, indent=1))
    print(reports.format_report(data))
    print(f"\nwrote {out}: {', '.join(written + ['placement.json'])}")


def cmd_placement(args) -> None:

    named = [w for s in args.expect for w in placement.statement_words(s)]  # unreadable statements fail here
    out = _output_folder(args)
    image, maps = _generate(args, named)
    data = placement.report(maps, args.expect, from_prompt=args.from_prompt, method=args.method, tau=args.tau)
    data |= {"seed": args.seed, "model": maps.info.model, "steps": args.steps}
    _clear(out, args)
    image.save(out / "image.png")
    written = ["image.png"]
    if data["words"]:  # no object to segment or follow (an emoji-only prompt: its note said so)
        labels, names = placement.segmentation(maps)
        pictures.segmentation_picture(image, labels, names).save(out / "segmentation.png")
        lines = [geometry.Track.from_dict(t) for t in data["timelines"]]
        pictures.track_picture(image, lines).save(out / "timeline.png")
        written += ["segmentation.png", "timeline.png"]
    (out / "placement.json").write_text(json.dumps(data, indent=1))
    print(reports.format_report(data))
    print(f"\nwrote {out}: {', '.join(written)}, placement.json")


def cmd_diagnose(args) -> int:
    objects = split_list(args.objects) or None
    out = _output_folder(args)
    if args.repair:
        if objects:
            raise InputError("--repair diagnoses the prompt's own objects: leave out --objects")
        return _repair(args, out)
    image, maps = _generate(args, objects)
    d = diagnosis.diagnose(maps, objects)
    _clear(out, args)
    image.save(out / "image.png")
    pictures.diagnosis_picture(d, image).save(out / "diagnosis.png")
    (out / "diagnosis.json").write_text(json.dumps(d.to_dict(), indent=1))
    print(reports.diagnosis_text(d))
    print(f"\nwrote {out}: image.png, diagnosis.png, diagnosis.json")
    return 3 if d.failed else 0  # the exit status says whether a failure was found


def _repair(args, out: Path) -> int:
    """diagnose --repair: the generation, and where objects were neglected, the boosted regeneration."""
    from .causal import repair
    from .pictures import repair_picture

    pipe, options = _pipe_and_options(args)
    r = repair(pipe, args.prompt, seed=args.seed, **options)
    _clear(out, args)
    r.image_before.save(out / "image_before.png")
    r.image.save(out / "image.png")
    pictures.diagnosis_picture(r.after, r.image).save(out / "diagnosis.png")
    repair_picture(r).save(out / "repair.png")
    (out / "diagnosis.json").write_text(json.dumps({"before": r.before.to_dict(), "after": r.after.to_dict(),
                                                    "repair": r.to_dict()}, indent=1))
    print(reports.diagnosis_text(r.before))
    if r.boosted:
        boosted = ", ".join(f"{w} ×{s:g}" for w, s in r.boosted.items())
        print(f"\nrepair: boosted {boosted} in steps {r.steps[0]}-{r.steps[1] - 1}; recovered: "
              f"{', '.join(r.recovered) or 'none'}\n")
        print(reports.diagnosis_text(r.after))
    else:
        print("\nrepair: nothing was neglected, nothing to repair")
    print(f"\nwrote {out}: image_before.png, image.png, repair.png, diagnosis.png, diagnosis.json")
    return 3 if r.after.failed else 0


def _pipe_and_options(args) -> tuple:
    """The pipeline and the pipeline options of a causal command, checked before any compute."""
    pipe, size, _ = _checked(args)
    options = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, width=size[0], height=size[1])
    if args.negative:
        options["negative_prompt"] = args.negative
    return pipe, options


def cmd_effects(args) -> None:
    from .causal import effects
    from .pictures import effect_picture

    words = split_list(args.words) or None
    window = _window(args.window)
    if args.how == "prompt" and (args.scale != 0.0 or args.window != "0:"):
        raise InputError("--scale and --window apply to --how attention; --how prompt deletes the word outright")
    out = _output_folder(args)
    pipe, options = _pipe_and_options(args)
    eff = effects(pipe, args.prompt, words, how=args.how, scale=args.scale, steps=window, seed=args.seed,
                  **options)
    _clear(out, args)
    (out / "effects").mkdir()
    eff.image.save(out / "image.png")
    for k, effect in enumerate(eff):
        effect_picture(eff, effect.word).save(out / "effects" / f"{k:02d}_{slug(effect.word)}.png")
        effect.image.save(out / "effects" / f"{k:02d}_{slug(effect.word)}_counterfactual.png")
    import numpy as np

    np.savez_compressed(out / "changes.npz", **{f"{k:02d}_{slug(e.word)}": e.change for k, e in enumerate(eff)})
    (out / "effects.json").write_text(json.dumps(eff.to_dict(), indent=1))
    for e in eff:
        r = "n/a" if e.agreement is None else f"{e.agreement:+.2f}"
        print(f"{e.word:<20} mean change {e.change.mean():.3f}  max {e.change.max():.3f}  agreement r {r}")
    print(f"\nwrote {out}: image.png, effects/ ({len(eff.words)} words), changes.npz, effects.json")


def _window(text: str) -> tuple[int, int | None]:
    """'0:10' -> (0, 10); '5:' -> (5, None): a step window as Python writes a slice."""
    try:
        start, stop = text.split(":")
        return int(start or 0), int(stop) if stop.strip() else None
    except ValueError:
        raise InputError(f"bad --window {text!r}: write START:STOP (stop left out: to the end), e.g. 0:10") from None


def cmd_eval_shapes(args) -> None:
    from . import render
    from .shapes import evaluate as ev
    from .shapes.world import parse_caption

    pipe = _load(args)
    result, examples = ev.evaluate(pipe, n=args.n, steps=args.steps, guidance=args.guidance, show=args.samples_n,
                                   concepts=args.concepts, concept_method=args.concept_method)
    result["model"] = args.model or DEFAULT_MODEL
    print(ev.format_table(result))
    if args.json:
        ev.save(result, args.json)
        print(f"wrote {args.json}")
    if args.samples:
        rows = []
        for image, maps, _ in examples:
            words = [f"{c} {s}" for c, s in parse_caption(maps.info.prompt)[0]]
            rows.append(maps.grid(image, words=words + ["left" if "left" in maps.words else maps.words[-1]],
                                  tile=160, cols=4))
        render.grid(rows, cols=1, pad=0).save(args.samples)
        print(f"wrote {args.samples}")


def cmd_sweep(args) -> int:
    from . import sweep

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


def cmd_demo(args) -> None:
    from .app import launch

    launch(args.host, args.port, args.model, args.allow_any_model, args.share)


def cmd_train_shapes(args) -> None:
    from .shapes.train import Recipe, Trainer, train

    # Every Recipe field that has a command-line option and was given on the command line.
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(Recipe)}
    given = {name: value for name, value in given.items() if value is not None}
    recipe = Recipe.from_file(args.recipe, **given) if args.recipe else Recipe(**given)
    if args.export:
        path = Trainer(args.run, recipe, args.device).export(args.export)
        print(f"exported {path}")
    else:
        train(args.run, recipe, args.device)


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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="crossattn", description="Per-word attention heat maps for diffusion models.",
                           formatter_class=DefaultsHelp)
    parser.add_argument("--debug", action="store_true", help="show the traceback of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = f"embedded model ({', '.join(EMBEDDED)}), local pipeline folder or hub id (default: {DEFAULT_MODEL})"
    device_help = (f"cpu, cuda, cuda:1, mps … (default: cuda if available, else cpu; here: "
                   f"{', '.join(available_devices())})")

    def command(name: str, text: str, formatter: type[argparse.HelpFormatter] = DefaultsHelp):
        return sub.add_parser(name, help=text, description=text, formatter_class=formatter)

    def generation_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("prompt")
        p.add_argument("--model", default=None, help=model_help)
        p.add_argument("--seed", type=_seed, default=0, help="random seed")
        p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps")
        p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
        p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
        p.add_argument("--negative", default=None, help="negative prompt (default: none)")
        p.add_argument("--out", default=f"out/{p.prog.split()[-1]}",
                       help="output folder; one that holds another command's or prompt's results is refused")
        p.add_argument("--overwrite", action="store_true", help="replace whatever results --out holds")
        p.add_argument("--device", type=_device, default=None, help=device_help)

    g = command("generate", "generate an image and one heat map per prompt word")
    generation_args(g)
    g.add_argument("--words", default=None, help="comma-separated words to render (default: all)")
    g.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    g.add_argument("--cmap", type=_cmap, default="jet", help="colour map")
    g.add_argument("--format", choices=["safetensors", "npz"], default="safetensors", help="file format of the maps")
    g.add_argument("--concepts", default=None, help="comma-separated words to locate whether or not the prompt says "
                                                    "them (concept maps; default: none)")
    g.add_argument("--concept-method", choices=METHODS, default=None,
                   help="outputs (ConceptAttention) or attention (default: outputs on transformers, attention on "
                        "UNets: their only method)")
    g.set_defaults(func=cmd_generate)

    p = command("placement", "where did each object land; check an intended layout")
    generation_args(p)
    p.add_argument("--expect", action="append", default=[], metavar="STATEMENT",
                   help='"circle left_of square" (right_of, above, below), "circle on the left", '
                        '"circle in x0,y0,x1,y1" (normalised); repeatable (default: the relations the prompt states)')
    p.add_argument("--from-prompt", action="store_true", help="also check relations stated in the prompt")
    p.add_argument("--method", choices=["relative", "otsu"], default="relative", help="how a map becomes a mask")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="relative threshold (share of the peak)")
    p.set_defaults(func=cmd_placement)

    q = command("diagnose", "why did a generation go wrong? exit 3 if a failure is found, else 0")
    generation_args(q)
    q.add_argument("--objects", default=None,
                   help='comma-separated object phrases to diagnose, e.g. "red circle, blue square" (default: the '
                        "prompt's noun phrases)")
    q.add_argument("--repair", action="store_true",
                   help="if objects were neglected, regenerate with their words' attention boosted early (one more "
                        "generation) and diagnose again")
    q.set_defaults(func=cmd_diagnose)

    n = command("explain", "per-word maps of an image you bring: where does the model see each caption word?")
    n.add_argument("image", help="an image file (PNG, JPEG, …)")
    n.add_argument("caption", help="what the image shows")
    n.add_argument("--model", default=None, help=model_help)
    n.add_argument("--seed", type=_seed, default=0, help="seed of the noise added to the image")
    n.add_argument("--levels", default=None, help="comma-separated noise levels in [0, 1] (default: the model's, "
                                                   "see crossattn.explain)")
    n.add_argument("--concepts", default=None, help="comma-separated words to locate whether or not the caption "
                                                    "says them (default: none)")
    n.add_argument("--concept-method", choices=METHODS, default=None, help="see crossattn.trace (default: the "
                                                                             "model's)")
    n.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    n.add_argument("--cmap", type=_cmap, default="jet", help="colour map")
    n.add_argument("--format", choices=["safetensors", "npz"], default="safetensors", help="file format of the maps")
    n.add_argument("--out", default="out/explain", help="output folder; one that holds another run's results is "
                                                        "refused")
    n.add_argument("--overwrite", action="store_true", help="replace whatever results --out holds")
    n.add_argument("--device", type=_device, default=None, help=device_help)
    n.set_defaults(func=cmd_explain)

    x = command("effects", "what does each word cause? regenerate without it (same seed) and map what changed")
    generation_args(x)
    x.add_argument("--words", default=None, help="comma-separated words or phrases (default: the prompt's objects)")
    x.add_argument("--how", choices=("prompt", "attention"), default="prompt",
                   help="prompt: delete the word and re-encode; attention: scale its attention (crossattn.intervene)")
    x.add_argument("--scale", type=float, default=0.0, help="attention scale for --how attention (0: removed)")
    x.add_argument("--window", default="0:", help="steps START:STOP the attention scale applies in (--how attention)")
    x.set_defaults(func=cmd_effects)

    w = command("sweep", "generate and check prompts × seeds (resumable; --ray for many workers), then write an "
                         "HTML report")
    w.add_argument("prompts", nargs="?", help="text file (one prompt a line), .jsonl or .csv with prompt, "
                                              "expect (';'-separated in CSV), seed or seeds")
    w.add_argument("--out", required=True, help="sweep folder (items/, summary.jsonl, report.html); required")
    w.add_argument("--seeds", default="0", help="seeds of prompts that give none: 0-7, 0,3,5 ...")
    w.add_argument("--model", default=None, help=model_help)
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
    w.set_defaults(func=cmd_sweep)

    d = command("demo", "start the Gradio demo (http://127.0.0.1:7860)")
    d.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1: this machine only)")
    d.add_argument("--port", type=_port, default=7860, help="port to serve on")
    d.add_argument("--model", default=None, help=f"default model: {model_help}")
    d.add_argument("--allow-any-model", action="store_true",
                   help="let users type a hub id or a server folder in the Model box")
    d.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    d.set_defaults(func=cmd_demo)

    e = command("eval-shapes", "score a shapes-world model: fidelity and heat-map IoU")
    e.add_argument("--model", default=None, help=f"{', '.join(EMBEDDED)} or a pipeline folder (default: "
                                                 f"{DEFAULT_MODEL})")
    e.add_argument("--n", type=int, default=100, help="held-out prompts")
    e.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps")
    e.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    e.add_argument("--json", default=None, help="write the scores here (default: print only)")
    e.add_argument("--samples", default=None, help="write a PNG of example images with their overlays (default: "
                                                   "none)")
    e.add_argument("--samples-n", type=int, default=6, help="examples in --samples")
    e.add_argument("--concepts", action="store_true",
                   help="also score concept maps of the world's words and the absent-shape control")
    e.add_argument("--concept-method", choices=METHODS, default=None,
                   help="how concepts are located (default: the model's; see crossattn.trace)")
    e.add_argument("--device", type=_device, default=None, help=device_help)
    e.set_defaults(func=cmd_eval_shapes)

    t = command("train-shapes", "train (or resume) an embedded shapes-world model", RecipeHelp)
    t.add_argument("--run", default="runs/shapes", help="run folder (checkpoints, log.txt, stages.jsonl, samples)")
    t.add_argument("--recipe", help="a JSON recipe (recipes/*.json); options given here override its fields "
                                    "(default: the built-in recipe, crossattn.shapes.train.Recipe)")
    # Unset options keep the recipe's (or shapes.train.Recipe's) values.
    t.add_argument("--arch", choices=("unet", "mmdit"))
    t.add_argument("--seed", type=int)
    t.add_argument("--vae-steps", type=int)
    t.add_argument("--unet-steps", type=int, help="steps of the denoiser phase (UNet or MMDiT)")
    t.add_argument("--batch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--init-from", help="start from this pipeline folder or embedded model (VAE phase skipped)")
    t.add_argument("--grounding-start", type=int, help="step from which the grounding loss applies")
    t.add_argument("--coverage-start", type=int, help="step from which the grounding loss asks for coverage")
    t.add_argument("--grounding-batch", type=int, help="items of each batch the grounding loss uses (0: all)")
    t.add_argument("--warmup", type=int)
    t.add_argument("--weighting", choices=("min-snr", "clamped"), help="UNet loss weighting over noise levels")
    t.add_argument("--grounding-weight", type=float)
    t.add_argument("--ema-decay", type=float)
    t.add_argument("--save-every", type=int)
    t.add_argument("--sample-every", type=int)
    t.add_argument("--placing-share", type=float, help="share of each batch from captions that place objects")
    t.add_argument("--high-noise-share", type=float, help="share of each batch drawn at t >= --high-noise-from")
    t.add_argument("--high-noise-from", type=int)
    t.add_argument("--reference-layouts", type=int, metavar="K",
                   help="noisy items get the posterior-mean target from K other layouts of their caption")
    t.add_argument("--device", type=_device, default=None, help=device_help)
    t.add_argument("--export", default=None,
                   help="write the trained EMA pipeline to this folder and exit (default: train)")
    t.set_defaults(func=cmd_train_shapes)
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


if __name__ == "__main__":
    sys.exit(main())
