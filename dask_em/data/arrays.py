"""Turn user input into blocks the engine maps the E-step over.

Accepted: numpy arrays, Dask arrays, Zarr arrays, and Zarr paths or URLs
(local path, ``file://``, ``memory://`` or any fsspec URL).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
from dask.delayed import Delayed

from ..errors import ChunkSizeWarning, InvalidDataError

if TYPE_CHECKING:
    import dask.array as da

# dask.array (with the SciPy it imports: about 35 MiB resident) is imported
# in the functions that use it, all run on the client, so that workers, which
# import this module through the engine, do without it.

#: Data smaller than this fraction of the memory where it would be held
#: (the cluster's, or this process's) is persisted once (:func:`should_persist`).
PERSIST_FRACTION = 0.4
#: A block and its E-step working set (the block in float64 and its
#: statistics; temporaries are sub-blocked) must stay under this fraction
#: of one worker's memory.
BLOCK_MEMORY_FRACTION = 0.25
#: Target size of one block when we choose the chunking ourselves.
TARGET_BLOCK_BYTES = 16 * 2**20


def is_local_path(source: Any) -> bool:
    """Whether ``source`` names a file on this machine (a path or a ``file://`` URL)."""
    text = str(source)
    return "://" not in text or text.startswith("file://")


def absolute_path(source: Any) -> str:
    """``source`` with a local path made absolute; URLs unchanged.

    Graphs carry paths to workers, whose working directory is their own: a
    relative path there names another (often missing) store.
    """
    text = str(source)
    if not is_local_path(text):
        return text
    return os.path.abspath(os.path.expanduser(local_path(text)))


def local_path(source: Any) -> str:
    """``source`` without a ``file://`` prefix (a local path as the file system names it)."""
    text = str(source)
    return text[len("file://") :] if text.startswith("file://") else text


def check_chunks_present(array: Any, source: str) -> None:
    """Refuse a Zarr array some of whose chunks are missing from its store.

    Zarr reads a missing chunk as its fill value, so a deleted chunk file
    (or a store the reader cannot fully see) would enter a fit as zeros.
    One listing of the store on the client tells; nothing is read.
    """
    n_chunks, present = int(array.nchunks), int(array.nchunks_initialized)
    if present >= n_chunks:
        return
    import itertools

    from zarr.core.sync import collect_aiterator

    prefix = f"{array.path}/" if array.path else ""
    keys = set(collect_aiterator(array.store.list_prefix(prefix)))
    missing = next(
        (
            key
            for coords in itertools.product(*(range(n) for n in array.cdata_shape))
            if (key := prefix + array.metadata.encode_chunk_key(coords)) not in keys
        ),
        None,
    )
    named = f"chunk {missing!r} is" if missing else f"{n_chunks - present} chunks are"
    raise InvalidDataError(
        f"{source!r}: {named} missing from the store ({present} of {n_chunks} chunks present); Zarr "
        "would read it as the fill value, so the data would be silently wrong. Restore the store, or "
        "if the chunk is truly all fill value, rewrite the array with zarr's write_empty_chunks=True."
    )


def check_visible_to_workers(source: Any, client: Any) -> None:
    """Refuse a local path that some worker of ``client`` cannot see.

    A worker on another machine (or in a container) reads a missing local
    Zarr store as fill values; better to say so before any pass.
    """
    if client is None or not is_local_path(source):
        return
    path = absolute_path(source)
    seen = client.run(os.path.exists, path)
    blind = sorted(address for address, exists in seen.items() if not exists)
    if blind:
        raise InvalidDataError(
            f"the Dask workers {', '.join(blind)} cannot see {path!r}, which exists here; put the data "
            "where every worker can read it under the same path (a shared file system) or give an "
            "object store URL (s3://, gs://, ...)"
        )


def open_zarr_array(source: str, component: str | None = None) -> da.Array:
    """Open a Zarr array (or the only array of a Zarr group) as a Dask array.

    A local path is made absolute and every chunk must be in the store
    (see :func:`check_chunks_present`).
    """
    import dask.array as da
    import zarr

    source = absolute_path(source)
    try:
        node = zarr.open(source, mode="r", path=component) if component else zarr.open(source, mode="r")
    except Exception as exc:  # zarr raises several types for a missing store
        raise InvalidDataError(f"cannot open {source!r} as Zarr: {exc}") from exc
    if isinstance(node, zarr.Group):
        arrays = dict(node.arrays())
        name = "X" if "X" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
        if name is None:
            raise InvalidDataError(
                f"{source!r} is a Zarr group with arrays {sorted(arrays)}; name the one to fit "
                "(e.g. 'path/to/store.zarr' with component='X')"
            )
        node = arrays[name]
    check_chunks_present(node, source)
    return da.from_zarr(node)


def as_dask_array(X: Any, *, chunk_rows: int | None = None, client: Any = None) -> da.Array:
    """A 2-D numeric Dask array with one chunk along the feature axis.

    Parameters
    ----------
    X : array-like, dask array, zarr array, or str
        The data, of shape (n_samples, n_features). A string is a Zarr path
        or URL.
    chunk_rows : int, optional
        Rows per block for in-memory input; by default about 16 MiB a block.
    client : distributed.Client, optional
        In-memory input is scattered to its workers block by block, rather
        than embedded in every task graph.

    Raises
    ------
    InvalidDataError
        For input that is not 2-D or not numeric.
    """
    import dask.array as da

    if isinstance(X, str) or hasattr(X, "__fspath__"):
        X = open_zarr_array(str(X))
    elif not isinstance(X, da.Array):
        try:
            import zarr

            if isinstance(X, zarr.Array):
                check_chunks_present(X, str(X.store))
                X = da.from_zarr(X)
        except ImportError:  # pragma: no cover - zarr is a dependency
            pass
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        _check_array_meta(X.shape, X.dtype)
        rows = chunk_rows or _default_chunk_rows(X.shape[0], X.shape[1] * max(X.dtype.itemsize, 8))
        X = _scatter(X, rows, client) if client is not None else _in_process(X, rows)
    _check_array_meta(X.shape, X.dtype)
    if X.dtype.kind in "biu":
        X = X.astype(np.float64)
    if chunk_rows is not None and X.chunks[0][0] != chunk_rows:
        X = X.rechunk((chunk_rows, -1))
    elif X.numblocks[1] > 1:
        X = X.rechunk({1: -1})
    return X


def _scatter(X: np.ndarray, rows: int, client: Any) -> da.Array:
    import dask.array as da

    pieces = [X[start : start + rows] for start in range(0, len(X), rows)]
    futures = client.scatter(pieces, hash=False)
    parts = [da.from_delayed(dask.delayed(f), shape=p.shape, dtype=p.dtype) for f, p in zip(futures, pieces)]
    return da.concatenate(parts, axis=0)


def _in_process(X: np.ndarray, rows: int) -> da.Array:
    """``X`` as a Dask array whose blocks are row slices of it, already computed.

    The same blocks as scattered to a cluster; nothing to persist, and a
    pass in this process maps them without a task graph.
    """
    import uuid

    import dask.array as da

    name = f"in-memory-{uuid.uuid4().hex}"
    starts = range(0, len(X), rows)
    graph = {(name, i, 0): X[start : start + rows] for i, start in enumerate(starts)}
    chunks = (tuple(min(rows, len(X) - start) for start in starts), (X.shape[1],))
    return da.Array(graph, name, chunks, dtype=X.dtype)


def _default_chunk_rows(n_samples: int, row_bytes: int) -> int:
    return int(max(1024, min(n_samples, TARGET_BLOCK_BYTES // max(row_bytes, 1))))


def _check_array_meta(shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 2:
        hint = " Reshape 1-D data with X.reshape(-1, 1)." if len(shape) == 1 else ""
        raise InvalidDataError(
            f"expected a 2-D array of shape (n_samples, n_features), got {len(shape)}-D "
            f"with shape {tuple(shape)}.{hint}"
        )
    if np.dtype(dtype).kind not in "biuf":
        raise InvalidDataError(f"expected numeric data, got dtype {np.dtype(dtype)!s}; convert it to float first")
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidDataError(f"expected non-empty data, got shape {tuple(shape)}")


@dataclass
class Blocks:
    """Blocks of data ready for the engine.

    Attributes
    ----------
    parts : list of Delayed
        One delayed block per chunk, in data order (fixes the reduction order).
    n_samples : int
        Total number of observations.
    array : dask.array.Array or None
        The (possibly persisted) Dask array behind the blocks.
    fingerprint : dict
        Shape, dtype and chunking, to recognise the same data later.
    client : distributed.Client or None
        The client the blocks live on (persisted blocks exist only there).
    """

    parts: list[Delayed]
    n_samples: int
    array: da.Array | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    client: Any = None

    @property
    def weighted(self) -> bool:
        """Whether the parts carry their rows' weights (made by :func:`weighted_blocks`)."""
        return bool(self.fingerprint.get("sample_weight"))

    def refill(self, fresh: Blocks) -> Blocks:
        """These blocks holding the parts of ``fresh`` (the same data, scattered again); returns self.

        In place, so every holder of these blocks (an estimator's restarts,
        its initialisation) sees the new parts after a worker was lost.
        """
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
        return self

    def compute(self, *collections: Any) -> tuple[Any, ...]:
        """Compute Dask collections on the blocks' client (or in this process)."""
        from ..executor import compute

        return compute(self.client, *collections)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A random in-memory subset of about ``n`` rows, read from a few blocks.

        Whole blocks are chosen at random until ``n`` rows are gathered, so
        only those blocks are read.
        """
        X = self.array
        assert X is not None
        order = rng.permutation(X.numblocks[0])
        chosen, rows = [], 0
        for i in order:
            chosen.append(int(i))
            rows += X.chunks[0][i]
            if rows >= n:
                break
        chosen.sort()
        from ..executor import retry_lost

        # self.array after a rebuild holds the blocks scattered again
        sample = np.concatenate(retry_lost(self, lambda: self.compute(*[self.array.blocks[i] for i in chosen])), axis=0)
        if len(sample) > n:
            sample = sample[np.sort(rng.choice(len(sample), n, replace=False))]
        return sample


def in_memory_blocks(blocks: Blocks) -> list[Any] | None:
    """The values of ``blocks`` when they are all held in this process, else None."""
    return computed_values(blocks.parts) if blocks.client is None else None


def computed_values(parts: Sequence[Any]) -> list[Any] | None:
    """The blocks' values when every part is already computed in this process, else None."""
    from dask._task_spec import DataNode, GraphNode
    from dask.core import istask

    values = []
    for part in parts:
        graph = part.__dask_graph__()
        value = graph.get(part.key)
        if isinstance(value, DataNode):
            value = value.value
        if value is None or isinstance(value, GraphNode) or istask(value) or _is_key(value, graph):
            return None
        values.append(value)
    return values


def _is_key(value: Any, graph: Any) -> bool:
    try:
        return value in graph  # an alias of another key
    except TypeError:  # unhashable: data
        return False


def should_persist(nbytes: float, client: Any, persist: bool | None = None) -> bool:
    """The one rule for holding data in memory rather than reading it from its source every pass.

    Parameters
    ----------
    nbytes : float
        Size of the data once in memory.
    client : distributed.Client or None
        Where it would be held: the cluster's memory, or (None) this
        process's (:func:`dask_em.executor.memory_budget`).
    persist : bool, optional
        The caller's choice, which wins when given.

    Returns
    -------
    bool
        ``persist`` when given, else whether ``nbytes`` is under
        :data:`PERSIST_FRACTION` of that memory.
    """
    if persist is not None:
        return bool(persist)
    from ..cluster import cluster_memory
    from ..executor import memory_budget

    memory = cluster_memory(client) if client is not None else memory_budget()
    return memory > 0 and nbytes < PERSIST_FRACTION * memory


def prepare_blocks(data: Any, client: Any, persist: bool | None = None) -> Blocks:
    """Blocks for ``data`` (array-like, Dask or Zarr array, Zarr path) unless it already is :class:`Blocks`."""
    if isinstance(data, Blocks):
        return data
    if isinstance(data, str) or hasattr(data, "__fspath__"):
        check_visible_to_workers(data, client)
    blocks = array_blocks(as_dask_array(data, client=client), client, persist=persist)
    if client is not None and _scattered(data):
        # Scattered blocks die with their worker: give the engine a way to
        # scatter them again, in place, so callers holding ``blocks`` heal too.
        blocks.rebuild = lambda: blocks.refill(array_blocks(as_dask_array(data, client=client), client, persist))
    return blocks


def _scattered(data: Any) -> bool:
    """Whether ``data`` is scattered from this process (no recipe to recompute it)."""
    import dask.array as da

    module = type(data).__module__
    return not (isinstance(data, (str, da.Array)) or hasattr(data, "__fspath__") or module.startswith("zarr"))


def array_blocks(X: da.Array, client: Any = None, persist: bool | None = None) -> Blocks:
    """Blocks of a 2-D Dask array, persisted when it fits comfortably in memory.

    Parameters
    ----------
    X : dask.array.Array
        Data with one chunk along the feature axis.
    client : distributed.Client, optional
        Used to size the cluster's memory for the persist decision; without
        it, lazy data is held in this process when it fits its memory.
    persist : bool, optional
        Force persisting (True) or streaming from the source (False);
        by default :func:`should_persist` decides.
    """
    if client is not None:
        _warn_large_blocks(X, client)
    if persist is None and client is None and X.name.startswith("in-memory-"):
        persist = False  # already in this process
    persist = should_persist(X.nbytes, client, persist)
    if persist:
        from ..executor import persist_on

        (X,) = persist_on(client, X)
    fingerprint = {
        "shape": list(X.shape),
        "dtype": str(X.dtype),
        "chunks": [list(c) for c in X.chunks],
    }
    parts = list(X.to_delayed(optimize_graph=not persist).ravel())
    return Blocks(parts=parts, n_samples=int(X.shape[0]), array=X, fingerprint=fingerprint, client=client)


def _warn_large_blocks(X: da.Array, client: Any) -> None:
    """Warn when one block would not fit comfortably in one worker."""
    import warnings

    from ..cluster import worker_memory

    limit = worker_memory(client)
    largest = max(X.chunks[0]) * X.shape[1] * max(X.dtype.itemsize, 8)
    if limit > 0 and 2 * largest > BLOCK_MEMORY_FRACTION * limit:
        rows = int(BLOCK_MEMORY_FRACTION * limit / (2 * X.shape[1] * 8))
        warnings.warn(
            f"blocks of up to {largest / 2**20:.0f} MiB are large for workers with "
            f"{limit / 2**20:.0f} MiB of memory; rechunk to at most about {rows} rows per block "
            "(e.g. X.rechunk((rows, -1))) or give workers more memory",
            ChunkSizeWarning,
            stacklevel=3,
        )


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray | da.Array:
    """``sample_weight`` as float64 of shape (n_samples,), non-negative and finite (numpy input checked now)."""
    import dask.array as da

    if isinstance(sample_weight, da.Array):
        if sample_weight.shape != (n_samples,):
            raise ValueError(
                f"sample_weight.shape == {sample_weight.shape}, expected ({n_samples},): one weight per row"
            )
        return sample_weight.astype(np.float64)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight.shape == {w.shape}, expected ({n_samples},): one weight per row")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative; got negative, NaN or infinite values")
    if not w.any():
        raise ValueError("sample_weight is zero for every row; at least one row needs a positive weight")
    return w


def weighted_blocks(blocks: Blocks, sample_weight: Any, client: Any = None) -> Blocks:
    """``blocks`` whose parts carry their rows' weights (:class:`dask_em.contract.Weighted`).

    The weights are cut along the data's own row chunks, so block ``i`` of
    the weights always travels with block ``i`` of the rows whatever the
    chunking; in-memory weights are scattered once, like in-memory data.
    """
    import dask.array as da

    from ..contract import Weighted

    assert blocks.array is not None
    w = check_sample_weight(sample_weight, blocks.n_samples)
    chunks = blocks.array.chunks[0]
    if isinstance(w, da.Array):
        pieces = list(w.rechunk((chunks,)).to_delayed().ravel())
    else:
        bounds = np.cumsum((0, *chunks))
        arrays = [w[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        pieces = client.scatter(arrays, hash=False) if client is not None else arrays
        pieces = [dask.delayed(p) if client is not None else dask.delayed(p, traverse=False) for p in pieces]
    parts = [dask.delayed(Weighted, pure=True)(part, piece) for part, piece in zip(blocks.parts, pieces)]
    fingerprint = {**blocks.fingerprint, "sample_weight": True}
    return Blocks(parts=parts, n_samples=blocks.n_samples, array=blocks.array, fingerprint=fingerprint,
                  client=blocks.client)
