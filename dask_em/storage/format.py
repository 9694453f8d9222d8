"""The file format of checkpoints and saved models: what a file may hold and how it is checked.

One layer, below snapshots, leases and saved models (:mod:`.checkpoint`,
:mod:`.snapshots`, :mod:`.lease`, :mod:`.io`), which use only its public
names:

- the format version (:data:`FORMAT_VERSION`, :func:`check_format`) and
  the library version a file records (:func:`library_version`);
- the class registry: which classes a file may name
  (:func:`register_class`, :func:`resolve_class`) and the one function
  turning a record back into an estimator (:func:`estimator_from_record`);
- values a fit can produce (:func:`check_values`);
- exact JSON for configuration values (:func:`to_jsonable`,
  :func:`from_jsonable`);
- checksummed arrays (:func:`value_entry`, :func:`write_arrays`,
  :func:`read_checked_array`).

Nothing is ever unpickled. Estimator classes are rebuilt only from the
registry (dask-em's own estimators register themselves; users call
:func:`register_class`), in :func:`estimator_from_record`, which checks
the configuration as a fit does; parameter classes must be dataclasses of
``dask_em``, of the fitted model's module, or registered
(:func:`resolve_class`); values are checked by :func:`check_values`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CheckpointError

#: Version of the on-disk layout written by this library.
FORMAT_VERSION = 1
#: Attribute key under which dask-em keeps its metadata in Zarr groups.
ATTR_KEY = "dask_em"

_REGISTRY: dict[str, type] = {}

# --------------------------------------------------------------------------- classes


def class_name(cls: type) -> dict[str, str]:
    """How a class is recorded in a checkpoint: its module and qualified name."""
    return {"module": cls.__module__, "qualname": cls.__qualname__}


def dotted(name: Mapping[str, str]) -> str:
    """``module.qualname`` of a recorded class name."""
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
    _REGISTRY[dotted(class_name(cls))] = cls
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
    full_name = dotted(name)
    _register_builtin()
    if full_name in _REGISTRY:
        return _REGISTRY[full_name]
    module_name, qualname = name["module"], name["qualname"]
    refusal = (
        f"the {what} {full_name} is not one dask-em may rebuild from a file: only dask-em's own estimator "
        "and parameter classes, and classes registered with dask_em.register_class, are. "
        "If it is your own class, register it before loading."
    )
    if what != "parameter class" or not (_ours(module_name) or module_name == trusted_module):
        raise CheckpointError(refusal)
    module = sys.modules.get(module_name)
    if module is None and _ours(module_name):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CheckpointError(f"the {what} {full_name} does not exist in this dask-em version: {exc}") from None
    obj: Any = module
    for part in qualname.split("."):
        if part == "<locals>":
            raise CheckpointError(
                f"the {what} {full_name} was defined inside a function; register it with "
                "dask_em.register_class before loading"
            )
        obj = getattr(obj, part, None)
        if obj is None:
            raise CheckpointError(f"the {what} {full_name} does not exist (no {part!r} in {module_name})")
    if not _is_params_class(obj):
        raise CheckpointError(refusal)
    return obj


def _register_builtin() -> None:
    """Import dask-em's estimators, which register themselves (a fixed import, not one a file names)."""
    from .. import estimators  # noqa: F401


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
        raise CheckpointError(f"{where} names {dotted(name)}, which is not a dask-em estimator")
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
            raise CheckpointError(f"{where}: parameter {key}={short(to_jsonable(value))} is not a plain value")
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
    return {"__object__": dotted(class_name(cls))}


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


def normalise(value: Any) -> Any:
    """A value as it reads back from JSON, to compare live and stored values."""
    return json.loads(json.dumps(to_jsonable(value)))


def short(value: Any, limit: int = 80) -> str:
    """A JSON form of ``value`` cut to ``limit`` characters, for messages."""
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


def value_entry(value: Any, name: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """How one parameter/fitted value is stored: a description and an array."""
    if value is None:
        return {"kind": "none"}, None
    if isinstance(value, np.ndarray) and value.dtype.kind in "OU" and value.ndim == 1 and len(value) and all(
        isinstance(v, str) for v in value.tolist()
    ):  # column names (scikit-learn's feature_names_in_, an object array of str): kept in the description
        return {"kind": "strings", "values": [str(v) for v in value.tolist()]}, None
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


def value_from_entry(entry: Mapping[str, Any], array: np.ndarray | None) -> Any:
    """Invert :func:`value_entry`: the value from its description and its array."""
    kind = entry["kind"]
    if kind == "none":
        return None
    if kind == "strings":
        return np.asarray(entry["values"], dtype=object)
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



# --------------------------------------------------------------------------- versions


def check_format(info: Mapping[str, Any], where: str) -> None:
    """Refuse a file without a format version, or written in a newer format than this library reads."""
    version = info.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{where} has no valid format_version ({version!r}); it was not written by dask-em")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written in format version {version} by dask-em "
            f"{info.get('library_version', '?')}; this dask-em reads versions up to {FORMAT_VERSION}. "
            "Upgrade dask-em to read it."
        )


def library_version() -> str:
    """The dask-em version recorded in every file written."""
    return __version__


def timestamp() -> str:
    """The current UTC time, as recorded in files (ISO 8601, seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

