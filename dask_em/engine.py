"""The EM loop: one pass over the data (one ``compute``) per iteration.

Each iteration maps ``model.e_step`` over the blocks, combines the
per-block statistics in a tree with a fixed pairing order, and runs
``model.m_step`` on the client.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from .data import Blocks, computed_values, prepare_blocks
from .executor import compute, local_map, retry_lost, where
from .errors import DaskEMError, InvalidDataError
from .contract import EMModel, Stats, hooks
from .monitor import ConvergenceMonitor, count_pass
from .stats import TreeSum, add_stats, tree_reduce


@dataclass
class IterationInfo:
    """What a callback learns after each iteration.

    Attributes
    ----------
    iteration : int
        1-based number of the iteration just finished.
    loglik : float
        Total log-likelihood of the data under the parameters that entered
        the iteration.
    value : float
        The monitored value (``loglik`` per sample or in total).
    change : float
        Change of ``value`` from the previous iteration (inf at the first).
    seconds : float
        Wall time of the iteration.
    params : object
        The parameters after this iteration's M-step.
    max_iter : int
        The iteration limit of the fit.
    """

    iteration: int
    loglik: float
    value: float
    change: float
    seconds: float
    params: Any
    max_iter: int


@dataclass
class EMResult:
    """The outcome of :func:`fit_em`.

    Attributes
    ----------
    params : object
        Fitted parameters (after the last M-step).
    converged : bool
        Whether the change fell below ``tol`` before ``max_iter``.
    n_iter : int
        Number of iterations run (including any before a resume).
    history : list of float
        Monitored value at each iteration.
    n_samples : int
        Number of observations in the data.
    resumed_from : int
        Iteration a checkpoint resumed from (0 for a fresh fit).
    n_passes : int
        Passes over the data this call made (one per E-step, two for a model
        with a ``prepare_e_step`` pass such as segmented HMMs; with
        acceleration, extrapolated points the safeguard refused count too).
    """

    params: Any
    converged: bool
    n_iter: int
    history: list[float]
    n_samples: int
    resumed_from: int = 0
    n_passes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lower_bound(self) -> float:
        """The last monitored value (scikit-learn's ``lower_bound_``)."""
        return self.history[-1] if self.history else -math.inf


#: Key under which :func:`expected_stats` returns per-block content hashes when asked.
BLOCK_HASHES = "block_hashes"

#: E-step tasks per pass for each thread of the cluster (``dask-em.tasks-per-thread``
#: in ``dask.config`` overrides it): enough to balance the load, few enough that
#: scheduling them costs little next to reading the data.
TASKS_PER_THREAD = 4


def _add_hashed(*parts: tuple[Stats, dict[int, str]]) -> tuple[Stats, dict[int, str]]:
    """:func:`add_stats` in the same order, carrying the block hashes along."""
    hashes: dict[int, str] = {}
    for _, h in parts:
        hashes.update(h)
    return add_stats(*[stats for stats, _ in parts]), hashes


def expected_stats(
    model: EMModel,
    blocks: Blocks,
    params: Any,
    client: Any,
    split_every: int = 8,
    hash_blocks: bool = False,
    finite: bool = True,
) -> Stats:
    """One pass over the data: the summed E-step statistics under ``params``.

    The model and the parameters each enter the graph once, as one key;
    the per-block results are summed in groups of ``split_every`` in block
    order, so the result is the same whichever worker runs which task.
    In-memory blocks lost with a worker are scattered again (in place,
    through ``blocks.rebuild``) and the pass is redone: bit-identical, the
    E-step is pure. A worker the scheduler has not yet seen die may take
    some again, hence a few attempts.
    Each task streams a run of consecutive blocks (:func:`run_length`: a
    few tasks per thread of the cluster, however many blocks there are),
    reading one block at a time and summing the run exactly as the tree
    would, so the result does not depend on the run length.
    With ``hash_blocks``, each E-step task also hashes the block it read,
    and the result holds the list of hashes, in block order, under
    :data:`BLOCK_HASHES` (checkpoints compare them on resume).
    Without a client, blocks already in this process's memory are mapped on
    its thread pool and summed by the same tree without building a graph.

    The result is bit-identical for the same blocks, ``split_every``,
    parameters and library versions wherever it runs, provided the E-step's
    machine code is the same: numba compiles the kernels for the CPU they
    run on, and kernels compiled with ``fastmath`` reassociation (GMM
    responsibilities, HMM emissions) or BLAS kernels chosen per CPU may
    order additions differently on another CPU kind. Workers of mixed CPU
    kinds agree to rounding; ``NUMBA_CPU_NAME=generic`` and one
    ``OPENBLAS_CORETYPE`` everywhere make them agree bit for bit.
    With ``finite=False`` a non-finite log-likelihood is returned rather
    than raised (an extrapolated point that the safeguard will refuse).
    """
    count_pass()
    return retry_lost(blocks, lambda: _one_pass(model, blocks, params, client, split_every, hash_blocks, finite))


def _one_pass(
    model: EMModel, blocks: Blocks, params: Any, client: Any, split_every: int, hash_blocks: bool, finite: bool
) -> Stats:
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    if client is None and not hash_blocks:
        values = computed_values(blocks.parts)
        per_block = None if values is None else local_map(lambda block: model.e_step(block, params), values)
        if per_block is not None:  # the same tree, without building a graph
            return _checked(model, tree_reduce(per_block, split_every), params, finite)
    model_d = dask.delayed(model, traverse=False)
    params_d = dask.delayed(params, traverse=False)
    length = run_length(len(blocks.parts), split_every, _n_threads(client))
    level = [
        dask.delayed(_run_e_steps, pure=True)(model_d, params_d, run, split_every, hash_blocks, *needs)
        for run, needs in _block_runs(blocks, length)
    ]
    combine = _add_hashed if hash_blocks else add_stats
    while len(level) > 1:
        level = [
            dask.delayed(combine, pure=True)(*level[i : i + split_every])
            for i in range(0, len(level), split_every)
        ]
    try:
        (stats,) = compute(client, level[0])
    except RuntimeError as exc:
        if client is None:
            raise
        if "deserializ" not in str(exc):
            raise
        module = type(model).__module__
        first = str(exc).split(". ")[0]
        raise DaskEMError(
            f"the Dask scheduler or workers could not load the task graph ({exc.__class__.__name__}: "
            f"{first}). The model class {type(model).__name__} comes from module "
            f"{module!r}: the cluster must be able to import it (install it there, or send it with "
            f"client.upload_file('{module.replace('.', '/')}.py')), and run the same dask-em, dask and "
            "numpy versions as this client."
        ) from exc
    if hash_blocks:
        stats, hashes = stats
        hashes = [hashes[i] for i in range(len(blocks.parts))]
        return {**_checked(model, stats, params, finite), BLOCK_HASHES: hashes}
    return _checked(model, stats, params, finite)


def map_parts(func: Callable[..., Any], blocks: Blocks, client: Any, *args: Any, index: bool = False) -> list[Any]:
    """``[func(block, *args) for block in blocks]`` (with the block's index last when ``index``).

    Each argument enters a Dask graph once; blocks already in this process's
    memory are mapped on its thread pool without a graph (see
    :func:`dask_em.executor.local_map`).
    """
    count_pass()
    where_ = client if client is not None else blocks.client
    if where_ is None:
        values = computed_values(blocks.parts)
        if values is not None:
            out = local_map(lambda item: func(item[1], *args, *((item[0],) if index else ())), list(enumerate(values)))
            if out is not None:
                return out
    args_d = [dask.delayed(a, traverse=False) for a in args]

    def run() -> list[Any]:  # built from the blocks' current parts: a retry sees rebuilt ones
        tasks = [
            dask.delayed(func, pure=True)(part, *args_d, *((i,) if index else ()))
            for i, part in enumerate(blocks.parts)
        ]
        return list(compute(where_, *tasks))

    return retry_lost(blocks, run)


def iteration_stats(
    model: EMModel, blocks: Blocks, params: Any, client: Any, split_every: int = 8, hash_blocks: bool = False,
    finite: bool = True,
) -> tuple[Stats, int]:
    """The E-step statistics of one iteration and the number of passes over the data it took.

    The model's ``prepare_e_step(params, run_pass)`` hook
    (:class:`dask_em.contract.ModelHooks`) is called first:
    it may run passes of its own through ``run_pass(pass_model,
    pass_params)`` (each one compute over the same blocks, summed in the
    same tree) and returns the parameters the E-step pass is given. A
    segmented HMM computes its segments' transfer operators this way.
    ``hash_blocks`` and ``finite`` apply to the E-step pass (see :func:`expected_stats`).
    """
    passes = 0

    def run_pass(pass_model: Any, pass_params: Any, hash_blocks: bool = False, finite: bool = True) -> Stats:
        nonlocal passes
        passes += 1
        return expected_stats(pass_model, blocks, pass_params, client, split_every, hash_blocks=hash_blocks,
                              finite=finite)

    e_params = hooks(model).prepare_e_step(params, run_pass)
    return run_pass(model, e_params, hash_blocks, finite), passes


def run_length(n_blocks: int, split_every: int, n_threads: int) -> int:
    """Blocks per E-step task: a power of ``split_every`` chosen from the threads, not the data.

    The largest ``split_every ** j`` that still leaves at least
    :data:`TASKS_PER_THREAD` tasks per thread (1 when there are fewer
    blocks than that). Between that many and ``split_every`` times as many
    tasks run per pass, however many blocks the data has. A run of
    ``split_every ** j`` aligned blocks is exactly one node of the tree of
    sums, so the task computes that node with the same pairing and order
    and the result does not depend on the run length.

    Parameters
    ----------
    n_blocks : int
        Blocks in the data.
    split_every : int
        Fan-in of the tree of sums.
    n_threads : int
        Threads that run tasks (the cluster's, or this process's).

    Returns
    -------
    int
    """
    per_thread = float(dask.config.get("dask-em.tasks-per-thread", TASKS_PER_THREAD))
    target = max(1.0, per_thread * max(1, n_threads))
    length = 1
    while math.ceil(n_blocks / (length * split_every)) >= target:
        length *= split_every
    return length


def _n_threads(client: Any) -> int:
    if client is None:
        return os.cpu_count() or 1
    return max(1, sum(client.nthreads().values()))


class _Run:
    """Blocks ``start, start + 1, ...`` of a pass and how a task obtains each one.

    ``recipes[i]`` is a graph node whose evaluation (given the keys it
    depends on) is the block: its read tasks fused, or an alias of a key
    already held by the cluster. ``keys`` names the values the task
    receives after its fixed arguments. A plain object, so Dask sends it to
    the task as it is instead of scheduling the nodes inside.
    """

    __slots__ = ("keys", "recipes", "start", "token")

    def __init__(self, start: int, recipes: list[Any], keys: list[Any], token: str) -> None:
        self.start = start
        self.recipes = recipes
        self.keys = keys
        self.token = token

    def __dask_tokenize__(self) -> str:
        return self.token


def _run_e_steps(model: EMModel, params: Any, run: _Run, split_every: int, hash_blocks: bool, *values: Any) -> Any:
    """The E-step over a run of consecutive blocks, read one at a time, summed as the tree sums them.

    ``values`` are those of ``run.keys``. With ``hash_blocks``, also the
    content hash of each block, by index (no second read).
    """
    needs = dict(zip(run.keys, values))
    tree = TreeSum(split_every)
    hashes: dict[int, str] = {}
    for index, recipe in enumerate(run.recipes, start=run.start):
        block = recipe({key: needs[key] for key in recipe.dependencies})
        tree.push(model.e_step(block, params))
        if hash_blocks:
            from .storage.snapshots import hash_block

            hashes[index] = hash_block(block)
        del block  # one block of the run in memory at a time
    stats = tree.result()
    return (stats, hashes) if hash_blocks else stats


def _block_runs(blocks: Blocks, length: int) -> list[tuple[_Run, list[Any]]]:
    """The runs of ``length`` consecutive blocks, each with the Dask keys its blocks need.

    Cached on ``blocks`` (per run length) while its parts stay the same,
    so a pass builds only one task per run.
    """
    keys = tuple(part.key for part in blocks.parts)
    cache = getattr(blocks, "_runs_cache", None)
    if cache is None or cache[0] != keys:
        cache = (keys, _block_recipes(blocks.parts), {})
        blocks._runs_cache = cache  # type: ignore[attr-defined]
    _, (recipes, needs), runs = cache
    if length not in runs:
        from dask.base import tokenize

        runs[length] = []
        for start in range(0, len(recipes), length):
            chosen = recipes[start : start + length]
            wanted = list(dict.fromkeys(key for recipe in chosen for key in recipe.dependencies))
            run = _Run(start, chosen, wanted, tokenize(keys[start : start + length]))
            # Top-level arguments: Dask unpacks those far faster than values nested in a dict.
            runs[length].append((run, [needs[key] for key in wanted]))
    return runs[length]


def _block_recipes(parts: Sequence[Any]) -> tuple[list[Any], dict[Any, Any]]:
    """For each block, a graph node that reads it, and the Delayed of every key those nodes need.

    A block's read tasks (the part and its ancestors that feed nothing
    else) are fused into one node that the E-step task evaluates itself.
    Otherwise a streamed block would be a task of its own: the scheduler
    may run the E-step on another worker (or steal it), and the reading
    worker, whose slot is free again, reads ahead while its blocks wait, so
    memory grows with the data. Read inside the task, a block is held only
    while its E-step runs, and the task depends only on shared keys (model,
    parameters, the source array), so root-task queuing
    (``distributed.scheduler.worker-saturation``) limits how many run at
    once; a run of blocks is read one block at a time. Persisted or
    scattered blocks (no read task in the graph) are an alias of their key,
    which the task then depends on.
    """
    from dask._task_spec import Alias, DataNode, GraphNode, Task, convert_legacy_graph
    from dask.core import reverse_dict
    from dask.delayed import Delayed

    raw: dict[Any, Any] = {}
    seen: set[int] = set()
    for part in parts:  # parts of one array share one graph: merge it once
        graph = part.__dask_graph__()
        if id(graph) not in seen:
            seen.add(id(graph))
            raw.update(graph)
    graph = convert_legacy_graph(raw)
    dependencies = {k: set(node.dependencies) for k, node in graph.items()}
    dependents = reverse_dict(dependencies)
    recipes: list[Any] = []
    for part in parts:
        node = graph.get(part.key)
        if not isinstance(node, GraphNode):
            recipes.append(Alias(("dask-em-block", part.key), part.key))
            continue
        chain, chain_keys = [node], {part.key}
        todo = list(dependencies[part.key])
        while todo:  # the ancestors that feed nothing but this block
            key = todo.pop()
            ancestor = graph.get(key)
            if key in chain_keys or not isinstance(ancestor, (Task, Alias, DataNode)):
                continue
            if not dependents.get(key, set()) <= chain_keys:
                continue
            chain.append(ancestor)
            chain_keys.add(key)
            todo.extend(dependencies[key])
        recipes.append(Task.fuse(*chain, key=part.key) if len(chain) > 1 else node)
    outside = {key for recipe in recipes for key in recipe.dependencies}
    needed: dict[Any, Any] = {}
    todo = list(outside)
    while todo:  # what the shared keys are computed from
        key = todo.pop()
        if key in needed or key not in graph:
            continue
        needed[key] = graph[key]
        todo.extend(dependencies[key])
    by_key = {part.key: part for part in parts}
    needs = {key: Delayed(key, needed) if key in needed else by_key.get(key, Delayed(key, {})) for key in outside}
    return recipes, needs


def _checked(model: EMModel, stats: Stats, params: Any = None, finite: bool = True) -> Stats:
    stats = dict(stats)
    n_invalid = int(stats.pop("n_invalid", 0))
    if n_invalid > 0:
        raise InvalidDataError(hooks(model).describe_invalid(n_invalid))
    # A model whose log-likelihood is not a sum over blocks (e.g. REML's
    # log det of a summed matrix) completes it from the summed stats.
    stats = hooks(model).finish_stats(stats, params)
    loglik = float(stats["loglik"])
    if finite and not math.isfinite(loglik):
        raise DaskEMError(
            f"the log-likelihood is {loglik} under the current parameters; a component may "
            "have collapsed. Try to decrease the number of components, increase the "
            "regularisation (reg_covar) or scale the input data."
        )
    return stats


def _check_resumed_params(model: EMModel, blocks: Blocks, params: Any, checkpoint: Any) -> None:
    """Refuse, on the client, a snapshot whose parameters this model cannot use.

    ``force=True`` resumes despite changed settings; a changed shape (e.g.
    the number of components) would otherwise fail inside a worker with a
    numpy broadcast error. One E-step on the first block tells.
    """
    block = blocks.compute(blocks.parts[0])[0]
    problem = None
    try:
        with np.errstate(all="ignore"):
            stats = model.e_step(block, params)
        model.m_step(_checked_shapes(stats), params)
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        from .errors import CheckpointError

        raise CheckpointError(
            f"the snapshot in {checkpoint} holds parameters this {type(model).__name__} cannot use "
            f"({problem.splitlines()[0]}); force=True resumes despite changed data or settings, but not "
            "a changed model shape (such as the number of components). Resume with the recorded settings "
            "or start over with resume=False."
        )


def _checked_shapes(stats: Stats) -> Stats:
    stats = dict(stats)
    stats.pop("n_invalid", None)
    return stats


def _engine_state(monitor: ConvergenceMonitor, accelerator: Any) -> dict[str, Any]:
    """What a snapshot must hold beyond parameters and history to continue bit-identically."""
    if accelerator is None:
        return {}
    state = {"refused": monitor.refused, "last_is_em_step": monitor.last_is_em_step}
    return {**state, **{f"{accelerator.name}.{k}": v for k, v in accelerator.state().items()}}


def _restore_engine_state(state: Any, monitor: ConvergenceMonitor, accelerator: Any, params: Any) -> None:
    """Undo :func:`_engine_state` from a snapshot (checked: the file may be damaged)."""
    from .errors import CheckpointError

    saved = state.state
    if accelerator is None or not saved:
        return
    try:
        monitor.refused = int(saved["refused"])
        monitor.last_is_em_step = bool(saved["last_is_em_step"])
        prefix = f"{accelerator.name}."
        accelerator.restore({k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}, params)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"snapshot {state.path}: the accelerated EM state is damaged ({exc})") from None


def _check_picklable(model: EMModel, params: Any) -> None:
    """Fail with a clear message if the model or parameters cannot travel to the workers.

    Dask would otherwise report a failure to serialise its own graph object.
    """
    import cloudpickle  # what distributed falls back to for objects plain pickle refuses

    for what, obj in (("model", model), ("parameters", params)):
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            raise TypeError(
                f"the {what} ({type(obj).__name__}) cannot be pickled to send to the Dask workers: "
                f"{type(exc).__name__}: {exc}. Keep model fields to plain values (numbers, strings, "
                "tuples) and parameters to numpy arrays; open files, locks or clients belong outside."
            ) from exc


def print_progress(info: IterationInfo) -> None:
    """A plain progress line per iteration on standard error."""
    eta = info.seconds * (info.max_iter - info.iteration)
    print(
        f"iter {info.iteration:4d}  loglik {info.value: .8g}  change {info.change: .3g}  "
        f"{info.seconds:6.3f} s/it  eta {eta:6.1f} s",
        file=sys.stderr,
        flush=True,
    )


def fit_em(
    model: EMModel,
    data: Any,
    params: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    tol_on: str = "mean",
    signed_change: bool = False,
    split_every: int = 8,
    client: Any = None,
    scheduler: str | None = None,
    random_state: int | np.random.Generator | None = None,
    callbacks: Sequence[Callable[[IterationInfo], None]] = (),
    verbose: bool = False,
    checkpoint: Any = None,
    checkpoint_every: int = 1,
    resume: bool | None = None,
    force: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
    stop: Callable[[Any, Any], bool] | None = None,
    warn_not_converged: bool = True,
    start_value: float = -math.inf,
    accelerate: str | None = None,
    online_passes: int = 0,
    online_batches: int = 20,
) -> EMResult:
    """Fit ``model`` to ``data`` by Expectation-Maximization on Dask.

    Parameters
    ----------
    model : EMModel
        Any object with ``init_params``, ``e_step`` and ``m_step``.
    data : array-like, dask array, zarr array or path, or Blocks
        The observations.
    params : object or callable, optional
        Initial parameters, or a function of no arguments returning them
        (called only when no checkpoint is resumed, so an expensive
        initialisation is skipped on resume); by default
        ``model.init_params`` on a sample of the data.
    max_iter : int
        Maximum number of EM iterations.
    tol : float
        Stop when the monitored log-likelihood changes by less than this.
    tol_on : {"mean", "total"}
        Monitor the log-likelihood per sample (scikit-learn) or in total
        (hmmlearn).
    signed_change : bool
        Stop when the change itself, not its absolute value, is below
        ``tol``, so that a decrease also stops the fit (hmmlearn's rule).
    split_every : int
        Fan-in of the tree reduction of statistics.
    client, scheduler
        Where to run; see :func:`dask_em.executor.where` (by default this
        process, on a thread pool).
    random_state : int or Generator, optional
        Seed for ``init_params``.
    callbacks : sequence of callables
        Each is called with an :class:`IterationInfo` after every iteration.
    verbose : bool
        Print a progress line per iteration.
    checkpoint : str, optional
        Zarr path or URL where snapshots are written and resumed from.
    checkpoint_every : int
        Write a snapshot every this many iterations (and at the end).
    resume : bool, optional
        Resume from ``checkpoint`` if it exists (None), always (True) or never (False).
    force : bool
        Resume even if the data or configuration differ from the snapshot.
    checkpoint_meta : dict, optional
        What the caller wants recorded and checked on resume, e.g. the
        estimator's class and hyper-parameters (see
        :meth:`dask_em.estimators.EMEstimator.checkpoint_meta`).
    stop : callable, optional
        ``stop(old_params, new_params) -> bool``, a model-specific
        convergence rule checked after each M-step (e.g. k-means' center
        shift); when it returns True the fit has converged.
    warn_not_converged : bool
        Warn with :class:`ConvergenceWarning` when ``max_iter`` is reached.
    start_value : float
        The monitored value before the first iteration: a warm start passes
        the previous fit's last value, so that its first iteration can
        already meet ``tol`` (scikit-learn's ``warm_start``).
    accelerate : {None, "squarem", "anderson"}
        ``"squarem"`` or ``"anderson"`` extrapolates the EM map (:mod:`dask_em.accelerate`):
        the same optimum in far fewer passes where plain EM is slow. The
        history keeps only accepted points, so it never decreases; every
        pass, refused extrapolations included, counts towards ``max_iter``.
    online_passes : int
        Start with this many passes of online (stepwise) EM over the blocks
        in shuffled order, ``online_batches`` parameter updates per pass
        (see :func:`dask_em.online.online_passes`), then continue with
        batch EM. On large data one or two such passes bring the
        parameters close to the optimum for the cost of one or two
        iterations. Skipped when a checkpoint is resumed; the online
        passes are not counted in ``n_iter``.
    online_batches : int
        Parameter updates per online pass (at most one per block).

    Returns
    -------
    EMResult
    """
    if tol_on not in ("mean", "total"):
        raise ValueError(f"tol_on must be 'mean' or 'total', got {tol_on!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be non-negative, got {max_iter}")
    if not isinstance(checkpoint_every, (int, np.integer)) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(
            f"checkpoint_every must be an integer >= 1 (a snapshot every that many iterations), got {checkpoint_every!r}"
        )
    from .accelerate import make_accelerator

    make_accelerator(accelerate, None)  # a bad name is an error before anything runs
    with where(client, scheduler, data=data, verbose=verbose) as active:
        blocks = prepare_blocks(data, active)
        rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
        monitor = ConvergenceMonitor(tol=tol, max_iter=max_iter, signed=signed_change, start=float(start_value))
        store = None
        resumed_from = 0
        accelerator = make_accelerator(accelerate, model)
        if checkpoint is not None:
            from .storage.checkpoint import Checkpoint, logger
            from .storage.snapshots import data_fingerprint

            settings: dict[str, Any] = {"tol_on": tol_on, "split_every": split_every}
            if accelerator is not None:
                settings["accelerate"] = accelerate

            store = Checkpoint.open(
                checkpoint,
                model=model,
                fingerprint=data_fingerprint(blocks),
                meta=checkpoint_meta or {},
                resume=resume,
                force=force,
                settings=settings,
                monitor={"tol": tol, "max_iter": max_iter, "checkpoint_every": checkpoint_every},
                rng_state=rng.bit_generator.state,
            )
            state = store.load()
            if state is not None:
                params = state.params
                monitor.history = list(state.history)
                monitor.stopped = bool(state.converged) and stop is not None
                _restore_engine_state(state, monitor, accelerator, params)
                resumed_from = monitor.iter
                if force:
                    _check_resumed_params(model, blocks, params, checkpoint)
                message = f"resumed from {checkpoint} at iteration {resumed_from}" + (
                    " (the fit had finished)" if monitor.done else ""
                )
                logger.info(message)
                if verbose:
                    print(f"dask-em: {message}", file=sys.stderr)
        if callable(params):
            params = params()
        elif params is None:
            params = model.init_params(blocks.sample(10_000, rng), rng)
        if online_passes and monitor.iter == 0:
            from .online import online_passes as run_online

            params = run_online(
                model, blocks, params, passes=int(online_passes), n_batches=int(online_batches), rng=rng,
                client=active, split_every=split_every,
            ).params

        if active is not None:
            _check_picklable(model, params)
        if verbose:
            from .progress import Progress

            callbacks = [*callbacks, Progress()]  # live line in a terminal, plain lines elsewhere
        n_passes = 0
        final = params  # the M-step's result for the last accepted point
        while not monitor.done:
            start = time.perf_counter()
            extrapolated = accelerator is not None and accelerator.extrapolating
            # The first pass with a checkpoint hashes every block as it reads it.
            stats, passes = iteration_stats(model, blocks, params, active, split_every, finite=not extrapolated,
                                            hash_blocks=store is not None and "blocks" not in store.record)
            n_passes += passes
            if BLOCK_HASHES in stats:  # compared before this pass's M-step is applied
                store.check_blocks(stats.pop(BLOCK_HASHES), force=force)
            loglik = float(stats["loglik"])
            value = loglik / float(stats["n"]) if tol_on == "mean" else loglik
            previous = monitor.history[-1] if monitor.history else monitor.start
            old_params = params
            if accelerator is None:
                monitor.report(value)
                params = final = model.m_step(stats, params)
                accepted = True
            else:
                try:
                    image = model.m_step(stats, params) if math.isfinite(loglik) else None
                except (ArithmeticError, ValueError, np.linalg.LinAlgError):
                    if not extrapolated:
                        raise
                    image = None  # an extrapolated point the M-step cannot use: refused below
                params, accepted = accelerator.step(params, value, image)
                final = image if accepted else params
                if accepted:
                    monitor.report(value, em_step=not extrapolated or accelerator.tests_extrapolated)
                else:
                    monitor.refused += 1
            if stop is not None and accepted and stop(old_params, final):
                monitor.stopped = True
            if store is not None and (monitor.iter % checkpoint_every == 0 or monitor.done):
                store.save(params=final if monitor.done else params, history=monitor.history,
                           converged=monitor.converged, state=_engine_state(monitor, accelerator))
            info = IterationInfo(
                iteration=monitor.iter,
                loglik=loglik,
                value=value,
                change=value - previous,
                seconds=time.perf_counter() - start,
                params=final,
                max_iter=max_iter,
            )
            for callback in callbacks:
                callback(info)
        params = final

        if store is not None:
            store.close()  # wait for the last snapshot
        if warn_not_converged and not monitor.converged and max_iter > 0:
            import warnings

            from .errors import ConvergenceWarning  # scikit-learn's subclass, built on first use

            warnings.warn(
                f"EM did not converge in {max_iter} iterations (last change "
                f"{(monitor.history[-1] - monitor.history[-2]) if monitor.iter > 1 else math.inf:.3g}, "
                f"tol {tol}); increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return EMResult(
            params=params,
            converged=monitor.converged,
            n_iter=monitor.iter,
            history=list(monitor.history),
            n_samples=blocks.n_samples,
            resumed_from=resumed_from,
            n_passes=n_passes,
            extra={"n_refused": accelerator.n_rejected} if accelerator is not None else {},
        )
