"""crossattn: where in the picture did each word of the prompt go?

    >>> import crossattn
    >>> pipe = crossattn.load_pipeline()
    >>> with crossattn.trace(pipe) as tr:
    ...     image = pipe("a red circle left of a blue square").images[0]
    >>> tr.heat_maps().word("circle").overlay(image)   # doctest: +ELLIPSIS
    <PIL.Image.Image image mode=RGB size=64x64 at ...>
"""

from importlib.metadata import version

from .causal import diagnose_causally, effects, repair
from .diagnosis import diagnose
from .errors import InputError, UnknownWordError
from .explain import explain
from .heatmaps import HeatMaps, WordHeatMap
from .intervention import intervene
from .models import load_pipeline
from .placement import check, objects, placements, relations, segmentation, track
from .saved import load_heat_maps
from .tracing import Trace, trace

__all__ = ["HeatMaps", "InputError", "Trace", "UnknownWordError", "WordHeatMap", "check", "diagnose",
           "diagnose_causally", "effects",
           "explain", "intervene", "load_heat_maps", "load_pipeline", "objects", "placements", "relations", "repair",
           "segmentation", "trace", "track"]
__version__ = version("crossattn")  # one place: pyproject.toml
