"""Shared fixtures: one real LocalCluster for the whole test session."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster


@pytest.fixture(scope="session")
def cluster():
    """A two-process LocalCluster on 127.0.0.1, one thread per worker."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def client(cluster):
    """A client connected to the session's LocalCluster (not set as default)."""
    with Client(cluster, set_as_default=False) as client:
        yield client
