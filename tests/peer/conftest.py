"""Peers' own suites, run in this process as a user's would be; the tests listed in ``peer_skips.py`` are deselected."""

from __future__ import annotations

import numpy as np
import pytest
from _adapter import skip_reason
from peer_skips import SKIPS


def pytest_collection_modifyitems(config, items):
    """Deselect (neither run nor count as applicable) the listed tests, with their reasons in ``peer_skips.py``."""
    keep, dropped = [], []
    for item in items:
        peer = getattr(item.module, "PEER", None)
        reason = skip_reason(item.nodeid, SKIPS.get(peer, {})) if peer else None
        (dropped if reason else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=[np.float32, np.float64])
def global_dtype(request):
    """scikit-learn's dtype fixture (its float32 cases run here without its opt-in variable)."""
    return request.param


@pytest.fixture
def global_random_seed():
    """scikit-learn's default seed."""
    return 42
