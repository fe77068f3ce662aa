"""The demo's causal panels, its Explain tab and its video views in a real browser (Playwright + chromium), driven
as tests/test_demo.py drives the generation page: the "What if" panel, the Repair button, "Explain an image", a
video model's frames (the Frames field, the frame slider every view follows).

The server, browser and page fixtures are test_demo's (one server for this module, the embedded UNet).
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from crossattn.causal import REPAIR_SCALE
from crossattn.generation import DEFAULT_GUIDANCE, run

pytest.importorskip("gradio_client")

from crossattn.app import Models  # noqa: E402
from crossattn.app.checks import CONCEPT_METHODS, check_generation, check_view  # noqa: E402
from crossattn.app.store import Result  # noqa: E402
from crossattn.app.video import image_label  # noqa: E402
from crossattn.app.views import View, gallery_items, write_zip  # noqa: E402
from crossattn.app.whatif import check_question  # noqa: E402
from tests import test_demo  # noqa: E402
from tests.test_demo import PROMPT, STEM, User, errors_shown, expect, generate_in_page  # noqa: E402

server, browser, page = test_demo.server, test_demo.browser, test_demo.page  # its fixtures, by name here

# Known to neglect 'green square' and 'blue triangle' on the embedded UNet at seed 1, 12 steps.
NEGLECTING = "a red circle, a green square and a blue triangle"
SCENE = "a red circle left of a blue square"


def picture_at(page, selector: str) -> Image.Image:
    """The picture an image panel shows, as the browser fetched it."""
    return Image.open(io.BytesIO(page.request.get(page.locator(f"{selector} img").get_attribute("src")).body()))


def generate_with_seed(page, prompt: str, seed: int, steps: int) -> None:
    page.locator("#seed input").fill(str(seed))
    generate_in_page(page, prompt=prompt, steps=steps)


@pytest.mark.slow
def test_what_if_refuses_bad_values_before_generating_each_beside_its_field(server):
    someone = User(server)
    with pytest.raises(Exception, match="word: generate an image first"):
        someone.call("/what_if", word="circle", how="prompt", scale=0, window=":")
    someone.generate(steps=2)
    cases = [({"word": "dog"}, "word: 'dog' is not a word of the prompt; its words are: 'a', 'red'"),
             ({"word": "circle", "how": "maybe"}, "how: how must be one of prompt, attention, got 'maybe'"),
             ({"how": "attention", "window": "0:9"},
              "window: step range '0:9' is outside this generation's 2 steps: write START:STOP with 0 <= START < "
              "STOP <= 2"),
             ({"how": "attention", "window": "a:b"}, "window: bad step range 'a:b'"),
             ({"how": "attention", "scale": 3.5}, "scale: scale must be a number from 0 to 3, got 3.5")]
    for inputs, message in cases:
        with pytest.raises(Exception, match=re.escape(message)):
            someone.call("/what_if", **({"word": "circle", "how": "prompt", "scale": 0, "window": ":"} | inputs))


@pytest.mark.slow
def test_browser_what_if_shows_the_counterfactual_and_where_the_picture_changed(page):
    generate_in_page(page)
    expect(page.locator("#whatif-word input")).to_have_value("red circle")  # the first object by default
    page.get_by_role("button", name="What if?").click()
    picture = page.locator("#whatif-picture img")
    expect(picture).to_have_attribute("src", re.compile(f"{STEM}_whatif_red_circle_prompt"), timeout=60_000)
    answer = page.locator("#whatif-answer")
    expect(answer).to_contain_text("red circle deleted from the prompt (“left of a blue square”), seed 0")
    expect(answer).to_contain_text("agreement of its attention map with the change: r = ")
    shown = picture_at(page, "#whatif-picture")
    assert shown.width > 2.5 * shown.height  # attention | change | counterfactual, side by side

    page.locator("#whatif-how").get_by_text("scale its attention", exact=True).click()
    window = page.locator("#whatif-window textarea")
    window.fill("0:9")
    page.get_by_role("button", name="What if?").click()
    expect(page.locator("#whatif-window")).to_contain_text("step range '0:9' is outside this generation's 3 steps")
    window.fill("0:2")
    page.get_by_role("button", name="What if?").click()
    expect(picture).to_have_attribute("src", re.compile(f"{STEM}_whatif_red_circle_attention"), timeout=60_000)
    expect(answer).to_contain_text("its attention ×0 in steps 0:2")
    expect(page.locator("#whatif-window")).not_to_contain_text("outside")
    assert errors_shown(page) == []


@pytest.mark.slow
def test_browser_repair_is_offered_only_when_an_object_was_neglected(page):
    generate_in_page(page)  # nothing neglected in PROMPT at seed 0, 3 steps
    expect(page.locator("#verdicts")).to_contain_text("no failure found")
    expect(page.locator("#repair")).to_be_hidden()
    expect(page.locator("#repair-picture")).to_be_hidden()
    generate_with_seed(page, NEGLECTING, seed=1, steps=12)
    expect(page.locator("#verdicts")).to_contain_text("'green square' was probably neglected")
    button = page.locator("#repair")
    expect(button).to_have_text("Repair: boost green square, blue triangle")
    button.click()
    expect(page.locator("#repair-picture img")).to_have_attribute("src", re.compile("seed1_repair"), timeout=60_000)
    text = page.locator("#repair-text")
    boost = f"×{REPAIR_SCALE:g}"
    expect(text).to_contain_text(f"boosted: green square {boost}, blue triangle {boost} in steps 0:6")
    expect(text).to_contain_text("recovered: ")
    generate_in_page(page, prompt=PROMPT, steps=3)  # hidden again, its answer cleared
    expect(button).to_be_hidden()
    expect(page.locator("#repair-picture")).to_be_hidden()
    assert errors_shown(page) == []


def drawn_scene(path) -> str:
    """A red circle on the left and a blue square on the right, drawn (never generated)."""
    picture = Image.new("RGB", (64, 64), (240, 240, 236))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((6, 22, 26, 42), fill=(220, 30, 30))
    draw.rectangle((40, 24, 56, 40), fill=(30, 60, 220))
    picture.save(path)
    return str(path)


@pytest.mark.slow
def test_browser_explain_an_uploaded_image(page, tmp_path):
    page.get_by_role("tab", name="Explain an image").click()
    expect(page.locator("#explain-image")).to_contain_text("at most 10MB")
    (tmp_path / "notes.png").write_text("not a picture")
    upload = page.locator("#explain-image input[type='file']")
    upload.set_input_files(str(tmp_path / "notes.png"))
    page.locator("#caption textarea").fill(SCENE)
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(page.locator("#explain-image")).to_contain_text(
        "'notes.png' is not an image this tool can read: give a PNG, JPEG, WebP, BMP, GIF or TIFF file")
    upload.set_input_files(drawn_scene(tmp_path / "scene.png"))
    page.locator("#caption textarea").fill("   ")
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(page.locator("#caption")).to_contain_text("the caption is empty: say what the image shows")
    page.locator("#caption textarea").fill(SCENE)
    page.get_by_role("button", name="Explain", exact=True).click()
    gallery = page.locator("#explain-gallery .caption-label")
    expect(gallery).to_have_count(8, timeout=60_000)
    expect(gallery).to_have_text(SCENE.split())
    expect(page.locator("#explain-segmentation img")).to_have_attribute("src", re.compile("_segmentation"))
    assert errors_shown(page) == []


@pytest.mark.slow
def test_explain_says_what_reading_the_upload_converted(server, tmp_path):
    from gradio_client import handle_file

    path = drawn_scene(tmp_path / "scene.png")
    Image.open(path).convert("RGBA").save(path)
    gallery, segmentation, _, notes = User(server).client.predict(
        picture=handle_file(path), caption=SCENE, concepts="", model="shapes-unet", api_name="/explain")
    assert [item["caption"] for item in gallery] == SCENE.split() and Image.open(segmentation).size[0] >= 64
    assert "the image has transparency: transparent pixels are shown on white" in notes


@pytest.mark.slow
def test_browser_the_generated_image_is_sent_to_the_explain_tab(page):
    page.locator("#concepts textarea").fill("")
    generate_in_page(page, steps=1)
    page.get_by_role("button", name="Explain this image in the “Explain an image” tab").click()
    expect(page.locator("#caption textarea")).to_have_value(PROMPT)
    expect(page.locator("#explain-image img")).to_be_visible()
    page.locator("#explain-concepts textarea").fill("sky")
    page.get_by_role("button", name="Explain", exact=True).click()
    expect(page.locator("#explain-gallery .caption-label")).to_have_count(8, timeout=60_000)
    expect(page.locator("#explain-concept-gallery .caption-label")).to_have_text(["sky"])
    assert errors_shown(page) == []


# ---- videos ---------------------------------------------------------------------------------------------------
VIDEO_STEPS, VIDEO_FRAMES = 3, 4


def video_job(models: Models, frames: object, model: str = "shapes-video"):
    """The page's request for SCENE at seed 0 (its defaults otherwise) with these frames: (job, checks)."""
    return check_generation(models, SCENE, 0, VIDEO_STEPS, DEFAULT_GUIDANCE, "", model, "", "", "", CONCEPT_METHODS[0],
                            frames=frames)


@pytest.fixture(scope="module")
def video_run() -> tuple[Models, list[Image.Image], object]:
    """The video the browser test asks the page for (shapes-video, SCENE, seed 0, 3 steps, 4 frames), made here
    too: a CPU generation is deterministic, so these are the maps the page draws."""
    models = Models(None, allow_any=False)
    job, checks = video_job(models, VIDEO_FRAMES)
    checks.refuse()
    frames, maps = run(job.request)
    return models, frames, maps


def circle_tile(result: Result, frame: int) -> np.ndarray:
    """The word gallery's "circle" tile of a frame, as the page draws it (its display defaults, every step)."""
    shot = result.at(frame)
    view = View(last_step=VIDEO_STEPS, step=VIDEO_STEPS, frame=frame)
    path = gallery_items(shot, view.filtered(shot.maps), ["circle"], view)[0][0]
    return np.asarray(Image.open(path).convert("RGB"), np.float32)


@pytest.mark.slow
def test_a_videos_frames_are_checked_first_and_each_drawn_as_an_image(video_run):
    models, frames, maps = video_run
    assert len(frames) == VIDEO_FRAMES and maps.frames == VIDEO_FRAMES
    for value, message in [(40, "frames must be a whole number from 1 to 16, got 40"),
                           ("abc", "frames must be a whole number from 1 to 16, got 'abc'"),
                           (2.5, "frames must be a whole number from 1 to 16, got 2.5")]:
        assert video_job(models, value)[1].errors == {"frames": message}
    assert video_job(models, None)[0].request.frames == 8  # empty: the model's 16, capped for the demo
    assert video_job(models, 40, model="shapes-unet")[0].request.frames is None  # an image model ignores it

    result = Result.new(frames, maps)
    assert result.image is frames[0] and result.frames == frames  # every frame kept
    shot = result.at(2)
    assert shot.image is frames[2] and shot.frames is None and shot.stem == f"{result.stem}_frame2"
    assert np.array_equal(shot.maps.word("circle").array, maps.frame(2).word("circle").array)
    assert result.at(99).stem.endswith("_frame3")  # clamped to the frames there are
    tiles = [circle_tile(result, k) for k in range(VIDEO_FRAMES)]
    assert max(np.abs(tiles[0] - tile).mean() for tile in tiles[1:]) > 1  # each frame its own map
    assert image_label(result, 2) == "Video frame 2 (of 0–3)"
    assert check_view(result, View(frame=4), "frame").errors == {"frame": "frame must be a whole number from 0 to 3, "
                                                                          "got 4"}
    assert check_question(result, "circle", "prompt", 0, ":")[1].errors == {
        "word": "What if compares images; this generation is a video: generate with an image model to ask"}

    names = zipfile.ZipFile(write_zip(result, View(last_step=VIDEO_STEPS, frame=2, words="circle"))).namelist()
    for part in ("frame2_image.png", "frame2_overlay_00_circle.png", "frame2_segmentation.png", "video.gif",
                 "video_overlay_00_circle.gif", "frames_grid.png", "maps/maps.safetensors"):
        assert f"{result.stem}_{part}" in names
    video = Image.open(io.BytesIO(zipfile.ZipFile(write_zip(result, View())).read(f"{result.stem}_video.gif")))
    assert video.n_frames == VIDEO_FRAMES


def fetched(page, image) -> np.ndarray:
    """The picture an <img> shows, as the browser fetched it."""
    body = page.request.get(image.get_attribute("src")).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.float32)


def pick_model(page, name: str) -> None:
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name=name).click()


@pytest.mark.slow
def test_browser_a_video_shows_the_frame_picked_in_every_view(page, video_run):
    _, frames, maps = video_run
    result = Result.new(frames, maps)
    field, slider = page.locator("#frames"), page.locator("#frame-slider")
    expect(field).to_be_hidden()  # the default model makes images
    pick_model(page, "shapes-video")
    expect(field.locator("input")).to_have_value("8")  # the model's 16, capped for the demo
    expect(field).to_contain_text("empty = 8; at most 16 here")
    field.locator("input").fill("40")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(field).to_contain_text("frames must be a whole number from 1 to 16, got 40")  # refused before compute
    field.locator("input").fill(str(VIDEO_FRAMES))
    generate_in_page(page, prompt=SCENE, steps=VIDEO_STEPS)
    expect(page.locator("#status")).to_contain_text(f"{VIDEO_STEPS} steps, {VIDEO_FRAMES} frames, shapes-video")
    expect(page.locator("#generated-video img")).to_have_attribute("src", re.compile(f"{STEM}_video.gif"))
    expect(page.locator("#generated-image")).to_contain_text("Video frame 0 (of 0–3)")
    expect(slider).to_be_visible()
    tile = page.locator("#word-gallery button.thumbnail-item").nth(2).locator("img")  # "circle"
    expect(tile).to_have_attribute("src", re.compile(f"{STEM}_frame0_map02_circle"))
    first = fetched(page, tile)
    assert np.abs(first - circle_tile(result, 0)).mean() < 0.5

    slider.locator("input[type='range']").fill("3")
    expect(tile).to_have_attribute("src", re.compile(f"{STEM}_frame3_map02_circle"), timeout=60_000)
    last = fetched(page, tile)
    assert np.abs(last - circle_tile(result, 3)).mean() < 0.5  # that frame's map, as the views draw it
    assert np.abs(last - first).mean() > 1
    expect(page.locator("#generated-image img")).to_have_attribute("src", re.compile(f"{STEM}_frame3_image"))
    assert np.abs(fetched(page, page.locator("#generated-image img")) - np.asarray(frames[3], np.float32)).max() < 1
    expect(page.locator("#generated-image")).to_contain_text("Video frame 3 (of 0–3)")
    for view in ("#selected-map", "#segmentation", "#diagnosis-picture", "#time-frame"):  # every view follows
        expect(page.locator(f"{view} img")).to_have_attribute("src", re.compile(f"{STEM}_frame3_"))
    assert errors_shown(page) == []

    pick_model(page, "shapes-unet")  # an image model: the video's controls go away
    expect(field).to_be_hidden()
    generate_in_page(page, prompt=SCENE, steps=1)
    expect(slider).to_be_hidden()
    expect(page.locator("#generated-video")).to_be_hidden()
    expect(page.locator("#generated-image")).to_contain_text("Generated image")
    expect(tile).to_have_attribute("src", re.compile(f"{STEM}_map02_circle"))
    assert errors_shown(page) == []
