"""Zarr checkpoints: snapshots that survive a crash, and exact resume.

Layout of a checkpoint (a Zarr group at a local path or any fsspec URL)::

    fit.zarr/
      zarr.json                  group; attributes {"dask_em": {"kind": "checkpoint", ...}}
      latest.json                the pointer: which snapshot is current (written last)
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

Nothing is ever unpickled. Classes named in a checkpoint are looked up,
never imported, unless they belong to ``dask_em`` or were registered with
:func:`register_class`: a checkpoint cannot make Python run new code.
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
import sys
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import CheckpointError

logger = logging.getLogger("dask_em")

#: Version of the on-disk layout written by this library.
FORMAT_VERSION = 1
#: Name of the pointer object at the root of a checkpoint.
POINTER = "latest.json"
_SNAPSHOT_NAME = re.compile(r"^[0-9]{6,}-[0-9a-f]+$")
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


def register_class(cls: type) -> type:
    """Allow checkpoints and saved models to name ``cls``.

    Classes of ``dask_em`` and of modules already imported are found
    without registering. Register a class defined inside a function, or
    one whose module should be imported on demand. Usable as a decorator.
    """
    _REGISTRY[_dotted(class_name(cls))] = cls
    return cls


def resolve_class(name: Any, *, what: str = "class") -> type:
    """The class a checkpoint names, without running code it could choose.

    A class is found when it was registered, when its module is already
    imported, or when its module is part of ``dask_em`` (then it is imported).

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
    if dotted in _REGISTRY:
        return _REGISTRY[dotted]
    module_name, qualname = name["module"], name["qualname"]
    module = sys.modules.get(module_name)
    if module is None:
        if module_name == "dask_em" or module_name.startswith("dask_em."):
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise CheckpointError(f"the {what} {dotted} does not exist in this dask-em version: {exc}") from None
        else:
            raise CheckpointError(
                f"the {what} {dotted} comes from module {module_name!r}, which is not imported; "
                f"import it first (or register the class with dask_em.checkpoint.register_class). "
                "dask-em never imports code named by a file."
            )
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
    if not isinstance(obj, type):
        raise CheckpointError(f"the {what} {dotted} is not a class")
    return obj


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
        else:
            self.fs.pipe_file(target, data)

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
        """Delete everything under ``path`` (ignore if already gone)."""
        try:
            self.fs.rm(self.key(path), recursive=True)
        except FileNotFoundError:
            pass


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
    """

    params: Any
    arrays: dict[str, np.ndarray]
    history: list[float]
    iteration: int
    converged: bool
    info: dict[str, Any]
    path: str

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


def _rebuild_params(info: Mapping[str, Any], arrays: dict[str, np.ndarray], where: str) -> Any:
    spec = info.get("params") or {}
    cls = resolve_class(spec.get("class"), what="parameter class")
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


def read_snapshot(location: Location, prefix: str, *, rebuild: bool = True) -> CheckpointState:
    """Read and verify one snapshot.

    Raises
    ------
    CheckpointError
        When anything is missing, damaged, or written by a newer format.
    """
    import zarr

    where = f"snapshot {location.url}/{prefix}"
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
    params = _rebuild_params(info, arrays, where) if rebuild else None
    return CheckpointState(
        params=params,
        arrays=arrays,
        history=[float(v) for v in history],
        iteration=iteration,
        converged=converged,
        info=info,
        path=f"{location.url}/{prefix}",
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
    return pointer


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
    pointer = read_pointer(location)
    if pointer is None:
        raise CheckpointError(f"there is no dask-em checkpoint at {location.url}")
    return read_snapshot(location, pointer["latest"], rebuild=rebuild)


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


class Checkpoint:
    """Snapshots of one fit, written as it runs and read to resume it.

    Use :meth:`open`; then :meth:`load` gives the state to resume from (or
    None), :meth:`save` writes a snapshot, :meth:`close` waits for the last
    write. Writes run in a background thread while the next iteration
    computes, one at a time and in order.
    """

    def __init__(self, location: Location, *, record: dict[str, Any], state: CheckpointState | None,
                 kept: list[str], keep: int, background: bool) -> None:
        self.location = location
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
    ) -> Checkpoint:
        """Open the checkpoint of a fit, checking it matches when resuming.

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

        Raises
        ------
        CheckpointError
            When resuming is asked for and impossible, or the checkpoint
            does not match the fit.
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
        pointer = None
        if root is not None:
            if root.get("kind") != "checkpoint":
                raise CheckpointError(
                    f"{location.url} holds a dask-em {root.get('kind', 'object')}, not a checkpoint; "
                    "choose another checkpoint path"
                )
            _check_format(root, f"checkpoint {location.url}")
            pointer = read_pointer(location)
        elif location.exists() and not _only_runs(location):
            raise CheckpointError(
                f"{location.url} exists and is not a dask-em checkpoint; choose another path "
                "(dask-em does not overwrite other data)"
            )
        if resume is False:
            return cls(location, record=record, state=None, kept=[], keep=keep, background=background)
        if pointer is None:
            if resume:
                raise CheckpointError(f"resume=True but there is no checkpoint to resume at {location.url}")
            return cls(location, record=record, state=None, kept=[], keep=keep, background=background)
        state = read_snapshot(location, pointer["latest"], rebuild=False)
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
        state.params = _rebuild_params(state.info, state.arrays, f"snapshot {state.path}")
        kept = [s for s in pointer["snapshots"] if isinstance(s, str)]
        return cls(location, record=record, state=state, kept=kept, keep=keep, background=background)

    # -- reading

    def load(self) -> CheckpointState | None:
        """The state to resume from, or None for a fresh start."""
        return self.state

    # -- writing

    def save(self, *, params: Any, history: list[float], converged: bool = False) -> None:
        """Write a snapshot of ``params`` after ``len(history)`` iterations.

        Returns once the write is queued; an error of the previous write is
        raised here (or by :meth:`close`) as :class:`CheckpointError`.
        """
        history_array = np.array(history, dtype=np.float64)
        params_class, fields, arrays = _params_entries(params)
        self._wait()
        job = (params_class, fields, arrays, history_array, bool(converged))
        if self._executor is None:
            self._write(*job)
        else:
            self._pending = self._executor.submit(self._write, *job)
        self.last_iteration = len(history)

    def _write(self, params_class: dict[str, str], fields: dict[str, Any], arrays: dict[str, np.ndarray],
               history: np.ndarray, converged: bool) -> None:
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
            "history": {"kind": "array", "dtype": history.dtype.str, "shape": [iteration], "checksum": checksum(history)},
            **self.record,
        }
        info = json.loads(json.dumps(to_jsonable(info)))
        group = zarr.open_group(location.store, path=prefix, mode="w-")
        group.attrs.put({ATTR_KEY: info})
        write_arrays(group, {f"params/{name}": array for name, array in arrays.items()})
        write_arrays(group, {"history": history})
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
                if _SNAPSHOT_NAME.match(name) and f"snapshots/{name}" not in kept
            ]
            self._cleaned = True
        for old in dropped:
            location.remove(old)

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
        """Wait for the last write, raising its error if it failed."""
        try:
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)

    def abort(self) -> None:
        """Wait for the last write and ignore its outcome (the fit failed)."""
        try:
            self.close()
        except CheckpointError as exc:
            logger.warning("%s", exc)


def _only_runs(location: Location) -> bool:
    """Whether a directory only holds per-restart checkpoints (``run-<i>``) and a saved model."""
    names = location.listdir("")
    return all(name.startswith("run-") or name == "model" for name in names)


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
