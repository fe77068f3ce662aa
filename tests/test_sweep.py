"""`crossattn sweep`: items from files, the item folders, resume after SIGKILL, errors, the report (also in a
headless Chromium) and the Ray engine giving the same bytes as the in-process one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossattn import sweep
from crossattn.cli import main
from crossattn.errors import InputError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STEPS = 3  # enough for every artefact; the numbers are not what is tested here
PROMPTS = ["a red circle left of a blue square", "a small green triangle above a yellow circle", "a cyan square"]
# Rows that are not ordinary prompts: two fail validation (recorded errors), one has no word at all (an item).
ODD = [{"prompt": "", "seed": 0}, {"prompt": "a blue square", "expect": "square somewhere", "seed": 0},
       {"prompt": "🙂🙂", "seed": 0}]
ITEM_FILES = {"image.png", "maps.safetensors", "heatmaps.json", "diagnosis.json", "diagnosis.png", "placement.json",
              "summary.json"}


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "seconds"}


# ---- items, ids, folder mechanics (no generation) ---------------------------------------------------------------
def test_seeds_and_item_files(tmp_path):
    assert sweep.parse_seeds("0-3,10,2") == [0, 1, 2, 3, 10]
    with pytest.raises(InputError, match="bad seeds"):
        sweep.parse_seeds("3-1")
    text = tmp_path / "p.txt"
    text.write_text("a red circle\n\n  a blue square  \n")
    assert [(i.prompt, i.seed) for i in sweep.read_items(text, [0, 1])] == [
        ("a red circle", 0), ("a red circle", 1), ("a blue square", 0), ("a blue square", 1)]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a red circle", "expect": ["circle on the left"], "seeds": "4-5"}\n'
                     '{"prompt": "a cat", "seed": 9}\n')
    assert sweep.read_items(jsonl) == [sweep.Item("a red circle", 4, ("circle on the left",)),
                                       sweep.Item("a red circle", 5, ("circle on the left",)), sweep.Item("a cat", 9)]
    table = tmp_path / "p.csv"
    table.write_text('prompt,expect,seed\n"a red circle left of a cat",circle left_of cat; cat on the right,\n')
    assert sweep.read_items(table, [7]) == [sweep.Item("a red circle left of a cat", 7,
                                                       ("circle left_of cat", "cat on the right"))]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": \n')
    with pytest.raises(InputError, match="bad.jsonl:2: not JSON"):
        sweep.read_items(tmp_path / "bad.jsonl")


def test_item_id_is_stable_and_covers_the_options_that_change_results():
    item = sweep.Item("a red circle", 3)
    base = sweep.Settings()
    assert sweep.item_id(item, base) == sweep.item_id(sweep.Item("a red circle", 3), sweep.Settings(device="cpu"))
    changed = [sweep.Settings(steps=10), sweep.Settings(model="shapes-mmdit"), sweep.Settings(guidance=7.0),
               sweep.Settings(size=(128, 128)), sweep.Settings(concepts=("sky",)),
               sweep.Settings(expect_from_prompt=True)]
    ids = {sweep.item_id(item, s) for s in changed} | {sweep.item_id(sweep.Item("a red circle", 4), base),
                                                        sweep.item_id(sweep.Item("a red circle", 3, ("x",)), base)}
    assert len(ids) == 8 and sweep.item_id(item, base) not in ids


def test_write_item_is_one_rename_and_never_twice(tmp_path):
    out = sweep.prepare(tmp_path / "s")
    (out / ".tmp" / "left-by-a-killed-run").mkdir()
    out = sweep.prepare(out)  # a new run clears what a killed one left half-written
    assert not any((out / ".tmp").iterdir())
    files = {"image.png": b"png", "concepts/heatmaps.json": b"{}"}
    result = sweep.ItemResult("abc", files, {"id": "abc", "prompt": "p", "seed": 0, "model": "m", "steps": 1,
                                             "status": "error", "error": "E", "files": {"image.png": 3,
                                                                                        "concepts/heatmaps.json": 2}})
    assert sweep.write_item(out, result)
    assert not sweep.write_item(out, sweep.ItemResult("abc", {}, {**result.summary, "seed": 1}))
    assert (out / "items/abc/concepts/heatmaps.json").read_bytes() == b"{}"
    assert sweep.scan(out) == ({"abc": result.summary}, {}) and not any((out / ".tmp").iterdir())


def test_an_item_that_raises_is_recorded_with_its_type_and_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(sweep.Worker, "_request", lambda self, item: None)
    monkeypatch.setattr(sweep.worker, "run", broken)
    worker = sweep.Worker.__new__(sweep.Worker)  # no pipeline needed: generation is what fails
    worker.settings, worker.pipe = sweep.Settings(size=(64, 64)), None
    result = worker.run(sweep.Item("a cat", 0))
    assert result.files == {} and result.summary["status"] == "error"
    assert result.summary["error"] == "RuntimeError: out of memory, say"
    assert "Traceback" in result.summary["traceback"]


def test_ray_missing_is_a_clear_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'crossattn\[ray\]'"):
        sweep.import_ray()


# ---- a real sweep on the embedded model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as the Ray actor on the 2-CPU runtime below, whatever OMP_NUM_THREADS says
    try:
        outcome = sweep.run(PROMPTS + ODD, out, seeds=[0, 1], steps=STEPS, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, outcome


@pytest.mark.slow
def test_local_sweep_writes_every_item_once(local):
    out, outcome = local
    assert (outcome.items, outcome.ran, outcome.skipped, outcome.errors) == (9, 9, 0, 2)
    summaries = lines(out)
    assert len(summaries) == 9 and len({s["id"] for s in summaries}) == 9
    for s in summaries:
        folder = out / "items" / s["id"]
        assert json.loads((folder / "summary.json").read_text()) == s
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files == (ITEM_FILES if s["status"] == "ok" else {"summary.json"})
        assert s["files"] == {name: (folder / name).stat().st_size for name in sorted(files - {"summary.json"})}
    ok = [s for s in summaries if s["status"] == "ok"]
    assert {(s["prompt"], s["seed"]) for s in ok} == {(p, k) for p in PROMPTS for k in (0, 1)} | {("🙂🙂", 0)}
    wordless = next(s for s in ok if s["prompt"] == "🙂🙂")
    assert wordless["checks"] == wordless["objects"] == [] and wordless["pixels"] is None
    relation = next(s for s in ok if s["prompt"] == PROMPTS[0])
    assert [c["statement"] for c in relation["checks"]] == ["red circle left_of blue square"]
    assert relation["pixels"]["drawn"].keys() == {"red circle", "blue square"}
    page = (out / "report.html").read_text()
    assert 'id="gallery"' in page and page.count('src="data:image/png;base64,') == 2 * 7
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external assets


@pytest.mark.slow
def test_failing_items_are_recorded_not_fatal(local):
    out, outcome = local
    errors = {s["prompt"]: s["error"] for s in lines(out) if s["status"] == "error"}
    assert errors[""].startswith("the prompt is empty")
    assert errors["a blue square"].startswith("cannot read 'square somewhere'")
    assert [e["error"] for e in outcome.report["error_list"]] == [errors[""], errors["a blue square"]]


@pytest.mark.slow
def test_report_only_rebuilds_identical_numbers(local):
    out, outcome = local
    before = (out / "summary.jsonl").read_bytes()
    for name in ("summary.jsonl", "report.html", "report.json"):
        (out / name).unlink()
    assert main(["sweep", "--out", str(out), "--report-only"]) == 0
    assert json.loads((out / "report.json").read_text()) == outcome.report
    assert (out / "summary.jsonl").read_bytes() == before and (out / "report.html").exists()
    assert outcome.report["relations"]["by_type"]["left_of"]["n"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (scripts/setup.sh --dev installs it)")
def test_report_opens_in_chromium_with_its_gallery(local):
    from playwright.sync_api import sync_playwright

    out, _ = local
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto((out / "report.html").as_uri())
            widths = page.eval_on_selector_all("#gallery img", "images => images.map(i => i.naturalWidth)")
            assert len(widths) == 2 * 7 and all(w > 0 for w in widths)
            assert page.locator("#gallery a[href^='items/']").count() >= 7
        finally:
            browser.close()


@pytest.mark.slow
def test_resume_after_sigkill_finishes_every_item_exactly_once(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "crossattn", "sweep", str(prompts), "--out", str(out), "--seeds", "0-1",
               "--steps", str(STEPS)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("items/*/summary.json")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = len(list(out.glob("items/*/summary.json")))
    assert 1 <= done_before < 6, "the sweep was not killed midway"
    assert all((d / "summary.json").exists() for d in (out / "items").iterdir())  # no half-written item folder
    outcome = sweep.run(prompts, out, seeds=[0, 1], steps=STEPS, progress=False, report=False)
    assert outcome.skipped >= done_before and outcome.skipped + outcome.ran == 6
    ids = [s["id"] for s in lines(out)]
    assert len(ids) == len(set(ids)) == 6 == len(list((out / "items").iterdir()))
    assert not (out / ".tmp").exists()


@pytest.mark.slow
def test_ray_engine_gives_the_same_items(local, tmp_path):
    """One actor on the 2-CPU runtime computes with 2 torch threads, as this process does: float sums are
    bit-identical only at equal thread counts (2 actors × 1 thread give the same summaries, not the same bytes)."""
    ray = pytest.importorskip("ray")
    out, _ = local
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        outcome = sweep.run(PROMPTS + ODD, tmp_path / "ray", "ray", seeds=[0, 1], steps=STEPS, workers=1,
                            progress=False)
    finally:
        ray.shutdown()
    assert (outcome.ran, outcome.errors, outcome.lost, len(outcome.peak_rss_mib)) == (9, 2, 0, 1)
    assert [without_timing(s) for s in lines(tmp_path / "ray")] == [without_timing(s) for s in lines(out)]
    for s in lines(out):
        ours, theirs = out / "items" / s["id"], tmp_path / "ray/items" / s["id"]
        names = sorted(p.name for p in ours.iterdir() if p.name != "summary.json")
        assert sorted(p.name for p in theirs.iterdir() if p.name != "summary.json") == names
        assert all((ours / name).read_bytes() == (theirs / name).read_bytes() for name in names)
