"""`crossattn.explain`: maps of a given image equal a hand-made traced denoiser call, every supported family on its
tiny pipeline, placement on a drawn scene, the caller's image untouched, refusals and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image, ImageDraw

import crossattn
from crossattn.explain import read_image
from crossattn.generation import TRUNCATED
from tests.families.pipelines import build_tiny_if, build_tiny_sana, build_tiny_sd

CAPTION = "a red circle left of a blue square"
WORDS = ["a", "red", "circle", "left", "of", "a", "blue", "square"]


def scene(width: int = 64, height: int = 64) -> Image.Image:
    """A red circle on the left and a blue square on the right, drawn as the shapes world draws them."""
    picture = Image.new("RGB", (width, height), (240, 240, 236))
    draw = ImageDraw.Draw(picture)
    s = width / 64
    draw.ellipse((6 * s, 22 * s, 26 * s, 42 * s), fill=(220, 30, 30))
    draw.rectangle((40 * s, 24 * s, 56 * s, 40 * s), fill=(30, 60, 220))
    return picture


@pytest.fixture(scope="module")
def sana():
    return build_tiny_sana()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, many times faster on a shared machine (OpenMP threads wait on
    each other); the session's setting is put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- equal to a reference built by hand ---------------------------------------------------------------------
def reference_maps(pipe, picture: Image.Image, levels: list[float], seed: int) -> crossattn.HeatMaps:
    """What explain should record: the VAE's mean latent, scaled; noised by diffusers' own add_noise (DDPM) or
    scale_noise (flow matching) with one CPU draw per level from high noise to low; one traced denoiser call each."""
    vae = pipe.vae
    pixels = torch.from_numpy(np.asarray(picture, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    shift = vae.config.shift_factor or 0.0
    latent = (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    flow = hasattr(pipe, "transformer")
    with crossattn.trace(pipe) as tr, torch.no_grad():
        tr.expected_steps = len(levels)
        if flow:
            embeds, _, pooled, _ = pipe.encode_prompt(CAPTION, None, None, do_classifier_free_guidance=False)
            scheduler = FlowMatchEulerDiscreteScheduler()
            scheduler.set_timesteps(sigmas=levels)
        else:
            embeds, _ = pipe.encode_prompt(CAPTION, "cpu", 1, False)
            scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for level in levels:
            noise = torch.randn(latent.shape, generator=generator)
            if flow:
                t = torch.tensor([level * 1000])
                noisy = scheduler.scale_noise(latent, t, noise)
                pipe.transformer(hidden_states=noisy, timestep=t, encoder_hidden_states=embeds,
                                 pooled_projections=pooled)
            else:
                t = torch.tensor([round(level * 1000)])
                pipe.unet(scheduler.add_noise(latent, noise, t), t, encoder_hidden_states=embeds)
    return tr.heat_maps()


@pytest.mark.parametrize("fixture", ["tiny_sd", "sd3"])
def test_explain_equals_a_hand_made_traced_denoiser_call(fixture, request):
    pipe = request.getfixturevalue(fixture)
    picture = scene(32, 32)
    maps = crossattn.explain(pipe, picture, CAPTION, noise_levels=[0.2, 0.6], seed=5, sites="all")
    reference = reference_maps(pipe, picture, [0.6, 0.2], seed=5)
    assert maps.words == reference.words == WORDS
    assert maps.info.timesteps == reference.info.timesteps == [600.0, 200.0]  # called from high noise to low
    assert maps.info.steps == 2 and maps.info.noise_levels == [0.6, 0.2]
    assert sorted(maps.data.sums) == sorted(reference.data.sums)
    for site, sums in reference.data.sums.items():
        torch.testing.assert_close(maps.data.sums[site], sums, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps.word("circle").array, reference.word("circle").array, rtol=1e-4, atol=1e-6)
    other = crossattn.explain(pipe, picture, CAPTION, noise_levels=[0.2, 0.6], seed=6, sites="all")
    assert not torch.equal(other.data.sums[site], maps.data.sums[site])  # the seed draws the noise
    default = crossattn.explain(pipe, picture, CAPTION, noise_levels=[0.2, 0.6], seed=5)  # sites="finest"
    finest = reference.filter(resolutions=[reference.resolutions[0]]) if reference.info.resolution_sites else reference
    assert sorted(default.sites) == sorted(finest.sites) and len(default.resolutions) == 1
    np.testing.assert_allclose(default.word("circle").array, finest.word("circle").array, rtol=1e-4, atol=1e-6)
    with pytest.raises(crossattn.InputError, match="sites must be one of 'finest', 'all'"):
        crossattn.explain(pipe, picture, CAPTION, sites="coarse")


# ---- a drawn scene with a known answer ----------------------------------------------------------------------
def test_placement_finds_the_drawn_objects_on_the_embedded_unet():
    picture = scene(128, 96)  # not the model's size: resized for it, maps back at 128x96
    maps = crossattn.explain(crossattn.load_pipeline(), picture, CAPTION)
    assert maps.image_size == (96, 128) and maps.word("red circle").array.shape == (96, 128)
    assert any("(128x96) was resized to 80x48" in note for note in maps.notes)  # aspect kept
    places = crossattn.placements(maps, ["red circle", "blue square"])
    (cx, cy), (sx, sy) = places["red circle"].centroid, places["blue square"].centroid
    assert cx < 50 < 78 < sx  # the circle is drawn at x 12-52, the square at x 80-112
    assert 30 < cy < 66 and 30 < sy < 66
    drawn = np.asarray(picture)[..., 0] > 200  # the red circle's pixels (R 220; background and blue below)
    drawn &= np.asarray(picture)[..., 2] < 100
    circle = places["red circle"].mask
    assert (circle & drawn).sum() / (circle | drawn).sum() > 0.5
    assert crossattn.check(maps, "red circle left_of blue square").passed


# ---- every supported family ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sdxl", "sd3", "flux", "pixart", "sana"])
def test_each_supported_family_maps_the_caption_over_the_image(fixture, request):
    pipe = request.getfixturevalue(fixture)
    picture = scene(40, 36)  # 40x36: not every model's multiple, and above the tiny models' 32x32 area
    maps = crossattn.explain(pipe, picture, CAPTION, noise_levels=[0.5])
    assert maps.words == WORDS
    assert maps.image_size == (36, 40)
    for word in ("circle", "blue square"):
        array = maps.word(word).array
        assert array.shape == (36, 40) and array.max() == 1.0 and array.std() > 1e-3  # not constant
    assert maps.info.steps == 1 and maps.info.explained and maps.info.guidance_scale is None
    assert all("resized" in n for n in maps.notes) and len(maps.notes) == (maps.info.model_size != [40, 36])


def test_concept_maps_of_a_given_image(tiny_sd):
    maps = crossattn.explain(tiny_sd, scene(32, 32), CAPTION, noise_levels=[0.5], concepts=["circle", "sky"])
    assert maps.concepts.image_size == (32, 32)
    sky = maps.concept("sky")
    assert sky.array.shape == (32, 32) and sky.raw.max() > 0


def test_the_callers_image_is_never_modified(tiny_sd, tmp_path):
    picture = scene(32, 32).convert("RGBA")
    before = picture.tobytes()
    array = np.asarray(scene(32, 32)).copy()
    array_before = array.copy()
    path = tmp_path / "scene.png"
    picture.save(path)
    file_before = path.read_bytes()
    for image in (picture, array, path):
        crossattn.explain(tiny_sd, image, CAPTION, noise_levels=[0.5])
    assert picture.tobytes() == before and picture.mode == "RGBA"
    assert np.array_equal(array, array_before) and path.read_bytes() == file_before


# ---- refusals and bad input ---------------------------------------------------------------------------------
class IFPipeline:  # the class name is what picks a family: DeepFloyd IF works on pixels, with no VAE
    pass


def test_families_without_an_encoder_path_are_refused():
    with pytest.raises(crossattn.InputError, match=r"explain does not support DeepFloyd IF .*supported: Stable"):
        crossattn.explain(build_tiny_if(), scene(16, 16), CAPTION)
    with pytest.raises(crossattn.InputError, match="not supported"):
        crossattn.explain(object(), scene(), CAPTION)
    inpaint = build_tiny_sd(in_channels=9)  # an inpainting UNet also takes a mask and a masked image
    with pytest.raises(crossattn.InputError, match="takes 9 input channels, not the 4 of the encoded image"):
        crossattn.explain(inpaint, scene(32, 32), CAPTION)


def test_bad_files_and_objects(tiny_sd, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    cases = [
        (str(tmp_path / "missing.png"), "no such file"),
        (str(text), "is not an image this tool can read: give a PNG, JPEG"),
        (str(tmp_path), "it is a folder"),
        (42, "cannot read an image from a int: give a file path, a PIL image or a numpy array"),
        (np.zeros((4, 4, 2), np.uint8), r"must be \(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"),
        (np.full((8, 8, 3), 2.0), r"values in \[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), "must be uint8, uint16, bool or float"),
        (np.zeros((0, 8, 3), np.uint8), "the image is empty"),
    ]
    for image, message in cases:
        with pytest.raises(crossattn.InputError, match=message):
            crossattn.explain(tiny_sd, image, CAPTION)


def test_bad_captions_and_levels(tiny_sd):
    picture = scene(32, 32)
    for caption in ("", "   ", None):
        with pytest.raises(crossattn.InputError, match="the caption is empty"):
            crossattn.explain(tiny_sd, picture, caption)
    with pytest.raises(crossattn.InputError, match="no words to map"):
        crossattn.explain(tiny_sd, picture, "🙂 🙂")
    for levels, message in (([1.5], r"numbers in \[0, 1\]"), ([], "1 to 50 numbers"), (0.5, "a list of numbers"),
                            ([0.3, 0.3], "the same timestep twice"), (["a"], "a list of numbers")):
        with pytest.raises(crossattn.InputError, match=message):
            crossattn.explain(tiny_sd, picture, CAPTION, noise_levels=levels)
    long = " ".join(["a red circle left of a blue square"] * 12)
    maps = crossattn.explain(tiny_sd, picture, long, noise_levels=[0.5])
    assert any(n.startswith(TRUNCATED) and "the model does not see" in n for n in maps.notes)


def test_huge_images_are_refused_with_the_limit(tiny_sd, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 8000)).save(huge)  # 72 million pixels, a small file: refused from its header
    with pytest.raises(crossattn.InputError, match=r"9000x8000: too large to explain; at most 67,108,864 pixels"):
        crossattn.explain(tiny_sd, huge, CAPTION)
    # the tiny model's maps are 8x8 at 32 px: more than 128 image pixels per cell could not be saved and loaded
    with pytest.raises(crossattn.InputError, match=r"1100x1100: too large for this model's maps .* 1024x1024"):
        crossattn.explain(tiny_sd, Image.new("L", (1100, 1100)), CAPTION)


def test_conversions_are_noted(tmp_path):
    grey16 = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    picture, notes = read_image(grey16)
    assert picture.mode == "RGB" and picture.size == (64, 64)
    assert notes == ["16-bit image converted to 8 bits per channel", "greyscale image converted to RGB"]
    assert np.asarray(picture)[-1, -1].tolist() == [255, 255, 255]
    path = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(path)
    from_file, notes = read_image(path)
    assert notes == ["16-bit greyscale image converted to 8-bit RGB"]
    assert np.array_equal(np.asarray(from_file), np.asarray(picture))
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    picture, notes = read_image(clear)
    assert np.asarray(picture).min() == 255 and "transparent pixels are shown on white" in notes[0]
    picture, notes = read_image(Image.new("L", (4, 4), 7))
    assert np.asarray(picture).tolist() == [[[7, 7, 7]] * 4] * 4 and notes == ["greyscale image converted to RGB"]
    picture, notes = read_image(np.ones((4, 4)))
    assert np.asarray(picture).min() == 255 and notes == ["greyscale image converted to RGB"]
