"""`crossattn.intervene`: a bias on the attention call, per family — scale 1 changes nothing (bit for bit), scale 0
removes the word's attention exactly where asked and nowhere else, any scale renormalises as the definition says
(checked against a float64 recomputation from the call's own query and key), and nothing is left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossattn
from crossattn.families import family_of
from tests.families.pipelines import build_tiny_if
from tests.helpers import seeded

PROMPT = "a cyan circle left of a cyan square"
STEPS = 4
# name: (fixture or builder, call options)
FAMILIES = {
    "sd": ("tiny_sd", dict(height=32, width=32, guidance_scale=5.0)),
    "sdxl": ("tiny_sdxl", dict(height=32, width=32, guidance_scale=5.0)),
    "sd3": ("sd3", dict(height=32, width=32, guidance_scale=5.0, max_sequence_length=24)),
    "flux": ("flux", dict(height=32, width=32, guidance_scale=3.5, max_sequence_length=24)),
    "pixart": ("pixart", dict(height=32, width=32, guidance_scale=4.5, max_sequence_length=24,
                              use_resolution_binning=False)),
    "if": (build_tiny_if, dict(height=16, width=16, guidance_scale=4.0, clean_caption=False)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request):
    source, options = FAMILIES[request.param]
    pipe = request.getfixturevalue(source) if isinstance(source, str) else source()
    return request.param, pipe, options


def run(pipe, options, **kw):
    out = pipe(PROMPT, num_inference_steps=STEPS, generator=seeded(), output_type="pt" if "clean_caption" in options
               else "latent", **options, **kw)
    return out.images


def denoiser(pipe):
    return getattr(pipe, family_of(pipe).denoiser)


def test_scale_one_is_bit_identical_and_nothing_is_left_behind(case):
    _, pipe, options = case
    before = {n: m.processor for n, m in denoiser(pipe).named_modules() if hasattr(m, "processor")}
    plain = run(pipe, options)
    with crossattn.intervene(pipe, {"circle": 1.0, "<end>": 1.0}) as iv:
        same = run(pipe, options)
    assert torch.equal(plain, same)
    assert not any(c["recorded"] for c in iv.recorder.coverage.values())  # no call was even touched
    with crossattn.intervene(pipe, {"circle": 0.0}):
        changed = run(pipe, options)
    assert not torch.equal(plain, changed)
    assert "encode_prompt" not in vars(pipe)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in denoiser(pipe).modules())
    assert all(m.processor is before[n] for n, m in denoiser(pipe).named_modules() if hasattr(m, "processor"))


def test_zero_removes_the_word_exactly_where_asked(case):
    name, pipe, options = case
    with crossattn.trace(pipe, per_layer=True, time_bins=STEPS) as plain_trace:
        run(pipe, options)
    layer = next(iter(plain_trace.layers.values())).name
    tracer = crossattn.trace(pipe, per_layer=True, time_bins=STEPS)
    with tracer, crossattn.intervene(pipe, {"circle": 0.0}, steps=(1, 3), layers=[layer]) as iv:
        run(pipe, options)
    edited = {name: c["recorded"] for name, c in iv.recorder.coverage.items() if c["recorded"]}
    assert edited == {layer: 2}  # steps 1 and 2, in that layer only
    maps, before = tracer.heat_maps(), plain_trace.heat_maps()
    circle = list(maps.word("circle").positions)
    chosen = maps.filter(layers=[layer])
    for step in range(STEPS):
        mass = chosen.filter(steps=[step]).data.token_maps()[..., circle]
        assert (mass == 0).all() if step in (1, 2) else (mass > 0).all()
    # step 0 ran before the window: every layer recorded exactly what the plain generation did
    assert torch.equal(maps.filter(steps=[0]).data.token_maps(), before.filter(steps=[0]).data.token_maps())
    others = [site for site in maps.sites if site != layer]
    if others:  # the word's attention elsewhere in the window is untouched (> 0)
        assert (maps.filter(layers=others, steps=[1]).data.token_maps()[..., circle] > 0).all()


def test_a_scale_renormalises_over_all_keys_as_defined(case):
    """The layer's attention output under a scale s equals, recomputed here in float64 from the very query, key
    and value the processor passed (before crossattn's bias), the plain probabilities with the word's × s,
    renormalised over all keys, times the values — in the prompt's image rows; every other row is unchanged."""
    _, pipe, options = case
    seen = []
    original = F.scaled_dot_product_attention
    tracer = crossattn.trace(pipe)  # to name a layer
    path, layer = next(iter(tracer.layers.items()))
    module = denoiser(pipe).get_submodule(path)

    def spy(query, key, value, attn_mask=None, **kw):  # a Python function: it sees the call before the bias
        out = original(query, key, value, attn_mask=attn_mask, **kw)
        seen.append((query.double(), key.double(), value.double(), attn_mask, kw, out.double()))
        return out

    hooks = [module.register_forward_pre_hook(lambda *_: setattr(F, "scaled_dot_product_attention", spy)),
             module.register_forward_hook(lambda *_: setattr(F, "scaled_dot_product_attention", original))]
    try:
        with crossattn.intervene(pipe, {"circle": 2.5}, layers=[layer.name]) as iv:
            run(pipe, options)
    finally:
        for h in hooks:
            h.remove()
        F.scaled_dot_product_attention = original
    positions = iv.positions["circle"]
    assert positions and iv.recorder.coverage[layer.name]["recorded"] == STEPS
    q, k, v, mask, kw, out = seen[-1]  # the last step: iv.recorder.step still describes it
    scale = kw.get("scale") or q.shape[-1] ** -0.5
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    plain = scores.softmax(-1)
    step = iv.recorder.step
    text = _text_keys(layer.kind, k.shape[2], step)
    weights = torch.ones(k.shape[2], dtype=torch.float64)
    weights[[text.start + p for p in positions]] = 2.5
    image = _image_queries(layer.kind, q.shape[2], step)
    expected = plain.clone()
    scaled = plain[step.rows][:, :, image] * weights
    expected[step.rows, :, image] = scaled / scaled.sum(-1, keepdim=True)
    assert torch.allclose(out, expected @ v, atol=1e-5)
    assert not torch.allclose(out, plain @ v, atol=1e-5)  # the scale did act


def _text_keys(kind: str, keys: int, step) -> slice:
    return slice(keys - step.text_len, keys) if kind == "text_last" else slice(0, step.text_len)


def _image_queries(kind: str, queries: int, step) -> slice:
    if kind == "text_first":
        return slice(step.text_len, queries)
    if kind == "text_last":
        return slice(0, step.grid[0] * step.grid[1])
    return slice(0, queries)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_restored_after_an_exception_mid_generation(tiny_sd, error):
    def explode(pipe, i, t, kwargs):
        if i == 1:
            raise error("stop")
        return kwargs

    with pytest.raises(error), crossattn.intervene(tiny_sd, {"circle": 0.0}):
        run(tiny_sd, FAMILIES["sd"][1], callback_on_step_end=explode)
    assert "encode_prompt" not in vars(tiny_sd)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny_sd.unet.modules())
    plain = run(tiny_sd, FAMILIES["sd"][1])
    with crossattn.intervene(tiny_sd, {"circle": 1.0}):
        assert torch.equal(run(tiny_sd, FAMILIES["sd"][1]), plain)


@pytest.mark.parametrize(("scales", "kw", "message"), [
    ({"dog": 0.0}, {}, "'dog' is not a word of the prompt; its words are: 'a', 'cyan', 'circle'"),
    ({"circle": -1}, {}, "must be a finite number >= 0"),
    ({"circle": float("nan")}, {}, "must be a finite number >= 0"),
    ({"circle": float("inf")}, {}, "must be a finite number >= 0"),
    ({}, {}, "non-empty dict"),
    ({"circle": 0.0}, {"steps": (2, 9)}, "outside this generation's 4 steps"),
    ({"circle": 0.0}, {"steps": (3, 1)}, "bad step range"),
    ({"circle": 0.0}, {"layers": ["up.99"]}, "unknown layer"),
    ({"<after:dog>": 0.0}, {}, "'dog' is not a word of the prompt"),
    ({999: 0.0}, {}, "outside the denoiser's 77 text positions"),
])
def test_bad_input_is_refused_before_the_denoiser_runs(tiny_sd, scales, kw, message):
    calls = []
    hook = tiny_sd.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(crossattn.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            with crossattn.intervene(tiny_sd, scales, **kw):
                run(tiny_sd, FAMILIES["sd"][1])
    finally:
        hook.remove()
    assert not calls


def test_end_and_after_positions(tiny_sd):
    with crossattn.intervene(tiny_sd, {"<end>": 0.5, "<after:circle>": 0.5, "cyan#1": 0.5}) as iv:
        run(tiny_sd, FAMILIES["sd"][1])
    ids = tiny_sd.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    end = ids.index(tiny_sd.tokenizer.eos_token_id)
    assert iv.positions["<end>"] == list(range(end, 77))
    circle = tiny_sd.tokenizer.convert_ids_to_tokens(ids).index("circle</w>")
    assert iv.positions["<after:circle>"] == list(range(circle + 1, 77))
    assert len(iv.positions["cyan#1"]) == 2 and iv.positions["cyan#1"][0] > circle  # the second "cyan", 2 pieces
