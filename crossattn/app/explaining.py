"""The "Explain an image" tab: per-word maps of an image the user brings (an upload, a drop, a paste, or the
image just generated), with the same word gallery as a generation, the segmentation and concept maps."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..errors import InputError
from ..explain import explain, read_image
from ..words import split_list
from .checks import Checks, as_text
from .guard import friendly, lenient
from .limits import MAX_UPLOAD, Models
from .store import Result
from .views import TILE, View, concept_items, gallery_items, notes_text, segmentation_of
from .whatif import MODEL_LOCK

FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"
FIELDS = ["picture", "caption", "concepts", "model"]


def upload_path(value: object) -> tuple[Path, str] | None:
    """(the server's copy, the name the user gave it) of an image field's value as sent (a file payload, or a
    path once preprocessed); None when no image was given."""
    if isinstance(value, dict):
        path, name = value.get("path"), value.get("orig_name")
    else:
        path, name = value, None
    if not path:
        return None
    return Path(path), name or Path(path).name


def read_upload(value: object):
    """The picture and the notes on what was converted; messages name the user's file, not the server's copy."""
    upload = upload_path(value)
    if upload is None:
        raise InputError(f"no image: upload, drop or paste one ({FORMATS}, at most {MAX_UPLOAD.upper()})")
    path, name = upload
    try:
        return read_image(path)
    except InputError as exc:
        raise InputError(str(exc).replace(repr(str(path)), repr(name)).replace(str(path), name)) from None


def check_caption(caption: object) -> str:
    caption = as_text(caption)
    if not caption.strip():
        raise InputError("the caption is empty: say what the image shows, e.g. 'a red circle left of a blue square'")
    return caption


def check_explanation(models: Models, picture: object, caption: object, model: object, load: bool = True) -> Checks:
    checks = Checks()
    checks("picture", read_upload, picture)
    checks("caption", check_caption, caption)
    checks("model", models.get, as_text(model), load)
    return checks


class ExplainTab:
    """Upload an image and a caption; see where the model finds each word of the caption in it."""

    def __init__(self, models: Models):
        self.models = models

    def build(self) -> None:
        gr.Markdown("# Explain an image\nBring an image and say what it shows: the model reads the image at a few "
                    "noise levels with your caption (no sampling), and every word gets a map of where it is.")
        with gr.Row():
            with gr.Column(scale=1):
                self.picture = gr.Image(label=f"Image ({FORMATS}; at most {MAX_UPLOAD.upper()})", type="filepath",
                                        sources=["upload", "clipboard"], elem_id="explain-image",
                                        elem_classes="pixels", height=320)
                self.caption = gr.Textbox(label="Caption (what the image shows)", elem_id="caption",
                                          placeholder="a red circle left of a blue square")
                self.concepts = gr.Textbox(label="Locate other words (comma-separated; need not be in the caption)",
                                           elem_id="explain-concepts")
                images = self.models.image_choices  # a video model reads no single image
                self.model = gr.Dropdown(images, label="Model to read it with", elem_id="explain-model",
                                         value=self.models.default if self.models.default in images else images[0])
                self.run = gr.Button("Explain", variant="primary", elem_id="explain-run")
                self.notes = gr.Markdown(elem_id="explain-notes")
            with gr.Column(scale=1):
                self.segmentation = gr.Image(label="Segmentation (one region per object phrase)", type="filepath",
                                             elem_id="explain-segmentation")
        self.gallery = gr.Gallery(label="Where each word is (click to enlarge)", columns=5, height="auto",
                                  elem_id="explain-gallery", elem_classes="pixels")
        self.concept_gallery = gr.Gallery(label="Other words located (concept maps)", columns=5, height="auto",
                                          allow_preview=False, visible=False, elem_id="explain-concept-gallery",
                                          elem_classes="pixels")

    def wire(self) -> None:
        # preprocess=False: Gradio would open the upload itself and answer a file that is not an image with a bare
        # "Error"; `read_upload` says what was wrong and what is allowed.
        self.run.click(friendly(self.on_explain), inputs=[self.picture, self.caption, self.concepts, self.model],
                       outputs=[self.gallery, self.segmentation, self.concept_gallery, self.notes],
                       api_name="explain", concurrency_limit=1, concurrency_id=MODEL_LOCK, preprocess=False,
                       validator=self.validate, show_progress="full")

    @lenient
    def validate(self, picture, caption, concepts, model) -> list[dict]:
        return check_explanation(self.models, picture, caption, model, load=False).verdicts(FIELDS)

    def on_explain(self, picture: object, caption: object, concepts: object, model: object) -> tuple:
        checks = check_explanation(self.models, picture, caption, model)
        checks.refuse()
        image, notes = read_upload(picture)
        loaded = self.models.get(as_text(model))
        with loaded.lock:
            maps = explain(loaded.pipe, image, as_text(caption), concepts=split_list(as_text(concepts)) or None)
        # explain reads the RGB copy made here: what reading the upload converted is noted here
        maps.info.notes = list(dict.fromkeys(notes + maps.info.notes))
        result, view = Result.new(image, maps), View()
        segmentation = result.save(segmentation_of(image, maps, TILE), "segmentation")
        concepts_shown = concept_items(result, maps, view)
        return (gallery_items(result, maps, maps.names, view), segmentation,
                gr.update(value=concepts_shown, visible=bool(concepts_shown)), notes_text(maps))
