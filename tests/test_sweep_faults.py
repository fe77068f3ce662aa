"""`crossattn sweep` under faults: damaged item folders, crafted summaries in a shared folder, a full disk, bad
settings, prompts that differ only in spelling, and a Ray worker killed mid-run."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from crossattn import sweep
from crossattn.cli import main
from crossattn.errors import InputError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STEPS = 2  # every artefact is written; the numbers are not what is tested here
PROMPTS = ["a red circle left of a blue triangle", "a green square", "a blue triangle above a yellow circle"]


def item_folders(out: Path) -> dict[str, Path]:
    """Prompt -> its item folder."""
    return {json.loads((d / "summary.json").read_text())["prompt"]: d for d in (out / "items").iterdir()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A real sweep of three items (embedded model), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("faults") / "sweep"
    outcome = sweep.run(PROMPTS, out, seeds=[0], steps=STEPS, progress=False)
    assert (outcome.ran, outcome.errors) == (3, 0)
    return out


@pytest.fixture
def shared(finished_sweep, tmp_path) -> Path:
    return Path(shutil.copytree(finished_sweep, tmp_path / "shared"))


# ---- an item is finished only when every file is there and its summary parses -----------------------------------
def test_damaged_items_are_reported_and_redone(shared, capsys):
    folders = item_folders(shared)
    truncated, deleted, intact = (folders[p] for p in PROMPTS)
    text = (truncated / "summary.json").read_text()
    (truncated / "summary.json").write_text(text[: len(text) // 2])
    (deleted / "image.png").unlink()

    assert main(["sweep", "--out", str(shared), "--report-only"]) == 0  # was: JSONDecodeError, file not named
    numbers = json.loads((shared / "report.json").read_text())
    assert numbers["items"] == 1 and [json.loads(line)["id"] for line in
                                      (shared / "summary.jsonl").read_text().splitlines()] == [intact.name]
    problems = {d["folder"]: d["problem"] for d in numbers["damaged"]}
    assert problems.keys() == {f"items/{truncated.name}", f"items/{deleted.name}"}
    assert problems[f"items/{truncated.name}"].startswith("summary.json is not valid JSON (cut short?): ")
    assert problems[f"items/{deleted.name}"] == "image.png is missing"
    page = (shared / "report.html").read_text()
    assert "Damaged item folders (2)" in page and f"items/{deleted.name}" in page

    outcome = sweep.run(PROMPTS, shared, seeds=[0], steps=STEPS, progress=False)
    assert (outcome.ran, outcome.skipped, outcome.complete) == (2, 1, True)
    assert outcome.redone == {truncated.name: problems[f"items/{truncated.name}"],
                              deleted.name: "image.png is missing"}
    said = outcome.describe().splitlines()
    assert said[1:] == [f"redone items/{k}: it was damaged: {why}" for k, why in outcome.redone.items()]
    assert sweep.scan(shared)[1] == {} and len(sweep.scan(shared)[0]) == 3
    assert (deleted / "image.png").stat().st_size > 0 and json.loads((truncated / "summary.json").read_text())


def test_a_file_cut_short_is_damage(shared):
    folder = item_folders(shared)[PROMPTS[1]]
    size = (folder / "maps.safetensors").stat().st_size
    with open(folder / "maps.safetensors", "r+b") as f:
        f.truncate(size - 10)
    assert sweep.inspect_item(folder) == (None, f"maps.safetensors has {size - 10:,} bytes, not the {size:,} written")


# ---- a shared folder is untrusted: crafted summaries are escaped or refused, never run ---------------------------
class Tags(HTMLParser):
    """Every start tag of a page and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))


def test_crafted_summaries_cannot_put_markup_in_the_report(shared):
    folders = item_folders(shared)
    script, image = "<script>alert(1)</script>", '<img src=x onerror="alert(2)">'
    first = folders[PROMPTS[0]] / "summary.json"
    crafted = {**json.loads(first.read_text()), "prompt": script, "model": image}
    first.write_text(json.dumps(crafted))  # a valid layout: shown, as text
    second = folders[PROMPTS[1]] / "summary.json"
    second.write_text(json.dumps({**json.loads(second.read_text()), "seed": image}))  # not a seed: refused
    moved = shared / "items" / f"{folders[PROMPTS[2]].name}<b>"
    folders[PROMPTS[2]].rename(moved)  # its id no longer names its folder: reported, not a KeyError

    numbers = sweep.build_report(shared)
    assert numbers["items"] == 1 and numbers["models"] == [image]
    assert {d["folder"]: d["problem"] for d in numbers["damaged"]} == {
        f"items/{folders[PROMPTS[1]].name}": "summary.json: summary.seed has the wrong type (str)",
        f"items/{moved.name}": f"summary.json says it is item {folders[PROMPTS[2]].name!r}, but its folder is "
                               f"{moved.name!r}"}
    page = (shared / "report.html").read_text()
    parser = Tags()
    parser.feed(page)
    assert not [tag for tag, _ in parser.tags if tag == "script"]
    assert not [(tag, a) for tag, attrs in parser.tags for a in attrs if a.startswith("on")]
    assert [tag for tag, _ in parser.tags if tag == "b"] == ["b"]  # the prompt's own <b>, not the folder's
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (scripts/setup.sh --dev installs it)")
def test_gallery_pictures_are_shown_whole(shared):
    """A diagnosis picture wider than tall (labels reaching its right edge) is shown at its own aspect, inside
    its gallery entry: not squeezed into a square, not cut."""
    from playwright.sync_api import sync_playwright

    folder = item_folders(shared)[PROMPTS[0]]
    Image.new("RGB", (512, 256), "white").save(folder / "diagnosis.png")
    summary = json.loads((folder / "summary.json").read_text())
    summary["files"]["diagnosis.png"] = (folder / "diagnosis.png").stat().st_size
    (folder / "summary.json").write_text(json.dumps(summary))
    sweep.build_report(shared)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((shared / "report.html").as_uri())
            shown = page.eval_on_selector_all("#gallery img", """images => images.map(i => {
                const r = i.getBoundingClientRect(), f = i.closest('figure').getBoundingClientRect();
                return [i.naturalWidth / i.naturalHeight, r.width / r.height,
                        r.left >= f.left && r.right <= f.right && r.top >= f.top && r.bottom <= f.bottom];
            })""")
        finally:
            browser.close()
    assert len(shown) == 2 * 3 and [2.0, 2.0, True] in [[round(a, 2), round(b, 2), c] for a, b, c in shown]
    assert all(abs(natural - aspect) < 0.01 and inside for natural, aspect, inside in shown), shown


# ---- a full disk: one line naming the file, nothing temporary left ---------------------------------------------
@pytest.mark.parametrize("fails", ["items/{id}/maps.safetensors", "items/{id}/summary.json", "summary.jsonl"])
def test_disk_full_is_one_line_naming_the_file(fails, tmp_path, monkeypatch, capsys):
    """The generation is stubbed (a real one adds nothing here); every write goes through the real code."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "sweep"
    settings = sweep.Settings(steps=STEPS, size=(64, 64))
    target = out / fails.format(id=sweep.item_id(sweep.Item("a red circle", 0), settings))
    files = {"image.png": b"png", "maps.safetensors": b"maps"}
    record = {"status": "ok", "checks": [], "objects": [], "merged": [], "failed": False, "verdicts": [],
              "settled": {}, "pixels": None, "notes": []}

    class Pipe:
        def set_progress_bar_config(self, **options) -> None:
            pass

    monkeypatch.setattr(sweep.worker, "load_pipeline", lambda model, device=None: Pipe())
    monkeypatch.setattr(sweep.Worker, "check", lambda self, seeds: None)
    monkeypatch.setattr(sweep.Worker, "_generate", lambda self, item: (files, record))

    def full(write):
        def failing(path: Path, data, *args, **kwargs):
            if path.name == target.name or path.name.startswith(f".{target.name}."):  # summary.jsonl: a temp name
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(path, data, *args, **kwargs)
        return failing

    monkeypatch.setattr(Path, "write_bytes", full(Path.write_bytes))
    monkeypatch.setattr(Path, "write_text", full(Path.write_text))
    assert main(["sweep", str(prompts), "--out", str(out), "--steps", str(STEPS), "--size", "64x64"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crossattn")]  # not tqdm's bar
    assert said == [f"crossattn: error: cannot write {target}: No space left on device"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not list((out / "items").iterdir())


# ---- bad settings are refused before any item is generated, with generate's own messages ---------------------
@pytest.mark.parametrize("option", [["--steps", "0"], ["--guidance", "nan"], ["--size", "100x100"]])
def test_bad_settings_are_refused_like_generate_refuses_them(option, tmp_path, monkeypatch, capsys):
    assert main(["generate", "a red circle", "--out", str(tmp_path / "generate"), *option]) == 2
    refusal = capsys.readouterr().err.splitlines()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    generated = []
    monkeypatch.setattr(sweep.worker, "run", lambda *args, **kwargs: generated.append(args))
    assert main(["sweep", str(prompts), "--out", str(tmp_path / "sweep"), "--seeds", "0-3", *option]) == 2
    assert capsys.readouterr().err.splitlines() == refusal and len(refusal) == 1
    assert generated == [] and not list((tmp_path / "sweep").glob("items/*"))  # (steps and guidance: no folder)


def test_a_bad_seed_in_a_prompts_file_is_refused(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle", "seed": 1}\n{"prompt": "a blue square", "seed": -4}\n')
    with pytest.raises(InputError) as refused:
        sweep.run(prompts, tmp_path / "sweep", steps=STEPS, progress=False)
    assert str(refused.value) == "seed must be a whole number from 0 to 9223372036854775807 (2**63 - 1), got -4"
    assert not (tmp_path / "sweep").exists()  # refused before the model loads or anything is written


# ---- one item per prompt, however it is spelt ---------------------------------------------------------------------
def test_prompts_differing_only_in_spacing_or_unicode_form_are_one_item(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    spellings = ["a red circle", "a  red circle ", "\ta red\u00a0circle", "ａ ｒｅｄ ｃｉｒｃｌｅ",  # full width
                 "a caf\u00e9 sign", "a cafe\u0301 sign"]  # é composed, then e + combining acute
    prompts.write_text("".join(json.dumps({"prompt": p, "expect": ["circle  on the left"]}) + "\n"
                               for p in spellings))
    items = sweep.read_items(prompts)
    settings = sweep.Settings()
    assert {sweep.item_id(i, settings) for i in items} == {sweep.item_id(items[0], settings),
                                                           sweep.item_id(items[4], settings)}
    assert [i.prompt for i in items] == ["a red circle"] * 4 + ["a caf\u00e9 sign"] * 2
    assert items[1].expect == ("circle on the left",)


# ---- a Ray worker killed mid-run: its items are done again, each exactly once ----------------------------------
def test_a_killed_ray_worker_loses_no_item(tmp_path):
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "ray"
    killed: list[tuple[int, int]] = []  # (pid, items finished when it was killed)

    def running_items() -> list:
        """Ray's actor processes that are generating an item now (Ray's processes descend from this one and
        title themselves ray::Worker.run while they run one)."""
        found = []
        for process in psutil.Process().children(recursive=True):
            try:
                if process.cmdline()[:1] == ["ray::Worker.run"]:
                    found.append(process)
            except psutil.Error:  # gone meanwhile
                continue
        return found

    def kill_a_worker_mid_run() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            finished = len(list(out.glob("items/*/summary.json")))
            for victim in running_items() if finished else []:
                with contextlib.suppress(psutil.Error):
                    victim.kill()
                    killed.append((victim.pid, finished))
                    break
            time.sleep(0.05)

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        with pytest.raises(InputError, match=r"^steps must be between 1 and 1000, got 0$"):  # the worker's refusal
            sweep.run(PROMPTS, out, "ray", steps=0, workers=1, progress=False)
        killer = threading.Thread(target=kill_a_worker_mid_run, daemon=True)
        killer.start()
        outcome = sweep.run(PROMPTS, out, "ray", seeds=range(4), steps=STEPS, workers=2, progress=False, report=False)
    finally:
        ray.shutdown()
    killer.join()
    assert killed and killed[0][1] < 12 - 2, f"no worker was killed mid-run: {killed}"
    assert (outcome.ran, outcome.lost, outcome.missing, outcome.complete) == (12, 0, 0, True)
    summaries = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert len({s["id"] for s in summaries}) == len(summaries) == 12 == len(list((out / "items").iterdir()))
    assert {s["status"] for s in summaries} == {"ok"} and sweep.scan(out)[1] == {}


def test_a_sweep_that_loses_items_says_it_is_incomplete(tmp_path, monkeypatch):
    class Losing(sweep.LocalEngine):
        """Its worker dies under the first item every time (as a Ray worker that runs out of memory on it)."""

        def map(self, items):
            self.lost = 1
            return super().map(items[1:])

    monkeypatch.setitem(sweep.ENGINES, "local", Losing)
    outcome = sweep.run(PROMPTS[:2], tmp_path, seeds=[0], steps=STEPS, progress=False, report=False)
    assert (outcome.ran, outcome.lost, outcome.missing, outcome.complete) == (1, 1, 1, False)
    assert "INCOMPLETE: 1 items not finished (1 lost: their worker died under them 3 times), rerun to do them" in \
        outcome.describe()
    assert len((tmp_path / "summary.jsonl").read_text().splitlines()) == 1
    monkeypatch.setitem(sweep.ENGINES, "local", sweep.LocalEngine)
    again = sweep.run(PROMPTS[:2], tmp_path, seeds=[0], steps=STEPS, progress=False, report=False)
    assert (again.ran, again.skipped, again.complete) == (1, 1, True) and "INCOMPLETE" not in again.describe()
