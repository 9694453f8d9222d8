"""Accelerated EM out of core: plain EM against SQUAREM and Anderson on a Zarr store larger than the cluster.

On data larger than memory every EM iteration is a full read of the
store, so the passes a fit makes are its time. This writes an overlapping
Gaussian mixture (``--separation`` well below the default 4, so plain EM
converges slowly) to a Zarr store at least ``--ratio`` times the total
memory of the workers, then fits ``GaussianMixture`` (full covariances)
to it on a LocalCluster of single-threaded workers limited to
``--memory-limit``, from the same start and tolerance, with plain EM and
with each accelerator. It reports, in one run:

- passes over the data (``n_passes_``) and the passes each fit took to
  first reach plain EM's final log-likelihood within 1e-7 per sample;
- wall seconds of the whole ``fit`` call and seconds of one plain read
  pass of the store (``da.from_zarr(...).sum()``) on the same cluster;
- the final log-likelihood per sample;
- with ``online1+plain`` (or ``online1+squarem``, ...) among ``--fits``:
  one online (stepwise) EM pass over the shuffled blocks before the batch
  fit (``fit(X, online_passes=1)``), the warm start for data of tens of
  millions of rows;
- that no worker was restarted and nothing spilled.

Run::

    python benchmarks/bench_ooc_accelerated.py --rows 20000000 --workers 1 --memory-limit 320MiB

The store is deleted at the end unless ``--keep``; an existing store of the
right shape at ``--path``, completely written by this script, is reused.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import time
import warnings

import dask.array as da
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memwatch import spill_state, worker_pids  # noqa: E402
from bench_out_of_core import dir_bytes, parse_size  # noqa: E402
from bench_passes import passes_to  # noqa: E402

MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--features", type=int, default=6)
    p.add_argument("--components", type=int, default=4)
    p.add_argument("--separation", type=float, default=0.7, help="distance of the true means (overlap)")
    p.add_argument("--chunk-rows", type=int, default=500_000)
    p.add_argument("--tol", type=float, default=1e-8, help="per sample")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--memory-limit", default="320MiB", help="per worker")
    p.add_argument("--ratio", type=float, default=2.5, help="least data size / total worker memory")
    p.add_argument("--fits", nargs="+", default=["plain", "squarem", "anderson", "online1+plain", "online1+squarem"],
                   help="plain, squarem, anderson, each optionally after N online passes: onlineN+squarem")
    p.add_argument("--path", default="/tmp/dask_em_ooc_acc/blobs.zarr")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)

    import zarr
    from distributed import Client, LocalCluster

    import dask_em
    from dask_em.datasets import make_blobs_zarr

    print(f"# {' '.join(shlex.quote(a) for a in ['python', *sys.argv])}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    limit = parse_size(args.memory_limit)
    data_bytes = args.rows * args.features * 8
    if data_bytes < args.ratio * limit * args.workers:
        raise SystemExit(f"{data_bytes / MIB:.0f} MiB of data is less than {args.ratio} x the workers' memory "
                         f"({args.workers} x {limit / MIB:.0f} MiB): raise --rows")
    k = args.components
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=limit, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        X_path = os.path.join(args.path, "X")
        done = os.path.join(os.path.dirname(args.path), f"complete-{args.rows}x{args.features}-{args.separation}")
        if not (os.path.exists(done) and zarr.open_array(X_path, mode="r").shape == (args.rows, args.features)):
            t = time.perf_counter()
            make_blobs_zarr(args.path, args.rows, args.features, k, chunk_rows=args.chunk_rows,
                            separation=args.separation, random_state=0, labels=False, client=client,
                            overwrite=True)
            open(done, "w").close()  # an interrupted write is never reused (its missing chunks would read as 0)
            print(f"# wrote {args.rows:,} x {args.features} ({data_bytes / MIB:.0f} MiB in memory, "
                  f"{dir_bytes(args.path) / MIB:.0f} MiB on disk) in {time.perf_counter() - t:.1f} s")
        X = da.from_zarr(X_path)
        # the same start for every fit: k rows of the first chunk, one pooled covariance
        first = np.asarray(X[: args.chunk_rows].compute())
        start = {"weights_init": np.full(k, 1.0 / k),
                 "means_init": first[np.random.default_rng(1).choice(len(first), k, replace=False)],
                 "precisions_init": np.repeat(np.linalg.inv(np.cov(first.T))[None], k, axis=0)}
        pids = worker_pids(client)

        t = time.perf_counter()
        client.compute(X.sum()).result()
        read = time.perf_counter() - t
        print(f"# one read pass: {read:.2f} s; data / total worker memory = "
              f"{data_bytes / (limit * args.workers):.1f}")
        rows = []
        for name in args.fits:
            online, _, method = name.rpartition("+")
            online_passes = int(online.removeprefix("online") or 0)
            accelerate = None if method == "plain" else method
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = dask_em.GaussianMixture(k, covariance_type="full", tol=args.tol, max_iter=5000,
                                            accelerate=accelerate, **start)
                g.fit(X, client=client, online_passes=online_passes)
            wall = time.perf_counter() - t
            rows.append((name, g.n_passes_, wall, float(g.lower_bound_), list(g.lower_bounds_)))
            print(f"# {name}: {g.n_passes_} passes, {wall:.1f} s, load {os.getloadavg()[0]:.1f}", flush=True)
        restarted = worker_pids(client) != pids
        spill = spill_state(client)

    plain = next((r for r in rows if r[0] == "plain"), rows[0])
    print(f"\nGaussianMixture full, {args.rows:,} x {args.features}, K={k}, separation {args.separation}, "
          f"tol {args.tol:g}; {args.workers} x {args.memory_limit} workers; read pass {read:.2f} s")
    print("| fit | passes | to plain EM's optimum | wall s | wall / read pass | passes vs plain "
          "| log-likelihood per sample |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, passes, wall, loglik, history in rows:
        reached = passes_to(plain[4][-1] - 1e-7, history, passes)
        print(f"| {name} | {passes} | {'' if reached is None else reached} | {wall:.1f} | {wall / read:.1f} "
              f"| {passes / plain[1]:.2f} | {loglik:.10f} |")
    print(f"\n# workers restarted: {restarted}; spill: {spill}; load at the end {os.getloadavg()[0]:.1f}")
    if not args.keep:
        shutil.rmtree(os.path.dirname(args.path), ignore_errors=True)
    return 1 if restarted else 0


if __name__ == "__main__":
    raise SystemExit(main())
