"""Snapshots of a fit as they are read back: the pointer, verified snapshots, the data fingerprint.

Layout of a checkpoint (a Zarr group at a local path or any fsspec URL)::

    fit.zarr/
      zarr.json                  group; attributes {"dask_em": {"kind": "checkpoint", ...}}
      latest.json                the pointer: which snapshot is current (written last)
      lease.json                 which process writes now (see :mod:`.lease`)
      snapshots/
        000011-3fa9c2d1/         one snapshot, never overwritten
          zarr.json              attributes: iteration, model class and config,
                                 estimator meta, data fingerprint, checksums, ...
          params/<field>         one array per field of the parameter dataclass
          history                monitored log-likelihood per iteration (float64)
        000012-81be07aa/

Names in the pointer are confined to ``snapshots/`` (:func:`snapshot_path`);
every array is checked against its checksum and every value by
:func:`~dask_em.storage.format.check_values` before a fit sees it.
Writing snapshots is :mod:`.checkpoint`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .format import (
    check_format,
    check_values,
    checksum,
    class_name,
    dotted,
    normalise,
    read_checked_array,
    resolve_class,
    value_entry,
    value_from_entry,
)
from .location import Location

#: Name of the pointer object at the root of a checkpoint.
POINTER = "latest.json"
#: The only names a snapshot may have, under ``snapshots/`` (checked with fullmatch).
SNAPSHOT_NAME = re.compile(r"[0-9]{6,}-[0-9a-f]{8}")
_SNAPSHOT_PATH = re.compile(r"snapshots/[0-9]{6,}-[0-9a-f]{8}")


def snapshot_path(value: Any, where: str) -> str:
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



# --------------------------------------------------------------------------- fingerprint


def hash_block(block: Any) -> str:
    """The content hash of one block of data (compared on resume)."""
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
        tasks = [dask.delayed(hash_block, pure=True)(p) for p in chosen]
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


def params_entries(params: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, np.ndarray]]:
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
        entry, array = value_entry(value, f"parameter {name!r}")
        fields[name] = entry
        if array is not None:
            arrays[name] = np.array(array, copy=True)  # the fit goes on while this is written
    return class_name(cls), fields, arrays


def rebuild_params(info: Mapping[str, Any], arrays: dict[str, np.ndarray], where: str,
                    trusted_module: str | None = None) -> Any:
    spec = info.get("params") or {}
    cls = resolve_class(spec.get("class"), what="parameter class", trusted_module=trusted_module)
    fields = spec.get("fields") or {}
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
        names = list(cls._fields)
    else:
        raise CheckpointError(f"{where}: the parameter class {dotted(class_name(cls))} is not a dataclass")
    if sorted(names) != sorted(fields):
        raise CheckpointError(
            f"{where}: the parameter class {dotted(class_name(cls))} has fields {sorted(names)}, "
            f"the snapshot holds {sorted(fields)}"
        )
    values = {name: value_from_entry(fields[name], arrays.get(name)) for name in names}
    try:
        return cls(**values)
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot rebuild {dotted(class_name(cls))}: {exc}") from None


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
    prefix = snapshot_path(prefix, where)
    info = location.group_attrs(prefix)
    if info is None:
        raise CheckpointError(f"{where} is missing or is not a dask-em snapshot")
    check_format(info, where)
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
        state[name] = value_from_entry(entry, array)
    check_values(arrays, where)
    params = rebuild_params(info, arrays, where, trusted_module) if rebuild else None
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
    check_format(pointer, where)
    if not isinstance(pointer.get("latest"), str) or not isinstance(pointer.get("snapshots"), list):
        raise CheckpointError(f"{where}: {POINTER} lacks 'latest' or 'snapshots'; it is damaged")
    for name in [pointer["latest"], *pointer["snapshots"]]:
        snapshot_path(name, where)
    return pointer


def _snapshots_on_disk(location: Location) -> list[str]:
    """The snapshot prefixes present, oldest first (by iteration, then name)."""
    names = [n for n in location.listdir("snapshots") if SNAPSHOT_NAME.fullmatch(n)]
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
            state.params = rebuild_params(state.info, state.arrays, f"snapshot {state.path}", trusted_module)
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
    :func:`~dask_em.storage.format.from_jsonable`; nothing when ``resume`` is
    False or ``path`` holds no readable checkpoint (the fit then starts
    afresh, and :func:`dask_em.fit_em` reports any other problem with ``path``).
    """
    from .format import from_jsonable

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


def model_record(model: Any) -> dict[str, Any]:
    if model is None:
        return {"class": None, "config": None}
    config = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else {}
    return {"class": class_name(type(model)), "config": normalise(config)}


