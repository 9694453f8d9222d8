"""Adding and tree-combining dicts of sufficient statistics.

The pairing order is fixed by the position of each block, never by which
task finished first, so the same blocks always give bit-identical sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .contract import Stats


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
    tree = TreeSum(split_every)
    for part in parts:
        tree.push(part)
    return tree.result()


class TreeSum:
    """:func:`tree_reduce` fed one part at a time, holding only unfinished groups.

    The parts are paired exactly as :func:`tree_reduce` pairs them (groups
    of ``split_every`` consecutive parts, then groups of those sums, ...),
    so the result is the same bit for bit, while at most
    ``split_every - 1`` sums per level wait in memory. The engine uses it
    for a run of consecutive blocks read one at a time in one task.

    Parameters
    ----------
    split_every : int
        Fan-in of the tree, at least 2.
    """

    def __init__(self, split_every: int = 8) -> None:
        if split_every < 2:
            raise ValueError(f"split_every must be at least 2, got {split_every}")
        self.split_every = split_every
        self._levels: list[list[Stats]] = [[]]

    def push(self, part: Stats) -> None:
        """Add the next part (in order); full groups are summed at once."""
        self._levels[0].append(part)
        level = 0
        while len(self._levels[level]) == self.split_every:
            self._add_up(level)
            level += 1

    def result(self) -> Stats:
        """The sum of all parts pushed: the unfinished groups closed from the bottom up."""
        level = 0
        while level < len(self._levels):
            pending = self._levels[level]
            if len(pending) == 1 and not any(self._levels[level + 1 :]):
                return pending[0]
            if pending:  # the last group of its level, as tree_reduce closes it
                self._add_up(level)
            level += 1
        raise ValueError("TreeSum.result needs at least one part pushed")

    def _add_up(self, level: int) -> None:
        total = add_stats(*self._levels[level])
        self._levels[level] = []
        if level + 1 == len(self._levels):
            self._levels.append([])
        self._levels[level + 1].append(total)
