"""Capture on UNet pipelines: exact outputs, exact numbers, restored state, fixed memory, CFG and batch layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

import crossattn
from crossattn.capture import kernels
from tests.families.pipelines import build_tiny_sd
from tests.helpers import seeded

PROMPT = "a red circle left of a cyan square"


def latents(pipe, prompt=PROMPT, **kw):
    return pipe(prompt, num_inference_steps=kw.pop("steps", 4), generator=seeded(), output_type="latent", **kw).images


@pytest.mark.parametrize("guidance", [1.0, 7.5], ids=["no-cfg", "cfg"])
def test_output_equals_unpatched_fp32(tiny_sd, guidance):
    plain = tiny_sd(PROMPT, num_inference_steps=4, guidance_scale=guidance, generator=seeded(), output_type="np")
    with crossattn.trace(tiny_sd):
        traced = tiny_sd(PROMPT, num_inference_steps=4, guidance_scale=guidance, generator=seeded(), output_type="np")
    assert np.abs(traced.images - plain.images).max() < 1e-5
    lat_plain = latents(tiny_sd, guidance_scale=guidance)
    with crossattn.trace(tiny_sd):
        lat_traced = latents(tiny_sd, guidance_scale=guidance)
    assert (lat_traced - lat_plain).abs().max().item() < 1e-5


def test_processors_are_untouched_and_hooks_removed(tiny_sd):
    before = dict(tiny_sd.unet.attn_processors)
    with crossattn.trace(tiny_sd):
        assert all(tiny_sd.unet.attn_processors[k] is v for k, v in before.items())  # observed, not replaced
        latents(tiny_sd)
    assert all(tiny_sd.unet.attn_processors[k] is v for k, v in before.items())
    assert not tiny_sd.unet._forward_pre_hooks and not tiny_sd.text_encoder._forward_pre_hooks
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny_sd.unet.modules())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_restored_after_exception_mid_generation(tiny_sd, error):
    before = dict(tiny_sd.unet.attn_processors)

    def explode(pipe, i, t, kwargs):
        if i == 1:
            raise error("stop")
        return kwargs

    with pytest.raises(error):
        with crossattn.trace(tiny_sd):
            latents(tiny_sd, callback_on_step_end=explode)
    assert all(tiny_sd.unet.attn_processors[k] is v for k, v in before.items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny_sd.unet.modules())
    assert latents(tiny_sd).shape == (1, 4, 16, 16)  # the pipeline still works after the interruption


def test_nested_traces_restore_in_order(tiny_sd):
    before = dict(tiny_sd.unet.attn_processors)
    with crossattn.trace(tiny_sd) as outer:
        outer_procs = dict(tiny_sd.unet.attn_processors)
        with crossattn.trace(tiny_sd) as inner:
            latents(tiny_sd)
        assert all(tiny_sd.unet.attn_processors[k] is v for k, v in outer_procs.items())
        latents(tiny_sd, prompt="a blue square")
    assert all(tiny_sd.unet.attn_processors[k] is v for k, v in before.items())
    assert inner.heat_maps().words == ["a", "red", "circle", "left", "of", "a", "cyan", "square"]
    assert outer.heat_maps().words == ["a", "blue", "square"]


def test_means_match_an_independent_reference(tiny_sd):
    """Our accumulated means equal probabilities recomputed with diffusers' own get_attention_scores."""
    stored = []

    def reference(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        ctx = kwargs["encoder_hidden_states"]
        q = module.head_to_batch_dim(module.to_q(hs))
        k = module.head_to_batch_dim(module.to_k(ctx))
        probs = module.get_attention_scores(q, k).unflatten(0, (hs.shape[0], module.heads))
        stored.append(probs[hs.shape[0] // 2 :].detach())  # conditional half under CFG

    handles = [m.register_forward_pre_hook(reference, with_kwargs=True)
               for n, m in tiny_sd.unet.named_modules() if n.endswith("attn2")]
    try:
        with crossattn.trace(tiny_sd, time_bins=2) as tr:
            latents(tiny_sd, steps=3)
    finally:
        for h in handles:
            h.remove()
    maps = tr.heat_maps()
    n_tok = len(maps.tokens)
    expected = torch.cat([p.flatten(0, 1) for p in stored]).mean(0)[:, :n_tok]  # all sites are 8x8 here
    got = maps.data.token_maps().reshape(-1, n_tok)
    assert torch.allclose(got, expected, atol=1e-6)
    # per bin: steps 0-1 in bin 0, step 2 in bin 1 (3 steps, 2 bins)
    per_step = len(handles)
    assert len(stored) == 3 * per_step
    first = maps.filter(steps=[0]).data.token_maps().reshape(-1, n_tok)
    assert maps.filter(steps=[0]).steps == [0, 1]
    expected_first = torch.cat([p.flatten(0, 1) for p in stored[: 2 * per_step]]).mean(0)[:, :n_tok]
    assert torch.allclose(first, expected_first, atol=1e-6)


def test_probabilities_sum_to_one_with_all_77_tokens(tiny_sd):
    embeds, negative = tiny_sd.encode_prompt(PROMPT, "cpu", 1, True)
    with crossattn.trace(tiny_sd) as tr:
        tiny_sd(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=2, generator=seeded(),
                output_type="latent")
    with pytest.raises(ValueError, match="prompt_embeds"):
        tr.heat_maps()
    maps = tr.heat_maps(prompt=PROMPT)
    assert len(maps.tokens) == 77
    assert torch.allclose(maps.data.token_maps().sum(-1), torch.ones(8, 8), atol=1e-5)
    assert maps.word("circle").array.max() == pytest.approx(1.0)


def test_recorder_memory_does_not_grow_with_steps(tiny_sd):
    sizes = {}
    for steps in (10, 50):
        with crossattn.trace(tiny_sd) as tr:
            latents(tiny_sd, steps=steps)
        sizes[steps] = (tr.recorder.accumulator_bytes, tr.recorder.step_bytes)
    assert sizes[10][0] == sizes[50][0] > 0
    # the coarse trace is one (8x8 x tokens) map per step: 50 steps = 5x 10 steps
    assert sizes[50][1] == 5 * sizes[10][1]
    n_tok = 11  # start + 9 prompt tokens (8 words, "cyan" is 2) + end
    assert sizes[10][0] == 4 * 3 * 64 * n_tok * 4  # 4 bins x 3 sites (down/mid/up at 8x8) x 64 px x tokens x 4 B


def test_cfg_rows_conditional_by_default_and_negative_optional(tiny_sd):
    with crossattn.trace(tiny_sd) as default:
        latents(tiny_sd, negative_prompt="a green triangle", guidance_scale=7.5)
    with crossattn.trace(tiny_sd, capture_uncond=True) as both:
        latents(tiny_sd, negative_prompt="a green triangle", guidance_scale=7.5)
    cond, neg = both.heat_maps(), both.heat_maps(negative=True)
    assert default.n_images == both.n_images == 1
    assert neg.words == ["a", "green", "triangle"]
    assert torch.allclose(default.heat_maps().data.token_maps(), cond.data.token_maps(), atol=1e-6)
    assert not torch.allclose(neg.data.token_maps()[..., :4], cond.data.token_maps()[..., :4])
    with pytest.raises(ValueError, match="capture_uncond"):
        default.heat_maps(negative=True)


def test_batch_of_two_prompts_times_two_images(tiny_sd):
    prompts = ["a red circle", "a blue square above a green triangle"]
    with crossattn.trace(tiny_sd) as tr:
        latents(tiny_sd, prompt=prompts, num_images_per_prompt=2)
    assert tr.n_images == 4
    words = [tr.heat_maps(i).words for i in range(4)]
    assert words[0] == words[1] == ["a", "red", "circle"]
    assert words[2] == words[3] == ["a", "blue", "square", "above", "a", "green", "triangle"]
    # different noise per image -> different maps; same prompt tokens
    assert not np.allclose(tr.heat_maps(0).word("a").raw, tr.heat_maps(1).word("a").raw)
    with pytest.raises(crossattn.InputError, match="4 image"):
        tr.heat_maps(4)


def test_image_matches_a_single_generation(tiny_sd):
    """Image 1 of a batch gets the maps a batch-of-one run with the same latents would give."""
    gen = seeded(3)
    noise = torch.randn((2, 4, 16, 16), generator=gen)
    with crossattn.trace(tiny_sd) as tr:
        latents(tiny_sd, prompt=[PROMPT, PROMPT], latents=noise)
    with crossattn.trace(tiny_sd) as single:
        latents(tiny_sd, prompt=PROMPT, latents=noise[1:])
    assert torch.allclose(tr.heat_maps(1).data.token_maps(), single.heat_maps().data.token_maps(), atol=1e-5)


def test_sdxl(tiny_sdxl):
    kw = dict(num_inference_steps=3, generator=seeded(), output_type="latent", height=32, width=32)
    plain = tiny_sdxl(PROMPT, **kw).images
    kw["generator"] = seeded()
    with crossattn.trace(tiny_sdxl) as tr:
        traced = tiny_sdxl(PROMPT, **kw).images
    assert (traced - plain).abs().max().item() < 1e-5
    maps = tr.heat_maps()
    assert maps.words == ["a", "red", "circle", "left", "of", "a", "cyan", "square"]
    assert maps.word("cyan").positions == (7, 8)
    assert maps.image_size == (32, 32)
    assert {s.resolution for s in maps.sites.values()} == {(8, 8)}


def test_img2img_and_inpaint_share_the_unet(tiny_sd):
    init = np.full((32, 32, 3), 0.5, dtype=np.float32)
    img2img = StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    img2img.set_progress_bar_config(disable=True)
    kw = dict(image=init, strength=0.5, num_inference_steps=8, output_type="latent")
    plain = img2img(PROMPT, generator=seeded(), **kw).images
    with crossattn.trace(img2img) as tr:
        traced = img2img(PROMPT, generator=seeded(), **kw).images
    assert (traced - plain).abs().max().item() < 1e-5
    maps = tr.heat_maps()
    assert maps.info.steps == 4 and maps.steps == [0, 1, 2, 3]  # strength 0.5 of 8 steps
    assert maps.word("circle").array.shape == (32, 32)

    inpaint = StableDiffusionInpaintPipeline(**tiny_sd.components)
    inpaint.set_progress_bar_config(disable=True)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:, 16:] = 1
    with crossattn.trace(inpaint) as tr:
        inpaint(PROMPT, image=init, mask_image=mask, num_inference_steps=3, generator=seeded(), output_type="np")
    assert tr.heat_maps().words[-1] == "square"


def test_per_head_and_per_layer_slicing(tiny_sd3level):
    with crossattn.trace(tiny_sd3level, per_head=True, per_layer=True) as tr:
        latents(tiny_sd3level)
    with crossattn.trace(tiny_sd3level) as summed:
        latents(tiny_sd3level)
    detailed, plain = tr.heat_maps(), summed.heat_maps()
    assert detailed.data.heads == 2 and plain.data.heads == 1
    assert all(".attn2" in name for name in detailed.sites)
    # per-head, per-layer storage reduces to exactly the summed storage
    assert torch.allclose(detailed.data.token_maps(), plain.data.token_maps(), atol=1e-6)
    head0 = detailed.filter(heads=[0]).data.token_maps()
    head1 = detailed.filter(heads=[1]).data.token_maps()
    assert torch.allclose((head0 + head1) / 2, plain.data.token_maps(), atol=1e-6)
    up = detailed.filter(layers=["up_blocks.2"])
    assert set(up.blocks) == {"up"} and up.resolutions == [(16, 16)]
    with pytest.raises(ValueError, match="per_head=True"):
        plain.filter(heads=[0])
    with pytest.raises(ValueError, match="per_layer=True"):
        plain.filter(layers=["up_blocks.2"])


def test_filter_by_resolution_block_and_steps(tiny_sd3level):
    with crossattn.trace(tiny_sd3level) as tr:
        latents(tiny_sd3level, steps=8)
    maps = tr.heat_maps()
    assert set(maps.sites) == {"down.16x16", "down.8x8", "mid.4x4", "up.8x8", "up.16x16"}
    assert maps.resolutions == [(16, 16), (8, 8), (4, 4)]
    low = maps.filter(resolutions=[4])
    assert low.data.token_maps().shape[:2] == (4, 4) and set(low.sites) == {"mid.4x4"}
    assert set(maps.filter(blocks=["up"], resolutions=["16x16"]).sites) == {"up.16x16"}
    late = maps.filter(steps=slice(6, None))
    assert late.steps == [6, 7] and not torch.allclose(late.data.token_maps(), maps.data.token_maps())
    assert late.over_steps("circle")[:6].sum() == 0 and late.over_steps("circle")[6:].sum() > 0
    assert maps.over_steps("circle").shape == (8, 4, 4)  # per-step trace at the coarsest resolution
    with pytest.raises(ValueError, match="unknown blocks"):
        maps.filter(blocks=["middle"])
    with pytest.raises(ValueError, match="out of range"):
        maps.filter(steps=[8])


def test_new_call_starts_a_fresh_recording_and_maps_survive_exit():
    pipe = build_tiny_sd(seed=5)
    with crossattn.trace(pipe) as tr:
        latents(pipe, prompt="a red circle")
        first = tr.heat_maps()
        latents(pipe, prompt="a blue square")
    assert first.words == ["a", "red", "circle"]
    assert tr.heat_maps().words == ["a", "blue", "square"]
    assert tr.heat_maps().info.steps == 4


def test_explicit_path_when_the_private_flash_op_is_unavailable(tiny_sd, monkeypatch):
    """The CPU fast path uses a private torch op; without it the explicit softmax gives the same maps."""
    plain = latents(tiny_sd, guidance_scale=7.5)
    with crossattn.trace(tiny_sd) as fast:
        assert torch.equal(latents(tiny_sd, guidance_scale=7.5), plain)
    assert kernels._flash_lse_available()  # this torch has the op with the expected signature
    monkeypatch.setattr(kernels, "_FLASH_LSE", False)
    with crossattn.trace(tiny_sd) as explicit:
        assert torch.equal(latents(tiny_sd, guidance_scale=7.5), plain)
    assert torch.allclose(fast.heat_maps().data.token_maps(), explicit.heat_maps().data.token_maps(), atol=1e-6)


def test_float16_is_bit_identical_and_maps_are_float32():
    pipe = build_tiny_sd(seed=2).to(torch.float16)
    plain = latents(pipe, steps=3)
    with crossattn.trace(pipe) as tr:
        traced = latents(pipe, steps=3)
    assert plain.dtype == torch.float16 and torch.equal(plain, traced)
    maps = tr.heat_maps()
    assert maps.data.token_maps().dtype == torch.float32 and maps.word("circle").array.dtype == np.float32


def test_an_editing_processor_is_observed_as_it_computes():
    """A processor that changes the attention (here: sharper, x2 logits) keeps running; the maps show its
    attention, and the output is still the untraced one."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Sharper(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
            scale = attn.scale
            attn.scale = 2 * scale
            try:
                return _sdpa_with_scale(attn, hidden_states, encoder_hidden_states)
            finally:
                attn.scale = scale

    pipe = build_tiny_sd(seed=4)
    with crossattn.trace(pipe) as plain_trace:
        latents(pipe, steps=2)
    processors = pipe.unet.attn_processors
    pipe.unet.set_attn_processor({k: (Sharper() if ".attn2." in k else v) for k, v in processors.items()})
    plain = latents(pipe, steps=2)
    with crossattn.trace(pipe) as tr:
        assert torch.equal(latents(pipe, steps=2), plain)
    sharp, base = tr.heat_maps().data.token_maps(), plain_trace.heat_maps().data.token_maps()
    assert not torch.allclose(sharp, base, atol=1e-3)
    assert sharp.max() > base.max()  # sharper attention peaks higher


def _sdpa_with_scale(attn, hidden_states, context):
    """Cross-attention through SDPA with the layer's `scale` (what the editing processor above computes)."""
    batch = hidden_states.shape[0]
    q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
    q, k, v = (x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))


def test_non_sdpa_processors_with_their_own_scale_are_traced_exactly():
    """AttnProcessor / sliced attention scale by attn.scale: the trace's SDPA stand-in must too."""
    from diffusers.models.attention_processor import AttnProcessor

    pipe = build_tiny_sd(seed=6)
    for module in pipe.unet.modules():
        if getattr(module, "is_cross_attention", False):
            module.scale = 0.9  # as with Attention(scale_qk=False): not 1/sqrt(head_dim)
    pipe.unet.set_attn_processor(AttnProcessor())
    plain = latents(pipe, steps=2)
    before = dict(pipe.unet.attn_processors)
    with crossattn.trace(pipe) as tr:
        traced = latents(pipe, steps=2)
    assert ((traced - plain).abs().max() / plain.abs().max()).item() < 1e-5  # float rounding only
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())  # the originals are back
    pipe.enable_attention_slicing()  # sliced attention: also plain attention without SDPA
    with crossattn.trace(pipe) as sliced:
        assert ((latents(pipe, steps=2) - plain).abs().max() / plain.abs().max()).item() < 1e-5
    assert torch.allclose(sliced.heat_maps().data.token_maps(), tr.heat_maps().data.token_maps(), atol=1e-5)


def test_more_denoiser_calls_than_the_pipeline_said_keep_the_bins_they_started_with(tiny_sd):
    """A generation that runs more steps than expected (here: told 2, runs 3, below the 4 time bins) spreads the
    later ones over the bins its sums were allocated with, instead of indexing past them."""
    with crossattn.trace(tiny_sd) as tr:
        tr.expected_steps = 2
        latents(tiny_sd, steps=3)
    maps = tr.heat_maps()
    assert maps.data.sums[next(iter(maps.data.sums))].shape[0] == 2  # 2 bins, from the 2 steps said
    assert len(tr.recorder.timesteps) == 3 and sum(sum(c) for c in tr.recorder.counts.values()) > 0
    assert len(maps.over_steps("circle")) == 3
