"""The Gradio demo (`crossattn.app`): through its API (gradio_client) and in a real browser (Playwright + chromium).

One server for the module (the embedded UNet, loaded once); generations use 1 to 3 steps at the native 64x64.
With CROSSATTN_DEMO_SCREENSHOT=path, the model-view test saves a full-page screenshot there (assets/demo.png).
"""

from __future__ import annotations

import ast
import json
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

from crossattn import reports  # noqa: E402
from crossattn.app import (  # noqa: E402
    EXTRA_MODELS,
    INTERNAL_ERROR,
    QUEUE_SIZE,
    Models,
    launch,
    notes_text,
    titled_map,
)
from crossattn.errors import InputError  # noqa: E402
from crossattn.generation import MAX_SEED, generate  # noqa: E402
from crossattn.heatmaps import MapInfo  # noqa: E402

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
    assets = ROOT / "crossattn/assets"  # shapes-video is built from shapes-unet's folder at load time
    assert models.choices == [n for n, folder in (("shapes-unet", "shapes-unet"), ("shapes-mmdit", "shapes-mmdit"),
                                                  ("shapes-video", "shapes-unet")) if (assets / folder).exists()]
    assert "shapes-video" not in models.image_choices  # the Explain tab reads images
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
    there is no `demo` package; the CLI imports the app (no module of it over 500 lines), never the other way round."""
    assert not (ROOT / "demo" / "__init__.py").exists()
    modules = sorted((ROOT / "crossattn/app").glob("*.py"))
    assert modules and all(len(m.read_text().splitlines()) <= 500 for m in modules)  # one job per module
    imports = [n for m in modules for n in ast.walk(ast.parse(m.read_text()))
               if isinstance(n, ast.Import | ast.ImportFrom)]
    named = [n.module or "" for n in imports if isinstance(n, ast.ImportFrom)]
    named += [a.name for n in imports if isinstance(n, ast.Import) for a in n.names]
    assert not [name for name in named if name.endswith("cli") or ".cli." in name]
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
    assert rendered["Placement"]["headers"] == reports.TABLE_HEADERS
    assert [row[0] for row in rendered["Placement"]["data"]] == ["red circle", "blue square"]
    assert all(len(row) == len(reports.TABLE_HEADERS) for row in rendered["Placement"]["data"])
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

    monkeypatch.setattr("crossattn.app.page.run", no_generation)
    someone = User(server)
    cases = [
        ({"words": "elephant"}, "'elephant' is not a word of the prompt; its words are: 'a', 'red'"),
        ({"expect": "circle left_of dog"}, "'dog' is not a word of the prompt"),
        ({"expect": "circle somewhere"}, "cannot read 'circle somewhere'"),
        ({"size": "50x50"}, "bad size 50x50"),
        ({"size": "4096x4096"}, r"bad size 4096x4096: at most 16,384 pixels here \(e.g. 128x128\)"),
        ({"steps": 101}, "steps must be a whole number from 1 to 100, got 101"),
        ({"seed": 2**70}, f"seed must be a whole number from 0 to {MAX_SEED}"),
        ({"prompt": "   "}, "the prompt is empty"),
        ({"other_model": "/etc"}, "--allow-any-model"),
        ({"concepts": "sky", "concept_method": "outputs"},
         r"concept method 'outputs' is not available for Stable Diffusion 1.x / 2.x / XL \(UNet\): it offers "
         "prompt, attention"),
    ]
    for inputs, message in cases:
        call = {"prompt": "a red circle", "steps": 3, "words": "", "expect": ""} | inputs
        with pytest.raises(Exception, match=message):
            someone.call("/generate", **call)
    monkeypatch.undo()
    assert Image.open(someone.generate("a green triangle", steps=1)["Generated image"]).size == (64, 64)


@pytest.mark.slow
def test_views_before_any_generation_say_generate_first_and_log_nothing(server, caplog, capsys):
    someone = User(server)
    someone.steps = 3
    with pytest.raises(Exception, match="generate an image first"):
        someone.render(words="red")
    with pytest.raises(Exception, match="generate an image first"):
        someone.call("/prepare_downloads", **someone.view())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_repeated_words_map_is_titled_by_the_name_it_is_picked_by():
    _, maps = generate(Models(None, allow_any=False).get(None).pipe, PROMPT, steps=1)
    assert [titled_map(maps, name).word for name in ("a", "a#1", "red circle")] == ["a", "a#1", "red circle"]


def raw_generate(server: str, **inputs) -> tuple[int, str]:
    """/generate as any HTTP client may call it (NaN and Infinity are JSON here, as Python writes them):
    (status, body) of the request, or of the result's event stream once queued."""
    values = {"prompt": "a red circle", "negative": "", "seed": 0, "steps": 1, "guidance": 5.0, "size": "",
              "model": "shapes-unet", "other_model": "", "words": "", "expect": "", "keep_heads": False,
              "concepts": "", "concept_method": "model's default", "frames": None} | inputs
    request = urllib.request.Request(server + "gradio_api/call/generate", json.dumps({"data": list(values.values())})
                                     .encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            event = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    with urllib.request.urlopen(f"{server}gradio_api/call/generate/{event}", timeout=300) as response:
        return response.status, response.read().decode()


@pytest.mark.slow
def test_numbers_through_the_api_get_one_clear_message_each(server):
    someone = User(server)
    seeds = f"seed must be a whole number from 0 to {MAX_SEED}, got"
    for inputs, message in [({"seed": "abc"}, f"{seeds} 'abc'"), ({"seed": 1.5}, f"{seeds} 1.5"),
                            ({"steps": "7"}, "steps must be a whole number from 1 to 100, got '7'")]:
        with pytest.raises(Exception, match=re.escape(message)):
            someone.call("/generate", **({"prompt": "a red circle", "steps": 1, "words": "", "expect": ""} | inputs))
    for inputs, message in [({"steps": float("nan")}, "steps must be a whole number from 1 to 100, got nan"),
                            ({"seed": float("nan")}, f"{seeds} nan"), ({"seed": float("inf")}, f"{seeds} inf"),
                            ({"guidance": float("nan")}, "guidance must be a number from 0 to 20, got nan")]:
        status, body = raw_generate(server, **inputs)
        failed = [d for d in json.loads(body)["detail"] if not d["is_valid"]]
        assert status == 422 and [(d["parameter_name"], d["message"]) for d in failed] == [(*inputs, message)]


@pytest.mark.slow
def test_the_queue_and_uploads_are_bounded(server, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr("crossattn.app.page.run", lambda *args, **kwargs: release.wait(60) and None)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(raw_generate(server)[0]))
               for _ in range(QUEUE_SIZE + 6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while answers.count(503) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        release.set()
        for t in threads:
            t.join(timeout=120)
    assert 5 <= answers.count(503) <= 6  # one runs, QUEUE_SIZE wait: the rest are refused at once
    upload = urllib.request.Request(server + "gradio_api/upload", b"--b\r\nContent-Disposition: form-data; "
                                    b'name="files"; filename="big.bin"\r\n\r\n' + b"0" * 11_000_000 + b"\r\n--b--\r\n",
                                    {"Content-Type": "multipart/form-data; boundary=b"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=60)
    assert refused.value.code == 413


def test_other_models_are_cached_by_folder_bounded_and_tell_nothing_of_server_paths(tmp_path, monkeypatch):
    class Pipeline:
        def __init__(self, source: str):
            self.source = source
            loads.append(source)

        def set_progress_bar_config(self, **options) -> None:
            pass

    loads = []
    monkeypatch.setattr("crossattn.app.limits.load_pipeline", Pipeline)
    monkeypatch.setattr("crossattn.app.limits.limits_for", lambda pipe: None)
    models = Models(None, allow_any=True)
    folders = []
    for k in range(EXTRA_MODELS + 1):
        folders.append(tmp_path / f"pipe{k}")
        folders[-1].mkdir()
        (folders[-1] / "model_index.json").write_text("{}")
    spellings = [str(folders[0]), f"{folders[0]}/", f"{tmp_path}/./pipe0", f"{tmp_path}/pipe1/../pipe0"]
    assert {models.get(name).pipe for name in spellings} == {models.get(str(folders[0])).pipe} and len(loads) == 1
    for folder in folders[1:]:
        models.get(str(folder))
    models.get(str(folders[0]))  # dropped as the least recently used: loaded again
    assert len(loads) == EXTRA_MODELS + 2
    messages = set()
    for name in ("/etc", "/no/such/folder", str(tmp_path)):  # a folder, none, a folder without a pipeline
        with pytest.raises(InputError) as refused:
            models.get(name)
        messages.add(str(refused.value).replace(repr(name), "NAME"))
    assert len(messages) == 1 and "model_index" not in messages.pop()


def test_a_long_prompts_note_is_one_short_line():
    class Maps:
        words = ["a"]
        info = MapInfo(notes=["The prompt is longer than the 77 tokens the text encoder reads; the model does not "
                              f"see: “{' '.join(['left of a blue square'] * 400)}”"])

    assert notes_text(Maps()) == ("- The prompt is longer than the 77 tokens the text encoder reads; the model does "
                                  "not see: “left of a blue square left of a …” (2000 words)")


@pytest.mark.slow
def test_internal_error_is_generic_in_the_page_and_logged_once(user, monkeypatch, caplog, capsys):
    someone, _ = user

    def broken(*args, **kwargs):
        raise RuntimeError("boom: a bug")

    monkeypatch.setattr("crossattn.app.page.placement_views", broken)
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


def error_badges(page) -> int:
    """Panels whose status tracker says "Error" (what an exception in a callback puts on every output)."""
    return page.get_by_text("Error", exact=True).count()


def blur(page, selector: str) -> None:
    page.locator(f"{selector} textarea").press("Tab")


@pytest.mark.slow
def test_browser_a_bad_value_in_a_live_field_is_shown_under_it_and_nothing_else_changes(page):
    words, layout = page.locator("#words textarea"), page.locator("#expect textarea")
    words.fill("dog")
    words.press("Enter")
    expect(page.locator("#words")).to_contain_text("generate an image first")
    layout.fill("circle near square")
    blur(page, "#expect")
    expect(page.locator("#expect")).to_contain_text("generate an image first")
    words.fill("")
    layout.fill("")
    generate_in_page(page, steps=2)
    image = src(page, "#generated-image")
    gallery = page.locator("#word-gallery .caption-label")
    expect(gallery).to_have_count(8)
    words.fill("dog")
    words.press("Enter")
    message = ("'dog' is not a word of the prompt; its words are: 'a', 'red', 'circle', 'left', 'of', 'a', 'blue', "
               "'square'")  # whole, with its first and last quote
    expect(page.locator("#words")).to_contain_text(message)
    layout.fill("circle near square")
    blur(page, "#expect")
    expect(page.locator("#expect")).to_contain_text("cannot read 'circle near square': write 'X left_of Y'")
    page.get_by_role("button", name="Generate", exact=True).click()  # refused: the fields say why
    time.sleep(2)
    expect(page.locator("#words")).to_contain_text(message)  # the messages stay
    expect(page.locator("#expect")).to_contain_text("cannot read 'circle near square'")
    assert errors_shown(page) == [] and error_badges(page) == 0
    assert src(page, "#generated-image") == image and gallery.count() == 8  # every panel keeps what it showed
    words.fill("square, circle")
    layout.fill("circle left_of square")
    words.press("Enter")
    expect(gallery).to_have_text(["square", "circle"])
    expect(page.locator("#words")).not_to_contain_text("not a word")
    expect(page.locator("#checks")).to_contain_text("circle left_of square")
    assert errors_shown(page) == [] and error_badges(page) == 0


@pytest.mark.slow
def test_browser_concept_maps_enlarge_like_word_maps(page):
    page.locator("#concepts textarea").fill("sky, square")
    generate_in_page(page, steps=1)
    concepts = page.locator("#concept-gallery button.thumbnail-item")
    expect(concepts).to_have_count(2)
    concepts.first.click()
    expect(page.locator("#selected-map")).to_contain_text("Located word “sky”, large (concept map)")
    expect(page.locator("#selected-map img")).to_have_attribute("src", re.compile(f"{STEM}_concept_sky_large"))
    page.locator("#word-gallery button.thumbnail-item").nth(5).click()  # the second "a": named and titled a#1
    expect(page.locator("#selected input")).to_have_value("a#1")
    expect(page.locator("#selected-map")).to_contain_text("Selected word, large")
    expect(page.locator("#selected-map img")).to_have_attribute("src", re.compile(f"{STEM}_a_1_large"))
    assert errors_shown(page) == []


@pytest.mark.slow
def test_browser_size_hint_follows_the_model_picked(page):
    size = page.locator("#size")
    expect(size).to_contain_text("empty = the model's 64x64; at most 16,384 pixels here (e.g. 128x128)")
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="shapes-mmdit").click()
    expect(size).to_contain_text("empty = the model's 64x64; at most 64x64 for this model")


@pytest.mark.slow
def test_browser_stop_button_ends_the_generation_and_says_so(page, caplog):
    caplog.set_level(logging.INFO, logger="crossattn.app")
    generate_in_page(page, steps=1)
    expect(page.locator("#status")).to_contain_text(f"Showing “{PROMPT}” (seed 0, 1 step, shapes-unet)")
    page.get_by_label("Prompt", exact=True).fill("a green triangle above a yellow circle")
    page.locator("#steps input[type='range']").fill("100")
    page.get_by_label("Image size (WIDTHxHEIGHT)").fill("128x128")  # the largest allowed here: a long run
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("denoising").first).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Stop", exact=True).click()
    deadline = time.monotonic() + 30
    while "generation stopped after step" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "generation stopped after step" in caplog.text and "of 100" in caplog.text
    expect(page.locator("#status")).to_have_text(f"Stopped: “a green triangle above a yellow circle” was not "
                                                 f"generated; the views below still show the previous prompt, "
                                                 f"“{PROMPT}”.")
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
def test_browser_shows_what_a_long_prompt_loses_in_one_line(page):
    prompt = " and ".join(["a red circle left of a blue square"] * 100)
    generate_in_page(page, prompt=prompt, steps=1)
    notes = page.locator("#notes")
    expect(notes).to_contain_text("the model does not see: “left of a blue square and a red …” (824 words)")
    assert "</w>" not in notes.inner_text()  # words, not tokens
    assert notes.bounding_box()["height"] < 100  # not every unseen word: the page stays its usual length


@pytest.mark.slow
def test_browser_placement_table_shows_every_column(page):
    generate_in_page(page)
    table = page.locator("#placement-table")
    headers = table.locator("thead th")
    expect(headers).to_have_count(len(reports.TABLE_HEADERS))
    assert [h.strip() for h in headers.all_inner_texts()] == reports.TABLE_HEADERS
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
