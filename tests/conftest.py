"""Session-wide fixtures: the tiny pipelines of `helpers`, built once."""

from __future__ import annotations

import pytest
from helpers import build_tiny_sd, build_tiny_sd3level, build_tiny_sdxl


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: runs a real generation loop or a browser (skip with -m 'not slow')")


@pytest.fixture(scope="session")
def tiny_sd():
    return build_tiny_sd()


@pytest.fixture(scope="session")
def tiny_sd3level():
    return build_tiny_sd3level()


@pytest.fixture(scope="session")
def tiny_sdxl():
    return build_tiny_sdxl()
