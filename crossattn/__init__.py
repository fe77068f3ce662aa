"""crossattn: where in the picture did each word of the prompt go?

    >>> import crossattn
    >>> pipe = crossattn.load_pipeline()
    >>> with crossattn.trace(pipe) as tr:
    ...     image = pipe("a red circle left of a blue square").images[0]
    >>> tr.heat_maps().word("circle").overlay(image)   # doctest: +ELLIPSIS
    <PIL.Image.Image image mode=RGB size=64x64 at ...>
"""

from importlib.metadata import version

from .causal import effects, repair
from .errors import InputError, UnknownWordError
from .explain import explain
from .heatmaps import HeatMaps, WordHeatMap, load_heat_maps
from .intervention import intervene
from .models import load_pipeline
from .tracing import Trace, trace

__all__ = ["HeatMaps", "InputError", "Trace", "UnknownWordError", "WordHeatMap", "effects", "explain", "intervene",
           "load_heat_maps", "load_pipeline", "repair", "trace"]
__version__ = version("crossattn")  # one place: pyproject.toml
