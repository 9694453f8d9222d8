"""Zarr checkpoints: snapshots that survive a crash, and exact resume.

A snapshot is written under a fresh prefix; only when all of it is written
does the pointer move to it, and only then are older snapshots pruned. A
crash at any moment therefore leaves the pointer on a complete snapshot
(the layout is described in :mod:`.snapshots`). A writer holds a
:class:`~dask_em.storage.lease.Lease`. What a file may hold, and how it is
checked, is :mod:`.format`'s. Nothing is ever unpickled, and a checkpoint
cannot make Python run new code.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import secrets
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .format import ATTR_KEY, FORMAT_VERSION, check_format, checksum, dotted, library_version, normalise, short
from .format import timestamp, to_jsonable, value_entry, write_arrays
from .lease import LEASE, Lease
from .location import Location
from .snapshots import (
    POINTER,
    SNAPSHOT_NAME,
    CheckpointState,
    latest_state,
    model_record,
    params_entries,
    rebuild_params,
    snapshot_path,
)

logger = logging.getLogger("dask_em")

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

#: Checkpoints open in this process, by URL: a new fit on the same URL first
#: waits for the last write of an earlier one (e.g. one stopped by an error).
_OPEN: weakref.WeakValueDictionary[str, Checkpoint] = weakref.WeakValueDictionary()


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
            The data fingerprint (see :func:`~dask_em.storage.snapshots.data_fingerprint`); must match.
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
            is taken over (default :data:`~dask_em.storage.lease.LEASE_TIMEOUT`).

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
            "model": model_record(model),
            "fingerprint": normalise(fingerprint or {}),
            "meta": normalise(meta or {}),
            "settings": normalise(settings or {}),
            "monitor": normalise(monitor or {}),
            "rng_state": normalise(rng_state),
        }
        root = location.group_attrs()
        if root is not None:
            if root.get("kind") != "checkpoint":
                raise CheckpointError(
                    f"{location.url} holds a dask-em {root.get('kind', 'object')}, not a checkpoint; "
                    "choose another checkpoint path"
                )
            check_format(root, f"checkpoint {location.url}")
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
        state.params = rebuild_params(state.info, state.arrays, f"snapshot {state.path}", trusted)
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
        params_class, fields, arrays = params_entries(params)
        state_fields = {}
        for name, value in (state or {}).items():
            entry, array = value_entry(value, f"engine state {name!r}")
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
                                           "library_version": library_version(), "created": timestamp()}})
            self._root_written = True
        iteration = int(history.shape[0])
        prefix = f"snapshots/{iteration:06d}-{secrets.token_hex(4)}"
        info = {
            "kind": "snapshot",
            "format_version": FORMAT_VERSION,
            "library_version": library_version(),
            "created": timestamp(),
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
                if SNAPSHOT_NAME.fullmatch(name) and f"snapshots/{name}" not in kept
            ]
            self._cleaned = True
        for old in dropped:
            location.remove(snapshot_path(old, f"checkpoint {location.url}"))

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
                f"model class: {dotted(stored_model.get('class') or {})} in the checkpoint, "
                f"{dotted(live_model['class'])} now"
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


def _differences(stored: Any, live: Any, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(live, dict) and not any(k.startswith("__") for k in stored):
        out = []
        for key in sorted(set(stored) | set(live)):
            where = f"{path}.{key}" if path else key
            if key not in stored:
                out.append(f"{where}: absent in the checkpoint, {short(live[key])} now")
            elif key not in live:
                out.append(f"{where}: {short(stored[key])} in the checkpoint, absent now")
            else:
                out.extend(_differences(stored[key], live[key], where))
        return out
    if stored != live:
        return [f"{path or 'value'}: {short(stored)} in the checkpoint, {short(live)} now"]
    return []

