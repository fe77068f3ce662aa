"""The Gradio demo (`crossattn.app`): through its API (gradio_client) and in a real browser (Playwright + chromium).

One server for the module (the embedded UNet, loaded once); generations use 1 to 3 steps at the native 64x64.
With CROSSATTN_DEMO_SCREENSHOT=path, the model-view test saves a full-page screenshot there (assets/demo.png).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")

from crossattn import placement  # noqa: E402
from crossattn.app import INTERNAL_ERROR, Models, launch  # noqa: E402
from crossattn.errors import InputError  # noqa: E402
from crossattn.generation import MAX_SEED  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PROMPT = "a red circle left of a blue square"
STEM = "a_red_circle_left_of_a_blue_square_seed0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    app, url = launch(port=free_port(), block=False)
    yield url
    app.close()


class User:
    """One user of the demo through its API: a gradio_client session, with its own maps on the server.
    Results come back as {output label: value}."""

    def __init__(self, url: str):
        self.client = gradio_client.Client(url, verbose=False)
        endpoints = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        self.labels = {name: [r["label"] for r in e["returns"]] for name, e in endpoints.items()}

    def call(self, api_name: str, **inputs) -> dict:
        values = self.client.predict(**inputs, api_name=api_name)
        return dict(zip(self.labels[api_name], values if len(self.labels[api_name]) > 1 else [values]))

    def generate(self, prompt: str = PROMPT, steps: int = 3, **inputs) -> dict:
        self.steps = steps  # the step sliders now end here
        return self.call("/generate", prompt=prompt, steps=steps, words="", expect="", **inputs)

    def view(self, **view) -> dict:
        """Display settings: the page's defaults, the step sliders over the last generation's steps."""
        return {"words": "", "expect": "", "selected": None, "last_step": self.steps, "step": self.steps} | view

    def render(self, **view) -> dict:
        return self.call("/render", **self.view(**view))


@pytest.fixture(scope="module")
def user(server) -> tuple[User, dict]:
    """A user who generated the standard prompt (3 steps), with what /generate returned."""
    someone = User(server)
    return someone, someone.generate()


def captions(rendered: dict) -> list[str]:
    return [item["caption"] for item in rendered["Per-word heat maps"]]


# ---- API ------------------------------------------------------------------------------------------------------
def test_binds_localhost_only_and_serves_no_arbitrary_path(server):
    assert server.startswith("http://127.0.0.1:")
    for route in ("gradio_api/file=/etc/passwd", "file=/etc/passwd", "gradio_api/file=../../../../etc/passwd"):
        try:
            with urllib.request.urlopen(server + route, timeout=30) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            assert err.code in (403, 404)
        else:
            assert b"root:" not in body


def test_only_models_on_disk_are_offered():
    models = Models(None, allow_any=False)
    assert models.choices == [n for n in ("shapes-unet", "shapes-mmdit") if (ROOT / "crossattn/assets" / n).exists()]
    with pytest.raises(InputError, match="--allow-any-model"):
        models.get("/etc")


def test_busy_port_is_one_line_naming_the_option(server):
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(InputError, match=f"port {port} .* in use: pick another with --port") as caught:
        launch(port=port, block=False)
    assert "GRADIO_SERVER_PORT" not in str(caught.value)


NOT_INSTALLED = """
import runpy, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f)]  # as if crossattn were not installed
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_entry_point_runs_from_a_checkout_and_the_app_never_imports_the_cli(tmp_path):
    """`python demo/app.py` (what a hosted demo runs) reaches `crossattn demo` without an installed package;
    there is no `demo` package; the CLI imports the app, never the other way round."""
    assert not (ROOT / "demo" / "__init__.py").exists()
    imports = [n for n in ast.walk(ast.parse((ROOT / "crossattn/app.py").read_text())) if isinstance(n, ast.ImportFrom)]
    assert not [n.module for n in imports if n.module and n.module.endswith("cli")]
    out = subprocess.run([sys.executable, "-c", NOT_INSTALLED, str(ROOT / "demo/app.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0 and "--allow-any-model" in out.stdout, out.stderr


@pytest.mark.slow
def test_generate_then_render_every_view(user):
    someone, generated = user
    assert Image.open(generated["Generated image"]).size == (64, 64)
    assert Path(generated["Generated image"]).name == f"{STEM}_image.png"
    assert generated["Step"]["maximum"] == 3 and generated["Last step"]["value"] == 3  # steps counted 1..N
    assert generated["Blocks (none ticked = all)"]["value"] == ["down", "mid", "up"]
    rendered = someone.render()
    assert captions(rendered) == ["a", "red", "circle", "left", "of", "a", "blue", "square"]
    assert Path(rendered["Per-word heat maps"][2]["image"]).name == f"{STEM}_map02_circle.png"
    assert rendered["Placement"]["headers"] == placement.TABLE_HEADERS
    assert [row[0] for row in rendered["Placement"]["data"]] == ["red circle", "blue square"]
    assert all(len(row) == len(placement.TABLE_HEADERS) for row in rendered["Placement"]["data"])
    assert "red circle left_of blue square" in rendered["Layout checks"]
    assert rendered["Selected word"]["value"] == "red circle"  # the first object by default
    assert Path(rendered["Map at this step"]).name == f"{STEM}_red_circle_step3.png"
    assert "no failure found" in rendered["Verdicts"] or "neglected" in rendered["Verdicts"]
    assert Path(rendered["Each object's region, with its verdict"]).name == f"{STEM}_diagnosis.png"


@pytest.mark.slow
def test_other_words_are_located_beside_the_prompts_words(server):
    someone = User(server)
    someone.generate(concepts="square, background, sky")
    rendered = someone.render()
    located = rendered["Other words located (concept maps: each pixel's share among them)"]
    assert [item["caption"] for item in located] == ["square", "background", "sky"]
    assert Image.open(located[0]["image"]).size == (256, 256)
    someone.generate(concepts="square, sky", model="shapes-mmdit", concept_method="attention")
    again = someone.render()["Other words located (concept maps: each pixel's share among them)"]
    assert [item["caption"] for item in again] == ["square", "sky"]


@pytest.mark.slow
def test_downloads_are_one_zip_written_when_asked(user):
    someone, _ = user
    archive = someone.call("/prepare_downloads", **someone.view(words="red, square"))
    names = zipfile.ZipFile(archive["Everything at the current settings (zip)"]).namelist()
    assert Path(archive["Everything at the current settings (zip)"]).name == f"{STEM}_all.zip"
    for part in ("image.png", "overlay_00_red.png", "overlay_01_square.png", "segmentation.png", "timeline.png",
                 "maps/maps.safetensors", "maps/heatmaps.json", "placement.json"):
        assert f"{STEM}_{part}" in names


@pytest.mark.slow
def test_bad_input_is_one_line_checked_before_generating(server, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("generated despite bad input")

    monkeypatch.setattr("crossattn.app.generate", no_generation)
    someone = User(server)
    cases = [
        ({"words": "elephant"}, "'elephant' is not a word of the prompt; its words are: 'a', 'red'"),
        ({"expect": "circle left_of dog"}, "'dog' is not a word of the prompt"),
        ({"expect": "circle somewhere"}, "cannot read 'circle somewhere'"),
        ({"size": "50x50"}, "bad size 50x50"),
        ({"size": "4096x4096"}, r"bad size 4096x4096: at most 16,384 pixels here \(e.g. 128x128\)"),
        ({"steps": 101}, "maximum value 100"),
        ({"seed": 2**70}, f"seed must be a whole number from 0 to {MAX_SEED}"),
        ({"prompt": "   "}, "the prompt is empty"),
        ({"other_model": "/etc"}, "--allow-any-model"),
        ({"concepts": "sky", "concept_method": "outputs"},
         r"concept method 'outputs' is not available for Stable Diffusion 1.x / 2.x / XL \(UNet\): it offers "
         "attention"),
    ]
    for inputs, message in cases:
        call = {"prompt": "a red circle", "steps": 3, "words": "", "expect": ""} | inputs
        with pytest.raises(Exception, match=message):
            someone.call("/generate", **call)
    monkeypatch.undo()
    assert Image.open(someone.generate("a green triangle", steps=1)["Generated image"]).size == (64, 64)


@pytest.mark.slow
def test_internal_error_is_generic_in_the_page_and_logged_once(user, monkeypatch, caplog, capsys):
    someone, _ = user

    def broken(*args, **kwargs):
        raise RuntimeError("boom: a bug")

    monkeypatch.setattr("crossattn.app.placement_views", broken)
    with pytest.raises(Exception) as caught:
        someone.render()
    assert INTERNAL_ERROR in str(caught.value) and "boom" not in str(caught.value)
    logged = [r for r in caplog.records if r.name == "crossattn.app" and r.levelno == logging.ERROR]
    assert len(logged) == 1 and "boom: a bug" in caplog.text and logged[0].exc_info
    assert "Traceback" not in capsys.readouterr().err  # Gradio does not print it a second time
    monkeypatch.undo()
    assert captions(someone.render())  # still serving


@pytest.mark.slow
def test_two_concurrent_users_get_their_own_maps(server):
    prompts = {"a": "a yellow square above a cyan circle", "b": "a green triangle on the left"}
    results = {}

    def visit(key: str) -> None:
        someone = User(server)
        someone.generate(prompts[key], steps=2)
        results[key] = someone.render()

    threads = [threading.Thread(target=visit, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for key, prompt in prompts.items():
        assert " ".join(captions(results[key])) == prompt


GIVE_UP = """
import sys, time, gradio_client
client = gradio_client.Client(sys.argv[1], verbose=False)
job = client.submit(prompt="a red circle", steps=100, size="128x128", words="", expect="", api_name="/generate")
while not (job.status().progress_data or job.done()):
    time.sleep(0.05)
print("denoising", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation(server, caplog):
    caplog.set_level(logging.INFO, logger="crossattn.app")
    quitter = subprocess.Popen([sys.executable, "-c", GIVE_UP, server], stdout=subprocess.PIPE, text=True)
    try:
        assert quitter.stdout.readline().strip() == "denoising"
    finally:
        quitter.kill()
        quitter.wait()
    deadline = time.monotonic() + 30
    while "generation stopped after step" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "generation stopped after step" in caplog.text and "of 100" in caplog.text
    start = time.monotonic()
    User(server).generate(steps=1)
    assert time.monotonic() - start < 60  # the abandoned 100 steps did not hold the queue


# ---- browser --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (scripts/setup.sh --dev installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    tab = browser.new_page()
    tab.goto(server)
    yield tab
    tab.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def generate_in_page(page, prompt: str = PROMPT, steps: int = 3, keep_heads: bool = False) -> None:
    """Fill the form, press Generate and wait until the views are drawn."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.locator("#steps input[type='range']").fill(str(steps))
    if keep_heads:
        page.get_by_label("Keep every layer and head").check()
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#generated-image img")).to_be_visible(timeout=120_000)
    wait_until_idle(page)


def wait_until_idle(page) -> None:
    expect(page.locator("[data-testid='status-tracker']:not(.hide)")).to_have_count(0, timeout=120_000)


def errors_shown(page) -> list[str]:
    return page.locator("[data-testid='toast-body']").all_inner_texts()


def src(page, selector: str) -> str:
    return page.locator(f"{selector} img").first.get_attribute("src")


@pytest.mark.slow
def test_browser_one_step_draws_every_panel(page):
    generate_in_page(page, steps=1)
    expect(page.locator("#word-gallery .caption-label")).to_have_count(8)
    for view in ("#selected-map", "#segmentation", "#time-frame", "#animation", "#paths"):
        expect(page.locator(f"{view} img")).to_be_visible()
    expect(page.locator("#time-slider")).to_be_hidden()  # one step: nothing to scrub
    assert errors_shown(page) == []


@pytest.mark.slow
def test_browser_gallery_click_picks_the_word_shown(page):
    generate_in_page(page)
    words = page.locator("#words textarea")
    words.fill("square, circle")
    words.press("Enter")
    gallery = page.locator("#word-gallery")
    expect(gallery.locator(".caption-label")).to_have_text(["square", "circle"])
    gallery.locator("button.thumbnail-item").first.click()
    expect(page.locator("#selected input")).to_have_value("square")
    expect(page.locator("#selected-map img")).to_have_attribute("src", re.compile(f"{STEM}_square_large"))
    words.fill("red")  # typed, not applied: the gallery still shows square and circle
    gallery.locator("button.thumbnail-item").nth(1).click()
    expect(page.locator("#selected input")).to_have_value("circle")
    expect(page.locator("#time-frame img")).to_have_attribute("src", re.compile(f"{STEM}_circle_step3"))
    assert errors_shown(page) == []


@pytest.mark.slow
def test_browser_display_and_filter_changes_redraw_every_view(page):
    generate_in_page(page)
    views = ("#word-gallery", "#selected-map", "#time-frame", "#animation", "#segmentation", "#paths")
    before = {v: src(page, v) for v in views}
    page.get_by_label("Colour map").click()
    page.get_by_role("option", name="hot").click()
    for view in views[:4]:  # drawn with the colour map
        expect(page.locator(f"{view} img").first).not_to_have_attribute("src", before[view], timeout=60_000)
    before = {v: src(page, v) for v in views}
    page.locator("#first-step input[type='range']").fill("3")  # live, no button: only the last step's maps remain
    for view in ("#word-gallery", "#selected-map", "#animation", "#paths"):  # (the frame shows step 3: unchanged)
        expect(page.locator(f"{view} img").first).not_to_have_attribute("src", before[view], timeout=60_000)
    assert errors_shown(page) == []


@pytest.mark.slow
def test_browser_stop_button_ends_the_generation(page, caplog):
    caplog.set_level(logging.INFO, logger="crossattn.app")
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.locator("#steps input[type='range']").fill("100")
    page.get_by_label("Image size (WIDTHxHEIGHT)").fill("128x128")  # the largest allowed here: a long run
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("denoising").first).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Stop", exact=True).click()
    deadline = time.monotonic() + 30
    while "generation stopped after step" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "generation stopped after step" in caplog.text and "of 100" in caplog.text
    page.get_by_label("Image size (WIDTHxHEIGHT)").fill("")
    generate_in_page(page, steps=2)  # the queue is free again
    expect(page.locator("#word-gallery .caption-label")).to_have_count(8)


@pytest.mark.slow
def test_browser_emoji_prompt_shows_the_image_and_says_there_are_no_words(page):
    generate_in_page(page, prompt="🙂 🎉", steps=1)
    expect(page.locator("#notes")).to_contain_text("no words to map")
    expect(page.locator("#generated-image img")).to_be_visible()
    assert errors_shown(page) == []


@pytest.mark.slow
def test_browser_shows_what_a_long_prompt_loses(page):
    prompt = " and ".join(["a red circle left of a blue square"] * 10)
    generate_in_page(page, prompt=prompt, steps=1)
    notes = page.locator("#notes")
    expect(notes).to_contain_text("the model does not see")
    expect(notes).to_contain_text("left of a blue square")  # words, not tokens
    assert "</w>" not in notes.inner_text()


@pytest.mark.slow
def test_browser_placement_table_shows_every_column(page):
    generate_in_page(page)
    table = page.locator("#placement-table")
    headers = table.locator("thead th")
    expect(headers).to_have_count(len(placement.TABLE_HEADERS))
    assert [h.strip() for h in headers.all_inner_texts()] == placement.TABLE_HEADERS
    right = table.bounding_box()["x"] + table.bounding_box()["width"]
    for header in headers.all():
        header.scroll_into_view_if_needed()
        box = header.bounding_box()
        assert box["width"] > 20 and box["x"] + box["width"] <= right + 1  # inside the table, not cut off
    expect(table).to_contain_text("position decided")
    expect(table).to_contain_text("step ")


@pytest.mark.slow
def test_browser_model_view_grid_of_layers_and_heads(page, tmp_path):
    expect(page.locator("#layer-head-grid")).to_be_hidden()  # off by default: the default trace stays light
    generate_in_page(page, steps=2, keep_heads=True)
    grid = page.locator("#layer-head-grid")
    expect(grid.locator("button.thumbnail-item")).to_have_count(7 * 4)  # 7 cross-attention layers x 4 heads
    expect(grid.locator(".caption-label").nth(5)).to_have_text("L1 h1")
    grid.locator("button.thumbnail-item").nth(5).click()
    cell = page.locator("#cell")
    expect(cell).to_contain_text("layer L1 = down_blocks.1.attentions.0.transformer_blocks.0.attn2, head 1")
    expect(cell.locator("img")).to_have_attribute("src", re.compile(f"{STEM}_red_circle_L1_h1_large"))
    assert errors_shown(page) == []
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    if os.environ.get("CROSSATTN_DEMO_SCREENSHOT"):  # how assets/demo.png is made
        page.screenshot(path=os.environ["CROSSATTN_DEMO_SCREENSHOT"], full_page=True)
