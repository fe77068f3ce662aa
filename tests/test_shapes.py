"""The shapes world, its trainer, its evaluation, and the shipped models."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import crossattn
from crossattn.shapes import evaluate as ev
from crossattn.shapes import grounding
from crossattn.shapes.model import ARCHITECTURES, MODEL_DIR, load_tokenizer
from crossattn.shapes.recipe import ARCH_NAMES, add_recipe_arguments, recipe_from_args
from crossattn.shapes.train import Recipe, Trainer, scene_batch
from crossattn.shapes.world import (
    BACKGROUND,
    COLOURS,
    SIZES,
    in_one_colour,
    naming_one,
    parse_caption,
    resample_layout,
    sample_scene,
    without_colours,
)
from crossattn.words import words_from_ids


def test_scenes_are_deterministic_and_masks_match_pixels():
    for seed in range(50):
        a, b = sample_scene(seed), sample_scene(seed)
        assert a.caption == b.caption and np.array_equal(a.image, b.image)
        covered = np.zeros(a.image.shape[:2], bool)
        for obj, mask in zip(a.objects, a.masks):
            assert mask.any() and (a.image[mask] == COLOURS[obj.colour]).all()
            assert not (covered & mask).any()  # objects never overlap
            covered |= mask
        assert (a.image[~covered] == BACKGROUND).all()
    assert sample_scene(1).caption != sample_scene(2).caption


def test_captions_name_objects_and_relations():
    two = [s for s in (sample_scene(i, n_objects=2) for i in range(40))]
    for scene in two:
        pairs, relation = parse_caption(scene.caption)
        assert pairs == [(o.colour, o.shape) for o in scene.objects]
        assert relation == scene.relation
        a, b = scene.objects
        dx, dy = b.cx - a.cx, b.cy - a.cy
        assert {"left_of": dx > 0, "right_of": dx < 0, "above": dy > 0, "below": dy < 0}[relation]
    assert any("cyan" in s.caption for s in two)  # the multi-token colour is in use


def test_resampled_layouts_keep_the_caption_true():
    rng = np.random.default_rng(0)
    moved = 0
    for seed in range(100):
        scene = sample_scene(seed)
        other = resample_layout(scene, rng)
        assert other.caption == scene.caption and other.relation == scene.relation
        assert [(o.shape, o.colour) for o in other.objects] == [(o.shape, o.colour) for o in scene.objects]
        for obj, mask in zip(other.objects, other.masks):
            assert (other.image[mask] == COLOURS[obj.colour]).all()
            if f"{obj.size} {obj.colour} {obj.shape}" in scene.caption:
                lo, hi = SIZES[obj.size]
                assert lo * 64 <= obj.r <= hi * 64
        if scene.relation:
            (ax, ay), (bx, by) = [(o.cx, o.cy) for o in other.objects]
            assert {"left_of": bx > ax, "right_of": bx < ax, "above": by > ay, "below": by < ay}[scene.relation]
        for phrase, half in (("on the left", lambda o: o.cx < 32), ("on the right", lambda o: o.cx > 32),
                             ("at the top", lambda o: o.cy < 32), ("at the bottom", lambda o: o.cy > 32)):
            if scene.caption.endswith(phrase):
                assert half(other.objects[0])
        moved += not np.array_equal(other.image, scene.image)
    assert moved == 100


def test_placing_share_draws_captions_that_place_objects():
    from crossattn.shapes.train import places_objects

    assert places_objects(sample_scene(3)) and not places_objects(sample_scene(0, n_objects=3))
    plain = scene_batch(0, 200)[2]
    focused = scene_batch(0, 200, placing_share=0.8)[2]
    assert [s.caption for s in scene_batch(0, 200, placing_share=0.0)[2]] == [s.caption for s in plain]
    share = lambda scenes: np.mean([places_objects(s) for s in scenes])  # noqa: E731
    assert share(plain) < 0.75 and share(focused) > 0.85  # ≈ 0.63 + 0.37 × 0.8
    assert [s.caption for s in scene_batch(0, 200, placing_share=0.8)[2]] == [s.caption for s in focused]


def test_scenes_in_one_colour_keep_their_layout_and_name_the_one_colour():
    scene = next(s for s in map(sample_scene, range(100)) if len(s.objects) == 2 and s.relation)
    one = in_one_colour(scene)
    colour = scene.objects[0].colour
    assert [(o.shape, o.cx, o.cy, o.r) for o in one.objects] == [(o.shape, o.cx, o.cy, o.r) for o in scene.objects]
    assert {o.colour for o in one.objects} == {colour} and one.relation == scene.relation
    assert parse_caption(one.caption) == ([(colour, o.shape) for o in scene.objects], scene.relation)
    for mask, drawn in zip(one.masks, scene.masks):
        assert np.array_equal(mask, drawn) and (one.image[mask] == COLOURS[colour]).all()
    assert in_one_colour(one).caption == one.caption  # one colour already: nothing changes


def test_same_colour_share_recolours_only_its_own_draws():
    plain, mixed = scene_batch(0, 200)[2], scene_batch(0, 200, placing_share=0.0, same_colour_share=0.5)[2]
    several = [k for k, s in enumerate(plain) if len(s.objects) > 1]
    recoloured = [k for k in several if len({o.colour for o in mixed[k].objects}) == 1]
    assert 0.35 < len(recoloured) / len(several) < 0.65
    for k, (a, b) in enumerate(zip(plain, mixed)):  # the same scenes, some in one colour
        assert b.caption == (in_one_colour(a).caption if k in recoloured else a.caption)
    with pytest.raises(ValueError, match="same_colour_share"):
        Recipe(same_colour_share=1.5)


def test_colourless_share_drops_the_colour_words_of_its_own_draws():
    plain, mixed = scene_batch(0, 200)[2], scene_batch(0, 200, colourless_share=0.3)[2]
    said = [k for k, s in enumerate(mixed) if not set(s.caption.split()) & set(COLOURS)]
    assert 0.2 < len(said) / 200 < 0.4
    for k, (a, b) in enumerate(zip(plain, mixed)):
        assert np.array_equal(a.image, b.image)
        assert b.caption == (without_colours(a).caption if k in said else a.caption)
    scene = next(s for s in plain if s.relation and "small" in s.caption)
    assert without_colours(scene).caption.split() == [w for w in scene.caption.split() if w not in COLOURS]
    with pytest.raises(ValueError, match="reference_layouts 0"):
        Recipe(colourless_share=0.3, reference_layouts=4)


def test_one_shape_share_names_one_object_by_its_shape_and_grounds_only_that_one():
    plain, mixed = scene_batch(0, 200)[2], scene_batch(0, 200, one_shape_share=0.5)[2]
    eligible = [k for k, s in enumerate(plain) if len(s.objects) > 1 and len({o.shape for o in s.objects}) ==
                len(s.objects)]
    named = [k for k in eligible if mixed[k].caption in {f"a {o.shape}" for o in plain[k].objects}]
    assert 0.3 < len(named) / len(eligible) < 0.7
    assert all(mixed[k].caption == plain[k].caption for k in range(200) if k not in named)
    k = named[0]
    scene, tokenizer = mixed[k], load_tokenizer()
    masks = grounding.token_masks([scene], [scene.caption], tokenizer)[0]
    which = next(i for i, o in enumerate(scene.objects) if scene.caption == f"a {o.shape}")
    assert torch.equal(masks[2], torch.from_numpy(scene.masks[which]).float())  # [start, "a", shape, end, ...]
    assert masks.sum() == masks[2].sum()  # the other objects' words are not in the caption: no other masks
    with pytest.raises(ValueError, match="different shapes"):
        naming_one(next(s for s in plain if len(s.objects) == 2 and s.objects[0].shape == s.objects[1].shape), 0)


def test_grounding_masks_give_a_repeated_colour_to_its_objects_in_turn():
    scene = in_one_colour(next(s for s in map(sample_scene, range(100)) if len(s.objects) == 2 and s.relation))
    tokenizer = load_tokenizer()
    masks = grounding.token_masks([scene], [scene.caption], tokenizer)[0]
    words = words_from_ids(tokenizer, tokenizer(scene.caption, padding="max_length", max_length=77).input_ids)
    colour = [w for w in words if w.text == scene.objects[0].colour]
    assert len(colour) == 2
    for word, mask in zip(colour, scene.masks):
        assert all(torch.equal(masks[p], torch.from_numpy(mask).float()) for p in word.positions)


def test_posterior_mean_target_is_the_usual_one_at_low_noise_and_the_layout_mean_at_pure_noise(tmp_path):
    trainer = Trainer(tmp_path, Recipe())
    x, captions, scenes = scene_batch(0, 3)
    gen = torch.Generator().manual_seed(0)
    latents = trainer.encode(x, gen)
    references = torch.stack([x.roll(k, dims=-1) for k in (8, 16, 24)], dim=1)  # three "other layouts" per image
    noise = torch.randn(latents.shape, generator=gen)
    for t, expect in ((100, "plain"), (999, "mean")):
        steps = torch.full((3,), t)
        noisy = trainer.noise_sched.add_noise(latents, noise, steps)
        v = trainer._posterior_mean_target(latents, noisy, steps, references, torch.Generator().manual_seed(1))
        if expect == "plain":  # the noisy latent identifies its own layout: the usual v target
            assert torch.allclose(v, trainer.noise_sched.get_velocity(latents, noise, steps), atol=1e-4)
        else:  # pure noise says nothing: v = −(mean of the four layouts' latents), up to √ᾱ ≈ 5e-5
            refs = trainer.encode(references.flatten(0, 1), torch.Generator().manual_seed(1)).unflatten(0, (3, 3))
            mean = torch.cat([latents[:, None], refs], 1).mean(1)
            assert torch.allclose(v, -mean, atol=1e-3)


def test_segmentation_and_shape_classifier_on_ground_truth():
    right, total = 0, 0
    for seed in range(200):
        scene = sample_scene(seed)
        masks = ev.colour_masks(scene.image)
        for obj, truth in zip(scene.objects, scene.masks):
            blob = ev.largest_blob(masks[obj.colour])
            assert ev.iou(blob, truth) > 0.85
            right += ev.classify_shape(truth) == obj.shape
            total += 1
    assert right / total > 0.97


def test_iou_on_hand_made_masks():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, 2:7] = True
    assert ev.iou(a, b) == pytest.approx(30 / 70)
    assert ev.iou(a, a) == 1 and ev.iou(a, ~a) == 0 and ev.iou(b & False, a & False) == 0


def test_learning_rate_warms_up_holds_and_cools_down_to_zero():
    r = Recipe(denoiser_steps=1000, lr=1e-3, warmup=100, cooldown=400)
    lrs = [r.denoiser_lr(step) for step in range(r.denoiser_steps)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert lrs[100:601] == [pytest.approx(1e-3)] * 501  # flat until the cooldown's first step
    assert lrs[800] == pytest.approx(0.5e-3) and lrs[-1] == pytest.approx(1e-3 / 400)
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))
    assert Recipe(denoiser_steps=1000, lr=1e-3, warmup=100).denoiser_lr(999) == pytest.approx(1e-3)  # no cooldown
    with pytest.raises(ValueError, match="cooldown must be in"):
        Recipe(denoiser_steps=100, cooldown=101)


def recipe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    return parser


def test_every_recipe_field_has_a_flag_and_flags_left_out_keep_the_recipe():
    parser = recipe_parser()
    flags = {a.dest: a.option_strings for a in parser._actions}
    assert all(f.metadata["help"] and f"--{f.name.replace('_', '-')}" in flags[f.name] for f in fields(Recipe))
    assert flags["denoiser_steps"] == ["--denoiser-steps", "--unet-steps"]  # the old flag still works
    assert ARCH_NAMES == tuple(ARCHITECTURES)  # the recipe names the architectures without importing them
    assert recipe_from_args(parser.parse_args([])) == Recipe()
    recipe = recipe_from_args(parser.parse_args(["--cooldown", "5", "--lr", "0.001"]))
    assert recipe == replace(Recipe(), cooldown=5, lr=0.001) and isinstance(recipe.cooldown, int)
    base = Recipe.from_file(Path(__file__).parents[1] / "recipes" / "mmdit-base.json")
    tuned = recipe_from_args(parser.parse_args(["--unet-steps", "8000", "--init-from", "elsewhere"]), base)
    assert tuned == replace(base, denoiser_steps=8000, init_from="elsewhere")
    with pytest.raises(ValueError, match=r"cooldown must be in \[0, denoiser_steps=4\], not 5"):
        recipe_from_args(parser.parse_args(["--cooldown", "5", "--denoiser-steps", "4"]))
    with pytest.raises(ValueError, match="placing_share must be in"):
        recipe_from_args(parser.parse_args(["--placing-share", "2"]))


def test_recipe_files_load_with_old_field_names_and_notes(tmp_path):
    for path in (Path(__file__).parents[1] / "recipes").glob("*.json"):
        Recipe.from_file(path)  # every shipped recipe is valid as it stands
    (tmp_path / "old.json").write_text(json.dumps({"unet_steps": 10, "_comment": "a note", "lr": 0.1}))
    assert Recipe.from_file(tmp_path / "old.json", lr=0.2) == Recipe(denoiser_steps=10, lr=0.2)
    (tmp_path / "both.json").write_text(json.dumps({"unet_steps": 10, "denoiser_steps": 10}))
    with pytest.raises(ValueError, match="both 'unet_steps' and its new name"):
        Recipe.from_file(tmp_path / "both.json")
    (tmp_path / "typo.json").write_text(json.dumps({"denoiser_step": 10}))
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_file(tmp_path / "typo.json")


def test_a_few_training_steps_reduce_the_loss(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(tmp_path, Recipe(batch=4, caption_dropout=0.0))
    x, captions, _ = scene_batch(0, 4)
    params = [p for m in trainer.parts.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)

    def loss_now() -> float:
        with torch.no_grad():
            return trainer.denoiser_loss(x, captions, torch.Generator().manual_seed(0))[0].item()

    before = loss_now()
    for _ in range(15):
        loss = trainer.denoiser_loss(x, captions, torch.Generator().manual_seed(0))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < 0.7 * before


@pytest.fixture(scope="module")
def shipped():
    pipe = crossattn.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_model_is_small_safetensors_and_loads_offline(shipped):
    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(w.endswith(".safetensors") for w in weights)
    assert type(shipped).__name__ == "StableDiffusionPipeline" and shipped.unet.dtype == torch.float32
    image = shipped("a red circle left of a blue square", num_inference_steps=4,
                    generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_eval_runs_on_a_handful_of_prompts(shipped):
    result, examples = ev.evaluate(shipped, n=3, steps=6, show=1)
    assert result["prompts"] == 3 and 0 <= result["colour_present"] <= 1
    assert len(examples) == 1 and examples[0][0].size == (64, 64)
    assert set(result["miou"]) == {"colour word", "shape word", "colour+shape", "gaussian", "uniform"}
    assert "mIoU, colour+shape" in ev.format_table(result)


def drawn_scenes(pipe, n: int, steps: int = 20):
    """For n held-out two-object prompts: the maps, the named (colour, shape) pairs, and each named object's blob
    where the model actually drew it."""
    from crossattn.generation import generate

    for k, prompt in enumerate(ev.held_out_prompts(n, two_object_share=1.0)):
        image, maps = generate(pipe, prompt, seed=k, steps=steps)
        masks = ev.colour_masks(np.asarray(image))
        named = parse_caption(prompt)[0]
        blobs = {(c, s): ev.largest_blob(masks[c]) for c, s in named}
        yield maps, named, {key: blob for key, blob in blobs.items() if blob.sum() >= 16}


def near(point: tuple[float, float], blob: np.ndarray, px: float = 3) -> bool:
    """Is the point within px pixels of the blob?"""
    ys, xs = np.nonzero(blob)
    return bool(np.min(np.hypot(xs + 0.5 - point[0], ys + 0.5 - point[1])) <= px)


def test_heat_maps_find_the_objects_actually_drawn(shipped):
    """Ground truth from pixels: each drawn object's heat map sits on it, and left/right verdicts agree."""
    on_object, ious, objects, agree, pairs = 0, [], 0, 0, 0
    for maps, named, drawn in drawn_scenes(shipped, 12):
        for (colour, shape), blob in drawn.items():
            place = crossattn.placements(maps, [f"{colour} {shape}"])[f"{colour} {shape}"]
            objects += 1
            on_object += near(place.centroid, blob)
            ious.append(ev.iou(place.mask, blob))
        if len(drawn) == 2:
            (ca, sa), (cb, sb) = named
            pixels_say = ev.centroid(drawn[named[0]])[0] < ev.centroid(drawn[named[1]])[0]
            attention_says = crossattn.check(maps, f"{ca} {sa} left_of {cb} {sb}", margin=0.0).passed
            pairs += 1
            agree += pixels_say == attention_says
    assert objects >= 12 and on_object / objects >= 0.8
    assert np.mean(ious) >= 0.4
    assert pairs >= 6 and agree / pairs >= 0.8


def test_training_resumes_and_exports_a_loadable_pipeline(tmp_path):
    from crossattn.shapes.train import train

    tiny = dict(vae_steps=2, vae_batch=2, batch=2, save_every=1, sample_every=10_000)
    train(tmp_path / "run", Recipe(denoiser_steps=2, **tiny))
    first = (tmp_path / "run" / "unet" / "ema_unet.safetensors").read_bytes()
    trainer = train(tmp_path / "run", Recipe(denoiser_steps=3, **tiny))  # resumes at step 2, runs step 3 only
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("vae scaling factor") == 1  # the VAE phase was not redone
    assert '"step": 3' in (tmp_path / "run" / "unet" / "state.json").read_text()
    assert (tmp_path / "run" / "unet" / "ema_unet.safetensors").read_bytes() != first
    out = trainer.export(tmp_path / "export")
    pipe = crossattn.load_pipeline(out, device="cpu")
    assert pipe.unet.dtype == torch.float32 and pipe.vae.config.scaling_factor != 0.18215


def test_grounding_loss_on_hand_made_attention():

    # A 4x4 grid where token 1 names an object covering the left half.
    token_masks = torch.zeros(1, 77, 4, 4)
    token_masks[0, 1, :, :2] = 1
    left = torch.arange(16) % 4 < 2
    focused = torch.zeros(1, 1, 16, 77)
    focused[0, 0, left, 1] = 1  # object pixels attend to their word only
    focused[0, 0, ~left, 0] = 1  # background pixels to the start token
    uniform = torch.full((1, 1, 16, 77), 1 / 77)
    assert grounding.grounding_loss([focused], token_masks, coverage=True).item() < 1e-6
    assert grounding.grounding_loss([uniform], token_masks, coverage=True).item() == pytest.approx(0.5)
    assert grounding.grounding_loss([uniform], token_masks).item() == pytest.approx(0.5)
    peaked = torch.zeros(1, 1, 16, 77)
    peaked[0, 0, 4, 1] = 1  # all of the word's attention on one pixel of its object
    assert grounding.grounding_loss([peaked], token_masks).item() < 1e-6  # the mass term is satisfied ...
    assert grounding.grounding_loss([peaked], token_masks, coverage=True).item() == pytest.approx(7 / 8)  # not coverage


def test_fine_tuning_starts_from_the_shipped_weights(tmp_path):
    from crossattn.shapes.train import train

    recipe = Recipe(init_from=str(MODEL_DIR), denoiser_steps=1, batch=2, lr=1e-6, save_every=1, sample_every=10_000,
                    weighting="clamped", grounding_start=0, coverage_start=0)
    trainer = train(tmp_path / "run", recipe)
    assert not (tmp_path / "run" / "vae").exists()  # the VAE phase is skipped
    tuned = crossattn.load_pipeline(trainer.export(tmp_path / "export"), device="cpu", dtype=torch.float16)
    original = crossattn.load_pipeline(device="cpu", dtype=torch.float16)
    for part in ("vae", "unet", "text_encoder"):
        a, b = getattr(tuned, part).state_dict(), getattr(original, part).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            new, old = a[key].float(), b[key].float()
            if part == "vae":  # not trained: carried over bit for bit
                assert torch.equal(new, old), key
            else:
                assert (new - old).abs().max() < 1e-2, key  # one step at lr 1e-6 barely moves anything
    assert tuned.vae.config.scaling_factor == original.vae.config.scaling_factor
    with pytest.raises(ValueError, match="was started with init_from="):
        Trainer(tmp_path / "run", Recipe())  # resuming a fine-tune without its starting point
    with pytest.raises(FileNotFoundError, match="expected a diffusers pipeline folder"):
        train(tmp_path / "bad", Recipe(init_from=str(tmp_path / "nowhere"), denoiser_steps=1, batch=2))
    stages = (tmp_path / "run" / "stages.jsonl").read_text().splitlines()
    assert len(stages) == 1 and '"weighting": "clamped"' in stages[0]  # every invocation's options, kept


def test_training_never_draws_held_out_scenes():
    from crossattn.shapes.world import HELD_OUT_SEED, training_scene

    assert training_scene(HELD_OUT_SEED - 1).caption
    with pytest.raises(ValueError, match="held-out range"):
        training_scene(HELD_OUT_SEED)
    with pytest.raises(ValueError, match="held-out range"):  # a large run seed with a placing share overflows
        scene_batch(HELD_OUT_SEED - 2, 4, placing_share=1.0)


def test_mmdit_training_forward_equals_the_pipeline_forward():
    """Training feeds one zero row for the 256 T5 slots (logit + ln 256): the same function as the pipeline's."""
    from crossattn.shapes.model import sink_logit, untrained_pipeline

    pipe = untrained_pipeline(0, "mmdit")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.transformer.parameters():  # random adaLN-zero blocks are near identities: make it non-trivial
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        captions = ["a red circle left of a blue square", ""]
        full, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False)
        short, _, _, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False,
                                            max_sequence_length=1)
        assert full.shape[1] == 77 + 256 and short.shape[1] == 78
        x, t = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([700.0, 100.0])
        reference = pipe.transformer(x, timestep=t, encoder_hidden_states=full, pooled_projections=pooled).sample
        store = grounding.install(pipe.transformer, sink_logit(), rows=1)
        fast = pipe.transformer(x, timestep=t, encoder_hidden_states=short, pooled_projections=pooled).sample
        store.active = True
        explicit = pipe.transformer(x, timestep=t, encoder_hidden_states=short, pooled_projections=pooled).sample
    assert torch.allclose(fast, reference, atol=1e-5) and torch.allclose(explicit, reference, atol=1e-5)
    assert len(store.probs) == 8 and store.probs[0].shape == (1, 4, 256, 77)  # 8 joint blocks, first row only


def test_mmdit_flow_target_and_a_resumable_run(tmp_path):
    from crossattn.shapes.train import train

    trainer = Trainer(tmp_path / "probe", Recipe(arch="mmdit", init_from="shapes-unet"))
    trainer.load_starting_weights()
    x, _, _ = scene_batch(0, 2)
    gen = torch.Generator().manual_seed(0)
    latents = trainer.encode(x, gen)
    references = torch.stack([x.roll(k, dims=-1) for k in (8, 16)], dim=1)
    noise = torch.randn(latents.shape, generator=gen)
    low = torch.full((2,), 50.0)  # σ = 0.05: the noisy latent identifies its own layout
    noisy = 0.95 * latents + 0.05 * noise
    target = trainer._posterior_mean_target(latents, noisy, low, references, torch.Generator().manual_seed(1))
    assert torch.allclose(target, noise - latents, atol=1e-3)
    tiny = dict(arch="mmdit", init_from="shapes-unet", batch=2, save_every=1, sample_every=10_000, grounding_start=1,
                grounding_batch=1, high_noise_share=0.5, reference_layouts=1)
    train(tmp_path / "run", Recipe(denoiser_steps=1, **tiny))
    trainer = train(tmp_path / "run", Recipe(denoiser_steps=2, **tiny))  # resumes at step 1, runs step 2 (grounded)
    assert json.loads((tmp_path / "run" / "unet" / "state.json").read_text())["step"] == 2
    pipe = crossattn.load_pipeline(trainer.export(tmp_path / "export"), device="cpu")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_shipped_mmdit_is_small_traces_exactly_and_finds_the_objects():
    """The embedded MMDiT: ≤ 25 MB of safetensors, loads by name offline, traced output bit-identical (concepts on),
    and its heat maps sit on the objects it draws."""
    from crossattn.models import asset_path

    files = [p for p in asset_path("shapes-mmdit").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p.name for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(w.endswith(".safetensors") for w in weights)
    pipe = crossattn.load_pipeline("shapes-mmdit", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    prompt = "a red circle left of a blue square"
    call = dict(num_inference_steps=6, guidance_scale=5.0, output_type="np")
    plain = pipe(prompt, generator=torch.Generator().manual_seed(0), **call).images
    with crossattn.trace(pipe, concepts=["circle", "square", "background"]) as tr:
        traced = pipe(prompt, generator=torch.Generator().manual_seed(0), **call).images
    assert np.array_equal(plain, traced)
    maps = tr.heat_maps()
    assert maps.sites and all(site.startswith("joint") for site in maps.sites)
    assert maps.concept("circle").array.shape == (64, 64)
    on_object, objects = 0, 0
    for maps, _, drawn in drawn_scenes(pipe, 6, steps=10):
        for (colour, shape), blob in drawn.items():
            objects += 1
            on_object += near(crossattn.placements(maps, [f"{colour} {shape}"])[f"{colour} {shape}"].centroid, blob)
    assert objects >= 6 and on_object / objects >= 0.7
