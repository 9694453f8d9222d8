"""Grouped data (rows with a group id) as engine blocks: whole groups per block.

Hierarchical models need every row of a group in the same E-step call, so
groups are partitioned across blocks (and so across workers) and never
split. Blocks are balanced by rows, and groups keep their order of first
appearance (or sorted order, when the rows of a group are not adjacent),
so the same data always gives the same blocks and bit-identical sums.

Accepted inputs:

* arrays (numpy, Dask or Zarr): ``X`` (n, p), ``y`` (n,), ``groups`` (n,),
  optional ``Z`` (n, q); the group ids are read into memory once to find
  the group boundaries;
* a pandas or Dask DataFrame with ``y`` and ``groups`` given as column
  names and ``Z`` as a list of column names; the fixed-effect columns are
  the others. A Dask DataFrame indexed by the group column with known
  divisions is used as it is; otherwise it is shuffled on the group
  column once;
* a Zarr group (path or URL) holding arrays ``X``, ``y``, ``groups`` and
  optionally ``Z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..errors import InvalidDataError
from ..executor import compute, persist_on
from .arrays import TARGET_BLOCK_BYTES, Blocks, should_persist


@dataclass(frozen=True)
class GroupedBlock:
    """Whole groups of rows, adjacent.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_fixed)
        Fixed-effect design.
    y : ndarray of shape (n_rows,)
        Response.
    Z : ndarray of shape (n_rows, n_random) or None
        Random-effect design; None is a random intercept (a column of ones).
    starts : ndarray of shape (n_groups + 1,)
        Group ``g`` is rows ``starts[g]:starts[g + 1]``.
    labels : ndarray of shape (n_groups,)
        The group ids.
    """

    X: np.ndarray
    y: np.ndarray
    Z: np.ndarray | None
    starts: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All numbers of the block in one flat float64 array (for checksums)."""
        parts = [self.X.ravel(), self.y, self.starts.astype(np.float64)]
        if self.Z is not None:
            parts.append(self.Z.ravel())
        out = np.concatenate([np.asarray(p, np.float64) for p in parts])
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, item: slice) -> GroupedBlock:
        """The groups ``item`` (a slice of groups, not of rows)."""
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("a GroupedBlock is indexed by a contiguous slice of groups")
        g0, g1, _ = item.indices(len(self))
        g1 = max(g0, g1)
        a, b = int(self.starts[g0]), int(self.starts[g1])
        return GroupedBlock(
            self.X[a:b],
            self.y[a:b],
            None if self.Z is None else self.Z[a:b],
            self.starts[g0 : g1 + 1] - a,
            self.labels[g0:g1],
        )

    @property
    def Z_or_ones(self) -> np.ndarray:
        """``Z``, or a column of ones for a random intercept."""
        return np.ones((len(self.y), 1)) if self.Z is None else self.Z


@dataclass
class GroupedBlocks(Blocks):
    """Blocks of whole groups.

    Attributes
    ----------
    source_parts : list of Delayed
        The blocks as read from the source (never persisted), for lazy
        per-group outputs that outlive the fit's cluster.
    n_groups : int or None
        Number of groups (None when not known without a pass, for a Dask
        DataFrame).
    n_fixed, n_random : int
        Columns of ``X`` and of ``Z`` (1 for a random intercept).
    lazy : bool
        Whether the input was out of core (Dask or Zarr): per-group outputs
        are then lazy.
    fixed_names, random_names : list of str
        Column names (from a DataFrame) or generated ones.
    """

    source_parts: list[Any] = field(default_factory=list)
    n_groups: int | None = None
    n_fixed: int = 0
    n_random: int = 1
    lazy: bool = False
    fixed_names: list[str] = field(default_factory=list)
    random_names: list[str] = field(default_factory=list)
    label_dtype: Any = None


def group_starts(groups: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Row order, group boundaries and labels of a vector of group ids.

    Returns
    -------
    order : ndarray or None
        A stable permutation making the groups adjacent, or None when they
        already are.
    starts : ndarray of shape (n_groups + 1,)
        Boundaries of the groups in that order.
    labels : ndarray of shape (n_groups,)
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise InvalidDataError(f"groups must be a non-empty 1-D array of group ids, got shape {groups.shape}")
    change = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    run_starts = np.concatenate([[0], change, [len(groups)]]).astype(np.int64)
    labels = groups[run_starts[:-1]]
    if len(np.unique(labels)) == len(labels):
        return None, run_starts, labels
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    change = np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1
    starts = np.concatenate([[0], change, [len(groups)]]).astype(np.int64)
    return order, starts, sorted_groups[starts[:-1]]


def partition_groups(starts: np.ndarray, n_parts: int) -> list[tuple[int, int]]:
    """Cut the groups into at most ``n_parts`` contiguous runs of about equal rows.

    Returns
    -------
    list of (first_group, end_group)
    """
    n_groups = len(starts) - 1
    n_parts = max(1, min(int(n_parts), n_groups))
    total = int(starts[-1])
    targets = total * np.arange(1, n_parts) / n_parts
    cuts = np.searchsorted(starts, targets, side="left")
    cuts = np.unique(np.clip(cuts, 1, n_groups - 1)) if n_groups > 1 else np.array([], np.int64)
    edges = [0, *[int(c) for c in cuts], n_groups]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1) if edges[i + 1] > edges[i]]


def _make_block(X: Any, y: Any, Z: Any, starts: np.ndarray, labels: np.ndarray) -> GroupedBlock:
    X = np.asarray(X, dtype=np.float64)
    return GroupedBlock(
        np.ascontiguousarray(X),
        np.asarray(y, dtype=np.float64).reshape(-1),
        None if Z is None else np.ascontiguousarray(np.asarray(Z, dtype=np.float64)),
        starts,
        labels,
    )


def _frame_block(frame: Any, fixed: list[str], response: str, group: str, random: list[str] | None) -> GroupedBlock:
    """A GroupedBlock from a pandas partition whose groups are all complete."""
    if group in frame.columns:
        ids = frame[group].to_numpy()
    else:  # the group column is the index
        ids = frame.index.to_numpy()
    order, starts, labels = group_starts(ids) if len(ids) else (None, np.zeros(1, np.int64), ids[:0])
    if order is not None:
        frame = frame.iloc[order]
    Z = frame[random].to_numpy(np.float64) if random else None
    return _make_block(frame[fixed].to_numpy(np.float64), frame[response].to_numpy(np.float64), Z, starts, labels)


def _n_workers(client: Any) -> int:
    if client is None:
        return 1
    try:
        return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    except Exception:  # pragma: no cover - an unusual client
        return 1


def grouped_blocks(
    X: Any,
    y: Any,
    groups: Any,
    Z: Any = None,
    *,
    client: Any = None,
    n_partitions: int | None = None,
    persist: bool | None = None,
) -> GroupedBlocks:
    """Blocks of whole groups for a hierarchical model.

    Parameters
    ----------
    X : array-like, dask array, zarr array, DataFrame or str
        The fixed-effect design of shape (n_samples, n_fixed), a DataFrame
        (then ``y``, ``groups`` and ``Z`` name its columns), or a Zarr
        group path holding ``X``, ``y``, ``groups`` and optionally ``Z``.
    y : array-like of shape (n_samples,) or str
        The response.
    groups : array-like of shape (n_samples,) or str
        Group id of each row.
    Z : array-like of shape (n_samples, n_random), list of str, or None
        The random-effect design; None is a random intercept.
    client : distributed.Client, optional
        In-memory blocks are scattered to its workers; out-of-core blocks
        are persisted there when they fit comfortably in memory.
    n_partitions : int, optional
        Number of blocks; by default about 16 MiB a block and at least two
        per worker.
    persist : bool, optional
        Force persisting out-of-core input (True) or streaming it (False).

    Returns
    -------
    GroupedBlocks
    """
    if _is_dataframe(X):
        return _dataframe_blocks(X, y, groups, Z, client=client, n_partitions=n_partitions, persist=persist)
    if isinstance(X, str) or hasattr(X, "__fspath__"):
        import zarr

        try:
            node = zarr.open_group(str(X), mode="r")
        except Exception as exc:
            raise InvalidDataError(f"cannot open {str(X)!r} as a Zarr group: {exc}") from exc
        names = set(dict(node.arrays()))
        missing = {"X", "y", "groups"} - names
        if missing:
            raise InvalidDataError(
                f"the Zarr group {str(X)!r} lacks the arrays {sorted(missing)}; it must hold 'X' "
                "(n_samples, n_fixed), 'y' (n_samples,), 'groups' (n_samples,) and optionally 'Z'"
            )
        X, y, groups = da.from_zarr(node["X"]), da.from_zarr(node["y"]), da.from_zarr(node["groups"])
        Z = da.from_zarr(node["Z"]) if "Z" in names and Z is None else Z
    lazy = any(isinstance(a, da.Array) or type(a).__module__.startswith("zarr") for a in (X, y, groups, Z))
    group_ids = groups.compute() if isinstance(groups, da.Array) else np.asarray(groups)
    group_ids = np.asarray(group_ids).reshape(-1)
    n = len(group_ids)
    shapes = {"X": tuple(np.shape(X)), "y": tuple(np.shape(y))}
    if Z is not None:
        shapes["Z"] = tuple(np.shape(Z))
    if len(shapes["X"]) != 2 or shapes["X"][0] != n or int(np.prod(shapes["y"])) != n or (
        Z is not None and (len(shapes["Z"]) != 2 or shapes["Z"][0] != n)
    ):
        raise InvalidDataError(
            f"X must be (n_samples, n_fixed), y (n_samples,), groups (n_samples,) and Z "
            f"(n_samples, n_random); got shapes {shapes} and groups ({n},)"
        )
    order, starts, labels = group_starts(group_ids)
    n_fixed = shapes["X"][1]
    n_random = shapes["Z"][1] if Z is not None else 1
    row_bytes = 8 * (n_fixed + 1 + (n_random if Z is not None else 0))
    n_parts = n_partitions or max(math.ceil(n * row_bytes / TARGET_BLOCK_BYTES), 2 * _n_workers(client))
    ranges = partition_groups(starts, n_parts)

    if not lazy:
        Xn, yn = np.asarray(X, np.float64), np.asarray(y, np.float64).reshape(-1)
        Zn = None if Z is None else np.asarray(Z, np.float64)
        if order is not None:
            Xn, yn = Xn[order], yn[order]
            Zn = None if Zn is None else Zn[order]
        pieces = []
        for g0, g1 in ranges:
            a, b = int(starts[g0]), int(starts[g1])
            pieces.append(_make_block(Xn[a:b], yn[a:b], None if Zn is None else Zn[a:b], starts[g0 : g1 + 1] - a, labels[g0:g1]))
        if client is not None:
            futures = client.scatter(pieces, hash=False)
            parts = [dask.delayed(f) for f in futures]
        else:
            parts = [dask.delayed(p, traverse=False) for p in pieces]
        source = parts
    else:
        Xd = X if isinstance(X, da.Array) else da.asarray(X)
        yd = (y if isinstance(y, da.Array) else da.asarray(y)).reshape(-1)
        Zd = None if Z is None else (Z if isinstance(Z, da.Array) else da.asarray(Z))
        source = []
        for g0, g1 in ranges:
            a, b = int(starts[g0]), int(starts[g1])
            rows = slice(a, b) if order is None else order[a:b]
            source.append(
                dask.delayed(_make_block, pure=True)(
                    Xd[rows], yd[rows], None if Zd is None else Zd[rows], starts[g0 : g1 + 1] - a, labels[g0:g1]
                )
            )
        parts = source
        if should_persist(n * row_bytes, client, persist):
            parts = list(persist_on(client, *source))
    fingerprint = {
        "kind": "groups",
        "n_samples": int(n),
        "n_groups": len(labels),
        "n_fixed": int(n_fixed),
        "n_random": int(n_random),
        "partition_groups": [int(g1 - g0) for g0, g1 in ranges],
    }
    blocks = GroupedBlocks(
        parts=parts,
        n_samples=int(n),
        array=None,
        fingerprint=fingerprint,
        client=client,
        source_parts=source,
        n_groups=len(labels),
        n_fixed=int(n_fixed),
        n_random=int(n_random),
        lazy=lazy,
        fixed_names=[f"x{j}" for j in range(n_fixed)],
        random_names=["Intercept"] if Z is None else [f"z{j}" for j in range(n_random)],
        label_dtype=labels.dtype,
    )
    if not lazy and client is not None:
        # Scattered blocks die with their worker: the engine scatters them again.
        blocks.rebuild = lambda: blocks.refill(
            grouped_blocks(X, y, groups, Z, client=client, n_partitions=n_partitions, persist=persist)
        )
    return blocks


def _is_dataframe(X: Any) -> bool:
    module = type(X).__module__
    return type(X).__name__ == "DataFrame" and (module.startswith("pandas") or module.startswith("dask"))


def _dataframe_blocks(
    frame: Any, y: Any, groups: Any, Z: Any, *, client: Any, n_partitions: int | None, persist: bool | None
) -> GroupedBlocks:
    if not isinstance(y, str) or not isinstance(groups, str):
        raise InvalidDataError(
            "with a DataFrame, pass y and groups as column names, e.g. "
            "fit(frame, y='response', groups='subject', Z=['Intercept', 'time'])"
        )
    random = None if Z is None else [Z] if isinstance(Z, str) else list(Z)
    index_is_group = frame.index.name == groups and groups not in frame.columns
    columns = list(frame.columns)
    needed = [y] + ([] if index_is_group else [groups]) + (random or [])
    absent = [c for c in needed if c not in columns]
    if absent:
        raise InvalidDataError(f"columns {absent} are not in the DataFrame, whose columns are {columns}")
    fixed = [c for c in columns if c not in (y, groups)]
    if not fixed:
        raise InvalidDataError("the DataFrame has no fixed-effect column besides y and groups; add e.g. a column of ones")
    if type(frame).__module__.startswith("pandas"):
        ids = frame.index.to_numpy() if index_is_group else frame[groups].to_numpy()
        out = grouped_blocks(
            frame[fixed].to_numpy(np.float64),
            frame[y].to_numpy(np.float64),
            ids,
            None if random is None else frame[random].to_numpy(np.float64),
            client=client,
            n_partitions=n_partitions,
            persist=persist,
        )
        out.fixed_names, out.random_names = fixed, (["Intercept"] if random is None else random)
        return out
    ddf = frame
    if not (index_is_group and ddf.known_divisions):
        # A hash shuffle puts every group in exactly one partition.
        ddf = ddf.shuffle(on=ddf.index if index_is_group else groups, npartitions=n_partitions)
    elif n_partitions is not None and n_partitions != ddf.npartitions:
        ddf = ddf.repartition(npartitions=n_partitions)
    source = [
        dask.delayed(_frame_block, pure=True)(part, fixed, y, groups, random) for part in ddf.to_delayed()
    ]
    n_random = 1 if random is None else len(random)
    parts = source
    if persist is None:
        # A shuffled frame is kept: recomputing the shuffle every iteration
        # would cost far more than the E-step. A frame indexed by group with
        # known divisions is streamed from its source.
        persist = client is not None and not (index_is_group and frame.known_divisions)
    if persist and client is not None:
        parts = list(persist_on(client, *source))
    sizes = compute(client, *[dask.delayed(_n_rows)(p) for p in parts])
    n = int(sum(sizes))
    fingerprint = {
        "kind": "groups",
        "n_samples": n,
        "n_fixed": len(fixed),
        "n_random": n_random,
        "partition_rows": [int(s) for s in sizes],
    }
    return GroupedBlocks(
        parts=parts,
        n_samples=n,
        array=None,
        fingerprint=fingerprint,
        client=client,
        source_parts=source,
        n_groups=None,
        n_fixed=len(fixed),
        n_random=n_random,
        lazy=True,
        fixed_names=fixed,
        random_names=["Intercept"] if random is None else random,
        label_dtype=ddf[groups].dtype if not index_is_group else ddf.index.dtype,
    )


def _n_rows(block: GroupedBlock) -> int:
    return len(block.y)
