"""Files named on the command line: Zarr stores, ``.npy`` files, CSV and Parquet, sequence lengths.

Everything is read lazily (a ``.npy`` file through a memory map, block by
block; CSV/Parquet with dask.dataframe); only metadata is read here. A
path that does not exist raises :class:`FileNotFoundError`, content that
cannot be data raises :class:`~dask_em.errors.InvalidDataError` (both exit
code 2 on the command line), each naming the file and what to do.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidDataError
from .arrays import is_local_path, local_path

__all__ = ["check_exists", "describe_file", "input_kind", "n_rows", "numeric_columns", "read_input", "read_lengths"]


def check_exists(spec: str, what: str = "input") -> None:
    """Raise :class:`FileNotFoundError` when a local path (or glob pattern) names nothing; URLs pass."""
    if not is_local_path(spec):
        return
    import glob

    path = local_path(spec)
    if any(ch in path for ch in "*?["):
        if not glob.glob(path):
            raise FileNotFoundError(f"{what} {spec!r}: no file matches this pattern")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"{what} {spec!r} does not exist")


def input_kind(spec: str) -> str:
    """``"npy"``, ``"csv"``, ``"parquet"`` or ``"zarr"``, from the name (and, for a directory, its files)."""
    name = spec.lower().rstrip("/")
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    path = local_path(spec)
    if is_local_path(spec) and os.path.isdir(path) and not os.path.exists(os.path.join(path, "zarr.json")):
        if any(f.endswith((".parquet", ".pq")) for f in os.listdir(path)):
            return "parquet"
    return "zarr"


def _read_npy_rows(path: str, start: int, stop: int) -> Any:
    import numpy as np

    return np.array(np.load(path, mmap_mode="r")[start:stop])


def read_input(spec: str, *, columns: str | None = None, chunk_rows: int | None = None) -> Any:
    """The data a path names, lazily.

    Parameters
    ----------
    spec : str
        A Zarr path or URL (an array, or a group holding ``X``), a ``.npy``
        file (read block by block through a memory map), or CSV/Parquet
        files (paths, directories or glob patterns) read with
        dask.dataframe.
    columns : str, optional
        Comma-separated columns of a CSV/Parquet input (default: every
        numeric column).
    chunk_rows : int, optional
        Rows per block for ``.npy`` input.

    Returns
    -------
    str or dask.array.Array
        The Zarr path itself (the estimators open it), or a Dask array.

    Raises
    ------
    FileNotFoundError
        When a local path does not exist.
    InvalidDataError
        When the file cannot be read as data of shape (n_samples, n_features).
    """
    check_exists(spec)
    kind = input_kind(spec)
    if kind == "zarr":
        return spec
    if kind == "npy":
        return _read_npy(spec, chunk_rows)
    return _read_frame(spec, kind, columns)


def _read_npy(spec: str, chunk_rows: int | None) -> Any:
    import dask
    import dask.array as da
    import numpy as np

    path = local_path(spec)
    try:
        header = np.load(path, mmap_mode="r")
    except ValueError as exc:
        raise InvalidDataError(f"cannot read {spec!r} as a .npy file: {exc}") from exc
    shape, dtype = header.shape, header.dtype
    if len(shape) != 2:
        raise InvalidDataError(f"{spec!r} holds an array of shape {shape}; expected (n_samples, n_features)")
    if 0 in shape:
        raise InvalidDataError(f"{spec!r} holds an empty array of shape {shape}; expected rows and columns of data")
    rows = chunk_rows or max(1024, (16 * 2**20) // max(shape[1] * dtype.itemsize, 1))
    parts = [
        da.from_delayed(
            dask.delayed(_read_npy_rows, pure=True)(os.path.abspath(path), lo, min(lo + rows, shape[0])),
            shape=(min(lo + rows, shape[0]) - lo, shape[1]),
            dtype=dtype,
        )
        for lo in range(0, shape[0], rows)
    ]
    return da.concatenate(parts)


def _open_frame(spec: str, kind: str) -> Any:
    import dask.dataframe as dd

    try:
        if kind == "csv":
            return dd.read_csv(spec, sep="\t" if spec.lower().endswith(".tsv") else ",")
        return dd.read_parquet(spec)
    except (ValueError, KeyError) as exc:
        cause = exc.__cause__ or exc  # dask wraps pandas' parser error, which names the line
        raise InvalidDataError(f"cannot read {spec!r}: {str(cause).strip().splitlines()[0]}") from exc


def _read_frame(spec: str, kind: str, columns: str | None) -> Any:
    import numpy as np

    frame = _open_frame(spec, kind)
    wanted = [c.strip() for c in columns.split(",")] if columns else None
    if wanted is not None:
        unknown = [c for c in wanted if c not in frame.columns]
        if unknown:
            raise InvalidDataError(
                f"--columns: {spec!r} has no column {unknown[0]!r}; its columns are {', '.join(map(str, frame.columns))}"
            )
        frame = frame[wanted]  # the order asked for (read_csv keeps the file's order)
    numeric = frame.select_dtypes(include="number")
    if kind == "csv":
        _check_text_in_numbers(frame, numeric, spec)
    if wanted is None:
        frame = numeric
    elif len(numeric.columns) != len(frame.columns):
        bad = sorted(set(frame.columns) - set(numeric.columns))
        raise InvalidDataError(f"columns {bad} of {spec!r} are not numeric; choose numeric ones with --columns")
    if len(frame.columns) == 0:
        raise InvalidDataError(f"{spec!r} has no numeric columns")
    # Row counts per partition make the chunks known (Parquet metadata or a
    # count of rows; the values are not parsed into memory together).
    return frame.to_dask_array(lengths=True).astype(np.float64)


def _check_text_in_numbers(frame: Any, numeric: Any, spec: str) -> None:
    """Refuse, naming the value, a mostly numeric CSV column that holds text (a bad row).

    Pandas would read such a column as text and it would be dropped
    silently. Only the rows dask read to infer the types are looked at.
    """
    import pandas as pd

    text_columns = [c for c in frame.columns if c not in numeric.columns]
    if not text_columns:
        return
    head = frame[text_columns].head(1000, npartitions=1, compute=True)
    for column in text_columns:
        values = head[column].dropna()
        as_numbers = pd.to_numeric(values, errors="coerce")
        bad = values[as_numbers.isna()]
        if len(bad) and as_numbers.notna().sum() > len(bad):
            raise InvalidDataError(
                f"{spec!r}: column {column!r} holds {str(bad.iloc[0])!r} in data row {int(bad.index[0]) + 1} "
                "where numbers are expected; fix that row or leave the column out with --columns"
            )


def numeric_columns(spec: str) -> list[str] | None:
    """The names of the numeric columns of CSV/Parquet files, in order (None for other inputs)."""
    kind = input_kind(spec)
    if kind not in ("csv", "parquet"):
        return None
    return [str(c) for c in _open_frame(spec, kind).select_dtypes(include="number").columns]


def n_rows(X: Any) -> int | None:
    """Rows of an input (lazy Dask array or Zarr path), without reading its values (None when unknown)."""
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, str):
        import zarr

        try:
            node = zarr.open(local_path(X), mode="r")
            shape = node.shape if isinstance(node, zarr.Array) else dict(node.arrays())["X"].shape
        except Exception:  # a sequence store or unreadable: the fit reads it and says what is wrong
            return None
    if shape is None or not shape or not isinstance(shape[0], (int,)) and not hasattr(shape[0], "__index__"):
        return None
    return int(shape[0])


def read_lengths(spec: str) -> Any:
    """Sequence lengths from a ``.npy``, ``.txt``/``.csv`` (one integer a line) or Zarr array."""
    import numpy as np

    check_exists(spec, "lengths")
    if spec.lower().endswith(".npy"):
        return np.load(local_path(spec))
    if spec.lower().endswith((".txt", ".csv")):
        return np.loadtxt(local_path(spec), dtype=np.int64, ndmin=1)
    import zarr

    return np.asarray(zarr.open_array(spec, mode="r")[...])


def describe_file(spec: str) -> dict[str, Any] | None:
    """What a data file holds (kind, shape, dtype, chunks, attributes), or None when it is not readable data."""
    kind = input_kind(spec)
    if kind == "npy":
        import numpy as np

        arr = np.load(local_path(spec), mmap_mode="r")
        return {"kind": "npy", "path": spec, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    if kind != "zarr":
        return {"kind": kind, "path": spec}
    import zarr

    try:
        node = zarr.open(spec, mode="r")
    except Exception:
        return None
    if isinstance(node, zarr.Array):
        return {"kind": "zarr array", "path": spec, "shape": list(node.shape), "dtype": str(node.dtype),
                "chunks": list(node.chunks), "attributes": dict(node.attrs)}
    arrays = {
        name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks)}
        for name, a in node.arrays()
    }
    return {"kind": "zarr group", "path": spec, "arrays": arrays, "groups": sorted(n for n, _ in node.groups()),
            "attributes": dict(node.attrs)}
