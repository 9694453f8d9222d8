"""Saving and loading fitted estimators, in the checkpoint format family.

A saved model is a Zarr group (local path or fsspec URL)::

    model.zarr/
      zarr.json          attributes {"dask_em": {"kind": "model", "estimator": ..., "config": ...,
                                                 "fitted": {name: description}, ...}}
      fitted/<name>      one array per fitted attribute

The root attributes are written last, so a save interrupted half-way is
not mistaken for a model. Nothing is pickled; the estimator class must be
one of dask-em's own or registered with
:func:`dask_em.register_class`, and its configuration and
fitted values are checked as a fit checks them
(:func:`dask_em.storage.format.estimator_from_record`). This module uses
only the public names of the format, location and snapshot layers.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import CheckpointError, NotFittedError
from .format import (
    ATTR_KEY,
    FORMAT_VERSION,
    check_format,
    check_values,
    class_name,
    estimator_from_record,
    library_version,
    read_checked_array,
    timestamp,
    to_jsonable,
    value_entry,
    value_from_entry,
    write_arrays,
)
from .location import Location
from .snapshots import POINTER, latest_state

__all__ = ["describe", "load", "save"]


def save(estimator: Any, path: Any, *, overwrite: bool = False, storage_options: dict[str, Any] | None = None) -> None:
    """Save a fitted estimator to a Zarr group.

    Parameters
    ----------
    estimator : EMEstimator
        A fitted dask-em estimator.
    path : str or os.PathLike
        Local path or fsspec URL (``s3://bucket/model.zarr``).
    overwrite : bool
        Replace a model already saved at ``path``.
    storage_options : dict, optional
        fsspec options for URLs.

    Raises
    ------
    NotFittedError
        When the estimator has no fitted attributes.
    CheckpointError
        When ``path`` holds something else, or a model and ``overwrite`` is False.
    """
    import zarr

    state = estimator.fitted_state() if hasattr(estimator, "fitted_state") else {}
    if not state:
        raise NotFittedError(f"this {type(estimator).__name__} instance is not fitted yet; call 'fit' before 'save'")
    location = Location(path, storage_options)
    existing = location.group_attrs()
    if existing is not None or location.exists():
        if existing is None or existing.get("kind") != "model":
            raise CheckpointError(f"{location.url} exists and is not a saved dask-em model; choose another path")
        if not overwrite:
            raise CheckpointError(f"a model is already saved at {location.url}; pass overwrite=True to replace it")
        location.remove("")
    fitted, arrays = {}, {}
    for name, value in state.items():
        entry, array = value_entry(value, f"fitted attribute {name!r}")
        fitted[name] = entry
        if array is not None:
            arrays[f"fitted/{name}"] = array
    get_params = getattr(estimator, "get_params", None)
    info = {
        "kind": "model",
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "created": timestamp(),
        "estimator": class_name(type(estimator)),
        "config": to_jsonable(get_params() if get_params else {}),
        "fitted": fitted,
    }
    info = json.loads(json.dumps(to_jsonable(info)))
    root = zarr.open_group(location.store, mode="a")
    write_arrays(root, arrays)
    root.attrs.put({ATTR_KEY: info})  # last: only a complete save is a model


def load(path: Any, *, storage_options: dict[str, Any] | None = None) -> Any:
    """Load an estimator saved with :func:`save`; it is fitted and predicts.

    Raises
    ------
    CheckpointError
        When ``path`` holds no complete model, a damaged one, one written
        by a newer dask-em, or one naming a class that is not allowed.
    """
    import zarr

    location = Location(path, storage_options)
    info = location.group_attrs()
    if info is None or info.get("kind") != "model":
        what = "a checkpoint (resume it with fit(..., checkpoint=...))" if info else "no complete saved model"
        raise CheckpointError(f"{location.url} holds {what}; load needs a model written by dask_em.save")
    check_format(info, f"model {location.url}")
    try:
        cls_name, config, fitted = info["estimator"], info["config"], dict(info["fitted"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"model {location.url} lacks the key {exc}; it is damaged") from None
    estimator = estimator_from_record(cls_name, config, where=f"model {location.url}")
    try:
        group = zarr.open_group(location.store, mode="r")
    except Exception as exc:
        raise CheckpointError(f"model {location.url} cannot be opened ({type(exc).__name__}: {exc})") from None
    where = f"model {location.url}"
    values = {}
    for name, entry in fitted.items():
        if not (isinstance(name, str) and name.endswith("_") and name.isidentifier()) or not isinstance(entry, dict) or "kind" not in entry:
            raise CheckpointError(f"{where}: the fitted attribute {name!r} is damaged")
        if entry["kind"] not in ("none", "strings", "array", "numpy_scalar", "list", "bool", "int", "float"):
            raise CheckpointError(f"{where}: the fitted attribute {name!r} has unknown kind {entry['kind']!r}")
        # text is only ever column names: any other attribute given as text is crafted
        if entry["kind"] == "strings" and not (
            name == "feature_names_in_"
            and isinstance(entry.get("values"), list) and all(isinstance(v, str) for v in entry["values"])
        ):
            raise CheckpointError(f"{where}: the fitted attribute {name!r} is damaged")
        stored = entry["kind"] not in ("none", "strings")
        array = read_checked_array(group, f"fitted/{name}", entry, where) if stored else None
        values[name] = value_from_entry(entry, array)
    check_values(values, where)  # before any of it reaches the estimator
    for name, value in values.items():
        setattr(estimator, name, value)
    restore = getattr(estimator, "_after_load", None)
    if callable(restore):
        restore()
    return estimator


def describe(path: Any, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint or a saved model holds, as a JSON-able dict.

    Keys: ``kind`` ("checkpoint", "model" or "runs"), ``path``, ``model``
    (class), ``estimator`` (class or None), ``config``, ``iteration``,
    ``loglik``, ``converged``, ``fingerprint``, ``format_version``,
    ``library_version``, ``created``; for a fit with several restarts
    (``run-<i>`` sub-checkpoints) ``runs`` lists one such dict per restart.

    Raises
    ------
    CheckpointError
        When ``path`` holds neither.
    """
    location = Location(path, storage_options)
    info = location.group_attrs()
    if info is not None and info.get("kind") == "model":
        check_format(info, f"model {location.url}")
        fitted = info.get("fitted") or {}
        scalars = {}
        if any(k in fitted for k in ("n_iter_", "lower_bound_", "converged_")):
            estimator = load(path, storage_options=storage_options)
            scalars = {k: getattr(estimator, k, None) for k in ("n_iter_", "lower_bound_", "converged_")}
        estimator_name = info.get("estimator") or {}
        return {
            "kind": "model",
            "path": location.url,
            "model": f"{estimator_name.get('module')}.{estimator_name.get('qualname')}",
            "estimator": f"{estimator_name.get('module')}.{estimator_name.get('qualname')}",
            "config": info.get("config"),
            "iteration": _plain(scalars.get("n_iter_")),
            "loglik": _plain(scalars.get("lower_bound_")),
            "converged": _plain(scalars.get("converged_")),
            "fitted": sorted(fitted),
            "fingerprint": info.get("fingerprint"),
            "format_version": info.get("format_version"),
            "library_version": info.get("library_version"),
            "created": info.get("created"),
        }
    found = latest_state(location) if info is not None else None
    if found is not None:
        state, snapshots = found
        model = state.info.get("model") or {}
        meta = state.info.get("meta") or {}
        model_class = model.get("class") or {}
        return {
            "kind": "checkpoint",
            "path": location.url,
            "model": f"{model_class.get('module')}.{model_class.get('qualname')}",
            "estimator": meta.get("estimator"),
            "config": meta.get("config", model.get("config")),
            "source": meta.get("source"),
            "model_config": model.get("config"),
            "iteration": state.iteration,
            "loglik": state.history[-1] if state.history else None,
            "converged": state.converged,
            "history": state.history,
            "fingerprint": state.fingerprint,
            "settings": state.info.get("settings"),
            "monitor": state.info.get("monitor"),
            "snapshots": snapshots,
            "format_version": state.info.get("format_version"),
            "library_version": state.info.get("library_version"),
            "created": state.info.get("created"),
        }
    runs = [name for name in location.listdir("") if name.startswith("run-") and location.read_json(f"{name}/{POINTER}")]
    if runs:
        described = [describe(f"{location.url.rstrip('/')}/{name}", storage_options=storage_options) for name in runs]
        best = max(described, key=lambda d: -np.inf if d["loglik"] is None else d["loglik"])
        return {**{k: v for k, v in best.items() if k != "path"}, "kind": "runs", "path": location.url,
                "best_run": runs[described.index(best)], "runs": described}
    raise CheckpointError(f"{location.url} holds neither a dask-em checkpoint nor a saved model")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
