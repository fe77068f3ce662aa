"""The Gradio demo, through its API (gradio_client) and in a real browser (Playwright + Debian's chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")

from demo.app import EMBEDDED, launch  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    app, url = launch(port=free_port(), block=False)
    yield url
    app.close()


def call_generate(url: str, prompt: str, words: str = "", size: str = "", expect: str = ""):
    client = gradio_client.Client(url, verbose=False)
    return client.predict(prompt, "", 3, 8, 5.0, size, EMBEDDED, words, expect, 0.5, "jet", api_name="/generate")


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


def test_generate_returns_image_and_one_overlay_per_word(server):
    out = call_generate(server, "a red circle left of a blue square")
    image, gallery, table = Image.open(out[0]), out[1], out[3]
    assert image.size == (64, 64)
    assert [item["caption"] for item in gallery] == ["a", "red", "circle", "left", "of", "a", "blue", "square"]
    assert Image.open(gallery[0]["image"]).size == (256, 256)
    assert [row[0] for row in table["data"]] == ["red", "circle", "blue", "square"]
    assert "red circle left_of blue square" in out[4]
    downloads = sorted(Path(p).name for p in out[6])
    assert {"maps.safetensors", "heatmaps.json", "placement.json", "segmentation.png"} <= set(downloads)
    assert out[10]["maximum"] == 7  # the time slider spans the 8 steps


def test_bad_input_is_a_message_and_the_app_keeps_serving(server):
    with pytest.raises(Exception, match="'elephant' is not a word of the prompt; its words are: 'a', 'red'"):
        call_generate(server, "a red circle", words="elephant")
    with pytest.raises(Exception, match="bad size 50x50"):
        call_generate(server, "a red circle", size="50x50")
    with pytest.raises(Exception, match="the prompt is empty"):
        call_generate(server, "   ")
    with pytest.raises(Exception, match="cannot read"):
        call_generate(server, "a red circle", expect="circle somewhere")
    client = gradio_client.Client(server, verbose=False)
    with pytest.raises(Exception, match="--allow-any-model"):
        client.predict("a red circle", "", 0, 4, 5.0, "", "/etc", "", "", 0.5, "jet", api_name="/generate")
    assert len(call_generate(server, "a green triangle")[1]) == 3  # still serving


def test_two_concurrent_users_get_their_own_maps(server):
    prompts = {"a": "a yellow square above a cyan circle", "b": "a green triangle on the left"}
    results = {}

    def user(key: str) -> None:
        results[key] = call_generate(server, prompts[key])

    threads = [threading.Thread(target=user, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for key, prompt in prompts.items():
        captions = [item["caption"] for item in results[key][1]]
        assert " ".join(captions) == prompt


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (scripts/setup.sh --dev installs it)")
def test_browser_generate_gallery_and_time_slider(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(server)
            prompt = page.get_by_label("Prompt", exact=True)
            prompt.fill("a small green triangle above a yellow circle")
            page.get_by_role("button", name="Generate", exact=True).click()
            gallery = page.locator("#word-gallery")
            expect(gallery.get_by_text("triangle", exact=True)).to_be_visible(timeout=120_000)
            captions = [c.strip() for c in gallery.locator(".caption-label").all_inner_texts()]
            assert captions == ["a", "small", "green", "triangle", "above", "a", "yellow", "circle"]
            assert gallery.locator("img").count() == 8
            slider = page.locator("#time-slider input[type='range']")
            expect(slider).to_have_attribute("max", "19")
            frame = page.locator("#time-frame img")
            expect(frame).to_be_visible()
            before = frame.get_attribute("src")
            slider.fill("4")
            expect(page.locator("#time-slider input[type='number']")).to_have_value("4")
            expect(frame).not_to_have_attribute("src", before, timeout=60_000)  # the step's map was drawn
            page.get_by_text("PASS", exact=False).or_(page.get_by_text("FAIL", exact=False)).first.wait_for()
            expect(page.get_by_text("processing")).to_have_count(0, timeout=60_000)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            assert (tmp_path / "demo.png").stat().st_size > 10_000
            if os.environ.get("CROSSATTN_DEMO_SCREENSHOT"):  # how assets/demo.png is made
                page.screenshot(path=os.environ["CROSSATTN_DEMO_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
