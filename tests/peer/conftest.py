"""Peers' own suites: each fit reuses the session's cluster, listed tests are skipped with their reason."""

from __future__ import annotations

import pytest
from _adapter import skip_reason
from peer_skips import SKIPS


def pytest_collection_modifyitems(config, items):
    for item in items:
        peer = getattr(item.module, "PEER", None)
        reason = skip_reason(item.nodeid, SKIPS.get(peer, {})) if peer else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"{peer}: {reason}"))


@pytest.fixture(autouse=True)
def _session_client_is_current(client):
    """Fits given no client run on the session's cluster instead of starting one each."""
    with client.as_current():
        yield
