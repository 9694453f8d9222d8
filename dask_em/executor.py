"""Where a pass runs: this process (threads) or a Dask client.

Most fits meet data that fits in memory, where starting a cluster costs
far more than the fit. Without a client, a pass runs in this process on
Dask's local scheduler (a thread pool, one thread per core; the compiled
kernels release the GIL) over the same blocks and the same fixed-order tree
of sums as on a cluster, so the result is the same bit for bit (see
:func:`dask_em.engine.expected_stats` for what that guarantee covers).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
import numpy as np

from . import cluster

#: The names under which ``dask.config`` designates the distributed scheduler.
DISTRIBUTED = ("dask.distributed", "distributed")

#: Lazy data larger than this fraction of the memory available to this
#: process is streamed on a LocalCluster whose workers have memory limits.
IN_PROCESS_FRACTION = 0.4

# The decision of the outermost `where` of this fit, so nested calls
# (an estimator's fit calling fit_em) neither decide again nor print again.
_decided: contextvars.ContextVar[bool] = contextvars.ContextVar("dask_em_where_decided", default=False)


def local_scheduler() -> Any:
    """The Dask scheduler of an in-process pass: ``dask.config``'s choice, else threads."""
    name = dask.config.get("scheduler", None)
    if name is None or name in DISTRIBUTED:
        return "threads"
    return name


def _local_configured() -> bool:
    name = dask.config.get("scheduler", None)
    return name is not None and name not in DISTRIBUTED


def memory_budget() -> float:
    """Bytes of data this process may hold: ``dask-em.memory-limit`` or the available memory."""
    limit = dask.config.get("dask-em.memory-limit", None)
    if limit is not None:
        from dask.utils import parse_bytes

        return float(parse_bytes(limit) if isinstance(limit, str) else limit)
    import psutil

    return float(psutil.virtual_memory().available)


def _lazy_nbytes(data: Any) -> float:
    """Bytes of ``data`` that are not yet in this process's memory (0 when unknown)."""
    import dask.array as da

    if isinstance(data, str) or hasattr(data, "__fspath__"):
        from .data import open_zarr_array

        with contextlib.suppress(Exception):  # a bad path is reported by the fit itself
            return float(open_zarr_array(str(data)).nbytes)
        return 0.0
    if isinstance(data, da.Array):
        return float(data.nbytes)
    if type(data).__module__.startswith("zarr"):
        return float(getattr(data, "nbytes", 0) or 0)
    return 0.0


def describe(client: Any) -> str:
    """One line saying where a fit runs, with the dashboard link when there is one."""
    if client is None:
        scheduler = local_scheduler()
        if scheduler in ("threads", "threading"):
            return f"dask-em: running in this process on {os.cpu_count() or 1} threads"
        return f"dask-em: running in this process with dask's {scheduler!r} scheduler"
    from .progress import dashboard_message

    return dashboard_message(client)


@contextlib.contextmanager
def where(
    client: Any = None,
    scheduler: str | None = None,
    *,
    data: Any = None,
    security: Any = None,
    verbose: bool = False,
) -> Iterator[Any]:
    """Yield the client a fit runs on, or None to run it in this process.

    The order is: ``client`` if given (or the client ``data``'s blocks
    live on); a ``scheduler`` address; this process for blocks already held
    in its memory (:func:`dask_em.engine.prepare_blocks` without a client);
    an in-process scheduler chosen with ``dask.config.set(scheduler=...)``
    (``"synchronous"``, ``"threads"``, ``"processes"``); the current
    distributed client; ``$DASK_EM_SCHEDULER`` or Dask's
    ``scheduler-address``; this process's LocalCluster when asked for
    (``$DASK_EM_WORKERS`` or ``dask-em.workers``, see
    :func:`dask_em.cluster.requested_workers`) or when lazy ``data`` is too
    large to hold here (:data:`IN_PROCESS_FRACTION` of the available
    memory) and streaming it needs workers with memory limits; else this
    process (None), on a thread pool with one BLAS thread per task.

    Parameters
    ----------
    client : distributed.Client, optional
        Run on this client.
    scheduler : str, optional
        Address of a scheduler to connect to (closed on exit).
    data : object, optional
        The fit's input, to size it when it is lazy (Dask array, Zarr).
    security : distributed.Security or (ca_file, cert, key), optional
        TLS settings for a ``tls://`` address.
    verbose : bool
        Print one line saying where the fit runs (stderr).
    """
    if _decided.get():  # inside an outer decision: it holds
        yield client
        return
    token = _decided.set(True)
    try:
        with _decide(client, scheduler, data, security, verbose) as active:
            if verbose:
                print(describe(active), file=sys.stderr, flush=True)
            yield active
    finally:
        _decided.reset(token)


@contextlib.contextmanager
def _decide(client: Any, scheduler: str | None, data: Any, security: Any, verbose: bool) -> Iterator[Any]:
    client = client if client is not None else getattr(data, "client", None)  # blocks already on a cluster
    if client is not None:
        yield client
        return
    if scheduler is None and _held_here(data):
        # Blocks prepared for this process: a current client would be sent
        # them inside every pass's graph (61 MiB a pass for 1e6 x 8).
        with _one_blas_thread():
            yield None
        return
    if scheduler is None and not _local_configured():
        current = cluster._current_client()
        if current is not None:
            yield current
            return
    address = scheduler if scheduler is not None else (None if _local_configured() else cluster.scheduler_address())
    if address:
        with cluster.connect(address, security) as connected:
            yield connected
        return
    workers = None if _local_configured() else cluster.requested_workers()
    if workers is None and not _local_configured():
        nbytes = _lazy_nbytes(data)
        if nbytes > 0 and nbytes > IN_PROCESS_FRACTION * memory_budget():
            workers = 0
    if workers is not None:
        yield cluster.session_client(workers, verbose=verbose)
        return
    with _one_blas_thread():
        yield None


def _held_here(data: Any) -> bool:
    """Whether ``data`` is :class:`~dask_em.data.Blocks` whose values are all in this process's memory."""
    from .data import Blocks, in_memory_blocks

    return isinstance(data, Blocks) and data.client is None and in_memory_blocks(data) is not None


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread per task while a thread pool runs the blocks.

    Each task already has a core; a multithreaded BLAS in every task would
    oversubscribe them (tall-skinny products were twice as slow).
    """
    if local_scheduler() not in ("threads", "threading") or (os.cpu_count() or 1) == 1:
        yield
        return
    global _blas
    if _blas is None:
        try:  # finding the loaded BLAS libraries reads /proc: once per process
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController()
        except ImportError:  # optional: without it BLAS keeps its own setting
            _blas = False
    if _blas is False:
        yield
        return
    with _blas.limit(limits=1, user_api="blas"):
        yield


_blas: Any = None


_SERIAL = ("sync", "synchronous", "single-threaded")
_THREADS = ("threads", "threading")
_pool: Any = None


def local_map(func: Callable[[Any], Any], items: Sequence[Any]) -> list[Any] | None:
    """``[func(item) for item in items]`` on this process's thread pool, in order.

    The fast path of an in-process pass over blocks already in memory: no
    task graph is built, tokenised or scheduled (that costs more than the
    E-step of a small block). Serial for one item or Dask's synchronous
    scheduler; None when ``dask.config`` names another scheduler (processes,
    a custom one), which then runs the pass as a Dask graph.

    The calling thread takes items too, beside one pool thread per other
    core, each taking the next item left: a pass wakes one thread fewer,
    and the caller never sleeps while items remain (on a loaded machine
    each wake-up waits for the OS scheduler). Results are stored by index, so the order
    (and the tree of sums over them) does not depend on which thread ran
    which item. A helper that has not started when the items run out is
    cancelled, so a call nested inside a pool thread never waits for the
    pool.
    """
    global _pool
    scheduler = local_scheduler()
    n_threads = os.cpu_count() or 1
    if scheduler in _SERIAL or (scheduler in _THREADS and (len(items) <= 1 or n_threads == 1)):
        return [func(item) for item in items]
    if scheduler not in _THREADS:
        return None
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="dask-em")
    results: list[Any] = [None] * len(items)
    taken = iter(range(len(items)))
    lock = threading.Lock()
    failed = threading.Event()

    def drain() -> None:
        while not failed.is_set():
            with lock:
                i = next(taken, None)
            if i is None:
                return
            try:
                results[i] = func(items[i])
            except BaseException:
                failed.set()  # the others stop taking items
                raise

    helpers = [_pool.submit(drain) for _ in range(min(n_threads, len(items)) - 1)]
    try:
        drain()
    finally:
        # A helper not started yet has nothing left to take; one that started
        # is waited for (exception() waits), and its error raised.
        errors = [helper.exception() for helper in helpers if not helper.cancel()]
    error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    return results


def map_row_slices(func: Callable[..., Any], X: Any, *args: Any) -> Any:
    """``func(X, *args)`` for a function computed row by row, over slices of rows on the thread pool.

    The slices are the blocks an in-process fit cuts from ``X`` (about
    16 MiB each), their outputs joined in order; data smaller than two
    blocks, or another scheduler than threads, runs in one call. A
    prediction over a million rows then uses every core, as the fit did.
    """
    from .data.arrays import _default_chunk_rows

    n = X.shape[0]
    rows = _default_chunk_rows(n, X.shape[1] * max(X.dtype.itemsize, 8)) if X.ndim == 2 else n
    if n < 2 * rows or local_scheduler() not in _THREADS or (os.cpu_count() or 1) == 1:
        return func(X, *args)
    with _one_blas_thread():
        parts = local_map(lambda start: func(X[start : start + rows], *args), range(0, n, rows))
    assert parts is not None  # threads: local_map ran them
    return np.concatenate([np.asarray(p) for p in parts])


def compute(client: Any, *collections: Any) -> tuple[Any, ...]:
    """Compute Dask collections where the fit runs: on ``client``, or in this process.

    Raises
    ------
    LostDataError, SchedulerLostError
        When the computation is cancelled under us (see :func:`lost_or_gone`).
    """
    if client is not None:
        from concurrent.futures import CancelledError

        try:
            return tuple(client.gather(client.compute(list(collections), optimize_graph=False)))
        except Exception as exc:
            # A scheduler that dies mid-pass surfaces as a cancellation, or (when the
            # client notices first, e.g. on a loaded machine) as a comm error while
            # the client is reconnecting: both are the same lost scheduler.
            if isinstance(exc, CancelledError) or client.status != "running":
                raise lost_or_gone(client, exc) from exc
            raise
    return dask.compute(*collections, scheduler=local_scheduler(), optimize_graph=False)


def persist_on(client: Any, *collections: Any) -> tuple[Any, ...]:
    """Persist Dask collections where the fit runs: on ``client``'s workers, or in this process.

    Whether to persist at all is :func:`dask_em.data.should_persist`'s decision.
    """
    if client is not None:
        return tuple(client.persist(list(collections)))
    return dask.persist(*collections, scheduler=local_scheduler())


#: How often a computation is redone after in-memory blocks were lost with a worker.
MAX_RESCATTER = 3


def lost_or_gone(client: Any, exc: BaseException) -> Exception:
    """The error for a computation cancelled under us: the scheduler is gone, or scattered blocks are.

    A worker that dies is handled by the scheduler, which recomputes its
    tasks; what is cancelled is a computation whose scheduler was lost, or
    whose scattered blocks were lost with their only worker (they have no
    recipe to recompute them).
    """
    from .errors import LostDataError, SchedulerLostError

    reason = str(getattr(exc, "reason", "") or exc)
    if client.status != "running" or "scheduler-connection-lost" in reason:
        address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
        return SchedulerLostError(
            f"lost the connection to the Dask scheduler at {address} in the middle of an "
            "iteration; the fit cannot continue. Start a scheduler and resume from the last "
            "checkpoint (the same fit with checkpoint=..., or `dask-em resume CHECKPOINT INPUT "
            "--scheduler ADDRESS`); a fit without a checkpoint must start over."
        )
    return LostDataError(
        f"blocks of in-memory data were lost with a worker ({reason}); they are scattered "
        "from the client, so pass the data as a Zarr path or a Dask array to let the "
        "scheduler recompute lost blocks."
    )


def retry_lost(blocks: Any, run: Callable[[], Any]) -> Any:
    """``run()``, redone after in-memory blocks lost with a worker are scattered again.

    ``blocks.rebuild()`` (set where in-memory input is scattered) scatters
    them again in place; the redone computation is bit-identical, every
    task being pure. A worker the scheduler has not yet seen die may take
    some again, hence a few attempts.
    """
    from .errors import LostDataError

    for attempt in range(MAX_RESCATTER + 1):
        try:
            return run()
        except LostDataError:
            rebuild = getattr(blocks, "rebuild", None)
            if rebuild is None or attempt == MAX_RESCATTER:
                raise
            rebuild()
    raise AssertionError("unreachable")  # pragma: no cover
