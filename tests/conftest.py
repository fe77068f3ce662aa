"""Session-wide fixtures: tiny pipelines (`tests.families.pipelines`) built once, on first use."""

from __future__ import annotations

import pytest
import torch

from tests.families import pipelines


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: runs a real generation loop or a browser (skip with -m 'not slow')")


@pytest.fixture(scope="session")
def tiny_sd():
    return pipelines.build_tiny_sd()


@pytest.fixture(scope="session")
def tiny_sd3level():
    return pipelines.build_tiny_sd3level()


@pytest.fixture(scope="session")
def tiny_sdxl():
    return pipelines.build_tiny_sdxl()


@pytest.fixture(scope="session")
def sd3():
    return pipelines.build_tiny_sd3()


@pytest.fixture(scope="session")
def flux():
    return pipelines.build_tiny_flux()


@pytest.fixture(scope="session")
def pixart():
    return pipelines.build_tiny_pixart()


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models run faster on one thread, and far faster on a machine busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
