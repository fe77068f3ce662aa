"""The notebook view (`HeatMaps._repr_html_`, `crossattn.notebook`): self-contained and small, then the way a user
meets it — a notebook executed by a Jupyter kernel (nbclient), its HTML output opened in headless Chromium, words
clicked and hovered, the time slider and the layer and head choices moved — with each map drawn checked against
the one Python computes."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from crossattn import notebook, render
from crossattn.capture import Site
from crossattn.heatmaps import HeatMaps, MapData
from crossattn.words import Word
from tests.helpers import blob, toy_maps

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PROMPT = "a red circle left of a blue square"


def test_the_view_is_self_contained_and_escapes_the_prompt():
    hostile = ["a", "<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>"]
    maps = toy_maps(hostile, [np.zeros((16, 16)), blob(16, 16, 4, 4), blob(16, 16, 12, 12)])
    maps.info.notes = ["<b>cut</b>"]
    page = maps._repr_html_()
    assert page.startswith('<div id="crossattn-') and page.count("<script") == 2  # the data and the code, no more
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;b&gt;cut" in page
    assert "</script><script>alert" not in page  # the JSON cannot close its script element
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http" not in page  # nothing to fetch
    with_image = notebook.explore(maps, np.zeros((64, 64, 3), np.uint8)).html
    assert 'src="data:image/png;base64,' in with_image and "ca-alpha" in with_image
    assert maps._repr_html_() != page  # each view has its own id: two in one page never mix


def test_a_large_per_layer_per_head_trace_stays_a_few_megabytes():
    """SD 1.5 at 512 px kept per layer and head: 16 layers (64x64 to 8x8), 8 heads, 4 bins, 8 words."""
    grids = [64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]
    sites = {f"layer.{k}": Site(f"layer.{k}", "up", (g, g)) for k, g in enumerate(grids)}
    words = [Word(f"w{k}", (k + 1,), 0) for k in range(8)]
    data = MapData(sums={k: torch.rand(4, 8, g, g, 10) for k, g in zip(sites, grids)},
                   counts={k: np.ones(4, np.int64) for k in sites}, sites=sites,
                   bin_steps=[list(range(k, k + 5)) for k in range(0, 20, 5)], step_sums=None,
                   step_counts=np.ones(20, np.int64), words=words, per_head=True, per_layer=True)
    maps = HeatMaps(data=data, tokens=["t"] * 10, image_size=(512, 512))
    start = time.monotonic()
    page = notebook.explore(maps, np.zeros((512, 512, 3), np.uint8)).html
    assert len(page) < 5_000_000 and time.monotonic() - start < 10
    config = json.loads(re.search(r'class="ca-config">(.*?)</script>', page).group(1))
    assert max(s["h"] for s in config["sets"]["words"]["sites"]) == 32  # 64x64 grids shipped at 32x32 to fit
    assert "image/jpeg" in page  # a photo-sized image travels as JPEG


NOTEBOOK = [
    "import torch, crossattn\n"
    "from crossattn.notebook import explore\n"
    "pipe = crossattn.load_pipeline()\n"
    "with crossattn.trace(pipe, per_layer=True, per_head=True, concepts=['background', 'square']) as tr:\n"
    f"    image = pipe({PROMPT!r}, num_inference_steps=6, generator=torch.Generator().manual_seed(0)).images[0]\n"
    "maps = tr.heat_maps()\n"
    "maps.save(SAVE_TO)",
    "maps",
    "explore(maps, image)",
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[list[str], Path]:
    """The HTML outputs of a notebook run by a real kernel, and the folder its maps were saved to."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    folder = tmp_path_factory.mktemp("notebook")
    cells = [NOTEBOOK[0].replace("SAVE_TO", repr(str(folder / "maps")))] + NOTEBOOK[1:]
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
                            ).execute()
    pages = [out["data"]["text/html"] for cell in book.cells[1:] for out in cell["outputs"]
             if "text/html" in out.get("data", {})]
    assert len(pages) == 2 and "image/png" in book.cells[1]["outputs"][0]["data"]  # a picture where HTML is not shown
    return pages, folder / "maps"


@pytest.fixture(scope="module")
def page(executed, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (scripts/setup.sh --dev installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pages, _ = executed
    file = tmp_path_factory.mktemp("page") / "notebook-output.html"
    toy = toy_maps(["cat"], [blob(16, 16, 8, 8)])
    no_words = replace(toy, data=replace(toy.data, words=[]))  # an emoji-only prompt's maps
    file.write_text("<!doctype html><meta charset=utf-8><body>" + "<hr>".join(pages + [no_words._repr_html_()])
                    + "</body>")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page()
        problems = []
        tab.on("pageerror", lambda e: problems.append(f"error: {e}"))
        tab.on("request", lambda r: r.url.startswith(("file:", "data:")) or problems.append(f"fetched {r.url}"))
        tab.goto(file.as_uri())
        yield tab, problems
        browser.close()


def drawn(view) -> np.ndarray:
    """The RGB pixels of a view's map canvas."""
    data = view.locator("canvas").evaluate(
        "c => ({w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data)})")
    return np.array(data["px"], np.uint8).reshape(data["h"], data["w"], 4)[..., :3]


def expected(m) -> np.ndarray:
    """What the page should draw for a WordHeatMap: its latent map over its peak, coloured."""
    return render.colorize(m.latent / m.latent.max())


def assert_close(pixels: np.ndarray, wanted: np.ndarray) -> None:
    """Equal colours up to the 8-bit storage of the maps: one level of the colour map (4 in a channel of jet) here
    and there; another word's map differs by tens on average."""
    assert pixels.shape == wanted.shape
    diff = np.abs(pixels.astype(int) - wanted.astype(int)).max(-1)
    assert diff.mean() < 3 and (diff > 8).mean() < 0.02, (diff.mean(), (diff > 8).mean())


@pytest.mark.slow
def test_the_notebook_view_explores_in_a_browser(page, executed):
    from crossattn import load_heat_maps

    tab, problems = page
    maps = load_heat_maps(executed[1])
    first, second = tab.locator(".crossattn-explorer").nth(0), tab.locator(".crossattn-explorer").nth(1)
    chips = first.locator(".ca-words .ca-chip")
    assert chips.all_inner_texts() == maps.words and first.locator(".ca-concepts .ca-chip").all_inner_texts() == [
        "background", "square"]
    assert first.locator(".ca-chip.ca-on").inner_text() == "circle"  # the first object's noun, to begin with
    assert_close(drawn(first), expected(maps.word("circle")))

    before_second = drawn(second)
    chips.nth(7).click()  # "square"
    assert_close(drawn(first), expected(maps.word("square")))
    assert np.array_equal(drawn(second), before_second)  # the other view did not move
    chips.nth(1).hover()  # hovering shows "red" until the pointer leaves
    assert_close(drawn(first), expected(maps.word("red")))
    first.locator(".ca-prompt").hover()
    assert_close(drawn(first), expected(maps.word("square")))

    time_slider = first.locator(".ca-time")
    time_slider.evaluate("s => { s.value = 1; s.dispatchEvent(new Event('input')); }")
    first_bin = maps.data.bin_steps[0]
    assert_close(drawn(first), expected(maps.filter(steps=first_bin).word("square")))
    assert first.locator(".ca-time-text").inner_text() == f"bin 1 of 4: steps 0-{maps.data.bin_steps[0][-1]}"
    layer = list(maps.sites)[-1]
    first.locator(".ca-site").select_option(layer)
    assert_close(drawn(first), expected(maps.filter(steps=first_bin, layers=[layer]).word("square")))
    first.locator(".ca-head").select_option("1")
    assert_close(drawn(first), expected(maps.filter(steps=first_bin, layers=[layer], heads=[1]).word("square")))

    first.locator(".ca-concepts .ca-chip").nth(0).click()
    assert_close(drawn(first), expected(maps.filter(steps=first_bin, layers=[layer]).concept("background")))
    assert "concept background" in first.locator(".ca-info").inner_text()

    assert second.locator("img.ca-image").get_attribute("src").startswith("data:image/png;base64,")
    assert second.locator(".ca-alpha").count() == 1 and first.locator("img").count() == 0  # no image: grey
    empty = tab.locator(".crossattn-explorer").nth(2)
    assert empty.locator(".ca-info").inner_text() == "the prompt has no words to map"
    assert problems == []
