"""The files of one generation, kept per browser session: the server serves only files this store wrote."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..heatmaps import HeatMaps
from ..pictures import frame_covers
from ..words import slug
from .limits import FILES_TTL_S


def _files_root() -> Path:
    root = Path(tempfile.gettempdir()) / "crossattn-demo"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():  # files of earlier sessions expire after an hour
        if time.time() - old.stat().st_mtime > FILES_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    return root


@dataclass
class Result:
    """One generation, kept per browser session: the image (a video: its frames, and the first as the image), its
    maps, and the files drawn from them."""

    image: Image.Image
    maps: HeatMaps
    folder: Path
    stem: str  # "<prompt-slug>_seed<seed>": every file name starts with it
    shown: list[str] = field(default_factory=list)  # names of the gallery tiles: clicks resolve here
    cells: list[tuple[str, int]] = field(default_factory=list)  # (layer, head) of the model-view tiles
    frames: list[Image.Image] | None = None  # a video's decoded frames, all of them; None for an image

    @classmethod
    def new(cls, output: Image.Image | list[Image.Image], maps: HeatMaps) -> Result:
        """`output` as `generation.run` returns it: an image, or a video's frames (a list)."""
        frames = output if isinstance(output, list) else None
        prompt = (maps.info.prompt or "")
        words = slug(prompt[:48]) if any(ch.isalnum() for ch in prompt) else "prompt"
        stem = f"{words}_seed{maps.info.seed or 0}"
        folder = Path(tempfile.mkdtemp(prefix=stem[:20] + "-", dir=_files_root()))
        return cls(frames[0] if frames else output, maps, folder, stem, frames=frames)

    def covers(self, frame: int) -> list[int]:
        """The decoded frames the maps' frame `frame` covers (several when the model compresses time)."""
        return frame_covers(self.maps)[frame]

    def frame_index(self, frame: float) -> int:
        """A frame of the maps, `frame` clamped to those there are (0 for an image)."""
        return min(max(int(frame), 0), self.maps.frames - 1)

    def at(self, frame: float) -> Result:
        """This generation as one image, as every view draws it: for a video, the maps' frame `frame` over the
        first decoded frame it covers (the frame the map was made for), its files named after that frame (frames
        drawn in turn do not overwrite each other); an image is itself."""
        if self.frames is None:
            return self
        k = self.frame_index(frame)
        picture = self.frames[min(self.covers(k)[0], len(self.frames) - 1)]
        return replace(self, image=picture, maps=self.maps.frame(k), stem=f"{self.stem}_frame{k}", frames=None)

    def path(self, suffix: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)  # a session idle past FILES_TTL_S lost its folder
        return self.folder / f"{self.stem}_{suffix}"

    def save(self, picture: Image.Image, suffix: str) -> str:
        """Write a picture under a name that says what it shows (the name a download gets); return its path."""
        path = self.path(suffix + ("" if "." in suffix else ".png"))
        picture.save(path)
        return str(path)

