"""Collections of sequences as engine blocks: whole sequences per partition.

Accepted inputs:

* a list of arrays, one per sequence;
* a concatenated array plus ``lengths`` (hmmlearn's convention);
* a Dask bag whose items are sequences (arrays);
* a Zarr store (path, URL or group) holding a concatenated ``values`` array
  and a 1-D ``lengths`` array; :func:`to_zarr_sequences` writes one from
  any of the above.

Each partition is a tuple ``(values, lengths)`` of whole sequences.
Partitions are contiguous runs of sequences balanced by total length, a few
per worker by default. A sequence longer than ``segment_length`` (by
default about 32 MiB of values) is cut into segments at chunk boundaries,
one block each (:class:`~dask_em.models.hmm.segments.SegmentPart`), sized
like the other blocks; the HMMs fit them exactly in two passes an
iteration (:mod:`dask_em.models.hmm.segments`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from dask.delayed import Delayed

from ..errors import InvalidDataError
from ..executor import compute, persist_on
from .arrays import Blocks, absolute_path, check_chunks_present, check_visible_to_workers, should_persist

#: Largest partition we aim for when choosing the partition count.
TARGET_PARTITION_BYTES = 64 * 2**20
#: Partitions per worker thread by default.
PARTITIONS_PER_WORKER = 2
#: A sequence with more bytes of values than this is cut into segments by
#: default (exact two-pass Baum-Welch, :mod:`dask_em.models.hmm.segments`).
SEGMENT_BYTES = 32 * 2**20


# --------------------------------------------------------------------------
# Validation and planning
# --------------------------------------------------------------------------


def check_lengths(lengths: Any, n_samples: int) -> np.ndarray:
    """Validated sequence lengths as int64.

    Raises
    ------
    InvalidDataError
        If ``lengths`` is not 1-D, holds non-integers, zero or negative
        values, or does not sum to ``n_samples``.
    """
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise InvalidDataError(f"lengths must be a 1-D array of sequence lengths, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidDataError("lengths is empty; give at least one sequence")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidDataError("lengths must be integers, got non-integer values")
    elif arr.dtype.kind not in "iu":
        raise InvalidDataError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        raise InvalidDataError(
            f"lengths must be positive, but sequence {int(bad[0])} has length {int(arr[bad[0]])} "
            f"({bad.size} sequences are empty or negative); drop empty sequences"
        )
    total = int(arr.sum())
    if total != n_samples:
        raise InvalidDataError(
            f"lengths sum to {total} but the data has {n_samples} samples; lengths must "
            "give the length of every sequence in X, in order"
        )
    return arr


def plan_partitions(lengths: np.ndarray, n_partitions: int, chunk_ends: Any = None) -> list[tuple[int, int]]:
    """Contiguous runs of sequences ``[lo, hi)`` with nearly equal total length.

    Parameters
    ----------
    lengths : ndarray of int
        Length of every sequence, in order.
    n_partitions : int
        Partitions wanted (fewer when there are fewer sequences).
    chunk_ends : array-like of int, optional
        Row offsets where the storage's chunks end (Zarr or Dask chunks). When
        given, partitions are whole runs of chunks wherever the sequence
        boundaries allow, so no chunk is read and decompressed by two
        partitions.

    Returns
    -------
    list of (int, int)
        Sequence index ranges; cuts are at the sequence boundary nearest to
        each target, and no partition is empty.
    """
    n_seq = len(lengths)
    n_partitions = max(1, min(int(n_partitions), n_seq))
    ends = np.cumsum(lengths)
    total = float(ends[-1])
    targets = total * np.arange(1, n_partitions) / n_partitions
    if chunk_ends is not None:
        inner = np.asarray(chunk_ends, dtype=np.float64)
        inner = inner[(inner > 0) & (inner < total)]
        if len(inner):
            # each target moves to its nearest chunk end
            nearest = np.abs(inner[None, :] - targets[:, None]).argmin(axis=1) if len(targets) else []
            targets = np.unique(inner[nearest])
    cuts = [0]
    for i, target in enumerate(targets, start=1):
        j = int(np.searchsorted(ends, target))
        # choose the nearer of the two boundaries around the target
        if j > 0 and abs(ends[j - 1] - target) <= abs(ends[min(j, n_seq - 1)] - target):
            j -= 1
        cut = j + 1
        if chunk_ends is None:
            cut = max(cut, cuts[-1] + 1)
            cut = min(cut, n_seq - (n_partitions - i))
        if cuts[-1] < cut < n_seq:
            cuts.append(cut)
    cuts.append(n_seq)
    return [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1) if cuts[i + 1] > cuts[i]]


def _segment_cuts(start: int, stop: int, n_segments: int, chunk_ends: Any) -> list[int]:
    """Row offsets cutting ``[start, stop)`` into about ``n_segments`` pieces, at chunk ends when given."""
    targets = start + (stop - start) * np.arange(1, n_segments) / n_segments
    if chunk_ends is not None:
        inner = np.asarray(chunk_ends, dtype=np.int64)
        inner = inner[(inner > start) & (inner < stop)]
        if len(inner) == 0:
            return [start, stop]
        targets = inner[np.abs(inner[None, :] - targets[:, None]).argmin(axis=1)] if len(targets) else []
    cuts = np.unique(np.r_[start, np.round(targets).astype(np.int64), stop])
    return [int(c) for c in cuts]


def plan_blocks(
    lengths: np.ndarray, n_blocks: int, chunk_ends: Any = None, segment_length: int | None = None
) -> list[tuple[str, int, int, int]]:
    """Blocks of whole sequences, and segments of sequences longer than ``segment_length``.

    Parameters
    ----------
    lengths : ndarray of int
        Length of every sequence, in order.
    n_blocks : int
        Blocks wanted in total (whole-sequence partitions and segments),
        so that mixed inputs give blocks of similar size.
    chunk_ends : array-like of int, optional
        Row offsets where the storage's chunks end; cuts are moved to the
        nearest one, so no chunk is read by two blocks.
    segment_length : int, optional
        A sequence longer than this is cut into segments of at most about
        this many steps (fewer, smaller ones when ``n_blocks`` asks for
        more blocks). None: sequences are never cut.

    Returns
    -------
    list of (kind, a, b, sequence)
        ``("sequences", lo, hi, -1)``: sequences ``[lo, hi)``;
        ``("segment", row_lo, row_hi, sequence)``: rows of one long sequence.
        In data order.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if segment_length is None or not np.any(lengths > segment_length):
        return [("sequences", lo, hi, -1) for lo, hi in plan_partitions(lengths, n_blocks, chunk_ends)]
    if segment_length < 1:
        raise ValueError(f"segment_length must be a positive number of steps, got {segment_length}")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    per_block = max(float(ends[-1]) / max(int(n_blocks), 1), 1.0)
    size = min(float(segment_length), per_block)
    plan: list[tuple[str, int, int, int]] = []
    i, n_seq = 0, len(lengths)
    while i < n_seq:
        if lengths[i] > segment_length:
            n = math.ceil(lengths[i] / size)
            cuts = _segment_cuts(int(starts[i]), int(ends[i]), n, chunk_ends)
            plan.extend(("segment", a, b, i) for a, b in zip(cuts[:-1], cuts[1:]))
            i += 1
            continue
        j = i
        while j < n_seq and lengths[j] <= segment_length:
            j += 1
        run = lengths[i:j]
        local_ends = None if chunk_ends is None else np.asarray(chunk_ends) - starts[i]
        n = max(1, round(float(run.sum()) / per_block))
        plan.extend(("sequences", i + lo, i + hi, -1) for lo, hi in plan_partitions(run, n, local_ends))
        i = j
    return plan


def default_segment_length(n_features: int, itemsize: int) -> int:
    """Steps of a segment by default: about :data:`SEGMENT_BYTES` of values."""
    return max(1024, SEGMENT_BYTES // max(int(n_features) * int(itemsize), 1))


def default_partitions(client: Any, nbytes: float) -> int:
    """A few partitions per worker thread, more when partitions would be large."""
    threads = 0
    if client is not None:
        try:
            threads = sum(client.nthreads().values())
        except Exception:  # pragma: no cover - a client without workers yet
            threads = 0
    threads = threads or (os.cpu_count() or 1)
    return max(PARTITIONS_PER_WORKER * threads, math.ceil(nbytes / TARGET_PARTITION_BYTES))


def _as_2d(values: Any) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 1:
        return values.reshape(-1, 1)
    if values.ndim != 2:
        raise InvalidDataError(
            f"each sequence must be a 1-D or 2-D array (n_steps, n_features), got shape {values.shape}"
        )
    return values


class SequencePart(tuple):
    """One partition: the tuple ``(values, lengths)``.

    ``np.asarray(part)`` gives the values followed by the lengths as one flat
    float64 array, so content hashes (checkpoint fingerprints) see both.
    """

    __slots__ = ()

    def __new__(cls, values: np.ndarray, lengths: np.ndarray) -> SequencePart:
        return super().__new__(cls, (values, lengths))

    def __getnewargs__(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values, lengths = self
        flat = np.concatenate([np.asarray(values, dtype=np.float64).ravel(), np.asarray(lengths, dtype=np.float64)])
        return flat if dtype is None else flat.astype(dtype)


def _pack(values: Any, lengths: Any, segment: tuple[int, bool] | None = None) -> SequencePart:
    return _part(_as_2d(values), np.asarray(lengths, dtype=np.int64), segment)


def _part(values: np.ndarray, lengths: np.ndarray, segment: tuple[int, bool] | None) -> Any:
    """A block: whole sequences, or (``segment`` = (index, first)) one segment of a long sequence."""
    if segment is None:
        return SequencePart(values, lengths)
    from ..models.hmm.segments import SegmentPart

    return SegmentPart(values, lengths, *segment)


def _segment_of(part: Any) -> tuple[int, bool] | None:
    segment = getattr(part, "segment", None)
    return None if segment is None else (segment, part.first)


def _build(plan: list[tuple[str, int, int, int]], lengths: np.ndarray, read: Any) -> tuple[list[Any], list[np.ndarray], Any]:
    """Blocks of a :func:`plan_blocks` plan: ``read(row_lo, row_hi, lengths, segment)`` makes each.

    Returns the blocks, the lengths inside each block, and the
    :class:`~dask_em.models.hmm.segments.SegmentTable` (None without segments).
    """
    offsets = np.r_[0, np.cumsum(lengths)]
    parts, part_lengths, seq_of, first = [], [], [], []
    for kind, a, b, seq in plan:
        if kind == "sequences":
            part_lengths.append(lengths[a:b])
            parts.append(read(int(offsets[a]), int(offsets[b]), lengths[a:b], None))
        else:
            segment = (len(seq_of), bool(a == offsets[seq]))
            seq_of.append(seq)
            first.append(segment[1])
            part_lengths.append(np.array([b - a], dtype=np.int64))
            parts.append(read(a, b, part_lengths[-1], segment))
    table = None
    if seq_of:
        from ..models.hmm.segments import SegmentTable

        table = SegmentTable(np.array(seq_of, dtype=np.int64), np.array(first, dtype=bool))
    return parts, part_lengths, table


def _pack_list(seqs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """A bag partition (a list of sequences) as one ``(values, lengths)`` block."""
    arrays = [_as_2d(s) for s in seqs]
    if not arrays:
        return SequencePart(np.empty((0, 1)), np.empty(0, dtype=np.int64))
    widths = {a.shape[1] for a in arrays}
    if len(widths) > 1:
        raise InvalidDataError(f"sequences have different numbers of features: {sorted(widths)}")
    return SequencePart(np.concatenate(arrays, axis=0), np.array([len(a) for a in arrays], dtype=np.int64))


def _part_info(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, int, str]:
    values, lengths = part
    return lengths, int(values.shape[1]), str(values.dtype)


def _take(ranges: list[tuple[int, int, int]], *parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sequences ``[lo, hi)`` of source parts ``src`` joined into one block."""
    values, lengths = [], []
    for src, lo, hi in ranges:
        v, l_ = parts[src]
        offsets = np.r_[0, np.cumsum(l_)]
        values.append(v[offsets[lo] : offsets[hi]])
        lengths.append(l_[lo:hi])
    return SequencePart(np.concatenate(values, axis=0), np.concatenate(lengths))


def _read_zarr_part(source: Any, start: int, stop: int, lengths: np.ndarray, segment: Any = None) -> tuple[np.ndarray, np.ndarray]:
    group = _open_group(source)
    return _part(_as_2d(group["values"][start:stop]), lengths, segment)


def _open_group(source: Any) -> Any:
    import zarr

    if isinstance(source, zarr.Group):
        return source
    try:
        return zarr.open_group(str(source), mode="r")
    except Exception as exc:  # zarr raises several types for a missing store
        raise InvalidDataError(
            f"cannot open {source!r} as a Zarr sequence store (a group with 'values' and "
            f"'lengths' arrays): {exc}. Create one with dask_em.to_zarr_sequences."
        ) from exc


# --------------------------------------------------------------------------
# Blocks of sequences
# --------------------------------------------------------------------------


@dataclass
class SequenceBlocks(Blocks):
    """Partitions of whole sequences, each a delayed ``(values, lengths)`` tuple.

    Attributes
    ----------
    part_lengths : list of ndarray
        The sequence lengths of every partition, in order.
    n_features : int
        Columns of ``values``.
    dtype : str
        Dtype of ``values``.
    kind : str
        Where the data came from: "memory", "dask", "bag" or "zarr".
    bag : dask.bag.Bag or None
        The bag the data came from, for lazy per-sequence outputs.
    segments : SegmentTable or None
        When sequences longer than a block were cut into segments: which
        sequence each segment belongs to (see
        :mod:`dask_em.models.hmm.segments`). None when every block holds
        whole sequences.
    seq_lengths : ndarray or None
        Lengths of all sequences when some are cut into segments.
    """

    part_lengths: list[np.ndarray] = field(default_factory=list)
    n_features: int = 1
    dtype: str = "float64"
    kind: str = "memory"
    bag: Any = None
    segments: Any = None
    seq_lengths: Any = None

    @property
    def lengths(self) -> np.ndarray:
        """Lengths of all sequences, in order."""
        if self.seq_lengths is not None:
            return self.seq_lengths
        return np.concatenate(self.part_lengths) if self.part_lengths else np.empty(0, np.int64)

    @property
    def part_sizes(self) -> list[int]:
        """Number of steps in each partition."""
        return [int(p.sum()) for p in self.part_lengths]

    def sample_parts(self, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        """Whole partitions chosen at random until about ``n`` steps are gathered."""
        order = rng.permutation(len(self.parts))
        chosen, steps = [], 0
        for i in order:
            chosen.append(int(i))
            steps += self.part_sizes[i]
            if steps >= n:
                break
        chosen.sort()
        return list(self.compute(*[self.parts[i] for i in chosen]))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """About ``n`` rows of values from a few whole partitions (for initialisation)."""
        values = np.concatenate([v for v, _ in self.sample_parts(n, rng)], axis=0)
        if len(values) > n:
            values = values[np.sort(rng.choice(len(values), n, replace=False))]
        return values

    def values_blocks(self) -> Blocks:
        """The same partitions as plain value blocks (for k-means and other row models)."""
        parts = [dask.delayed(_first, pure=True)(p) for p in self.parts]
        fp = dict(self.fingerprint, view="values")
        blocks = _ValueBlocks(parts=parts, n_samples=self.n_samples, array=None, fingerprint=fp, client=self.client, source=self)
        rebuild = getattr(self, "rebuild", None)
        if rebuild is not None:
            blocks.rebuild = lambda: blocks.refill(rebuild().values_blocks())
        return blocks

    def map_parts(self, func: Any, *args: Any) -> list[Delayed]:
        """``func(part, *args)`` on every partition, lazily."""
        return [dask.delayed(func, pure=True)(p, *args) for p in self.parts]


@dataclass
class _ValueBlocks(Blocks):
    """Value-only view of :class:`SequenceBlocks`; samples through the sequences."""

    source: Any = None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(self.source.sample(n, rng), dtype=np.float64)


def _first(part: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return part[0]


def _fingerprint(lengths: np.ndarray, n_features: int, dtype: str, part_lengths: list[np.ndarray], kind: str) -> dict[str, Any]:
    digest = hashlib.sha1(np.ascontiguousarray(lengths, dtype=np.int64).tobytes()).hexdigest()
    return {
        "kind": "sequences",
        "shape": [int(lengths.sum()), int(n_features)],
        "dtype": dtype,
        "n_sequences": int(len(lengths)),
        "lengths_sha1": digest,
        "chunks": [[int(p.sum()) for p in part_lengths]],
    }


def _is_bag(X: Any) -> bool:
    return type(X).__module__.startswith("dask.bag") and hasattr(X, "to_delayed")


def _is_zarr_group(X: Any) -> bool:
    return type(X).__module__.startswith("zarr") and hasattr(X, "arrays")


def sequence_blocks(
    X: Any,
    lengths: Any = None,
    *,
    client: Any = None,
    n_partitions: int | None = None,
    persist: bool | None = None,
    dtype: Any = None,
    segment_length: int | None = None,
) -> SequenceBlocks:
    """Balanced partitions of whole sequences for the engine.

    Parameters
    ----------
    X : list of arrays, array-like, dask array, dask bag, zarr group or str
        The sequences (see the module docstring). A string is the path or
        URL of a Zarr sequence store.
    lengths : array-like of int, optional
        Lengths of the sequences of a concatenated ``X``; by default ``X``
        is one sequence.
    client : distributed.Client, optional
        In-memory data is scattered to its workers; its size chooses the
        partition count and whether to persist.
    n_partitions : int, optional
        Number of partitions; by default two per worker thread (more if
        partitions would exceed about 64 MiB).
    persist : bool, optional
        Keep partitions in cluster memory (True) or read them from the
        source every iteration (False); by default persist when the data
        takes less than 40% of the cluster's memory.
    dtype : dtype, optional
        Convert values to this dtype (e.g. float64 for Gaussian models).
    segment_length : int, optional
        A sequence with more steps than this is cut into segments at chunk
        boundaries (exact two-pass Baum-Welch; see
        :mod:`dask_em.models.hmm.segments`). By default, sequences of more
        than about 32 MiB of values (:data:`SEGMENT_BYTES`) are cut; 0 never
        cuts. Not used for a bag (its items are whole sequences in memory).

    Returns
    -------
    SequenceBlocks
    """
    if isinstance(X, SequenceBlocks):
        return X
    if _is_bag(X):
        if lengths is not None:
            raise InvalidDataError("lengths cannot be given with a bag of sequences: each item is one sequence")
        return _bag_blocks(X, client, n_partitions, persist, dtype)
    if isinstance(X, (str, os.PathLike)) or _is_zarr_group(X):
        return _zarr_blocks(X, lengths, client, n_partitions, persist, dtype, segment_length)
    if lengths is None and isinstance(X, (list, tuple)) and len(X) > 0 and all(
        hasattr(s, "shape") or isinstance(s, (list, tuple)) and len(s) and np.ndim(s) >= 1 for s in X
    ) and _looks_like_sequences(X):
        arrays = [_as_2d(s) for s in X]
        widths = {a.shape[1] for a in arrays}
        if len(widths) > 1:
            raise InvalidDataError(f"sequences have different numbers of features: {sorted(widths)}")
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        check_lengths(lengths, int(lengths.sum()))
        values = np.concatenate(arrays, axis=0)
    else:
        import dask.array as da

        if isinstance(X, da.Array):
            return _dask_array_blocks(X, lengths, client, n_partitions, persist, dtype, segment_length)
        values = _as_2d(X)
        lengths = check_lengths([len(values)] if lengths is None else lengths, len(values))
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    _check_values(values)
    n = n_partitions or default_partitions(client, values.nbytes)
    seg_len = _segment_length(segment_length, values.shape[1], values.dtype.itemsize)
    pieces, part_lengths, table = _build(
        plan_blocks(lengths, n, None, seg_len), lengths, lambda a, b, l_, seg: _part(values[a:b], l_, seg)
    )
    if client is not None:
        futures = client.scatter(pieces, hash=False)
        parts = [dask.delayed(f) for f in futures]
    else:
        parts = [dask.delayed(p, traverse=False) for p in pieces]
    blocks = SequenceBlocks(
        parts=parts,
        n_samples=int(values.shape[0]),
        fingerprint=_fingerprint(lengths, values.shape[1], str(values.dtype), part_lengths, "memory"),
        client=client,
        part_lengths=part_lengths,
        n_features=int(values.shape[1]),
        dtype=str(values.dtype),
        kind="memory",
        segments=table,
        seq_lengths=lengths if table is not None else None,
    )
    if client is not None:
        # Scattered parts die with their worker: the engine scatters them again.
        blocks.rebuild = lambda: blocks.refill(sequence_blocks(
            values, lengths, client=client, n_partitions=n, persist=persist, segment_length=segment_length
        ))
    return blocks


def _looks_like_sequences(X: Any) -> bool:
    # a list of numpy (or array-like) sequences, not a nested list of numbers
    # forming one 2-D array
    first = X[0]
    if isinstance(first, np.ndarray):
        return True
    try:
        np.asarray(X, dtype=float)
    except (ValueError, TypeError):
        return True
    return False


def _check_values(values: np.ndarray) -> None:
    if values.dtype.kind not in "biuf":
        raise InvalidDataError(f"expected numeric sequences, got dtype {values.dtype}; convert them first")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise InvalidDataError(f"expected non-empty sequences, got values of shape {values.shape}")


def _segment_length(segment_length: int | None, n_features: int, itemsize: int) -> int | None:
    """The cutting length: given, the default for this row size, or None (never cut) for 0."""
    if segment_length is None:
        return default_segment_length(n_features, itemsize)
    if int(segment_length) < 0:
        raise ValueError(f"segment_length must be a non-negative number of steps, got {segment_length}")
    return int(segment_length) or None


def _dask_array_blocks(X: Any, lengths: Any, client: Any, n_partitions: int | None, persist: bool | None, dtype: Any, segment_length: int | None = None) -> SequenceBlocks:
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2:
        raise InvalidDataError(f"expected a 2-D array (n_samples, n_features), got shape {X.shape}")
    lengths = check_lengths([X.shape[0]] if lengths is None else lengths, int(X.shape[0]))
    if dtype is not None:
        X = X.astype(dtype)
    _check_values(np.empty((1, X.shape[1]), X.dtype))
    nbytes = float(X.nbytes)
    seg_len = _segment_length(segment_length, X.shape[1], X.dtype.itemsize)
    plan = plan_blocks(lengths, n_partitions or default_partitions(client, nbytes), np.cumsum(X.chunks[0]), seg_len)
    parts, part_lengths, table = _build(plan, lengths, lambda a, b, l_, seg: dask.delayed(_pack)(X[a:b], l_, seg))
    if should_persist(nbytes, client, persist):
        parts = list(persist_on(client, *parts))
    return SequenceBlocks(
        parts=parts, n_samples=int(X.shape[0]),
        fingerprint=_fingerprint(lengths, X.shape[1], str(X.dtype), part_lengths, "dask"),
        client=client, part_lengths=part_lengths, n_features=int(X.shape[1]), dtype=str(X.dtype), kind="dask",
        segments=table, seq_lengths=lengths if table is not None else None,
    )


def _zarr_blocks(source: Any, lengths: Any, client: Any, n_partitions: int | None, persist: bool | None, dtype: Any, segment_length: int | None = None) -> SequenceBlocks:
    group = _open_group(source)
    names = set(dict(group.arrays()))
    if "values" not in names:
        raise InvalidDataError(
            f"Zarr store {source!r} has arrays {sorted(names)} but no 'values'; create a sequence "
            "store with dask_em.to_zarr_sequences"
        )
    values = group["values"]
    check_chunks_present(values, str(source))
    n_samples = int(values.shape[0])
    if lengths is None:
        lengths = group["lengths"][:] if "lengths" in names else [n_samples]
    lengths = check_lengths(lengths, n_samples)
    n_features = int(values.shape[1]) if len(values.shape) == 2 else 1
    vdtype = np.dtype(dtype) if dtype is not None else np.dtype(values.dtype)
    _check_values(np.empty((1, n_features), vdtype))
    nbytes = float(n_samples * n_features * vdtype.itemsize)
    chunk_rows = int(values.chunks[0])
    seg_len = _segment_length(segment_length, n_features, vdtype.itemsize)
    plan = plan_blocks(
        lengths, n_partitions or default_partitions(client, nbytes), np.arange(chunk_rows, n_samples, chunk_rows),
        seg_len,
    )
    # a string travels in the graph; an in-memory group is passed as is
    src = absolute_path(source) if isinstance(source, (str, os.PathLike)) else group
    if isinstance(src, str):
        check_visible_to_workers(src, client)

    def read(a: int, b: int, lens: np.ndarray, segment: Any) -> Any:
        part = dask.delayed(_read_zarr_part, pure=True)(src, a, b, lens, segment)
        if dtype is not None:
            part = dask.delayed(_astype, pure=True)(part, vdtype)
        return part

    parts, part_lengths, table = _build(plan, lengths, read)
    if should_persist(nbytes, client, persist):
        parts = list(persist_on(client, *parts))
    return SequenceBlocks(
        parts=parts, n_samples=n_samples,
        fingerprint=_fingerprint(lengths, n_features, str(vdtype), part_lengths, "zarr"),
        client=client, part_lengths=part_lengths, n_features=n_features, dtype=str(vdtype), kind="zarr",
        segments=table, seq_lengths=lengths if table is not None else None,
    )


def _astype(part: tuple[np.ndarray, np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    return _part(part[0].astype(dtype, copy=False), part[1], _segment_of(part))


def _bag_blocks(bag: Any, client: Any, n_partitions: int | None, persist: bool | None, dtype: Any) -> SequenceBlocks:
    src = [dask.delayed(_pack_list, pure=True)(p) for p in bag.to_delayed()]
    if dtype is not None:
        src = [dask.delayed(_astype, pure=True)(p, np.dtype(dtype)) for p in src]
    keep = persist is not False
    if keep:
        src = list(persist_on(client, *src))
    infos = compute(client, *[dask.delayed(_part_info, pure=True)(p) for p in src])
    src_lengths = [np.asarray(i[0], dtype=np.int64) for i in infos]
    widths = {i[1] for i, l_ in zip(infos, src_lengths) if len(l_)}
    if len(widths) > 1:
        raise InvalidDataError(f"sequences have different numbers of features: {sorted(widths)}")
    all_lengths = np.concatenate(src_lengths) if src_lengths else np.empty(0, np.int64)
    check_lengths(all_lengths, int(all_lengths.sum()))
    n_features = widths.pop()
    vdtype = next(i[2] for i, l_ in zip(infos, src_lengths) if len(l_))
    if keep:
        # rebalance the persisted partitions by total length
        nbytes = float(all_lengths.sum() * n_features * np.dtype(vdtype).itemsize)
        plan = plan_partitions(all_lengths, n_partitions or default_partitions(client, nbytes))
        owner = np.concatenate([np.full(len(l_), i) for i, l_ in enumerate(src_lengths)])
        local = np.concatenate([np.arange(len(l_)) for l_ in src_lengths])
        parts, part_lengths = [], []
        for lo, hi in plan:
            ranges, used = [], []
            for s in np.unique(owner[lo:hi]):
                idx = np.flatnonzero(owner[lo:hi] == s) + lo
                ranges.append((len(used), int(local[idx[0]]), int(local[idx[-1]]) + 1))
                used.append(src[int(s)])
            parts.append(dask.delayed(_take, pure=True)(ranges, *used))
            part_lengths.append(all_lengths[lo:hi])
        parts = list(persist_on(client, *parts))
        del src
    else:
        parts = [p for p, l_ in zip(src, src_lengths) if len(l_)]
        part_lengths = [l_ for l_ in src_lengths if len(l_)]
    return SequenceBlocks(
        parts=parts, n_samples=int(all_lengths.sum()),
        fingerprint=_fingerprint(all_lengths, n_features, vdtype, part_lengths, "bag"),
        client=client, part_lengths=part_lengths, n_features=int(n_features), dtype=vdtype, kind="bag", bag=bag,
    )


def to_zarr_sequences(
    data: Any,
    path: str,
    lengths: Any = None,
    *,
    chunk_rows: int | None = None,
    client: Any = None,
    overwrite: bool = False,
) -> str:
    """Write sequences to a Zarr store with ``values`` and ``lengths`` arrays.

    Parameters
    ----------
    data : list of arrays, array-like, dask array, dask bag or Zarr store
        The sequences (any input :func:`sequence_blocks` accepts).
    path : str
        Path or URL of the new store.
    lengths : array-like of int, optional
        Sequence lengths for a concatenated ``data``.
    chunk_rows : int, optional
        Rows per Zarr chunk of ``values``; by default about 8 MiB a chunk.
    client : distributed.Client, optional
        Used to read a bag or Dask input partition by partition.
    overwrite : bool
        Replace an existing store at ``path``.

    Returns
    -------
    str
        ``path``, ready to pass to ``fit``.
    """
    import zarr

    blocks = sequence_blocks(data, lengths, client=client, persist=False)
    all_lengths = blocks.lengths
    D = blocks.n_features
    dt = np.dtype(blocks.dtype)
    rows = chunk_rows or max(1024, (8 * 2**20) // max(D * dt.itemsize, 1))
    rows = int(min(rows, max(blocks.n_samples, 1)))
    group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
    # Every chunk is written, even all zeros: a missing chunk is refused on reading.
    values = group.create_array("values", shape=(blocks.n_samples, D), chunks=(rows, D), dtype=dt,
                                config={"write_empty_chunks": True})
    group.create_array("lengths", shape=all_lengths.shape, chunks=(max(len(all_lengths), 1),), dtype=np.int64)
    group["lengths"][:] = all_lengths
    start = 0
    for part in blocks.parts:
        (v, _l), = blocks.compute(part)
        values[start : start + len(v)] = v
        start += len(v)
    return str(path)


__all__ = ["SequenceBlocks", "check_lengths", "plan_blocks", "plan_partitions", "sequence_blocks", "to_zarr_sequences"]
