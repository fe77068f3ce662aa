"""crossattn demo: type a prompt, see where each word went, scrub through denoising, check the layout.

    crossattn demo                       # http://127.0.0.1:7860, embedded shapes-world model
    python -m demo.app --port 7861
    crossattn demo --allow-any-model     # also accept a hub id or local folder in the Model box

Concurrency: the Gradio queue is on. Generations run one at a time (they share one pipeline, whose
processors a trace swaps while it runs; ``concurrency_limit=1`` plus a lock per pipeline), each request
with its own trace, so two users never see each other's maps. Re-rendering from stored maps (filters,
alpha, colour map, time slider) needs no pipeline and runs up to 4 at once. Each session keeps its own
maps in a gr.State.

Security: binds 127.0.0.1 unless --host says otherwise; never share=True; other models only with
--allow-any-model; the app serves only the files it wrote itself for downloads.
"""

from __future__ import annotations

import functools
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from PIL import Image

import crossattn
from crossattn import placement, render
from crossattn.generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, generate, native_size, parse_size
from crossattn.words import slug

EMBEDDED = "embedded shapes-world model"
EXAMPLES = [
    "a red circle left of a blue square",
    "a small green triangle above a yellow circle",
    "a large cyan square right of a red triangle",
    "a blue square on the right",
    "a yellow square, a green circle and a blue triangle",
]
CMAPS = list(render.COLORMAPS)
TILE = 256
FILES_TTL_S = 3600
# Small images (the shapes model draws 64x64) are shown enlarged with crisp pixels; the data stays as generated.
CSS = "#generated-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
TABLE_HEADERS = ["word", "centroid (x, y)", "bbox x0,y0,x1,y1", "area", "region", "position decided"]


class Models:
    """Pipelines by name, loaded once, each with a lock: a trace swaps the processors of the shared UNet."""

    def __init__(self, default: str | None, allow_any: bool):
        self.default, self.allow_any = default, allow_any
        self._pipes: dict[str, tuple[object, threading.Lock]] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> tuple[object, threading.Lock]:
        name = name.strip() or EMBEDDED
        if name != EMBEDDED and not self.allow_any:
            raise ValueError("loading other models is disabled; start the demo with --allow-any-model")
        with self._guard:
            if name not in self._pipes:
                path = self.default if name == EMBEDDED else name
                pipe = crossattn.load_pipeline(path)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[name] = (pipe, threading.Lock())
            return self._pipes[name]


def friendly(fn):
    """Bad input becomes a gr.Error message in the page, never a traceback; the app keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, KeyError, IndexError, FileNotFoundError, OSError) as exc:
            raise gr.Error(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None

    return wrapper


def _files_root() -> Path:
    root = Path(tempfile.gettempdir()) / "crossattn-demo"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():  # downloads of earlier requests expire after an hour
        if time.time() - old.stat().st_mtime > FILES_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return root


def _words_list(text: str) -> list[str] | None:
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    return words or None


def _filtered(state: dict, resolutions: list[str], blocks: list[str], first_step: int, last_step: int):
    maps = state["maps"]
    last = max(first_step, last_step)
    return maps.filter(resolutions=resolutions or None, blocks=blocks or None, steps=slice(first_step, last + 1))


def render_views(state: dict, words_text: str, expect_text: str, alpha: float, cmap: str, resolutions: list[str],
                 blocks: list[str], first_step: int, last_step: int):
    """Everything drawn from the stored maps: gallery, segmentation, placement table, checks, downloads."""
    if not state:
        raise gr.Error("generate an image first")
    image, maps = state["image"], _filtered(state, resolutions, blocks, first_step, last_step)
    chosen = maps.word_maps(_words_list(words_text))
    gallery = [(m.overlay(image, alpha, cmap, size=TILE), m.word) for m in chosen]
    statements = [s.strip() for s in (expect_text or "").splitlines() if s.strip()]
    report = placement.report(maps, statements, from_prompt=not statements)
    labels, names = maps.segmentation()
    seg = placement.segmentation_picture(image, labels, names, tile=TILE)
    timeline = placement.timeline_picture(image, [maps.placement_timeline(w) for w in names], tile=TILE)
    decided = {t["word"]: t for t in report["timelines"]}
    rows = [[r["word"], placement.fmt_point(r["centroid"]),
             "-" if r["bbox"] is None else ",".join(map(str, r["bbox"])), f"{r['area']:.1%}", r["region"],
             f"step {decided[r['word']]['decided_at']} of {decided[r['word']]['steps']}"
             if decided.get(r["word"], {}).get("decided_at") is not None else "-"] for r in report["words"]]
    checks = "\n".join(f"- **{'PASS' if c['passed'] else 'FAIL'}** {c['statement']}: {c['reason']}"
                       for c in report["checks"]) or "_No relation stated; add one under “Intended layout”._"
    files = _write_downloads(state, maps, gallery, seg, report)
    return gallery, seg, rows, checks, timeline, files


def _write_downloads(state: dict, maps, gallery, seg: Image.Image, report: dict) -> list[str]:
    import json

    out = Path(state["dir"])
    for old in out.glob("overlay_*.png"):
        old.unlink()
    paths = []
    for k, (picture, word) in enumerate(gallery):
        path = out / f"overlay_{k:02d}_{slug(word)}.png"
        picture.save(path)
        paths.append(path)
    seg.save(out / "segmentation.png")
    maps.save(out)
    (out / "placement.json").write_text(json.dumps(report, indent=1))
    return [str(p) for p in paths + [out / "segmentation.png", out / "maps.safetensors", out / "heatmaps.json",
                                     out / "placement.json"]]


def enlarge(state: dict, alpha: float, cmap: str, resolutions, blocks, first_step, last_step, words_text,
            evt: gr.SelectData):
    """The clicked word, large, with a colour bar."""
    maps = _filtered(state, resolutions, blocks, first_step, last_step)
    chosen = maps.word_maps(_words_list(words_text))
    return chosen[evt.index].figure(state["image"], alpha, cmap, tile=384)


def time_frame(state: dict, word: str, step: int, alpha: float, cmap: str):
    """The chosen word's coarse map at one denoising step, over the final image."""
    if not state or not word:
        return None
    frames = state["maps"].timeline(word)
    step = int(min(max(step, 0), len(frames) - 1))
    frame = frames[step]
    peak = frame.max()
    picture = render.overlay(render.scale_to(state["image"], TILE), frame / peak if peak > 0 else frame, alpha, cmap)
    return render.labelled(picture, f"{word}: step {step} of {len(frames) - 1}", TILE)


def animation(state: dict, word: str, alpha: float, cmap: str) -> str | None:
    """A GIF of the word's map over all steps."""
    if not state or not word:
        return None
    n = len(state["maps"].trace_counts)
    frames = [time_frame(state, word, k, alpha, cmap) for k in range(n)]
    path = Path(state["dir"]) / f"timeline_{slug(word)}.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=150, loop=0)
    return str(path)


def build_app(models: Models) -> gr.Blocks:
    with gr.Blocks(title="crossattn — where did each word go?", delete_cache=(FILES_TTL_S, FILES_TTL_S)) as app:
        state = gr.State({})
        gr.Markdown("# crossattn — where did each word of the prompt go?\n"
                    "Generate an image; every word gets a heat map of the pixels that attended to it. "
                    "Scroll down for who owns each pixel, where each object landed, and when that was decided.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=2)
                negative = gr.Textbox(label="Negative prompt", value="")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                    dice = gr.Button("Random seed", size="sm")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=DEFAULT_STEPS, step=1, label="Steps")
                    guidance = gr.Slider(0, 20, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale")
                size = gr.Textbox(label="Image size (WIDTHxHEIGHT)", value="")
                model = gr.Textbox(label="Model", value=EMBEDDED, interactive=models.allow_any,
                                   info="hub id or local folder" if models.allow_any
                                   else "start with --allow-any-model to load other models")
                words = gr.Textbox(label="Words to show (comma-separated; empty = all)", value="")
                expect = gr.Textbox(label="Intended layout (one per line, e.g. “circle left_of square”, "
                                          "“circle on the left”, “circle in 0,0,0.5,1”); empty = read from prompt",
                                    lines=2)
                run = gr.Button("Generate", variant="primary")
                gr.Examples(EXAMPLES, inputs=[prompt])
            with gr.Column(scale=1):
                image_out = gr.Image(label="Generated image", type="pil", height=420, format="png",
                                     elem_id="generated-image")
        gr.Markdown("## Words — click one to enlarge")
        with gr.Row():
            gallery = gr.Gallery(label="Per-word heat maps", columns=5, height="auto", allow_preview=False,
                                 elem_id="word-gallery", format="png")
            big = gr.Image(label="Selected word", type="pil", height=420, format="png")
        gr.Markdown("## Who owns each pixel, and where did each object land?")
        with gr.Row():
            seg_out = gr.Image(label="Segmentation (argmax over object words)", type="pil", format="png")
            with gr.Column():
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Placement", interactive=False)
                checks = gr.Markdown()
        gr.Markdown("## Time — how each word's map evolved over the denoising steps")
        with gr.Row():
            with gr.Column():
                time_word = gr.Dropdown(label="Word", choices=[], interactive=True)
                time_step = gr.Slider(0, DEFAULT_STEPS - 1, value=DEFAULT_STEPS - 1, step=1, label="Step",
                                      elem_id="time-slider")
                frame_out = gr.Image(label="Map at this step", type="pil", format="png", elem_id="time-frame")
            gif_out = gr.Image(label="Animation", type="filepath")
            timeline_out = gr.Image(label="Centroid paths (dark = early, ring = final)", type="pil", format="png")
        with gr.Accordion("Filters and display", open=False):
            with gr.Row():
                resolutions = gr.CheckboxGroup(label="Resolutions", choices=[])
                blocks = gr.CheckboxGroup(label="Blocks", choices=["down", "mid", "up"])
                first_step = gr.Slider(0, DEFAULT_STEPS - 1, value=0, step=1, label="First step")
                last_step = gr.Slider(0, DEFAULT_STEPS - 1, value=DEFAULT_STEPS - 1, step=1, label="Last step")
            with gr.Row():
                alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay alpha")
                cmap = gr.Dropdown(CMAPS, value="jet", label="Colour map")
                rerender = gr.Button("Re-render from stored maps")
        files = gr.File(label="Downloads: overlays (PNG), raw maps, JSON report", file_count="multiple")

        view_inputs = [state, words, expect, alpha, cmap, resolutions, blocks, first_step, last_step]
        view_outputs = [gallery, seg_out, table, checks, timeline_out, files]

        @friendly
        def on_generate(prompt_text, negative_text, seed_value, n_steps, scale, size_text, model_name, words_text,
                        expect_text, alpha_value, cmap_name, progress=gr.Progress()):  # noqa: B008 (Gradio API)
            for statement in (expect_text or "").splitlines():
                if statement.strip():
                    placement.parse_statement(statement)
            pipe, lock = models.get(model_name)
            dims = parse_size(size_text) if size_text and size_text.strip() else native_size(pipe)
            n_steps = int(n_steps)
            progress(0, desc="denoising")
            with lock:
                image, maps = generate(pipe, prompt_text, seed=int(seed_value or 0), steps=n_steps,
                                       guidance=float(scale), size=dims, negative_prompt=negative_text or None,
                                       on_step=lambda i, n: progress((i, n), desc="denoising", unit="steps"))
            for w in _words_list(words_text) or []:
                maps.word(w)  # unknown word -> clear error before anything is drawn
            new_state = {"image": image, "maps": maps, "dir": tempfile.mkdtemp(dir=_files_root())}
            res = [f"{h}x{w}" for h, w in maps.resolutions]
            views = render_views(new_state, words_text, expect_text, alpha_value, cmap_name, res, [], 0, n_steps - 1)
            object_words = maps.object_words() or maps.words
            last = n_steps - 1
            return (
                new_state, image, *views,
                gr.update(choices=res, value=res), gr.update(choices=maps.blocks, value=maps.blocks),
                gr.update(maximum=last, value=0), gr.update(maximum=last, value=last),
                gr.update(choices=object_words, value=object_words[0]), gr.update(maximum=last, value=last),
                time_frame(new_state, object_words[0], last, alpha_value, cmap_name),
                animation(new_state, object_words[0], alpha_value, cmap_name),
                maps.word(object_words[0]).figure(image, alpha_value, cmap_name, tile=384),
            )

        run.click(
            on_generate,
            inputs=[prompt, negative, seed, steps, guidance, size, model, words, expect, alpha, cmap],
            outputs=[state, image_out, *view_outputs, resolutions, blocks, first_step, last_step, time_word,
                     time_step, frame_out, gif_out, big],
            api_name="generate",
            concurrency_limit=1,
        )
        dice.click(lambda: random.randint(0, 2**31 - 1), outputs=seed, api_name=False)
        rerender.click(friendly(render_views), inputs=view_inputs, outputs=view_outputs, api_name="render")
        # .input fires on user edits only: .change would also fire when a generation updates these controls
        for control in (alpha, cmap, resolutions, blocks):
            control.input(friendly(render_views), inputs=view_inputs, outputs=view_outputs, api_name=False)
        gallery.select(friendly(enlarge), inputs=[state, alpha, cmap, resolutions, blocks, first_step, last_step,
                                                  words], outputs=big, api_name=False)
        time_step.input(friendly(time_frame), inputs=[state, time_word, time_step, alpha, cmap], outputs=frame_out,
                        api_name="time_frame")
        time_word.input(friendly(time_frame), inputs=[state, time_word, time_step, alpha, cmap], outputs=frame_out,
                        api_name=False)
        time_word.input(friendly(animation), inputs=[state, time_word, alpha, cmap], outputs=gif_out, api_name=False)
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, model: str | None = None, allow_any_model: bool = False,
           share: bool = False, block: bool = True):
    """Build and start the app; returns (app, local URL)."""
    models = Models(model, allow_any_model)
    models.get(EMBEDDED)  # load before the first request so the first click is fast and errors show at start
    app = build_app(models)
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                           show_error=False, theme=gr.themes.Soft(), footer_links=["api"], css=CSS)
    return app, url


def main(argv: list[str] | None = None) -> None:
    """`python -m demo.app [--host H] [--port P] ...`: the same options as `crossattn demo`."""
    from crossattn.cli import main as cli_main

    sys.exit(cli_main(["demo", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
