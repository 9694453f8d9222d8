"""Zarr checkpoints: snapshots that survive a crash, and exact resume.

Layout of a checkpoint (a Zarr group at a local path or any fsspec URL)::

    fit.zarr/
      zarr.json                  group; attributes {"dask_em": {"kind": "checkpoint", ...}}
      latest.json                the pointer: which snapshot is current (written last)
      lease.json                 which process writes now (owner, host, pid, heartbeat)
      snapshots/
        000011-3fa9c2d1/         one snapshot, never overwritten
          zarr.json              attributes: iteration, model class and config,
                                 estimator meta, data fingerprint, checksums, ...
          params/<field>         one array per field of the parameter dataclass
          history                monitored log-likelihood per iteration (float64)
        000012-81be07aa/

A snapshot is written under a fresh prefix; only when all of it is written
does the pointer move to it, and only then are older snapshots pruned. A
crash at any moment therefore leaves the pointer on a complete snapshot.

Nothing is ever unpickled. Estimator classes are rebuilt only from the
registry (dask-em's own estimators register themselves; users call
:func:`register_class`), in one function, :func:`estimator_from_record`,
which checks the configuration as a fit does; parameter classes must be
dataclasses of ``dask_em``, of the fitted model's module, or registered
(:func:`resolve_class`); values are checked by :func:`check_values`.
Names in the pointer are confined to ``snapshots/``. A writer holds a
:class:`Lease`. A checkpoint cannot make Python run new code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import importlib
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import CheckpointError

logger = logging.getLogger("dask_em")

#: Version of the on-disk layout written by this library.
FORMAT_VERSION = 1
#: Name of the pointer object at the root of a checkpoint.
POINTER = "latest.json"
#: The only names a snapshot may have, under ``snapshots/`` (checked with fullmatch).
_SNAPSHOT_NAME = re.compile(r"[0-9]{6,}-[0-9a-f]{8}")
_SNAPSHOT_PATH = re.compile(r"snapshots/[0-9]{6,}-[0-9a-f]{8}")
#: Name of the lease object: which process writes the checkpoint now.
LEASE = "lease.json"
#: Attribute key under which dask-em keeps its metadata in Zarr groups.
ATTR_KEY = "dask_em"
#: Estimator hyper-parameters that may change between a fit and its resume:
#: they decide where the fit stops or how it reports, never the path it takes.
RESUME_MAY_DIFFER = frozenset(
    {
        "max_iter",
        "tol",
        "verbose",
        "verbose_interval",
        "checkpoint",
        "checkpoint_every",
        "resume",
        "force",
        "client",
        "scheduler",
        "n_jobs",
        "progress",
    }
)

_REGISTRY: dict[str, type] = {}
#: Checkpoints open in this process, by URL: a new fit on the same URL first
#: waits for the last write of an earlier one (e.g. one stopped by an error).
_OPEN: weakref.WeakValueDictionary[str, Checkpoint] = weakref.WeakValueDictionary()


# --------------------------------------------------------------------------- classes


def class_name(cls: type) -> dict[str, str]:
    """How a class is recorded in a checkpoint: its module and qualified name."""
    return {"module": cls.__module__, "qualname": cls.__qualname__}


def _dotted(name: Mapping[str, str]) -> str:
    return f"{name.get('module')}.{name.get('qualname')}"


def _ours(module: str) -> bool:
    return module == "dask_em" or module.startswith("dask_em.")


def register_class(cls: type) -> type:
    """Allow checkpoints and saved models to name ``cls``.

    dask-em's own estimators (subclasses of
    :class:`~dask_em.estimators.EMEstimator` defined in ``dask_em``) are
    registered when their class is created; a user's estimator class, or
    a parameter class from outside the model being fitted, must be
    registered to be rebuilt from a file. Usable as a decorator.
    """
    _REGISTRY[_dotted(class_name(cls))] = cls
    return cls


def _is_params_class(obj: Any) -> bool:
    return isinstance(obj, type) and (
        dataclasses.is_dataclass(obj) or (issubclass(obj, tuple) and hasattr(obj, "_fields"))
    )


def resolve_class(name: Any, *, what: str = "class", trusted_module: str | None = None) -> type:
    """The class a checkpoint names, without running code it could choose.

    A checkpoint or saved model may name exactly these classes:

    - a class in the registry: dask-em's own estimators, which register
      themselves, and any class passed to :func:`register_class`;
    - for ``what="parameter class"`` only, a dataclass or NamedTuple
      defined in a ``dask_em`` module, or in ``trusted_module`` (the
      module of the model being fitted, already imported by the caller).

    Anything else is refused: a name is looked up, never imported from
    outside ``dask_em``, and never called unless it is one of these.

    Raises
    ------
    CheckpointError
        When the name is malformed or names a class that is not allowed.
    """
    if not isinstance(name, Mapping) or not isinstance(name.get("module"), str) or not isinstance(
        name.get("qualname"), str
    ):
        raise CheckpointError(f"the {what} is recorded as {name!r}, not as {{'module': ..., 'qualname': ...}}")
    dotted = _dotted(name)
    _register_builtin()
    if dotted in _REGISTRY:
        return _REGISTRY[dotted]
    module_name, qualname = name["module"], name["qualname"]
    refusal = (
        f"the {what} {dotted} is not one dask-em may rebuild from a file: only dask-em's own estimator "
        "and parameter classes, and classes registered with dask_em.checkpoint.register_class, are. "
        "If it is your own class, register it before loading."
    )
    if what != "parameter class" or not (_ours(module_name) or module_name == trusted_module):
        raise CheckpointError(refusal)
    module = sys.modules.get(module_name)
    if module is None and _ours(module_name):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CheckpointError(f"the {what} {dotted} does not exist in this dask-em version: {exc}") from None
    obj: Any = module
    for part in qualname.split("."):
        if part == "<locals>":
            raise CheckpointError(
                f"the {what} {dotted} was defined inside a function; register it with "
                "dask_em.checkpoint.register_class before loading"
            )
        obj = getattr(obj, part, None)
        if obj is None:
            raise CheckpointError(f"the {what} {dotted} does not exist (no {part!r} in {module_name})")
    if not _is_params_class(obj):
        raise CheckpointError(refusal)
    return obj


def _register_builtin() -> None:
    """Import dask-em's estimators, which register themselves (a fixed import, not one a file names)."""
    from . import estimators  # noqa: F401


def estimator_from_record(name: Any, config: Any, *, where: str) -> Any:
    """An unfitted estimator of the class and configuration recorded in a file.

    The one place where saved models (:func:`dask_em.load`), checkpoints
    and ``dask-em resume`` turn a record back into an estimator.

    Parameters
    ----------
    name : dict or str
        The class, as ``{"module": ..., "qualname": ...}`` or a dotted name;
        it must be registered (see :func:`resolve_class`).
    config : dict
        Hyper-parameters in their JSON form; the keys must be the class's
        own parameters, and the values pass the estimator's own checks
        (``_check_params``, what a fit runs first) before it is returned.
    where : str
        What the record was read from, for messages.

    Raises
    ------
    CheckpointError
        When the class is not allowed, a key is not one of its parameters,
        or a value is refused by its checks.
    """
    if isinstance(name, str):
        module, _, qualname = name.rpartition(".")
        name = {"module": module, "qualname": qualname}
    cls = resolve_class(name, what="estimator class")
    check = getattr(cls, "_check_params", None)
    if not callable(check) or not callable(getattr(cls, "_param_names", None)):
        raise CheckpointError(f"{where} names {_dotted(name)}, which is not a dask-em estimator")
    params = from_jsonable(config if config is not None else {})
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: the configuration is damaged (a {type(params).__name__}, not a dict)")
    valid = set(cls._param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise CheckpointError(
            f"{where} gives {cls.__qualname__} parameters {unknown} that it does not take "
            f"(it takes {sorted(valid)}); the file is damaged or from another dask-em version"
        )
    for key, value in params.items():
        if not _plain_value(value):
            raise CheckpointError(f"{where}: parameter {key}={_short(to_jsonable(value))} is not a plain value")
    estimator = cls(**params)
    try:
        estimator._check_params()
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: its configuration is refused by {cls.__qualname__}: {exc}") from None
    return estimator


def _plain_value(value: Any) -> bool:
    """Whether a configuration value is data: numbers, strings, arrays, lists and dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray, np.generic)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_value(v) for k, v in value.items())
    return isinstance(value, (np.random.Generator, np.random.RandomState))


def check_values(values: Mapping[str, Any], where: str) -> None:
    """Refuse parameter values read from a file that no fit could have produced.

    Every floating array must be free of NaN (and of infinities when it
    has more than one element); by name, ``weights``/``startprob`` must be
    on the simplex, ``transmat`` must have rows on the simplex, and
    ``covariances``/``precisions`` must be positive (definite). Names may
    end with ``_`` (fitted attributes) or not (parameter fields).

    Raises
    ------
    CheckpointError
        Naming the first value that is refused and why.
    """
    for key, value in values.items():
        if not isinstance(value, (np.ndarray, np.generic, float)):
            continue
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            continue
        if np.isnan(array).any():
            raise CheckpointError(f"{where}: {key} holds NaN values; the file is damaged or the fit diverged")
        if array.size > 1 and not np.isfinite(array).all():
            raise CheckpointError(f"{where}: {key} holds infinite values; the file is damaged")
        base = key.rstrip("_")
        if base in ("weights", "startprob", "transmat") and array.size:
            if (array < 0).any() or not np.allclose(array.sum(axis=-1), 1.0, rtol=0, atol=1e-6):
                raise CheckpointError(
                    f"{where}: {key} is not a probability vector (values must be >= 0 and sum to 1 "
                    f"along the last axis; sums {np.ravel(np.round(array.sum(axis=-1), 6)).tolist()[:8]})"
                )
        if base in ("covariances", "precisions") and array.size:
            # (K, D, D) full, (K,) spherical, (K, D) diagonal, (D, D) tied: a 2-d array
            # with positive entries may be either of the last two; otherwise it is a matrix.
            try:
                if array.ndim >= 3 or (array.ndim == 2 and (array <= 0).any()):
                    if not np.allclose(array, np.swapaxes(array, -1, -2)):
                        raise np.linalg.LinAlgError
                    np.linalg.cholesky(array)
                elif (array <= 0).any():
                    raise np.linalg.LinAlgError
            except np.linalg.LinAlgError:
                raise CheckpointError(f"{where}: {key} is not positive definite; the file is damaged") from None


# --------------------------------------------------------------------------- JSON

_BIG = 2**53


def to_jsonable(value: Any) -> Any:
    """A JSON-able form of a configuration value, exact for floats and arrays.

    Non-finite floats, numpy arrays and random generators become small
    tagged objects that :func:`from_jsonable` turns back; other objects are
    recorded by class name only.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
        return value if abs(value) < _BIG else {"__int__": str(value)}
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            return {"__object__": f"ndarray[{value.dtype}]"}
        return {
            "__ndarray__": [to_jsonable(v) for v in value.ravel().tolist()],
            "dtype": value.dtype.str,
            "shape": list(value.shape),
        }
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.random.Generator):
        return {"__generator__": to_jsonable(value.bit_generator.state)}
    if isinstance(value, np.random.RandomState):
        state = value.get_state(legacy=False)
        return {"__random_state__": to_jsonable(state)}
    cls = type(value)
    return {"__object__": _dotted(class_name(cls))}


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def from_jsonable(value: Any) -> Any:
    """Invert :func:`to_jsonable` (objects recorded by name come back as None)."""
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__int__" in value:
        return int(value["__int__"])
    if "__float__" in value:
        return float(value["__float__"])
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype.kind not in "biuf":
            raise CheckpointError(f"arrays of dtype {dtype} are not stored in checkpoints")
        flat = [from_jsonable(v) for v in value["__ndarray__"]]
        return np.array(flat, dtype=dtype).reshape(value["shape"])
    if "__generator__" in value or "__random_state__" in value:
        state = from_jsonable(value.get("__generator__", value.get("__random_state__")))
        name = state.get("bit_generator") if isinstance(state, dict) else None
        if name not in _BIT_GENERATORS:
            raise CheckpointError(f"unknown random bit generator {name!r} in a checkpoint")
        bit_generator = getattr(np.random, name)()
        bit_generator.state = state
        if "__generator__" in value:
            return np.random.Generator(bit_generator)
        return np.random.RandomState(bit_generator)
    if "__object__" in value:
        return None
    return {k: from_jsonable(v) for k, v in value.items()}


def _normalise(value: Any) -> Any:
    """A value as it reads back from JSON, to compare live and stored values."""
    return json.loads(json.dumps(to_jsonable(value)))


def _differences(stored: Any, live: Any, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(live, dict) and not any(k.startswith("__") for k in stored):
        out = []
        for key in sorted(set(stored) | set(live)):
            where = f"{path}.{key}" if path else key
            if key not in stored:
                out.append(f"{where}: absent in the checkpoint, {_short(live[key])} now")
            elif key not in live:
                out.append(f"{where}: {_short(stored[key])} in the checkpoint, absent now")
            else:
                out.extend(_differences(stored[key], live[key], where))
        return out
    if stored != live:
        return [f"{path or 'value'}: {_short(stored)} in the checkpoint, {_short(live)} now"]
    return []


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, dict) and "__ndarray__" in value:
        return f"array of shape {tuple(value.get('shape', ()))}"
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- arrays


def checksum(array: np.ndarray) -> str:
    """A content hash of an array: dtype, shape and bytes."""
    array = np.array(array, order="C", copy=None)  # ascontiguousarray would make 0-d arrays 1-d
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.reshape(-1).view(np.uint8) if array.size else b"")
    return digest.hexdigest()


def _value_entry(value: Any, name: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """How one parameter/fitted value is stored: a description and an array."""
    if value is None:
        return {"kind": "none"}, None
    if isinstance(value, bool):
        kind, array = "bool", np.asarray(value)
    elif isinstance(value, int):
        kind, array = "int", np.asarray(value, dtype=np.int64)
    elif isinstance(value, float):
        kind, array = "float", np.asarray(value, dtype=np.float64)
    elif isinstance(value, np.generic):
        kind, array = "numpy_scalar", np.asarray(value)
    elif isinstance(value, np.ndarray):
        kind, array = "array", value
    elif isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        kind, array = "list", np.asarray(value, dtype=np.float64 if any(isinstance(v, float) for v in value) else np.int64)
    else:
        raise CheckpointError(
            f"{name} is a {type(value).__name__}; checkpoints hold numpy arrays and numbers only"
        )
    if array.dtype.kind not in "biufc":
        raise CheckpointError(f"{name} has dtype {array.dtype}; checkpoints hold numeric arrays only")
    array = np.array(array, order="C", copy=None)
    return {"kind": kind, "dtype": array.dtype.str, "shape": list(array.shape), "checksum": checksum(array)}, array


def _value_from_entry(entry: Mapping[str, Any], array: np.ndarray | None) -> Any:
    kind = entry["kind"]
    if kind == "none":
        return None
    assert array is not None
    if kind == "array":
        return array
    if kind == "numpy_scalar":
        return array[()]
    if kind == "list":
        return array.tolist()
    return {"bool": bool, "int": int, "float": float}[kind](array[()])


def write_arrays(group: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Write each array as one uncompressed single-chunk Zarr array."""
    for name, array in arrays.items():
        _write_array(group, name, array)


def _write_array(group: Any, name: str, array: np.ndarray) -> None:
    chunks = tuple(max(1, s) for s in array.shape)
    target = group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=chunks, compressors=None, fill_value=0)
    if array.size:
        target[...] = array


def read_checked_array(group: Any, name: str, entry: Mapping[str, Any], where: str) -> np.ndarray:
    """Read one array and check its dtype, shape and checksum against ``entry``."""
    try:
        node = group[name]
        array = np.asarray(node[...])
    except KeyError:
        raise CheckpointError(f"{where}: the array {name!r} is missing") from None
    except Exception as exc:  # any storage or decoding failure is a damaged checkpoint
        raise CheckpointError(f"{where}: the array {name!r} cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        array = array.astype(np.dtype(entry["dtype"]), copy=False).reshape(entry["shape"])
    except Exception:
        raise CheckpointError(
            f"{where}: the array {name!r} has dtype {array.dtype} and shape {array.shape}, "
            f"expected {entry.get('dtype')} and {entry.get('shape')}"
        ) from None
    if checksum(array) != entry.get("checksum"):
        raise CheckpointError(f"{where}: the array {name!r} is damaged (its checksum does not match)")
    return array


# --------------------------------------------------------------------------- storage


class Location:
    """A Zarr group at a local path or fsspec URL, with small JSON objects beside it.

    Parameters
    ----------
    path : str or os.PathLike
        Local path, ``file://``, ``memory://``, ``s3://`` or any fsspec URL.
    storage_options : dict, optional
        Passed to fsspec (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
    """

    def __init__(self, path: Any, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.url = os.fspath(path) if hasattr(path, "__fspath__") else str(path)
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError) as exc:
            raise CheckpointError(f"cannot open {self.url!r}: {exc}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") if root not in ("/", "") else root
        self._store: Any = None

    def key(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    @property
    def store(self) -> Any:
        """The Zarr store of this location (made once)."""
        if self._store is None:
            import zarr

            if self.local:
                self._store = zarr.storage.LocalStore(self.root)
            else:
                self._store = zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options or None)
        return self._store

    def read_json(self, name: str) -> Any:
        """A small JSON object, or None when it does not exist."""
        try:
            data = self.fs.cat_file(self.key(name))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CheckpointError(f"{self.url}/{name} is not valid JSON ({exc})") from None

    def write_json(self, name: str, value: Any) -> None:
        """Replace a small JSON object in one step.

        Locally: write a temporary file and rename it over the old one;
        on object stores a single PUT is already all-or-nothing.
        """
        data = json.dumps(value, indent=1, sort_keys=True).encode()
        target = self.key(name)
        if self.local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.{secrets.token_hex(4)}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(os.path.dirname(target))
        else:
            self.fs.pipe_file(target, data)

    def sync(self, path: str) -> None:
        """Flush every file and directory under ``path`` to disk (local paths only).

        Object stores make a PUT durable before it returns; a local file
        system may keep written data in memory, so a snapshot's arrays are
        synced before the pointer names them.
        """
        if not self.local:
            return
        top = self.key(path)
        for directory, _, files in os.walk(top):
            for name in files:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(directory)
        _fsync_dir(os.path.dirname(top))

    def group_attrs(self, path: str = "") -> dict[str, Any] | None:
        """The ``dask_em`` attributes of the Zarr group at ``path``, or None."""
        meta = self.read_json(f"{path}/zarr.json" if path else "zarr.json")
        if not isinstance(meta, dict):
            return None
        attrs = meta.get("attributes") or {}
        value = attrs.get(ATTR_KEY)
        return value if isinstance(value, dict) else None

    def exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.root)) and bool(self.listdir(""))
        except (FileNotFoundError, NotADirectoryError):
            return False

    def listdir(self, path: str) -> list[str]:
        """Names directly under ``path`` (empty if it does not exist)."""
        try:
            self.fs.invalidate_cache(self.key(path))
            entries = self.fs.ls(self.key(path), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def remove(self, path: str) -> None:
        """Delete everything under ``path`` (ignore if already gone).

        Callers pass fixed names or names checked by :func:`_snapshot_path`.
        """
        try:
            self.fs.rm(self.key(path), recursive=True)
        except FileNotFoundError:
            pass


def _fsync_dir(path: str) -> None:
    """Make a rename or a new file in directory ``path`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _snapshot_path(value: Any, where: str) -> str:
    """``value`` if it is exactly ``snapshots/<iteration>-<8 hex digits>``; refuse anything else.

    Pointers name snapshots that are read and pruned (deleted): a name
    such as ``../elsewhere`` must never reach the storage layer.
    """
    if not isinstance(value, str) or not _SNAPSHOT_PATH.fullmatch(value):
        raise CheckpointError(
            f"{where}: {POINTER} names {value!r}, which is not a snapshot of this checkpoint "
            "(snapshots/<iteration>-<8 hex digits>); the pointer is damaged or crafted. "
            f"Delete {POINTER} to recover from the newest valid snapshot."
        )
    return value


def _check_format(info: Mapping[str, Any], where: str) -> None:
    version = info.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{where} has no valid format_version ({version!r}); it was not written by dask-em")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written in format version {version} by dask-em "
            f"{info.get('library_version', '?')}; this dask-em reads versions up to {FORMAT_VERSION}. "
            "Upgrade dask-em to read it."
        )


def _library_version() -> str:
    from . import __version__

    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- fingerprint


def _hash_block(block: Any) -> str:
    return checksum(np.asarray(block))


def data_fingerprint(blocks: Any) -> dict[str, Any]:
    """Shape, dtype, chunking and a content hash of the first and last blocks.

    Hashing two blocks on the workers costs one small task each, so a
    checkpoint notices different data with the same shape without reading
    the data set.
    """
    import dask

    fingerprint = dict(getattr(blocks, "fingerprint", None) or {})
    parts = list(getattr(blocks, "parts", []) or [])
    if parts:
        chosen = [parts[0]] if len(parts) == 1 else [parts[0], parts[-1]]
        tasks = [dask.delayed(_hash_block, pure=True)(p) for p in chosen]
        hashes = blocks.compute(*tasks) if hasattr(blocks, "compute") else dask.compute(*tasks)
        fingerprint["content"] = hashlib.blake2b("".join(hashes).encode(), digest_size=16).hexdigest()
    return fingerprint


# --------------------------------------------------------------------------- snapshots


@dataclasses.dataclass
class CheckpointState:
    """One snapshot as read back.

    Attributes
    ----------
    params : object or None
        The parameter dataclass, rebuilt (None when read without rebuilding).
    arrays : dict of str to ndarray
        The parameter fields as stored.
    history : list of float
        Monitored log-likelihood of each iteration so far.
    iteration : int
        Number of iterations the snapshot holds.
    converged : bool
        Whether the fit had converged when the snapshot was written.
    info : dict
        Everything else recorded (model, meta, fingerprint, versions, ...).
    path : str
        The checkpoint location and snapshot prefix.
    state : dict
        The engine's own state beside the parameters (e.g. accelerated EM's
        previous points), as numbers and arrays; empty for plain EM.
    """

    params: Any
    arrays: dict[str, np.ndarray]
    history: list[float]
    iteration: int
    converged: bool
    info: dict[str, Any]
    path: str
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """The estimator meta recorded with the fit (JSON form)."""
        return self.info.get("meta") or {}

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the data the fit ran on."""
        return self.info.get("fingerprint") or {}


def _params_entries(params: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    cls = type(params)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    elif isinstance(params, tuple) and hasattr(cls, "_fields"):
        values = dict(zip(cls._fields, params))
    else:
        raise CheckpointError(
            f"parameters of type {cls.__name__} cannot be checkpointed; use a frozen dataclass of numpy arrays"
        )
    fields, arrays = {}, {}
    for name, value in values.items():
        entry, array = _value_entry(value, f"parameter {name!r}")
        fields[name] = entry
        if array is not None:
            arrays[name] = np.array(array, copy=True)  # the fit goes on while this is written
    return class_name(cls), fields, arrays


def _rebuild_params(info: Mapping[str, Any], arrays: dict[str, np.ndarray], where: str,
                    trusted_module: str | None = None) -> Any:
    spec = info.get("params") or {}
    cls = resolve_class(spec.get("class"), what="parameter class", trusted_module=trusted_module)
    fields = spec.get("fields") or {}
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
        names = list(cls._fields)
    else:
        raise CheckpointError(f"{where}: the parameter class {_dotted(class_name(cls))} is not a dataclass")
    if sorted(names) != sorted(fields):
        raise CheckpointError(
            f"{where}: the parameter class {_dotted(class_name(cls))} has fields {sorted(names)}, "
            f"the snapshot holds {sorted(fields)}"
        )
    values = {name: _value_from_entry(fields[name], arrays.get(name)) for name in names}
    try:
        return cls(**values)
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot rebuild {_dotted(class_name(cls))}: {exc}") from None


def read_snapshot(location: Location, prefix: str, *, rebuild: bool = True,
                  trusted_module: str | None = None) -> CheckpointState:
    """Read and verify one snapshot: checksums, shapes, and values a fit can produce.

    ``trusted_module`` is the module of the model being fitted, whose
    parameter class may be rebuilt (see :func:`resolve_class`).

    Raises
    ------
    CheckpointError
        When anything is missing, damaged, or written by a newer format.
    """
    import zarr

    where = f"snapshot {location.url}/{prefix}"
    prefix = _snapshot_path(prefix, where)
    info = location.group_attrs(prefix)
    if info is None:
        raise CheckpointError(f"{where} is missing or is not a dask-em snapshot")
    _check_format(info, where)
    try:
        iteration = int(info["iteration"])
        converged = bool(info["converged"])
        fields = dict(info["params"]["fields"])
        history_entry = info["history"]
        info["model"]["class"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} lacks the key {exc} in its attributes; it is damaged") from None
    try:
        group = zarr.open_group(location.store, path=prefix, mode="r")
    except Exception as exc:
        raise CheckpointError(f"{where} cannot be opened ({type(exc).__name__}: {exc})") from None
    arrays = {}
    for name, entry in fields.items():
        if not isinstance(entry, Mapping) or "kind" not in entry:
            raise CheckpointError(f"{where}: the description of parameter {name!r} is damaged")
        if entry["kind"] != "none":
            arrays[name] = read_checked_array(group, f"params/{name}", entry, where)
    history = read_checked_array(group, "history", history_entry, where)
    if history.dtype != np.float64 or history.shape != (iteration,):
        raise CheckpointError(f"{where}: the history has shape {history.shape}, expected ({iteration},)")
    state = {}
    state_fields = info.get("state") or {}
    if not isinstance(state_fields, Mapping):
        raise CheckpointError(f"{where}: the engine state is damaged")
    for name, entry in state_fields.items():
        if not isinstance(entry, Mapping) or entry.get("kind") not in ("none", "array", "numpy_scalar", "bool", "int", "float"):
            raise CheckpointError(f"{where}: the description of engine state {name!r} is damaged")
        array = read_checked_array(group, f"state/{name}", entry, where) if entry["kind"] != "none" else None
        state[name] = _value_from_entry(entry, array)
    check_values(arrays, where)
    params = _rebuild_params(info, arrays, where, trusted_module) if rebuild else None
    return CheckpointState(
        params=params,
        arrays=arrays,
        history=[float(v) for v in history],
        iteration=iteration,
        converged=converged,
        info=info,
        path=f"{location.url}/{prefix}",
        state=state,
    )


def read_pointer(location: Location) -> dict[str, Any] | None:
    """The pointer of a checkpoint, checked, or None when there is none."""
    pointer = location.read_json(POINTER)
    if pointer is None:
        return None
    where = f"checkpoint {location.url}"
    if not isinstance(pointer, dict):
        raise CheckpointError(f"{where}: {POINTER} is damaged")
    _check_format(pointer, where)
    if not isinstance(pointer.get("latest"), str) or not isinstance(pointer.get("snapshots"), list):
        raise CheckpointError(f"{where}: {POINTER} lacks 'latest' or 'snapshots'; it is damaged")
    for name in [pointer["latest"], *pointer["snapshots"]]:
        _snapshot_path(name, where)
    return pointer


def _snapshots_on_disk(location: Location) -> list[str]:
    """The snapshot prefixes present, oldest first (by iteration, then name)."""
    names = [n for n in location.listdir("snapshots") if _SNAPSHOT_NAME.fullmatch(n)]
    return [f"snapshots/{n}" for n in sorted(names, key=lambda n: (int(n.split("-")[0]), n))]


def latest_state(location: Location, *, rebuild: bool = False,
                 trusted_module: str | None = None) -> tuple[CheckpointState, list[str]] | None:
    """The newest valid snapshot of a checkpoint, and the snapshots to keep with it.

    The pointer's latest snapshot is read first; when it is damaged, the
    previous snapshots the pointer keeps are tried, newest first, with a
    warning. When the pointer is missing but snapshots exist (a crash, or
    a deleted ``latest.json``), the newest valid one on disk is used, with
    a warning; nothing is deleted here.

    Returns
    -------
    (CheckpointState, list of str) or None
        None when the checkpoint holds no snapshot at all.

    Raises
    ------
    CheckpointError
        When the pointer is malformed, or no snapshot is valid.
    """
    pointer = read_pointer(location)
    where = f"checkpoint {location.url}"
    if pointer is not None:
        listed = [s for s in pointer["snapshots"] if s != pointer["latest"]] + [pointer["latest"]]
        how = f"its {POINTER} names {pointer['latest']}"
    else:
        listed = _snapshots_on_disk(location)
        if not listed:
            return None
        how = f"it has no {POINTER} (deleted, or lost in a crash)"
    errors = []
    for prefix in reversed(listed):
        try:
            state = read_snapshot(location, prefix, rebuild=False)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors or pointer is None:
            reasons = "; ".join(errors) or "no pointer"
            warnings.warn(
                f"{where}: {how}; using the newest valid snapshot {prefix} (iteration {state.iteration}) "
                f"instead ({reasons})",
                UserWarning,
                stacklevel=3,
            )
        if rebuild:  # a refused class is not damage: no fallback for it
            state.params = _rebuild_params(state.info, state.arrays, f"snapshot {state.path}", trusted_module)
        return state, listed[: listed.index(prefix) + 1]
    raise CheckpointError(
        f"{where}: {how}, and no snapshot is valid: {'; '.join(errors)}. "
        "Start over with resume=False (dask-em fit without --checkpoint at this path), or restore the files."
    )


def read_checkpoint(path: Any, *, rebuild: bool = False, storage_options: dict[str, Any] | None = None) -> CheckpointState:
    """The latest snapshot of the checkpoint at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL.
    rebuild : bool
        Rebuild the parameter dataclass (its class must be importable
        under the rules of :func:`resolve_class`).
    """
    location = Location(path, storage_options)
    found = latest_state(location, rebuild=rebuild)
    if found is None:
        raise CheckpointError(f"there is no dask-em checkpoint at {location.url}")
    return found[0]


def resumable_config(path: Any, resume: bool | None, names: Sequence[str]) -> dict[str, Any]:
    """Values of the model configuration recorded in the checkpoint a fit would resume, by name.

    For estimators whose model takes data-derived defaults (a prior's mean
    and scale): a resumed fit must use the recorded values, not recompute
    them. Only ``names`` set in the record are returned, decoded by
    :func:`from_jsonable`; nothing when ``resume`` is False or ``path`` holds
    no readable checkpoint (the fit then starts afresh, and
    :func:`dask_em.fit_em` reports any other problem with ``path``).
    """
    if path is None or resume is False:
        return {}
    try:
        state = read_checkpoint(path)
    except CheckpointError:
        return {}
    config = (state.info.get("model") or {}).get("config") or {}
    return {name: from_jsonable(config[name]) for name in names if config.get(name) is not None}


def checkpoint_iteration(path: Any, storage_options: dict[str, Any] | None = None) -> int | None:
    """Iteration of the latest snapshot at ``path`` (None when there is none).

    Reads only the small pointer, so it is cheap to poll.
    """
    try:
        pointer = Location(path, storage_options).read_json(POINTER)
    except CheckpointError:
        return None
    return int(pointer["iteration"]) if isinstance(pointer, dict) and "iteration" in pointer else None


def _model_record(model: Any) -> dict[str, Any]:
    if model is None:
        return {"class": None, "config": None}
    config = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else {}
    return {"class": class_name(type(model)), "config": _normalise(config)}


#: Seconds without a heartbeat after which a writer's lease is taken over
#: (``$DASK_EM_LEASE_TIMEOUT`` overrides it).
LEASE_TIMEOUT = 120.0


class Lease:
    """Which process writes a checkpoint: an owner id, its host and pid, a heartbeat.

    A writer takes the lease when it opens a checkpoint, renews the
    heartbeat from a background thread, checks it still holds the lease
    before each pointer update, and removes it when it closes. A second
    writer is refused with the holder's name, unless the holder is stale:
    its heartbeat is older than ``timeout`` seconds, or it is a process of
    this host that no longer runs. A stale lease is taken over with a
    warning.

    Parameters
    ----------
    location : Location
        The checkpoint.
    timeout : float, optional
        Seconds; default ``$DASK_EM_LEASE_TIMEOUT`` or :data:`LEASE_TIMEOUT`.
    """

    def __init__(self, location: Location, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = float(os.environ.get("DASK_EM_LEASE_TIMEOUT", LEASE_TIMEOUT))
        if not timeout > 0:
            raise ValueError(f"the lease timeout must be positive, got {timeout}")
        self.location = location
        self.timeout = float(timeout)
        self.record = {"owner": secrets.token_hex(8), "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now_record(self) -> dict[str, Any]:
        return {**self.record, "heartbeat": time.time(), "timeout": self.timeout}

    def _describe(self, holder: Mapping[str, Any]) -> str:
        age = time.time() - float(holder.get("heartbeat", 0.0))
        return (f"owner {holder.get('owner')!r} (pid {holder.get('pid')} on host {holder.get('host')!r}, "
                f"last heartbeat {age:.0f} s ago)")

    def _read(self) -> dict[str, Any] | None:
        try:
            holder = self.location.read_json(LEASE)
        except CheckpointError:
            return {"owner": "unreadable", "heartbeat": 0.0}  # a damaged lease is stale
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: Mapping[str, Any]) -> str | None:
        """Why ``holder`` may be taken over, or None when it is live."""
        try:
            age = time.time() - float(holder.get("heartbeat"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return "its heartbeat is unreadable"
        if age > self.timeout:
            return f"its heartbeat is {age:.0f} s old (timeout {self.timeout:g} s)"
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
            if holder["pid"] == self.record["pid"]:
                return "it is an earlier fit of this process"
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return "its process no longer runs"
            except OSError:
                pass
        return None

    def acquire(self) -> None:
        """Take the lease, or raise :class:`CheckpointError` naming the live holder."""
        where = f"checkpoint {self.location.url}"
        created = self._create()
        if not created:
            holder = self._read()
            if holder is not None and holder.get("owner") != self.record["owner"]:
                reason = self._stale(holder)
                if reason is None:
                    raise CheckpointError(
                        f"{where} is being written by another fit: {self._describe(holder)}. "
                        "Wait for it to finish or stop it, or choose another checkpoint path; a lease "
                        f"without a heartbeat for {self.timeout:g} s ($DASK_EM_LEASE_TIMEOUT) is taken over."
                    )
                if reason != "it is an earlier fit of this process":
                    warnings.warn(f"{where}: taking over the lease of {self._describe(holder)}: {reason}",
                                  UserWarning, stacklevel=4)
            self.location.write_json(LEASE, self._now_record())
        holder = self._read()
        if not holder or holder.get("owner") != self.record["owner"]:  # another writer won a race
            raise CheckpointError(f"{where}: another fit took the lease at the same moment: {self._describe(holder or {})}")
        self._thread = threading.Thread(target=self._beat, name="dask-em-lease", daemon=True)
        self._thread.start()

    def _create(self) -> bool:
        """Write the lease if there is none, atomically where the file system allows."""
        if not self.location.local:
            if self._read() is not None:
                return False
            self.location.write_json(LEASE, self._now_record())
            return True
        target = self.location.key(LEASE)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._now_record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _beat(self) -> None:
        while not self._stop.wait(min(10.0, self.timeout / 4)):
            try:
                holder = self._read()
                if not holder or holder.get("owner") != self.record["owner"]:
                    return  # taken over: check() reports it at the next snapshot
                self.location.write_json(LEASE, self._now_record())
            except Exception as exc:  # a storage hiccup: the next beat tries again
                logger.warning("renewing the lease of %s failed: %s", self.location.url, exc)

    def check(self) -> None:
        """Raise :class:`CheckpointError` if another writer has taken the lease over."""
        holder = self._read()
        if not holder or holder.get("owner") != self.record["owner"]:
            raise CheckpointError(
                f"checkpoint {self.location.url}: this fit lost its lease to "
                f"{self._describe(holder) if holder else 'nobody (the lease was deleted)'}; "
                "it stops writing so the two fits do not mix their snapshots"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if this fit still holds it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            holder = self._read()
            if holder and holder.get("owner") == self.record["owner"]:
                self.location.fs.rm(self.location.key(LEASE))
        except Exception as exc:
            logger.warning("removing the lease of %s failed: %s", self.location.url, exc)


class Checkpoint:
    """Snapshots of one fit, written as it runs and read to resume it.

    Use :meth:`open`; then :meth:`load` gives the state to resume from (or
    None), :meth:`save` writes a snapshot, :meth:`close` waits for the last
    write. Writes run in a background thread while the next iteration
    computes, one at a time and in order.
    """

    def __init__(self, location: Location, *, record: dict[str, Any], state: CheckpointState | None,
                 kept: list[str], keep: int, background: bool, lease: Lease | None = None) -> None:
        self.location = location
        self.lease = lease
        # A fit that fails drops its Checkpoint without close(): let the lease go with it.
        self._finalizer = weakref.finalize(self, lease.release) if lease is not None else None
        self.record = record
        self.state = state
        self.keep = keep
        self._kept = list(kept)
        self._cleaned = False
        self._root_written = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "dask-em-checkpoint") if background else None
        self._pending: concurrent.futures.Future[None] | None = None
        self.last_iteration = state.iteration if state is not None else None
        _OPEN[location.url] = self

    @classmethod
    def open(
        cls,
        path: Any,
        *,
        model: Any = None,
        fingerprint: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        resume: bool | None = None,
        force: bool = False,
        settings: dict[str, Any] | None = None,
        monitor: dict[str, Any] | None = None,
        rng_state: Any = None,
        keep: int = 2,
        background: bool = True,
        storage_options: dict[str, Any] | None = None,
        lease_timeout: float | None = None,
    ) -> Checkpoint:
        """Open the checkpoint of a fit for writing, checking it matches when resuming.

        The fit takes the checkpoint's lease (see :class:`Lease`) for as
        long as it is open: a second writer gets an error naming the holder.

        Parameters
        ----------
        path : str or os.PathLike
            Local path or fsspec URL of the checkpoint group.
        model : EMModel
            The model being fitted; its class and configuration are recorded
            and must match on resume.
        fingerprint : dict
            The data fingerprint (see :func:`data_fingerprint`); must match.
        meta : dict
            What the caller records, e.g. the estimator class and its
            hyper-parameters; must match except for :data:`RESUME_MAY_DIFFER`.
        resume : bool, optional
            None: resume if a snapshot exists; True: a snapshot must exist;
            False: start over (old snapshots stay until the first new one).
        force : bool
            Resume even when data, model or meta differ (with a warning).
        settings : dict
            Engine settings that change the result (e.g. ``split_every``);
            must match.
        monitor : dict
            Settings recorded but free to change (``tol``, ``max_iter``).
        rng_state : object
            Random state to record (JSON form).
        keep : int
            Number of snapshots to keep.
        background : bool
            Write snapshots in a background thread.
        storage_options : dict, optional
            fsspec options for URLs.
        lease_timeout : float, optional
            Seconds without a heartbeat after which another writer's lease
            is taken over (default :data:`LEASE_TIMEOUT`).

        Raises
        ------
        CheckpointError
            When resuming is asked for and impossible, the checkpoint does
            not match the fit, or another process writes it.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        location = Location(path, storage_options)
        earlier = _OPEN.get(location.url)
        if earlier is not None:
            earlier.abort()
        record = {
            "model": _model_record(model),
            "fingerprint": _normalise(fingerprint or {}),
            "meta": _normalise(meta or {}),
            "settings": _normalise(settings or {}),
            "monitor": _normalise(monitor or {}),
            "rng_state": _normalise(rng_state),
        }
        root = location.group_attrs()
        if root is not None:
            if root.get("kind") != "checkpoint":
                raise CheckpointError(
                    f"{location.url} holds a dask-em {root.get('kind', 'object')}, not a checkpoint; "
                    "choose another checkpoint path"
                )
            _check_format(root, f"checkpoint {location.url}")
        elif location.exists() and not _only_runs(location):
            raise CheckpointError(
                f"{location.url} exists and is not a dask-em checkpoint; choose another path "
                "(dask-em does not overwrite other data)"
            )
        lease = Lease(location, lease_timeout)
        lease.acquire()  # before reading: the snapshot read must not be pruned under us
        try:
            return cls._opened(location, lease, root, record, model, resume, force, keep, background)
        except BaseException:
            lease.release()
            raise

    @classmethod
    def _opened(cls, location: Location, lease: Lease, root: Any, record: dict[str, Any], model: Any,
                resume: bool | None, force: bool, keep: int, background: bool) -> Checkpoint:
        def make(state: CheckpointState | None, kept: list[str]) -> Checkpoint:
            return cls(location, record=record, state=state, kept=kept, keep=keep, background=background, lease=lease)

        if resume is False:
            return make(None, [])
        trusted = type(model).__module__ if model is not None else None
        found = latest_state(location, trusted_module=trusted) if root is not None else None
        if found is None:
            if resume:
                raise CheckpointError(f"resume=True but there is no checkpoint to resume at {location.url}")
            return make(None, [])
        state, kept = found
        differences = _compare(state.info, record)
        if differences:
            listing = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
            if not force:
                raise CheckpointError(
                    f"the checkpoint at {location.url} was written for a different fit: {listing}. "
                    "Resume with the same data and settings, pass force=True (--force) to resume anyway, "
                    "or resume=False to start over."
                )
            warnings.warn(f"resuming {location.url} despite differences (force=True): {listing}", UserWarning, stacklevel=3)
        state.params = _rebuild_params(state.info, state.arrays, f"snapshot {state.path}", trusted)
        return make(state, kept)

    # -- reading

    def load(self) -> CheckpointState | None:
        """The state to resume from, or None for a fresh start."""
        return self.state

    # -- writing

    def save(self, *, params: Any, history: list[float], converged: bool = False,
             state: Mapping[str, Any] | None = None) -> None:
        """Write a snapshot of ``params`` after ``len(history)`` iterations.

        ``state`` is the engine's own state to resume with (numbers and
        arrays by name, see :attr:`CheckpointState.state`). Returns once the
        write is queued; an error of the previous write is raised here (or
        by :meth:`close`) as :class:`CheckpointError`.
        """
        history_array = np.array(history, dtype=np.float64)
        params_class, fields, arrays = _params_entries(params)
        state_fields = {}
        for name, value in (state or {}).items():
            entry, array = _value_entry(value, f"engine state {name!r}")
            state_fields[name] = entry
            if array is not None:
                arrays[f"state/{name}"] = np.array(array, copy=True)
        self._wait()
        job = (params_class, fields, arrays, history_array, bool(converged), state_fields)
        if self._executor is None:
            self._write(*job)
        else:
            self._pending = self._executor.submit(self._write, *job)
        self.last_iteration = len(history)

    def _write(self, params_class: dict[str, str], fields: dict[str, Any], arrays: dict[str, np.ndarray],
               history: np.ndarray, converged: bool, state_fields: dict[str, Any]) -> None:
        import zarr

        location = self.location
        if not self._root_written:
            if location.group_attrs() is None:
                root = zarr.open_group(location.store, mode="a")
                root.attrs.put({ATTR_KEY: {"kind": "checkpoint", "format_version": FORMAT_VERSION,
                                           "library_version": _library_version(), "created": _now()}})
            self._root_written = True
        iteration = int(history.shape[0])
        prefix = f"snapshots/{iteration:06d}-{secrets.token_hex(4)}"
        info = {
            "kind": "snapshot",
            "format_version": FORMAT_VERSION,
            "library_version": _library_version(),
            "created": _now(),
            "iteration": iteration,
            "converged": converged,
            "loglik": float(history[-1]) if iteration else None,
            "params": {"class": params_class, "fields": fields},
            "state": state_fields,
            "history": {"kind": "array", "dtype": history.dtype.str, "shape": [iteration], "checksum": checksum(history)},
            **self.record,
        }
        info = json.loads(json.dumps(to_jsonable(info)))
        group = zarr.open_group(location.store, path=prefix, mode="w-")
        group.attrs.put({ATTR_KEY: info})
        write_arrays(group, {name if name.startswith("state/") else f"params/{name}": array
                             for name, array in arrays.items()})
        write_arrays(group, {"history": history})
        location.sync(prefix)  # the arrays are on disk before the pointer names them
        if self.lease is not None:
            self.lease.check()
        kept = (self._kept + [prefix])[-self.keep :]
        pointer = {
            "format_version": FORMAT_VERSION,
            "latest": prefix,
            "iteration": iteration,
            "converged": converged,
            "loglik": info["loglik"],
            "snapshots": kept,
            "updated": info["created"],
        }
        location.write_json(POINTER, pointer)  # the commit point
        dropped = [s for s in self._kept if s not in kept]
        self._kept = kept
        if not self._cleaned:
            # The first write also removes what a crash or an earlier fit left.
            dropped = [
                f"snapshots/{name}"
                for name in location.listdir("snapshots")
                if _SNAPSHOT_NAME.fullmatch(name) and f"snapshots/{name}" not in kept
            ]
            self._cleaned = True
        for old in dropped:
            location.remove(_snapshot_path(old, f"checkpoint {location.url}"))

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except CheckpointError:
                raise
            except Exception as exc:
                raise CheckpointError(
                    f"writing a snapshot to {self.location.url} failed ({type(exc).__name__}: {exc}); "
                    "the previous snapshot is intact"
                ) from exc

    def close(self) -> None:
        """Wait for the last write, raising its error if it failed, and give up the lease."""
        try:
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._finalizer is not None:
                self._finalizer()

    def check_blocks(self, hashes: list[str], *, force: bool = False) -> None:
        """Compare per-block content hashes of this fit's first pass with the snapshot's.

        Called with the hashes computed inside the first pass (before its
        M-step is applied); they are then recorded in every later
        snapshot. A snapshot written without them is not compared.

        Raises
        ------
        CheckpointError
            Naming the first block whose content differs, unless ``force``
            (then a warning).
        """
        stored = (self.state.info.get("blocks") if self.state is not None else None) or None
        self.record["blocks"] = list(hashes)
        if stored is None:
            return
        changed = [i for i, (a, b) in enumerate(zip(stored, hashes)) if a != b]
        if len(stored) != len(hashes):
            message = f"the data has {len(hashes)} blocks, the checkpoint's {len(stored)}"
        elif changed:
            message = (
                f"block {changed[0]} (of {len(hashes)}) holds other data than when the checkpoint was written"
                + (f", and {len(changed) - 1} more blocks" if len(changed) > 1 else "")
            )
        else:
            return
        if force:
            warnings.warn(f"resuming {self.location.url} despite different data (force=True): {message}",
                          UserWarning, stacklevel=3)
            return
        raise CheckpointError(
            f"the checkpoint at {self.location.url} was written for different data: {message}. "
            "Resume with the same data, pass force=True (--force) to resume anyway, or resume=False to start over."
        )

    def abort(self) -> None:
        """Wait for the last write and ignore its outcome (the fit failed)."""
        try:
            self.close()
        except CheckpointError as exc:
            logger.warning("%s", exc)


def _only_runs(location: Location) -> bool:
    """Whether a directory only holds per-restart checkpoints (``run-<i>``), a saved model, a lease."""
    names = location.listdir("")
    return all(name.startswith("run-") or name in ("model", LEASE) for name in names)


def _compare(stored: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    differences = []
    stored_model, live_model = stored.get("model") or {}, live["model"]
    if live_model.get("class") is not None:
        if stored_model.get("class") != live_model["class"]:
            differences.append(
                f"model class: {_dotted(stored_model.get('class') or {})} in the checkpoint, "
                f"{_dotted(live_model['class'])} now"
            )
        else:
            differences += [f"model {d}" for d in _differences(stored_model.get("config"), live_model.get("config"))]
    live_fp, stored_fp = live["fingerprint"], stored.get("fingerprint") or {}
    if live_fp:
        fp_diff = _differences(stored_fp, live_fp)
        fp_diff = [d.replace("content:", "content hash of the first and last blocks:") for d in fp_diff]
        differences += [f"data {d}" for d in fp_diff]
    stored_meta, live_meta = _drop_free(stored.get("meta") or {}), _drop_free(live["meta"])
    differences += [f"estimator {d}" for d in _differences(stored_meta, live_meta)]
    differences += [f"setting {d}" for d in _differences(stored.get("settings") or {}, live["settings"])]
    return differences


def _drop_free(meta: dict[str, Any]) -> dict[str, Any]:
    meta = dict(meta)
    meta.pop("source", None)  # where the data was read from; the fingerprint checks the data
    if isinstance(meta.get("config"), dict):
        meta["config"] = {k: v for k, v in meta["config"].items() if k not in RESUME_MAY_DIFFER}
    return meta
