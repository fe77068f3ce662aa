"""Video maps: frames of a tiny Wan 2.1 and CogVideoX pipeline (the per-family contract, bit-identical output and the
float64 reference per frame, is in test_families.py), the maps' frame API, saving, pictures, the CLI, refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import crossattn
from crossattn import pictures
from crossattn.cli import main
from crossattn.families import family_of
from crossattn.generation import generate
from tests.families import PROMPT, video

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wan():
    return video.build_tiny_wan()


@pytest.fixture(scope="module")
def wan_maps(wan):
    with crossattn.trace(wan, time_bins=2) as tr:
        video.run_video(wan, "wan")
    return tr.heat_maps()


def test_a_video_has_frames_each_an_image_api(wan_maps):
    maps = wan_maps
    assert maps.frames == 2 and maps.info.output_frames == [[0], [1, 2, 3, 4]]  # 5 frames, 4× in time
    assert "2 frames" in repr(maps) and maps.image_size == (64, 64)
    first, last = maps.frame(0), maps.frame(-1)
    assert first.frames == last.frames == 1 and last.data.sums["blocks"].shape == (2, 1, 4, 4, 16)
    for one in (first, last):  # every image API works on a frame
        assert crossattn.placements(one, ["hexagon"])["hexagon"].centroid is not None
        assert one.word("hexagon").array.shape == (64, 64) and one.over_steps("hexagon").shape == (2, 4, 4)
    # the video's map of a word is the mean over its frames (on the latent grid, before upsampling)
    mean = (first.word("hexagon").latent + last.word("hexagon").latent) / 2
    np.testing.assert_allclose(maps.word("hexagon").latent, mean, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(maps.over_steps("square"), (first.over_steps("square") + last.over_steps("square")) / 2,
                               rtol=1e-5, atol=1e-8)
    assert not np.allclose(first.word("hexagon").latent, last.word("hexagon").latent)  # frames differ
    with pytest.raises(crossattn.InputError, match="frame 2 out of range: these maps have 2 frames"):
        maps.frame(2)
    filtered = maps.filter(steps=[1])  # slicing keeps the frames
    assert filtered.frames == 2 and filtered.frame(1).steps == [1]


def test_per_step_maps_are_pooled_frame_by_frame(wan):
    """A coarse per-step grid is pooled within each frame, never across two frames' boundary rows."""
    with crossattn.trace(wan, time_bins=2, trace_size=2) as coarse:
        video.run_video(wan, "wan")
    with crossattn.trace(wan, time_bins=2) as full:
        video.run_video(wan, "wan")
    for k in range(2):
        fine = torch.from_numpy(full.heat_maps().frame(k).over_steps("square"))  # (steps, 4, 4)
        pooled = F.adaptive_avg_pool2d(fine[:, None], (2, 2))[:, 0].numpy()
        np.testing.assert_allclose(coarse.heat_maps().frame(k).over_steps("square"), pooled, rtol=1e-5, atol=1e-8)


def test_video_maps_save_and_load(wan_maps, tmp_path):
    wan_maps.save(tmp_path)
    back = crossattn.load_heat_maps(tmp_path)
    assert back.frames == 2 and back.info == wan_maps.info
    np.testing.assert_array_equal(back.frame(1).word("cyan#1").array, wan_maps.frame(1).word("cyan#1").array)


def test_cogvideox_frames_follow_its_latent_layout():
    pipe = video.build_tiny_cogvideox()
    with crossattn.trace(pipe, time_bins=1) as tr:
        video.run_video(pipe, "cogvideox")
    maps = tr.heat_maps()
    assert maps.frames == 3 and maps.info.output_frames == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert maps.sites["joint"].resolution == (4, 4) and maps.data.sums["joint"].shape[2:4] == (12, 4)


def test_generate_returns_the_frames_and_checks_the_frame_count(wan):
    frames, maps = generate(wan, PROMPT, steps=2, size=(64, 64), frames=5, guidance=5.0)
    assert len(frames) == 5 and frames[0].size == (64, 64) and maps.frames == 2
    assert maps.info.seed == 0 and maps.info.size == [64, 64]
    with pytest.raises(crossattn.InputError, match=r"frames must be 4·k \+ 1 for this model"):
        generate(wan, PROMPT, steps=2, size=(64, 64), frames=4)
    with pytest.raises(crossattn.InputError, match="frames apply to video pipelines"):
        generate(crossattn.load_pipeline(), PROMPT, steps=1, frames=5)


def test_video_pictures(wan_maps):
    frames = [Image.new("RGB", (64, 64), (40 * k, 90, 120)) for k in range(5)]
    assert [pictures.latent_frame_of(wan_maps, i) for i in range(5)] == [0, 1, 1, 1, 1]
    shown = pictures.video_overlay(frames, wan_maps, "hexagon")
    assert len(shown) == 5 and shown[2].size == (64, 64)
    same = [np.asarray(pictures.video_overlay([frames[1]] * 5, wan_maps, "hexagon")[i]) for i in (0, 1, 4)]
    assert np.array_equal(same[1], same[2]) and not np.array_equal(same[0], same[1])  # frames 1-4: latent frame 1
    grid = pictures.frames_grid(frames, wan_maps, ["hexagon", "square"], tile=64)
    assert grid.width > 2 * 64 and grid.height > 3 * 64  # 2 columns (frames), 3 rows (frames, 2 words)


@pytest.mark.slow
def test_cli_generate_writes_a_video_and_a_gif_per_word(wan, tmp_path, capsys):
    folder = tmp_path / "wan"
    wan.save_pretrained(folder)
    out = tmp_path / "out"
    code = main(["generate", PROMPT, "--model", str(folder), "--steps", "2", "--size", "64x64", "--frames", "5",
                 "--words", "hexagon,square", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)
    with Image.open(out / "overlays" / "00_hexagon.gif") as gif:
        assert gif.n_frames == 5
    assert (out / "grid.png").exists() and crossattn.load_heat_maps(out).frames == 2
    assert main(["generate", PROMPT, "--model", str(folder), "--frames", "4", "--out", str(tmp_path / "x")]) == 2
    assert "frames must be 4·k + 1" in capsys.readouterr().err
    # what works on images only says so, before any compute
    assert main(["placement", PROMPT, "--model", str(folder), "--out", str(tmp_path / "p")]) == 2
    assert "crossattn placement works on images; WanPipeline makes videos" in capsys.readouterr().err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    assert main(["sweep", str(prompts), "--model", str(folder), "--out", str(tmp_path / "s")]) == 2
    assert "sweeps work on image pipelines; WanPipeline makes videos" in capsys.readouterr().err
    with pytest.raises(crossattn.InputError, match="effects compares images; WanPipeline makes videos"):
        crossattn.effects(wan, PROMPT, ["square"])


def test_video_variants_not_done_are_refused_with_what_is_supported(wan):
    class WanImageToVideoPipeline:
        pass

    with pytest.raises(crossattn.InputError, match="among video pipelines crossattn traces WanPipeline, "
                                                   "CogVideoXPipeline"):
        family_of(WanImageToVideoPipeline())
    class AnimateDiffSparseControlNetPipeline:
        pass

    with pytest.raises(crossattn.InputError, match="AnimateDiffSparseControlNetPipeline is not supported yet"):
        family_of(AnimateDiffSparseControlNetPipeline())


def test_wan22_experts_are_traced_alike_into_the_same_sites():
    """Wan 2.2 A14B: the low-noise transformer runs the last step here; its layers are recorded as the first's."""
    pipe = video.build_tiny_wan(experts=True)
    ran = []
    for k, model in enumerate((pipe.transformer, pipe.transformer_2)):
        model.register_forward_pre_hook(lambda m, a, k=k: ran.append(k))
    with crossattn.trace(pipe, time_bins=2) as tr:
        video.run_video(pipe, "wan")
    assert ran == [0, 0, 1, 1]  # per step: the prompt's call, the negative's
    maps = tr.heat_maps()
    assert tr.coverage()["recorded_calls"] == {"blocks.0": 2, "blocks.1": 2} and maps.steps == [0, 1]
    assert maps.filter(steps=[1]).word("square").raw.sum() > 0  # the second expert's step has maps


def test_wan22_experts_of_different_architectures_are_refused_clearly():
    """An expert with more layers than the first transformer: refused by name, not an AttributeError from looking
    up a layer one of them lacks."""
    pipe = video.build_tiny_wan(experts=True)
    pipe.transformer_2.blocks.append(copy.deepcopy(pipe.transformer_2.blocks[-1]))
    with pytest.raises(crossattn.InputError, match="have different attention layers"):
        crossattn.trace(pipe)
    pipe.transformer, pipe.transformer_2 = pipe.transformer_2, pipe.transformer  # the larger one first
    with pytest.raises(crossattn.InputError, match="have different attention layers"):
        crossattn.trace(pipe)


def test_shapes_video_frames_and_maps_are_the_image_models_own():
    """The embedded video model adds nothing to its image model: each frame, and each frame's maps, are what the
    image pipeline makes of that frame's noise (the ground truth of benchmarks/video_eval.py rests on it) — up to
    the float noise of batching: on some CPUs the kernels sum a batch of 3 frames in another order than one image
    (measured up to 2.4e-5 on latents of unit scale)."""
    clip_pipe, image_pipe = crossattn.load_pipeline("shapes-video"), crossattn.load_pipeline()
    prompt = "a red circle left of a blue square"
    latents = torch.randn(1, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    options = dict(num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    with crossattn.trace(clip_pipe) as tr:
        clip = clip_pipe(prompt, num_frames=3, latents=latents, **options).frames
    maps = tr.heat_maps()
    assert maps.frames == 3 and maps.info.output_frames == [[0], [1], [2]]
    for f in range(3):
        with crossattn.trace(image_pipe) as one:
            image = image_pipe(prompt, latents=latents[:, :, f], **options).images
        torch.testing.assert_close(clip[:, :, f], image, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(maps.frame(f).data.token_maps(), one.heat_maps().data.token_maps(), rtol=1e-4,
                                   atol=1e-6)


def test_an_objects_track_across_frames_follows_each_frames_map(wan_maps):
    path = crossattn.track(wan_maps, "square", over="frames")
    assert path.steps == wan_maps.frames == 2
    for i, centroid in enumerate(path.centroids):  # each frame's centroid is that frame's own placement's
        own = crossattn.placements(wan_maps.frame(i), ["square"], tau=0.4)["square"].centroid
        np.testing.assert_allclose(centroid, own, atol=64 / 4)  # within one latent cell of the full-size centroid
    assert not np.allclose(path.centroids[0], path.centroids[1])
    with pytest.raises(crossattn.InputError, match="over must be 'steps' or 'frames'"):
        crossattn.track(wan_maps, "square", over="layers")
