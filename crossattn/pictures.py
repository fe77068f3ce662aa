"""Pictures of the causal checks (`crossattn.causal`): what a word's attention, its effect and the counterfactual
look like side by side, and a repair's before / after. Drawing only: the numbers come from `crossattn.causal`."""

from __future__ import annotations

from PIL import Image

from . import render
from .causal import Effects, Repair
from .words import word_ref


def effect_picture(eff: Effects, word: str, tile: int = 256, cmap: str = "jet") -> Image.Image:
    """One word: its attention over the plain image | where the picture changed | the counterfactual image."""
    effect = eff[word]
    attention = eff.maps.word(*word_ref(word)).overlay(eff.image, cmap=cmap)
    peak = float(effect.change.max())
    change = Image.fromarray(render.colorize(effect.change / peak if peak > 0 else effect.change, cmap))
    r = "r n/a" if effect.agreement is None else f"r = {effect.agreement:.2f}"
    what = f"without '{word}'" if eff.how == "prompt" else f"'{word}' attention x{eff.scale:g}"
    return render.grid([render.labelled(attention, f"attention: {word}", tile),
                        render.labelled(change, f"change (max {peak:.2f}), {r}", tile),
                        render.labelled(effect.image, what, tile)], cols=3)


def repair_picture(r: Repair, tile: int = 256) -> Image.Image:
    """Before | after, each captioned with what the diagnosis found missing (ASCII: the label font has no ×, —)."""
    def caption(d) -> str:
        missing = [o.name for o in d.objects if o.missing]
        return "missing: " + ", ".join(missing) if missing else "nothing missing"

    boosted = ", ".join(f"{w} x{s:g}" for w, s in r.boosted.items()) or "nothing boosted"
    before = render.labelled(r.image_before, f"before: {caption(r.before)}", tile)
    after = render.labelled(r.image, f"repaired ({boosted}): {caption(r.after)}", tile)
    return render.grid([before, after], cols=2)

