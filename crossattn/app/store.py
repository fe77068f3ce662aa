"""The files of one generation, kept per browser session: the server serves only files this store wrote."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..heatmaps import HeatMaps
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
    """One generation, kept per browser session: the image, its maps, and the files drawn from them."""

    image: Image.Image
    maps: HeatMaps
    folder: Path
    stem: str  # "<prompt-slug>_seed<seed>": every file name starts with it
    shown: list[str] = field(default_factory=list)  # names of the gallery tiles: clicks resolve here
    cells: list[tuple[str, int]] = field(default_factory=list)  # (layer, head) of the model-view tiles

    @classmethod
    def new(cls, image: Image.Image, maps: HeatMaps) -> Result:
        prompt = (maps.info.prompt or "")
        words = slug(prompt[:48]) if any(ch.isalnum() for ch in prompt) else "prompt"
        stem = f"{words}_seed{maps.info.seed or 0}"
        return cls(image, maps, Path(tempfile.mkdtemp(prefix=stem[:20] + "-", dir=_files_root())), stem)

    def path(self, suffix: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)  # a session idle past FILES_TTL_S lost its folder
        return self.folder / f"{self.stem}_{suffix}"

    def save(self, picture: Image.Image, suffix: str) -> str:
        """Write a picture under a name that says what it shows (the name a download gets); return its path."""
        path = self.path(suffix + ("" if "." in suffix else ".png"))
        picture.save(path)
        return str(path)

