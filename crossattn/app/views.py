"""Views: the pictures and tables drawn from stored maps, at the display settings (`View`). No Gradio here."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass, replace

import pandas as pd
from PIL import Image

from .. import diagnosis, geometry, pictures, placement, render, reports
from ..heatmaps import HeatMaps, WordHeatMap
from ..words import slug, split_list, word_ref
from .store import Result

TILE, BIG, CELL = 256, 384, 96  # long side of gallery tiles, enlarged views and model-view cells
BIG_LABEL = "Selected word, large"
NOTE_WORDS = 8  # a note quoting more words (what a long prompt loses) shows how many and the first few

@dataclass(frozen=True)
class View:
    """The display settings and filters every view is drawn with (the page's controls, by parameter name)."""

    words: str = ""
    expect: str = ""
    alpha: float = 0.5
    cmap: str = "jet"
    resolutions: list[str] | None = None
    blocks: list[str] | None = None
    first_step: int = 1
    last_step: int = 10**6
    selected: str | None = None
    step: int = 10**6
    frame: int = 0  # a video's frame every view shows (`Result.at`); an image has only frame 0

    def filtered(self, maps: HeatMaps) -> HeatMaps:
        """The maps restricted to the ticked resolutions and blocks (none ticked: all) and the step range."""
        first, last = sorted((int(self.first_step), int(self.last_step)))
        resolutions = self.resolutions if maps.info.resolution_sites else None
        return maps.filter(steps=slice(max(first, 1) - 1, last), resolutions=resolutions or None,
                           blocks=self.blocks or None)

    def shown(self, result: Result) -> list[str]:
        """The words to show: those typed, or every word of the prompt."""
        return split_list(self.words) or result.maps.names

    @property
    def statements(self) -> list[str]:
        return [line.strip() for line in (self.expect or "").splitlines() if line.strip()]


def gallery_items(result: Result, maps: HeatMaps, names: list[str], view: View) -> list[tuple[str, str]]:
    items = []
    for k, name in enumerate(names):
        m = maps.word(name)
        items.append((result.save(m.overlay(result.image, view.alpha, view.cmap, size=TILE),
                                  f"map{k:02d}_{slug(name)}"), m.word))
    return items


def titled_map(maps: HeatMaps, name: str) -> WordHeatMap:
    """The map of a word or phrase, titled by the name it is picked by ("a#1": the map says which "a")."""
    return replace(maps.word(name), word=name)


def selected_figure(result: Result, maps: HeatMaps, name: str, view: View) -> str:
    figure = titled_map(maps, name).figure(result.image, view.alpha, view.cmap, tile=BIG)
    return result.save(figure, f"{slug(name)}_large")


def step_frames(result: Result, maps: HeatMaps, name: str, view: View,
                steps: list[int] | None = None) -> list[Image.Image]:
    """The word's coarse map at each step (or at `steps`, 1-based) over the image, labelled "step k of N"."""
    text, occurrence = word_ref(name)
    frames = maps.over_steps(text, occurrence)
    base = render.scale_to(result.image, TILE)
    pictures = []
    for k in steps or range(1, len(frames) + 1):
        frame = frames[k - 1]
        peak = frame.max()
        label = f"{name}: step {k} of {len(frames)}" if maps.data.step_counts[k - 1] else f"step {k}: filtered out"
        picture = render.overlay(base, frame / peak if peak > 0 else frame, view.alpha, view.cmap)
        pictures.append(render.labelled(picture, label, TILE))
    return pictures


def step_view(result: Result, maps: HeatMaps, name: str, view: View, frames: list | None = None) -> str:
    """The selected word's frame at the chosen step, saved; drawn alone unless all `frames` are at hand (the
    slider moves often: one frame, not all of them)."""
    k = min(max(int(view.step), 1), len(maps.data.step_counts))
    picture = frames[k - 1] if frames else step_frames(result, maps, name, view, [k])[0]
    return result.save(picture, f"{slug(name)}_step{k}")


def time_views(result: Result, maps: HeatMaps, name: str, view: View) -> tuple[str, str]:
    """(the frame at the chosen step, an animation over all steps) of the selected word."""
    frames = step_frames(result, maps, name, view)
    gif = result.path(f"{slug(name)}_steps.gif")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=150, loop=0)
    return step_view(result, maps, name, view, frames), str(gif)


def layer_head_cells(result: Result, maps: HeatMaps, name: str, view: View) -> tuple[list, list, str]:
    """The word's map per layer (rows) and head (columns): gallery items, their (layer, head), a legend."""
    items, cells, legend = [], [], []
    blank = Image.new("RGB", (CELL, CELL), "white")  # pads rows of layers with fewer heads: columns stay heads
    for row, (layer, site) in enumerate(maps.sites.items()):
        legend.append(f"L{row}: `{layer}` ({site.block}, {site.resolution[0]}x{site.resolution[1]})")
        for head in range(maps.data.heads):
            if head < maps.data.sums[layer].shape[1]:
                cell = maps.filter(layers=[layer], heads=[head]).word(name)
                picture = cell.overlay(result.image, view.alpha, view.cmap, size=CELL)
            else:
                picture = blank
            items.append((result.save(picture, f"{slug(name)}_L{row}_h{head}"), f"L{row} h{head}"))
            cells.append((layer, head))
    return items, cells, "  \n".join(legend)


def segmentation_of(image: Image.Image, maps: HeatMaps, tile: int) -> Image.Image:
    """Who owns each pixel: one region per object phrase, named in place."""
    labels, names = placement.segmentation(maps)
    return pictures.segmentation_picture(image, labels, names, tile=tile)


def placement_of_objects(image: Image.Image, maps: HeatMaps, view: View,
                         tile: int) -> tuple[Image.Image, dict, Image.Image]:
    """(segmentation picture, placement report, centroid-path picture) of the prompt's objects."""
    segmentation = segmentation_of(image, maps, tile)
    data = placement.report(maps, view.statements, from_prompt=not view.statements)
    paths = pictures.track_picture(image, [geometry.Track.from_dict(t) for t in data["timelines"]], tile=tile)
    return segmentation, data, paths


def placement_views(result: Result, maps: HeatMaps, view: View) -> tuple[str, pd.DataFrame, str, str]:
    """(segmentation, placement table, layout checks, centroid paths) as the page shows them."""
    segmentation, data, paths = placement_of_objects(result.image, maps, view, TILE)
    table = pd.DataFrame(reports.table_rows(data), columns=reports.TABLE_HEADERS)
    checks = [f"- **{'PASS' if c['passed'] else 'FAIL'}** {c['statement']}: {c['reason']}" for c in data["checks"]]
    checks = checks or ["_No relation stated; add one under “Intended layout”._"]
    checks += [f"- note: {n}" for n in data["notes"]]
    return result.save(segmentation, "segmentation"), table, "\n".join(checks), result.save(paths, "timeline")


def concept_items(result: Result, maps: HeatMaps, view: View) -> list[tuple[str, str]]:
    """The concept maps ("locate other words"), drawn like the words' maps."""
    if maps.concepts is None:
        return []
    return [(result.save(maps.concept(c).overlay(result.image, view.alpha, view.cmap, size=TILE),
                         f"concept{k:02d}_{slug(c)}"), c) for k, c in enumerate(maps.concepts.words)]


def diagnosis_views(result: Result, maps: HeatMaps) -> tuple[str | None, str, list[str]]:
    """(the outlined picture, the verdict lines, the objects found neglected) of the maps' diagnosis."""
    d = diagnosis.diagnose(maps)
    if not d.objects:
        return None, "_No object phrase could be read from the prompt to diagnose._", []
    lines = [f"- {line}" for line in d.verdicts()] + [f"- note: {n}" for n in d.notes]
    neglected = [o.name for o in d.objects if o.missing]
    picture = pictures.diagnosis_picture(d, result.image, tile=TILE)
    return result.save(picture, "diagnosis"), "\n".join(lines), neglected


def video_files(result: Result, view: View, folder) -> dict[str, Image.Image]:
    """A video's own files: the video as a GIF and each shown word's map over it (written here: a GIF is saved
    frame by frame), and the frames × words grid (returned, by file name)."""
    maps, names = view.filtered(result.maps), view.shown(result)
    pictures.save_gif(result.frames, folder / f"{result.stem}_video.gif")
    for k, name in enumerate(names):
        overlay = pictures.video_overlay(result.frames, maps, name, view.alpha, view.cmap)
        pictures.save_gif(overlay, folder / f"{result.stem}_video_overlay_{k:02d}_{slug(name)}.gif")
    if not names:
        return {}
    return {f"{result.stem}_frames_grid.png": pictures.frames_grid(result.frames, maps, names, view.alpha, view.cmap)}


def brief(text: str, words: int = NOTE_WORDS) -> str:
    """`text` quoted, one short line however long it is: “its first words …” (N words)."""
    parts = text.split()
    return f"“{' '.join(parts)}”" if len(parts) <= words else f"“{' '.join(parts[:words])} …” ({len(parts)} words)"


def notes_text(maps: HeatMaps) -> str:
    """The generation's notes, one line each: a quoted passage (what a long prompt loses) is shown `brief`."""
    notes = [re.sub(r"“([^”]*)”", lambda quoted: brief(quoted.group(1)), note) for note in maps.info.notes]
    return "\n".join(f"- {n}" for n in notes)


def write_zip(result: Result, view: View) -> str:
    """One zip of everything at the current settings: image, overlays, segmentation, centroid paths, the raw
    maps (loadable with `crossattn.load_heat_maps` once unpacked) and the placement report. A video: those of the
    frame shown (named after it), with the raw maps of every frame, the video as a GIF and `video_files`."""
    shot = result.at(view.frame)
    maps = view.filtered(shot.maps)
    stem, folder = shot.stem, result.folder / "zip"
    shutil.rmtree(folder, ignore_errors=True)
    result.maps.save(folder / f"{result.stem}_maps", diagnosis=diagnosis.diagnose(result.maps))
    files = {f"{stem}_image.png": shot.image}
    for k, name in enumerate(view.shown(result)):
        files[f"{stem}_overlay_{k:02d}_{slug(name)}.png"] = titled_map(maps, name).figure(
            shot.image, view.alpha, view.cmap, tile=max(BIG, *shot.image.size))
    if maps.words:
        segmentation, data, paths = placement_of_objects(shot.image, maps, view, BIG)
        files |= {f"{stem}_segmentation.png": segmentation, f"{stem}_timeline.png": paths}
        data |= {"seed": maps.info.seed, "steps": len(maps.data.step_counts)}
        (folder / f"{stem}_placement.json").write_text(json.dumps(data, indent=1))
    if result.frames is not None:
        files |= video_files(result, view, folder)
    for name, picture in files.items():
        picture.save(folder / name)
    archive = result.path("all.zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(folder))
    return str(archive)

