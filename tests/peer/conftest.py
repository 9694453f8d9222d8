"""What the peers' own conftest files give their tests, and the deselection of ``skips.py``."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
import pytest
from skips import SKIPS


@pytest.fixture(params=[np.float32, np.float64])
def global_dtype(request):
    """scikit-learn's dtype fixture (float32 runs here without its opt-in variable)."""
    return request.param


@pytest.fixture
def global_random_seed():
    """scikit-learn's default seed."""
    return 42


def _peer_file(item: pytest.Item) -> str:
    return Path(item.obj.__code__.co_filename).stem if hasattr(item, "obj") else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the peer tests listed in ``skips.py``."""
    keep, drop = [], []
    for item in items:
        if "peer" not in Path(str(item.fspath)).parts:
            keep.append(item)
            continue
        key = f"{_peer_file(item)}::{item.name}"
        (drop if any(fnmatch.fnmatchcase(key, pattern) for pattern in SKIPS) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def _peer_client():
    """One in-process cluster as the default client, so that a fit does not start its own."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client
