"""One contract, run on the tiny pipeline of every family (`tests.families.pipelines`), as diffusers'
`PipelineTesterMixin` runs on each pipeline's dummy components:

- the traced output is bit-identical to the untraced one, and nothing is left behind;
- the maps equal an independent float64 recomputation (`tests.reference`) of the prompt's rows, and of the
  negative's with ``capture_uncond``, cut from each attention call by the layout `FAMILIES` states;
- the words are the prompt's: a multi-piece word, a repeated word, no template, register or special token;
- under guidance, the maps are the prompt's (equal with and without the negative recorded beside them);
- the pipeline is restored after an exception and after Ctrl-C in the middle of a generation.

To add a family: a builder in `tests.families.pipelines` and one entry in `tests.families.FAMILIES`. Checks of
one family's particulars are in `test_families_specific.py`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch

import crossattn
from crossattn.families import family_of
from tests.families import CALLS, FAMILIES, PROMPT, PROMPTS_FIRST, STEPS, WORDS, Family, cross, run
from tests.reference import expected_token_maps, record_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def denoiser(pipe) -> torch.nn.Module:
    return getattr(pipe, family_of(pipe).denoiser)


def processors(model) -> dict:
    """Each attention module's processor (not every model lists them in `attn_processors`)."""
    return {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor")}


def hooks(pipe) -> list:
    """Every module's forward hooks (transformers keeps its own output-capturing hooks on some text encoders)."""
    modules = [m for c in pipe.components.values() if isinstance(c, torch.nn.Module) for m in c.modules()]
    return [(list(m._forward_pre_hooks.values()), list(m._forward_hooks.values())) for m in modules]


@dataclass
class Traced:
    """One family's pipeline, its untraced output, and a traced run (both guidance halves kept) whose attention
    calls the reference recorded too."""

    family: Family
    pipe: object
    plain: torch.Tensor
    out: torch.Tensor
    tracer: crossattn.Trace
    calls: list[torch.Tensor]
    restored: bool  # the processors were kept during the trace, the hooks are as before after it
    hooks: list


@pytest.fixture(scope="module", params=list(FAMILIES))
def traced(request) -> Traced:
    family = FAMILIES[request.param]
    pipe = family.build()
    model = denoiser(pipe)
    before = processors(model)
    plain = run(pipe, family)
    own_hooks = hooks(pipe)
    tracer = crossattn.trace(pipe, time_bins=1, capture_uncond=True)
    experts = [getattr(pipe, name) for name in family_of(pipe).experts(pipe)]  # Wan 2.2: a low-noise transformer
    with contextlib.ExitStack() as stack:
        recorded = [stack.enter_context(record_attention(m, list(tracer.layers))) for m in [model, *experts]]
        with tracer:
            kept = processors(model) == before  # the very same objects (processors compare by identity)
            out = run(pipe, family)
    calls = [p for each in recorded for p in each]  # each expert's calls in their order: whole steps each
    return Traced(family, pipe, plain, out, tracer, calls, kept and hooks(pipe) == own_hooks, own_hooks)


def reference_pairs(t: Traced, negative: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(crossattn's maps, the reference's), (pixels, kept tokens) each, per resolution: the mean over the prompt's
    (or the negative's) attention calls, rows and heads of its image queries' probabilities on the kept text
    positions. Kept positions past a call's text (one call each: prompt and negative may differ in length) are 0."""
    family, tracer, calls = t.family, t.tracer, t.calls
    kept = tracer.kept_positions
    if family.layout is cross:  # the text's calls, not an IP-Adapter's image-prompt calls (4 keys)
        calls = [p for p in calls if p.shape[-1] == max(c.shape[-1] for c in calls)]
    if family.guidance == CALLS:  # per step: the prompt's call through every layer, then the negative's
        calls = [p for k, p in enumerate(calls) if (k // len(tracer.layers)) % 2 == negative]
    maps = tracer.heat_maps(negative=negative)
    in_batch = family_of(t.pipe).frames_in_batch  # AnimateDiff: each frame is a row of the batch, not tokens
    pairs = []
    for h, w in maps.resolutions:
        pixels = (1 if in_batch else maps.frames) * h * w  # a video's frames, one after the other in the sequence
        group = calls if len(maps.resolutions) == 1 else [p for p in calls if p.shape[-2] == pixels]
        expected = []
        for frame in range(maps.frames if in_batch else 1):
            weighted, total = 0, 0
            for probs in group:
                images, text = family.layout(probs.shape[-1], pixels)
                rows = rows_of(family.guidance, probs.shape[0], negative)
                if in_batch:
                    rows = slice(rows.start + frame, rows.start + frame + 1)
                length = text.stop - text.start
                inside = torch.tensor([k < length for k in kept])
                one = expected_token_maps([probs], rows, images, text, [min(k, length - 1) for k in kept]) * inside
                n = probs[rows].shape[0] * probs.shape[1]  # rows × heads: every (row, head) weighs the same
                weighted, total = weighted + one * n, total + n
            expected.append(weighted / total)
        site = maps if len(maps.resolutions) == 1 else maps.filter(resolutions=[f"{h}x{w}"])
        frames = [site.frame(i).data.token_maps().reshape(h * w, -1) for i in range(maps.frames)]
        pairs.append((torch.cat(frames), torch.cat(expected)))
    return pairs


def rows_of(guidance: str | None, batch: int, negative: bool) -> slice:
    """The rows of a call's batch that hold the prompt's text (or the negative's)."""
    if guidance in (None, CALLS):
        return slice(0, batch)
    first = (guidance == PROMPTS_FIRST) != negative
    return slice(0, batch // 2) if first else slice(batch // 2, batch)


def test_output_is_bit_identical_and_nothing_is_left_behind(traced):
    assert torch.equal(traced.plain, traced.out)
    assert traced.restored
    recorded = traced.tracer.coverage()["recorded_calls"]
    calls = STEPS * (2 if traced.family.guidance == CALLS else 1)  # the negative's own calls are recorded too
    assert recorded and all(n == calls for n in recorded.values())  # every traced layer, every step


def test_maps_equal_an_independent_recomputation(traced):
    for negative in (False, True) if traced.family.guidance else (False,):
        for got, expected in reference_pairs(traced, negative):
            assert got.shape == expected.shape and got.sum() > 0
            assert torch.allclose(got, expected, atol=1e-5)


def bare(piece: str) -> str:
    """A token without its word markers: "▁" / "Ġ" (a word starts), "</w>" (CLIP: it ends), "##" (BERT: goes on)."""
    return piece.removesuffix("</w>").removeprefix("##").lstrip("▁Ġ")


def test_words_multi_piece_repeated_and_no_template_words(traced):
    maps, family = traced.tracer.heat_maps(), traced.family
    assert maps.words == WORDS  # no instruction, system prompt, register or special token is a word
    assert maps.info.prompt.strip() == PROMPT
    assert maps.info.sources == list(family.sources)
    options = dict(height=32, width=32) | family.call
    assert maps.image_size == (options["height"], options["width"])
    for source in family.sources:
        # each word's pieces spell it: none taken from a neighbour, none missing
        assert ["".join(bare(maps.tokens[c]) for c in w.in_source(source)) for w in maps.data.words] == WORDS
        assert len(maps.data.words[2].in_source(source)) > 1  # "hexagon": several pieces
    cyan, again = maps.data.words[1], maps.data.words[6]
    assert cyan.text == again.text == "cyan" and again.occurrence == 1
    assert set(cyan.positions).isdisjoint(again.positions)  # the repeated word has its own tokens
    assert maps.word("cyan", occurrence=1).raw.sum() > 0
    if family.fed is not None:  # each kept token is the one the pipeline put at its position
        fed = family.fed(traced.pipe)
        assert maps.tokens == [fed[p] for p in traced.tracer.kept_positions]


def test_maps_are_the_prompts_under_guidance(traced):
    pipe, family, tracer = traced.pipe, traced.family, traced.tracer
    if family.guidance is None:  # guidance-distilled: one call, no negative
        with pytest.raises(crossattn.InputError, match="negative maps need"):
            tracer.heat_maps(negative=True)
        return
    with crossattn.trace(pipe, time_bins=1) as prompt_only:
        run(pipe, family)
    assert prompt_only.n_images == tracer.n_images == 1
    cond, neg = tracer.heat_maps(), tracer.heat_maps(negative=True)
    assert torch.allclose(prompt_only.heat_maps().data.token_maps(), cond.data.token_maps(), atol=1e-6)
    assert neg.words == family.call.get("negative_prompt", "").split()  # [klein]'s negative is ""
    assert not torch.allclose(cond.data.token_maps(), neg.data.token_maps(), atol=1e-4)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_restored_after_an_exception_mid_generation(traced, error):
    pipe, tracer = traced.pipe, traced.tracer
    layer = denoiser(pipe).get_submodule(next(iter(tracer.layers)))
    before = processors(denoiser(pipe))
    seen = []

    def explode(module, args):  # inside a traced layer (its observer on), in its second call
        seen.append(1)
        if len(seen) == 2:
            raise error

    bomb = layer.to_q.register_forward_pre_hook(explode)
    try:
        with pytest.raises(error), crossattn.trace(pipe, capture_uncond=True):
            run(pipe, traced.family)
    finally:
        bomb.remove()
    assert len(seen) == 2 and hooks(pipe) == traced.hooks and processors(denoiser(pipe)) == before
    assert torch._C._len_torch_function_stack() == 0  # the observer's mode is off
    assert torch.equal(run(pipe, traced.family), traced.plain)
