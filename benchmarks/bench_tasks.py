"""Seconds per pass against the number of blocks: scheduling cost per task.

One E-step pass (:func:`dask_em.engine.expected_stats`, a diagonal
Gaussian mixture, K=2) over a Zarr store of ``--chunks`` small chunks on a
LocalCluster of ``--workers`` single-threaded workers, and over small
in-memory data split into ``--small-blocks`` blocks (the per-pass fixed
cost), on the cluster and in this process.

For each case it reports, per pass (median of ``--passes`` after one
warm-up pass, or the single pass with ``--passes 1``):

- ``wall``: seconds of the whole ``expected_stats`` call;
- ``client``: seconds the client spent building the graph (until it is
  handed to the scheduler);
- ``tasks``: tasks the scheduler ran (its task stream);
- ``in tasks``: seconds the workers spent inside those tasks, summed.

The engine measured is whichever ``dask_em`` is imported: run it once with
``PYTHONPATH`` at a checkout before runs of blocks (one task per block)
and once after, e.g.::

    PYTHONPATH=/path/to/old python benchmarks/bench_tasks.py --chunks 100000
    PYTHONPATH=. python benchmarks/bench_tasks.py --chunks 100000

``dask.config`` key ``dask-em.tasks-per-thread`` (``--tasks-per-thread``)
sets the tasks per pass per thread of the new engine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import dask
import numpy as np


def make_store(path: str, n_chunks: int, rows: int, n_features: int) -> None:
    """A Zarr array of ``n_chunks`` chunks of ``rows`` rows (two well-separated blobs)."""
    import zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        z = zarr.open(path, mode="r")
        if z.shape == (n_chunks * rows, n_features) and z.chunks == (rows, n_features):
            return
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_chunks * rows, n_features))
    X[::2] += 4.0
    z = zarr.open(path, mode="w", shape=X.shape, chunks=(rows, n_features), dtype="f8")
    z[:] = X


def timed_pass(model: Any, blocks: Any, params: Any, client: Any, split_every: int) -> dict[str, float]:
    """One pass, split into the client's graph building and the rest."""
    from dask_em import engine

    handed: list[float] = []
    original = engine._compute

    def compute(client: Any, graph: Any) -> Any:
        handed.append(time.perf_counter())
        return original(client, graph)

    engine._compute = compute
    try:
        start = time.perf_counter()
        t0 = time.time()
        stats = engine.expected_stats(model, blocks, params, client, split_every)
        wall = time.perf_counter() - start
    finally:
        engine._compute = original
    out = {"wall": wall, "client": (handed[0] - start) if handed else float("nan"), "n": float(stats["n"])}
    if client is not None:
        stream = client.get_task_stream(start=t0)
        out["tasks"] = float(len(stream))
        out["in_tasks"] = float(
            sum(s["stop"] - s["start"] for t in stream for s in t["startstops"] if s["action"] == "compute")
        )
    return out


def measure(label: str, model: Any, blocks: Any, params: Any, client: Any, split_every: int, passes: int) -> None:
    runs = [timed_pass(model, blocks, params, client, split_every)]
    if passes > 1:
        runs = [timed_pass(model, blocks, params, client, split_every) for _ in range(passes)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    line = f"{label:<44s} wall {med['wall']:8.3f} s   client {med['client']:7.3f} s"
    if "tasks" in med:
        line += f"   tasks {int(med['tasks']):7d}   in tasks {med['in_tasks']:7.2f} s"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks of the Zarr store")
    parser.add_argument("--rows", type=int, default=10, help="rows per chunk")
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--store", default="/tmp/dask_em_bench_tasks.zarr")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--small-blocks", type=int, nargs="*", default=[16, 256, 1024])
    parser.add_argument("--split-every", type=int, default=8)
    parser.add_argument("--tasks-per-thread", type=float, default=None)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()

    import dask_em
    from distributed import Client, LocalCluster

    from dask_em.data import array_blocks, as_dask_array
    from dask_em.models.gmm import GaussianMixtureModel

    if args.tasks_per_thread is not None:
        dask.config.set({"dask-em.tasks-per-thread": args.tasks_per_thread})
    print(f"dask_em from {os.path.dirname(dask_em.__file__)}; load average {os.getloadavg()}", flush=True)
    model = GaussianMixtureModel(n_components=2, covariance_type="diag")
    rng = np.random.default_rng(1)
    small = rng.standard_normal((64 * 1024, args.features))
    params = model.init_params(small[:1000], rng)

    # In this process first (no cluster running beside it).
    for n_blocks in args.small_blocks:
        X = as_dask_array(small, chunk_rows=len(small) // n_blocks)
        blocks = array_blocks(X, None, persist=False)
        measure(f"in process, {n_blocks} blocks (from numpy)", model, blocks, params, None, args.split_every, args.passes)

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        client.get_task_stream()  # installs the scheduler's task-stream recorder
        for n_blocks in args.small_blocks:
            X = as_dask_array(small, chunk_rows=len(small) // n_blocks, client=client)
            blocks = array_blocks(X, client, persist=True)
            measure(f"cluster, {n_blocks} blocks (persisted)", model, blocks, params, client, args.split_every, args.passes)
        if args.skip_large:
            return
        make_store(args.store, args.chunks, args.rows, args.features)
        start = time.perf_counter()
        blocks = array_blocks(as_dask_array(args.store), client, persist=False)  # streamed, as at scale
        print(f"opening the store as blocks: {time.perf_counter() - start:.2f} s (once per fit)", flush=True)
        measure(f"cluster, Zarr, {args.chunks} chunks (streamed)", model, blocks, params, client, args.split_every, args.passes)
    print(f"load average after {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
