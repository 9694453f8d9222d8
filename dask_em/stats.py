"""Adding and tree-combining dicts of sufficient statistics.

The pairing order is fixed by the position of each block, never by which
task finished first, so the same blocks always give bit-identical sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .models.base import Stats


def add_stats(*parts: Stats) -> Stats:
    """Sum several dicts of statistics key by key, left to right.

    Parameters
    ----------
    *parts : dict of str to ndarray
        Statistics with identical keys and shapes.

    Returns
    -------
    dict of str to ndarray
        The key-wise sum, in float64 for floating values.
    """
    if not parts:
        raise ValueError("add_stats needs at least one dict of statistics")
    first = parts[0]
    keys = set(first)
    for other in parts[1:]:
        if set(other) != keys:
            raise ValueError(
                f"statistics with different keys cannot be added: {sorted(keys)} and {sorted(other)}"
            )
    out = {}
    for key in first:
        total = np.array(first[key], copy=True)
        for other in parts[1:]:
            total = total + other[key]
        out[key] = total
    return out


def tree_reduce(parts: Sequence[Stats], split_every: int = 8) -> Stats:
    """Combine statistics level by level in groups of ``split_every``.

    This is the same pairing the engine's task graph uses, so it can serve
    as an in-memory reference for it.
    """
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    level = list(parts)
    while len(level) > 1:
        level = [add_stats(*level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]
