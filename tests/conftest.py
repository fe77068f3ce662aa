"""Session-wide fixtures: the tiny pipelines of `helpers`, built once."""

from __future__ import annotations

import helpers
import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: runs a real generation loop or a browser (skip with -m 'not slow')")


# Session-wide tiny pipelines, by fixture name: each is built once, on first use.
BUILDERS = {"tiny_sd": helpers.build_tiny_sd, "tiny_sd3level": helpers.build_tiny_sd3level,
            "tiny_sdxl": helpers.build_tiny_sdxl, "sd3": helpers.build_tiny_sd3, "flux": helpers.build_tiny_flux,
            "pixart": helpers.build_tiny_pixart}


for name, build in BUILDERS.items():  # one fixture per entry, e.g. `def test_x(sd3): ...`
    globals()[name] = pytest.fixture(scope="session", name=name)(lambda build=build: build())
