"""A reusable contract test-suite for models and estimators of dask-em.

Any model written against :class:`dask_em.EMModel` can check itself with
one call::

    from dask_em.testing import check_model

    def test_my_model_keeps_the_contract(client):
        check_model(MyModel(), X, client=client)

and any estimator (or model) can prove that a fit killed with SIGKILL and
resumed from its checkpoint ends bit-identical to an uninterrupted one::

    from dask_em.testing import assert_resume_bit_identical

    def test_resume(client, tmp_path):
        assert_resume_bit_identical("my_tests.factories:make_estimator", X,
                                    client=client, tmp_path=tmp_path)

The checks raise ``AssertionError`` with a message saying what broke.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import math
import os
import pathlib
import pickle
import random
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .storage.location import Location
from .storage.snapshots import POINTER, CheckpointState, read_checkpoint
from .errors import ConvergenceWarning
from .contract import EMModel
from .stats import add_stats

__all__ = [
    "assert_resume_bit_identical",
    "check_additivity",
    "check_chunking_invariance",
    "check_loglik_nondecreasing",
    "check_model",
    "check_pickling",
    "check_purity",
    "check_resume_bit_identical",
    "checkpoint_progress",
    "final_snapshots",
    "split_sequences",
]


# --------------------------------------------------------------------------- helpers


def _fields(params: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if isinstance(params, tuple) and hasattr(params, "_fields"):
        return dict(zip(params._fields, params))
    if isinstance(params, Mapping):
        return dict(params)
    raise AssertionError(f"parameters must be a dataclass or NamedTuple of arrays, got {type(params).__name__}")


def _same_bits(a: Any, b: Any) -> bool:
    if _is_record(a):  # a statistic that is not a sum (e.g. k-means' farthest rows): field by field
        return type(a) is type(b) and all(_same_bits(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_block(a: Any, b: Any) -> bool:
    """Whether two blocks hold the same bits: arrays, lists of sequences, or tuples such as (values, lengths)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_block(x, y) for x, y in zip(a, b))
    if isinstance(a, list):
        return _same_bits(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    return _same_bits(a, b)


def _assert_same_bits(a: Mapping[str, Any], b: Mapping[str, Any], what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: different fields {sorted(a)} and {sorted(b)}"
    for name in a:
        if not _same_bits(a[name], b[name]):
            x, y = np.asarray(a[name]), np.asarray(b[name])
            detail = ""
            if x.shape == y.shape and x.dtype.kind == "f" and y.dtype.kind == "f":
                detail = f", largest difference {np.nanmax(np.abs(x - y)) if x.size else 0:.3g}"
            raise AssertionError(f"{what}: {name!r} is not bit-identical ({x.dtype}{x.shape} vs {y.dtype}{y.shape}{detail})")


def _is_record(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _assert_close(a: Any, b: Any, rtol: float, what: str) -> None:
    if _is_record(a):
        assert type(a) is type(b), f"{what}: a {type(a).__name__} and a {type(b).__name__}"
        for f in dataclasses.fields(a):
            _assert_close(getattr(a, f.name), getattr(b, f.name), rtol, f"{what} (field {f.name!r})")
        return
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape} differ"
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=what)


def _copy_tree(value: Any) -> Any:
    return copy.deepcopy(value)


def _split_block(block: Any) -> tuple[Any, Any]:
    if _is_sequences(block):
        return split_sequences(block)
    n = len(block)
    if n < 2:
        raise AssertionError("additivity needs a block of at least two rows or sequences")
    half = n // 2
    return block[:half], block[half:]


def _is_sequences(block: Any) -> bool:
    """Whether ``block`` is ``(values, lengths)``: whole sequences, as the HMMs' blocks are."""
    if not (isinstance(block, tuple) and len(block) == 2):
        return False
    lengths = np.asarray(block[1])
    return lengths.ndim == 1 and lengths.dtype.kind in "iu" and int(lengths.sum()) == len(block[0])


def split_sequences(block: Any) -> tuple[Any, Any]:
    """A block of whole sequences ``(values, lengths)`` as two blocks of whole sequences (for additivity)."""
    values, lengths = block
    lengths = np.asarray(lengths)
    if len(lengths) < 2:
        raise AssertionError("additivity needs a block of at least two sequences")
    half = len(lengths) // 2
    cut = int(lengths[:half].sum())
    make = type(block) if type(block) is not tuple else (lambda *parts: tuple(parts))
    return make(values[:cut], lengths[:half]), make(values[cut:], lengths[half:])


def _is_blocks(data: Any) -> bool:
    from .data import Blocks

    return isinstance(data, Blocks)


def _initial_params(model: EMModel, data: Any, params: Any, random_state: int) -> Any:
    if params is not None:
        return params
    rng = np.random.default_rng(random_state)
    if _is_blocks(data):
        assert data.array is not None, "give params= for data in blocks of sequences or groups"
        return model.init_params(data.sample(10_000, rng), rng)
    sample = np.asarray(data)
    return model.init_params(sample[: min(len(sample), 10_000)], rng)


def _first_block(data: Any, rows: int = 1000) -> Any:
    if _is_blocks(data):
        return data.compute(data.parts[0])[0]
    return np.asarray(data)[:rows] if not isinstance(data, list) else data[: max(2, min(len(data), 50))]


def _fit(model: EMModel, data: Any, params: Any, client: Any, **kwargs: Any) -> Any:
    from .engine import fit_em

    kwargs.setdefault("tol", 0.0)
    kwargs.setdefault("warn_not_converged", False)
    return fit_em(model, data, params, client=client, **kwargs)


# --------------------------------------------------------------------------- contract checks


def check_additivity(model: EMModel, block: Any, params: Any, *, rtol: float = 1e-10) -> None:
    """The statistics of a block equal the sum of those of its two halves.

    Every value ``e_step`` returns must be a sum over the block, so that
    the engine may combine blocks in any chunking. ``"n"`` must add up
    exactly and ``"n"`` and ``"loglik"`` must be present.
    """
    whole = model.e_step(block, params)
    for key in ("n", "loglik"):
        assert key in whole, f"e_step must return {key!r}; it returned {sorted(whole)}"
    first, second = _split_block(block)
    parts = add_stats(model.e_step(first, params), model.e_step(second, params))
    assert sorted(parts) == sorted(whole), f"e_step returned keys {sorted(whole)} on a block, {sorted(parts)} on halves"
    assert float(parts["n"]) == float(whole["n"]), f"'n' is {whole['n']} on the block but {parts['n']} on its halves"
    for key in whole:
        _assert_close(whole[key], parts[key], rtol, f"statistic {key!r} of a block differs from the sum over its halves (is it a mean, not a sum?)")


def check_purity(model: EMModel, block: Any, params: Any) -> None:
    """``e_step`` and ``m_step`` change neither their inputs nor the model, and are deterministic."""
    model_before = pickle.dumps(model)
    params_before = _copy_tree(_fields(params))
    block_before = _copy_tree(block)
    stats = model.e_step(block, params)
    again = model.e_step(block, params)
    for key in stats:
        assert _same_bits(stats[key], again[key]), f"e_step is not deterministic: {key!r} differs between two calls"
    _assert_same_bits(params_before, _fields(params), "e_step mutated the parameters")
    assert _same_block(block_before, block), "e_step mutated its block"
    stats_before = _copy_tree(stats)
    new = model.m_step(stats, params)
    _assert_same_bits(params_before, _fields(params), "m_step mutated the parameters it was given")
    _assert_same_bits(stats_before, stats, "m_step mutated the statistics it was given")
    assert type(new) is type(params), f"m_step returned {type(new).__name__}, expected {type(params).__name__}"
    assert pickle.dumps(model) == model_before, "e_step or m_step changed the model object"


def check_pickling(model: EMModel, params: Any, block: Any = None) -> None:
    """The model and its parameters survive pickle and cloudpickle unchanged.

    Workers receive both through serialization; with ``block`` given, the
    round-tripped model must give bit-identical statistics.
    """
    import cloudpickle

    for name, module in (("pickle", pickle), ("cloudpickle", cloudpickle)):
        model2 = module.loads(module.dumps(model))
        params2 = module.loads(module.dumps(params))
        assert type(model2) is type(model), f"{name}: the model came back as {type(model2).__name__}"
        if dataclasses.is_dataclass(model):
            assert dataclasses.asdict(model2) == dataclasses.asdict(model), f"{name}: the model configuration changed"
        _assert_same_bits(_fields(params), _fields(params2), f"{name}: the parameters changed")
        if block is not None:
            a, b = model.e_step(block, params), model2.e_step(block, params2)
            _assert_same_bits(a, b, f"{name}: e_step of the round-tripped model")


def check_loglik_nondecreasing(
    model: EMModel, data: Any, params: Any = None, *, client: Any, n_iter: int = 15, rtol: float = 1e-9,
    random_state: int = 0,
) -> list[float]:
    """EM never decreases the log-likelihood: run ``n_iter`` iterations and check.

    Returns the sequence of total log-likelihoods.
    """
    params = _initial_params(model, data, params, random_state)
    history: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the decrease is asserted below, with the values
        _fit(model, data, params, client, max_iter=n_iter, callbacks=[lambda info: history.append(info.loglik)])
    for i in range(1, len(history)):
        allowed = rtol * max(abs(history[i - 1]), 1.0)
        assert history[i] >= history[i - 1] - allowed, (
            f"the log-likelihood decreased at iteration {i + 1}: {history[i - 1]!r} -> {history[i]!r}"
        )
    return history


def check_chunking_invariance(
    model: EMModel, data: Any, params: Any = None, *, client: Any, chunk_rows: Sequence[int] | None = None,
    n_iter: int = 5, rtol: float = 1e-10, random_state: int = 0, chunkings: Sequence[Any] | None = None,
) -> None:
    """The same fit on differently chunked data agrees to ``rtol``.

    ``data`` in blocks (sequences, groups) cannot be chunked again here:
    give the same data in other blocks as ``chunkings``.
    """
    from .data import as_dask_array

    if _is_blocks(data) or chunkings is not None:
        assert chunkings, "give chunkings=: the same data in other blocks (sequences, groups are not rechunked here)"
        assert params is not None, "give params= for data in blocks"
        versions, chunk_rows = [data, *chunkings], [f"blocks {i}" for i in range(len(chunkings) + 1)]
    else:
        X = np.asarray(data)
        params = _initial_params(model, X, params, random_state)
        n = len(X)
        chunk_rows = chunk_rows or (max(1, n // 3 + 1), max(1, n // 7 + 1))
        versions = [as_dask_array(X, chunk_rows=int(r)) for r in chunk_rows]
    results = [_fit(model, version, params, client, max_iter=n_iter) for version in versions]
    first = results[0]
    for rows, other in zip(chunk_rows[1:], results[1:]):
        for name, value in _fields(first.params).items():
            _assert_close(value, _fields(other.params)[name], rtol,
                          f"parameter {name!r} after {n_iter} iterations with {chunk_rows[0]} and {rows} rows a chunk")
        _assert_close(first.history, other.history, rtol, "log-likelihood history with different chunks")


def check_resume_bit_identical(
    model: EMModel, data: Any, params: Any = None, *, client: Any, stop_at: int = 3, n_iter: int = 8,
    checkpoint: str | None = None, random_state: int = 0,
) -> None:
    """A fit stopped by an error after ``stop_at`` iterations and resumed ends bit-identical.

    The in-process counterpart of :func:`assert_resume_bit_identical`
    (no subprocess): the stop is an exception raised from a callback.
    """
    params = _initial_params(model, data, params, random_state)
    checkpoint = checkpoint or f"memory://dask-em-testing/{uuid.uuid4().hex}.zarr"

    class _Stop(Exception):
        pass

    def stop(info: Any) -> None:
        if info.iteration == stop_at:
            raise _Stop

    reference = _fit(model, data, params, client, max_iter=n_iter)
    try:
        _fit(model, data, params, client, max_iter=n_iter, checkpoint=checkpoint, callbacks=[stop])
    except _Stop:
        pass
    else:
        raise AssertionError(f"the fit finished before iteration {stop_at}; choose a smaller stop_at")
    resumed = _fit(model, data, lambda: _fail("the resumed fit initialised its parameters again"), client,
                   max_iter=n_iter, checkpoint=checkpoint, resume=True)
    assert resumed.resumed_from == stop_at, f"resumed from iteration {resumed.resumed_from}, expected {stop_at}"
    _assert_same_bits(_fields(reference.params), _fields(resumed.params), "parameters after resume")
    assert _same_bits(reference.history, resumed.history), "the log-likelihood history after resume is not bit-identical"
    with contextlib.suppress(Exception):
        Location(checkpoint).remove("")


def _fail(message: str) -> Any:
    raise AssertionError(message)


def check_model(
    model: EMModel, data: Any, params: Any = None, *, client: Any, block: Any = None, random_state: int = 0,
    rtol: float = 1e-10, n_iter: int = 8, resume: bool = True, chunkings: Sequence[Any] | None = None,
) -> None:
    """Run the whole contract suite on ``model``.

    Parameters
    ----------
    model : EMModel
        The model under test.
    data : array-like of shape (n_samples, n_features), or Blocks
        A small data set (a few thousand rows) the model accepts, or
        blocks of it (sequences, groups: see ``chunkings``).
    params : object, optional
        Parameters to test with; by default ``model.init_params`` on ``data``.
    client : distributed.Client
        Where the fits run.
    block : object, optional
        One block for the pure checks; by default the first 1000 rows (the
        first block of data in blocks). Its halves for additivity are rows,
        groups, or whole sequences for a ``(values, lengths)`` block.
    random_state : int
        Seed of the initialisation.
    rtol : float
        Tolerance of additivity and chunking invariance.
    n_iter : int
        Iterations of the fits.
    resume : bool
        Also check an in-process stop and bit-identical resume.
    chunkings : sequence, optional
        For data in blocks: the same data in other blocks, for chunking
        invariance (array data is rechunked here).
    """
    assert isinstance(model, EMModel), f"{type(model).__name__} lacks init_params, e_step or m_step"
    params = _initial_params(model, data, params, random_state)
    block = _first_block(data) if block is None else block
    check_additivity(model, block, params, rtol=rtol)
    check_purity(model, block, params)
    check_pickling(model, params, block)
    check_loglik_nondecreasing(model, data, params, client=client, n_iter=n_iter)
    check_chunking_invariance(model, data, params, client=client, n_iter=min(n_iter, 5), rtol=rtol, chunkings=chunkings)
    if resume:
        check_resume_bit_identical(model, data, params, client=client, stop_at=max(1, n_iter // 2), n_iter=n_iter)


# --------------------------------------------------------------------------- kill and resume


def checkpoint_progress(path: Any) -> int:
    """Iterations written so far at ``path``: one checkpoint or per-restart ``run-<i>`` checkpoints.

    Reads only the small pointers, so it is cheap to poll.
    """
    location = Location(path)
    total = 0
    pointer = location.read_json(POINTER)
    if isinstance(pointer, dict):
        total += int(pointer.get("iteration", 0))
    for name in location.listdir(""):
        if name.startswith("run-"):
            sub = location.read_json(f"{name}/{POINTER}")
            if isinstance(sub, dict):
                total += int(sub.get("iteration", 0))
    return total


def final_snapshots(path: Any) -> dict[str, CheckpointState]:
    """The latest snapshot of a checkpoint, and of each of its ``run-<i>`` restarts, by name."""
    location = Location(path)
    out = {}
    if location.read_json(POINTER) is not None:
        out[""] = read_checkpoint(path)
    for name in location.listdir(""):
        if name.startswith("run-") and location.read_json(f"{name}/{POINTER}") is not None:
            out[name] = read_checkpoint(f"{location.url.rstrip('/')}/{name}")
    return out


def _factory_spec(factory: Callable[[], Any] | str) -> str:
    if isinstance(factory, str):
        if ":" not in factory:
            raise ValueError(f"factory must be 'module:function', got {factory!r}")
        return factory
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise ValueError(
            "the factory must be a module-level function importable by a subprocess; "
            "pass it as 'module:function'"
        )
    return f"{module}:{name}"


def _load_factory(spec: str) -> Callable[[], Any]:
    module, _, name = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _run_fit(obj: Any, data: str, checkpoint: str, fit_kwargs: Mapping[str, Any], client: Any) -> dict[str, Any]:
    """Fit a model (through fit_em) or an estimator; return what must be reproduced exactly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # the resumed fit takes over the lease of the fit that was killed
        warnings.filterwarnings("ignore", message=r".*taking over the lease", category=UserWarning)
        if hasattr(obj, "e_step"):
            kwargs = {"max_iter": 10, "tol": 0.0, "random_state": 0, **fit_kwargs}
            result = _fit(obj, data, None, client, checkpoint=checkpoint, **kwargs)
            out = {f"params.{k}": v for k, v in _fields(result.params).items()}
            out["history"] = np.array(result.history)
            out["n_iter"] = result.n_iter
            out["_resumed_from"] = result.resumed_from
            return out
        with client.as_current() if client is not None else contextlib.nullcontext():
            obj.fit(data, checkpoint=checkpoint, **fit_kwargs)
        # passes are what this run read, not what the fit is: a resumed fit reads fewer
        return {k: v for k, v in obj.fitted_state().items() if k != "n_passes_"}


def _block_after_snapshot(root: str, kill_after: int, ready: str) -> None:
    """Make this process stop for good once ``root`` holds ``kill_after`` iterations.

    The snapshot writer, right after moving a pointer, checks the progress;
    at the kill point it writes ``ready`` (the progress, for the parent to
    check) and waits forever, so every later write, and the end of the
    fit, waits too. The parent kills the process when ``ready`` appears:
    the kill point is where the child stands, never a race against a timer.
    """
    from .storage import checkpoint as ckpt

    write = ckpt.Checkpoint._write

    def write_then_block(self: Any, *args: Any) -> None:
        write(self, *args)
        progress = checkpoint_progress(root)
        if progress >= kill_after:
            tmp = f"{ready}.tmp"
            pathlib.Path(tmp).write_text(str(progress))
            os.replace(tmp, ready)
            threading.Event().wait()  # until SIGKILL

    ckpt.Checkpoint._write = write_then_block  # type: ignore[method-assign]


def _child_main(payload: str | None = None, log_path: str | None = None) -> None:
    """Entry point of the subprocess: run one checkpointed fit until it is killed."""
    if log_path is not None:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
    from distributed import Client

    spec = json.loads(payload if payload is not None else sys.argv[1])
    _block_after_snapshot(spec["checkpoint"], spec["kill_after"], spec["ready"])
    with Client(spec["scheduler"], set_as_default=False) as client:
        obj = _load_factory(spec["factory"])()
        _run_fit(obj, spec["data"], spec["checkpoint"], spec["fit_kwargs"], client)


def _warm_up_children() -> None:
    import multiprocessing
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(["dask_em.testing", "distributed"])
    multiprocessing.forkserver.ensure_running()


def _start_child(payload: str, log_path: str) -> Any:
    """Start the fit in a new process.

    The processes fork from a server that has already imported dask-em
    and distributed, so each starts in a fraction of a second instead of
    paying the imports again; each is still a separate process that
    SIGKILL ends at once.
    """
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dask_em.testing", "distributed"])
    process = context.Process(target=_child_main, args=(payload, log_path), name="dask-em-resume-test")
    process.start()
    return process


def write_data(X: Any, path: Any, chunk_rows: int | None = None) -> str:
    """Write a 2-D array to a Zarr array at ``path`` with ``chunk_rows`` rows a chunk."""
    import zarr

    X = np.asarray(X)
    rows = chunk_rows or max(1, math.ceil(len(X) / 4))
    target = zarr.create_array(str(path), shape=X.shape, chunks=(rows, *X.shape[1:]), dtype=X.dtype, overwrite=True)
    target[...] = X
    return str(path)


def assert_resume_bit_identical(
    factory: Callable[[], Any] | str,
    X: Any,
    *,
    client: Any,
    tmp_path: Any,
    fit_kwargs: Mapping[str, Any] | None = None,
    kill_after: Sequence[int] | None = None,
    n_kills: int = 3,
    chunk_rows: int | None = None,
    seed: int | None = None,
    timeout: float = 120.0,
) -> list[dict[str, int]]:
    """Kill a checkpointed fit with SIGKILL at several points, resume it, compare bits.

    A reference fit runs in this process. Then, for each kill point, a
    subprocess starts the same fit with a checkpoint on the same Dask
    cluster; right after the snapshot that brings its checkpoint to that
    many iterations, the subprocess stops itself (its snapshot writer
    waits forever) and says so in a file; then it is killed with SIGKILL.
    The kill point is thus where the child stands, never a timer it could
    outrun, and the harness cannot flake on timing.
    The fit is then resumed here, and its final checkpoint (parameters,
    log-likelihood history, iteration, convergence) and fitted state must
    be bit-identical to the reference.

    Parameters
    ----------
    factory : callable or str
        A module-level function of no arguments (or ``"module:function"``)
        returning a fresh estimator (anything with ``fit(X, checkpoint=...)``
        and ``fitted_state()``) or a model (fitted with :func:`dask_em.fit_em`).
        It must be importable by the subprocess.
    X : array-like of shape (n_samples, n_features)
        Data, written to a Zarr array that both processes read.
    client : distributed.Client
        The cluster both processes use.
    tmp_path : path
        A directory for the data and checkpoints.
    fit_kwargs : dict, optional
        Extra keyword arguments of ``fit`` (estimators) or of ``fit_em``
        (models: ``max_iter``, ``tol``, ``random_state``, ...).
    kill_after : sequence of int, optional
        Iterations after which to kill; by default ``n_kills`` distinct
        random ones, leaving at least one iteration to run after the kill.
    n_kills : int
        Number of random kill points when ``kill_after`` is not given.
    chunk_rows : int, optional
        Rows per chunk of the stored data (default: four chunks).
    seed : int, optional
        Seed of the random kill points.
    timeout : float
        Seconds to wait for a subprocess to reach its kill point (it fails
        the assertion, with the subprocess's output, when exceeded).

    Returns
    -------
    list of dict
        For each kill point: ``kill_after`` and ``killed_at`` (the iteration
        of the checkpoint left behind).
    """
    fit_kwargs = dict(fit_kwargs or {})
    spec = _factory_spec(factory)
    tmp = pathlib.Path(tmp_path)
    tmp.mkdir(parents=True, exist_ok=True)
    data = write_data(X, tmp / "data.zarr", chunk_rows)
    make = _load_factory(spec)

    _warm_up_children()  # the process server imports while the reference fit runs
    reference_path = str(tmp / "reference.zarr")
    reference = _run_fit(make(), data, reference_path, fit_kwargs, client)
    reference.pop("_resumed_from", None)
    reference_snapshots = final_snapshots(reference_path)
    total = sum(s.iteration for s in reference_snapshots.values())
    rng = random.Random(seed)
    if kill_after is None:
        if total < n_kills + 1:
            raise AssertionError(
                f"the reference fit ran only {total} iterations; {n_kills} kill points need at least {n_kills + 1} "
                "(raise max_iter, lower tol)"
            )
        kill_after = sorted(rng.sample(range(1, total), n_kills))
    scheduler = client.scheduler.address

    children = []
    for k in kill_after:
        path = str(tmp / f"killed-after-{k}.zarr")
        ready = str(tmp / f"killed-after-{k}.ready")
        payload = json.dumps({"factory": spec, "data": data, "checkpoint": path, "fit_kwargs": fit_kwargs,
                              "scheduler": scheduler, "kill_after": k, "ready": ready})
        log = str(tmp / f"killed-after-{k}.log")
        children.append({"k": k, "path": path, "process": _start_child(payload, log), "log": log,
                         "ready": ready, "killed_at": None})
    try:
        start = time.monotonic()
        pending = list(children)
        while pending:
            for child in list(pending):
                process = child["process"]
                if os.path.exists(child["ready"]):  # it waits for us at its kill point
                    os.kill(process.pid, signal.SIGKILL)
                    process.join(timeout=30)
                    child["killed_at"] = checkpoint_progress(child["path"])
                    stood = int(pathlib.Path(child["ready"]).read_text())
                    assert child["killed_at"] == stood, (
                        f"the checkpoint of the fit killed after iteration {child['k']} holds "
                        f"{child['killed_at']} iterations, but it stopped at {stood}"
                    )
                    pending.remove(child)
                elif not process.is_alive():
                    text = pathlib.Path(child["log"]).read_text(errors="replace")[-3000:] if os.path.exists(child["log"]) else ""
                    raise AssertionError(
                        f"the fit to be killed after iteration {child['k']} exited with code "
                        f"{process.exitcode} before reaching its kill point:\n{text}"
                    )
            if time.monotonic() - start > timeout:
                raise AssertionError(f"no subprocess reached its kill point within {timeout} s")
            time.sleep(0.01)
    finally:
        for child in children:
            if child["process"].is_alive():
                os.kill(child["process"].pid, signal.SIGKILL)
            child["process"].join(timeout=30)

    report = []
    for child in children:
        resumed = _run_fit(make(), data, child["path"], fit_kwargs, client)
        resumed_from = resumed.pop("_resumed_from", None)
        if resumed_from is not None and child["killed_at"]:
            assert resumed_from == child["killed_at"], (
                f"resumed from iteration {resumed_from}, but the killed fit left {child['killed_at']}"
            )
        where = f"kill after iteration {child['k']} (checkpoint at {child['killed_at']})"
        _assert_same_bits(reference, resumed, f"{where}: fitted state")
        snapshots = final_snapshots(child["path"])
        assert sorted(snapshots) == sorted(reference_snapshots), f"{where}: restarts {sorted(snapshots)} vs {sorted(reference_snapshots)}"
        for name, ref in reference_snapshots.items():
            got = snapshots[name]
            label = f"{where}{' ' + name if name else ''}"
            assert got.iteration == ref.iteration, f"{label}: {got.iteration} iterations, reference {ref.iteration}"
            assert got.converged == ref.converged, f"{label}: converged={got.converged}, reference {ref.converged}"
            assert _same_bits(got.history, ref.history), f"{label}: the log-likelihood history is not bit-identical"
            _assert_same_bits(ref.arrays, got.arrays, f"{label}: parameters")
        report.append({"kill_after": child["k"], "killed_at": int(child["killed_at"] or 0)})
    return report
