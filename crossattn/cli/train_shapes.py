"""`crossattn train-shapes`: train (or resume, or export) an embedded shapes-world model; one flag per recipe field."""

from __future__ import annotations

from ..shapes.recipe import Recipe, add_recipe_arguments, recipe_from_args
from .common import RecipeHelp, _device, command, device_help


def add(sub) -> None:
    t = command(sub, "train-shapes", "train (or resume) an embedded shapes-world model", RecipeHelp)
    t.add_argument("--run", default="runs/shapes", help="run folder (checkpoints, log.txt, stages.jsonl, samples)")
    t.add_argument("--recipe", help="a JSON recipe (recipes/*.json); options given here override its fields "
                                    "(default: the built-in recipe, crossattn.shapes.recipe.Recipe)")
    add_recipe_arguments(t)  # one flag per Recipe field; unset flags keep the recipe's values
    t.add_argument("--device", type=_device, default=None, help=device_help())
    t.add_argument("--export", default=None,
                   help="write the trained EMA pipeline to this folder and exit (default: train)")
    t.set_defaults(func=run)


def run(args) -> None:
    from ..shapes.train import Trainer, train

    recipe = recipe_from_args(args, Recipe.from_file(args.recipe) if args.recipe else None)
    if args.export:
        path = Trainer(args.run, recipe, args.device).export(args.export)
        print(f"exported {path}")
    else:
        train(args.run, recipe, args.device)
