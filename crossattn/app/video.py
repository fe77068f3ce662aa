"""Videos on the generation page: the "Frames" field (a video model's frame count), the frame slider that picks
which frame of the maps every view shows (each frame drawn as an image: `Result.at`), and the video as a GIF.
For image models these stay hidden and nothing else changes."""

from __future__ import annotations

import gradio as gr

from ..errors import InputError
from ..families import family_of
from ..pictures import save_gif
from .limits import DEMO_FRAMES, Loaded
from .store import Result

GIF_FPS = 8  # AnimateDiff's own rate: the GIF plays the video at about its speed


def is_video(loaded: Loaded) -> bool:
    return family_of(loaded.pipe).video


def default_frames(loaded: Loaded) -> int | None:
    """The frames a video model makes here when not told: its own default, at most `DEMO_FRAMES` and its limit,
    rounded down to a count it accepts (T·k + 1 when its VAE compresses time by T); None for an image model."""
    family = family_of(loaded.pipe)
    if not family.video:
        return None
    temporal = family.temporal_factor(loaded.pipe)
    frames = max(1, min(family.default_frames(loaded.pipe), DEMO_FRAMES, loaded.limits.max_frames))
    return frames - (frames - 1) % temporal


def frames_info(loaded: Loaded) -> str:
    return f"empty = {default_frames(loaded)}; at most {loaded.limits.max_frames} here"


def frames_field(loaded: Loaded) -> gr.Number:
    """Shown for a video model only; an image model's request ignores it (it stays hidden, at any value)."""
    video = is_video(loaded)
    return gr.Number(label="Frames", value=default_frames(loaded) if video else DEMO_FRAMES, precision=0,
                     elem_id="frames", visible=video, info=frames_info(loaded) if video else None)


def frames_update(loaded: Loaded) -> dict:
    """The Frames field for another model picked: shown at that model's default here, or hidden."""
    if not is_video(loaded):
        return gr.update(visible=False)
    return gr.update(visible=True, value=default_frames(loaded), info=frames_info(loaded))


def frame_slider() -> gr.Slider:
    """Which frame of a video's maps every view shows, from 0 as `HeatMaps.frame` counts (hidden for an image)."""
    return gr.Slider(0, 1, value=0, step=1, label="Frame (from 0)", elem_id="frame-slider", visible=False,
                     info="videos: which frame every view below shows")


def frame_slider_update(result: Result) -> dict:
    """Back to the first frame for a new generation; hidden for an image or a single frame (a slider needs
    min < max)."""
    if result.maps.frames == 1:
        return gr.update(visible=False, value=0)
    return gr.update(visible=True, minimum=0, maximum=result.maps.frames - 1, value=0)


def video_panel() -> gr.Image:
    """The whole video as an animated GIF beside the frame shown (every browser plays a GIF)."""
    return gr.Image(label="Video (GIF)", type="filepath", height=420, visible=False, elem_id="generated-video",
                    elem_classes="pixels")


def video_update(result: Result) -> dict:
    if result.frames is None:
        return gr.update(visible=False, value=None)
    path = result.path("video.gif")
    save_gif(result.frames, path, fps=GIF_FPS)
    return gr.update(visible=True, value=str(path))


def image_label(result: Result, frame: float) -> str:
    """What the image area shows: the image, or which frame of the video, counted from 0 as the slider counts
    (and the decoded frames its maps cover, when the model compresses time). Short: it heads a half-width panel."""
    if result.frames is None:
        return "Generated image"
    k, n = result.frame_index(frame), result.maps.frames
    covers = result.covers(k)
    if len(covers) == 1:
        return f"Video frame {k} (of 0–{n - 1})"
    return f"Video frames {covers[0]}–{covers[-1]}: map {k} (of 0–{n - 1}), first shown"


def generated_image(result: Result) -> str | dict:
    """The image area after a generation: an image's path as it always was (what API clients read), a video's
    first frame with a label saying so."""
    if result.frames is None:
        return result.save(result.image, "image")
    return shown_frame(result, 0)


def shown_frame(result: Result, frame: float) -> dict:
    """The image area at the frame picked; for an image only its label (back from a video's: the image is
    already shown)."""
    if result.frames is None:
        return gr.update(label=image_label(result, frame))
    shot = result.at(frame)
    return gr.update(value=shot.save(shot.image, "image"), label=image_label(result, frame))


def frames_text(result: Result) -> str:
    """For the status line: ", N frames" of a video."""
    return "" if result.frames is None else f", {len(result.frames)} frames"


def refuse_video(result: Result, what: str) -> None:
    """The causal checks compare one image with another (`causal.images_only`): say so before any compute."""
    if result.frames is not None:
        raise InputError(f"{what} compares images; this generation is a video: generate with an image model to ask")
