"""The options of a shapes-world training run (`Recipe`), their checks and schedule, and their command-line flags.

Kept apart from the trainer so that a command line can offer one flag per field (`add_recipe_arguments`) without
importing torch or diffusers: this module imports neither. Each field's help text sits next to it, in its
``metadata``, and is what ``--help`` shows.

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    recipe = recipe_from_args(parser.parse_args(["--cooldown", "5"]), Recipe.from_file("recipes/unet-base.json"))
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError

# The keys of `model.ARCHITECTURES` (a test checks that they agree), named here without importing the models.
ARCH_NAMES = ("unet", "mmdit")
WEIGHTINGS = ("min-snr", "clamped")
# Fields renamed since recipes were first saved: old name -> new one. `Recipe.from_file` reads either.
RENAMED = {"unet_steps": "denoiser_steps"}
# Flags the command line had before they were generated from the fields, kept as aliases: field -> old flag.
OLD_FLAGS = {"denoiser_steps": "--unet-steps"}


def _option(default: Any, help: str, **argparse_options: Any) -> Any:
    """A recipe field: its default, the help text its flag shows, and any other `add_argument` options."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class Recipe:
    """Every option of a run; `__post_init__` checks them, so a bad one fails before any compute."""

    arch: str = _option("unet", "architecture (see crossattn.shapes.model)", choices=ARCH_NAMES)
    seed: int = _option(0, "seed of the initial weights and of every batch")
    vae_steps: int = _option(2000, "steps of the VAE phase")
    vae_batch: int = _option(16, "images per VAE batch")
    vae_lr: float = _option(1e-3, "VAE learning rate, before its cosine decay")
    kl_weight: float = _option(1e-6, "weight of the VAE's KL term")
    denoiser_steps: int = _option(12000, "steps of the denoiser phase (UNet or MMDiT)")
    batch: int = _option(32, "images per denoiser batch")
    lr: float = _option(5e-4, "denoiser learning rate after warm-up")
    warmup: int = _option(300, "steps over which the denoiser learning rate rises linearly")
    # What made the MMDiT's shapes sharp.
    cooldown: int = _option(0, "last denoiser steps, over which the learning rate falls linearly to 0")
    weight_decay: float = _option(0.01, "AdamW weight decay of the denoiser phase")
    ema_decay: float = _option(0.999, "decay of the EMA of the weights (the exported ones)")
    caption_dropout: float = _option(0.1, "share of captions dropped, for classifier-free guidance")
    min_snr_gamma: float = _option(5.0, "γ of the UNet's loss weighting")
    # UNet only. "min-snr": min(snr, γ)/(snr+1), min-SNR weighting of the v loss; its weight on the noisiest
    # steps, where the layout is chosen, is ≈ snr ≈ 0. "clamped": min(snr+1, γ)/(snr+1), the plain v loss on
    # noisy steps and min-SNR's cap on clean ones. (The MMDiT's flow loss is unweighted, as SD3's.)
    weighting: str = _option("min-snr", "UNet loss weighting over noise levels", choices=WEIGHTINGS)
    # A diffusers folder whose parts the run starts from (see the trainer's module doc).
    init_from: str | None = _option(None, "start from this pipeline folder or embedded model (VAE phase skipped)")
    grounding_weight: float = _option(0.05, "weight of the grounding loss (see grounding.py); 0 turns it off")
    # The base run added it at this step.
    grounding_start: int = _option(3750, "step from which the grounding loss applies")
    grounding_batch: int = _option(0, "items of each batch the grounding loss uses (0: all)")
    coverage_start: int = _option(7000, "step from which the grounding loss asks for coverage")
    # Where the layout is chosen. Sampling starts from pure noise, where the best prediction is the caption's
    # *mean* image; the UNet base model instead drew a sharp object wherever the noise suggested, the same for
    # "left" and "right" (benchmarks/position_probe.py), because min-SNR gave those steps weight ~0 and one
    # training image per caption is a very noisy estimate of that mean. So a share of each batch gets
    # timesteps from [high_noise_from, 999] (flow matching: σ = t / 1000), and with reference_layouts = K > 0
    # every such item's target uses K other layouts of its caption (world.resample_layout): the posterior mean
    # of the clean latent given the noisy one, estimated by self-normalised importance weights over the K + 1
    # layouts (the "stable target field" of Xu et al. 2023, here per caption). At high noise that is the
    # caption's mean image; as the noise falls the weights collapse onto the true layout.
    high_noise_share: float = _option(0.0, "share of each batch drawn at t >= --high-noise-from")
    high_noise_from: int = _option(700, "first timestep of the high-noise share (flow matching: σ = t / 1000)")
    reference_layouts: int = _option(0, "noisy items get the posterior-mean target from K other layouts of "
                                        "their caption", metavar="K")
    # Only captions that place their objects teach where things go, and only ~60 % of scenes have one.
    placing_share: float = _option(0.0, "share of each batch drawn from captions that place their objects "
                                        "(a relation or a position)")
    # Each object of a drawn scene has its own colour, so attention could bind a shape word to its object by the
    # colour alone (its CLIP state has read the colour before it): the shipped models' shape words cannot tell a
    # red circle from a red square (benchmarks/explain_eval.py's same-colour control). Scenes in one colour
    # (world.in_one_colour) leave only the shape and the place to bind by.
    same_colour_share: float = _option(0.0, "share of each batch's scenes of several objects redrawn with all of "
                                            "them in one colour")
    # A concept "circle" is a shape word with no colour before it, a text state the captions never give.
    colourless_share: float = _option(0.0, "share of each batch's captions said without their colour words")
    one_shape_share: float = _option(0.0, "share of each batch's scenes of objects of different shapes captioned "
                                          "with one object's shape alone")
    save_every: int = _option(250, "steps between checkpoints")
    sample_every: int = _option(1000, "steps between sample grids (samples/ in the run folder)")

    def __post_init__(self) -> None:
        if self.arch not in ARCH_NAMES:
            raise ValueError(f"arch must be one of {sorted(ARCH_NAMES)}, not {self.arch!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be 'min-snr' or 'clamped', not {self.weighting!r}")
        for name in ("high_noise_share", "placing_share", "same_colour_share", "colourless_share", "one_shape_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if (self.colourless_share > 0 or self.one_shape_share > 0) and self.reference_layouts > 0:
            raise ValueError("colourless_share and one_shape_share need reference_layouts 0: the other layouts "
                             "keep what the caption does not say (each object's colour, the unnamed objects)")
        if not 0 <= self.cooldown <= self.denoiser_steps:
            raise ValueError(f"cooldown must be in [0, denoiser_steps={self.denoiser_steps}], not {self.cooldown}")
        if not 0 <= self.high_noise_from < 1000:
            raise ValueError(f"high_noise_from must be a timestep in [0, 999], not {self.high_noise_from}")

    def denoiser_lr(self, step: int) -> float:
        """The learning rate of denoiser step `step` (0-based): linear warmup, constant, linear cooldown to 0."""
        lr = self.lr * min(1.0, (step + 1) / self.warmup)
        if self.cooldown:
            lr *= min(1.0, (self.denoiser_steps - step) / self.cooldown)
        return lr

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Recipe:
        """A recipe from a JSON file (``recipes/*.json``), with some fields overridden.

        Keys starting with ``_`` are notes for the reader (``"_comment"``) and are skipped; old field names
        (`RENAMED`) are read as their new ones, so recipes saved before a rename still load.
        """
        data = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}
        for old, new in RENAMED.items():
            if old in data:
                if new in data:
                    raise ValueError(f"{path}: gives both {old!r} and its new name {new!r}")
                data[new] = data.pop(old)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown recipe fields {sorted(unknown)}")
        return cls(**(data | overrides))


def _flag_type(f: Field) -> type:
    """The Python type a field's flag parses to: the field's annotation, less None."""
    hint = typing.get_type_hints(Recipe)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag-name`` per `Recipe` field (plus the old names of renamed flags, `OLD_FLAGS`), each with
    default None: a flag that is not given keeps the value of the recipe it is applied to (`recipe_from_args`)."""
    for f in fields(Recipe):
        options = dict(f.metadata)
        text = options.pop("help")
        if f.default is not MISSING and f.default is not None:
            text += f" (built-in: {f.default})"
        names = [f"--{f.name.replace('_', '-')}"] + ([OLD_FLAGS[f.name]] if f.name in OLD_FLAGS else [])
        kind = _flag_type(f)
        if kind is bool:  # --flag / --no-flag rather than a type that would read "False" as true
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
        parser.add_argument(*names, dest=f.name, default=None, help=text.replace("%", "%%"), **options)


def recipe_from_args(args: argparse.Namespace, base: Recipe | None = None) -> Recipe:
    """`base` (default: the built-in `Recipe()`) with every recipe flag that was given in `args` applied.

    The result passes `Recipe`'s own checks; a value they refuse raises an `InputError` (a ValueError) with
    their message, so a command line reports it as bad input.
    """
    given = {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name, None) is not None}
    try:
        return replace(base if base is not None else Recipe(), **given)
    except ValueError as exc:
        raise InputError(str(exc)) from None
