"""A grid of 6 Gaussian mixtures fitted in shared passes against one fit.

Grid: n_components in {2, 3, 4} x covariance_type in {full, diag}. Both
sides run a fixed number of EM iterations (tol=0) from a k-means++ start
on the same LocalCluster, so the ratio is the cost of an iteration of the
whole grid over an iteration of the largest single model (K=4, full).
Six separate fits are timed too.

By default the data is persisted in the workers' memory. With ``--stream``
every pass reads it from the Zarr store (the out-of-core case): the grid
reads it once per iteration, six separate fits six times.

    python benchmarks/bench_select.py [--stream] [--n-samples 1000000] [--n-features 16] [--iters 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask.array as da
from distributed import Client

from dask_em.cluster import local_cluster
from dask_em.data import array_blocks
from dask_em.datasets import make_blobs_zarr
from dask_em.engine import fit_em
from dask_em.models.gmm import GaussianMixtureModel
from dask_em.select import select


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--stream", action="store_true", help="read the Zarr store every pass (not persisted)")
    parser.add_argument("--repeats", type=int, default=1, help="time the single fit and the grid this many times")
    args = parser.parse_args()
    grid_k, grid_types = [2, 3, 4], ["full", "diag"]
    print(f"load average before: {_load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, local_cluster() as cluster, Client(cluster) as client:
        path = f"{tmp}/blobs.zarr"
        make_blobs_zarr(path, args.n_samples, args.n_features, 3, chunk_rows=62_500, random_state=0, client=client)
        X = da.from_zarr(path, component="X")
        blocks = array_blocks(X, client, persist=not args.stream)
        # Warm-up: compile the kernels in every worker.
        select(blocks, [2], ["full", "diag"], max_iter=1, tol=0, client=client, random_state=0)
        fit_em(GaussianMixtureModel(2, "full"), blocks, max_iter=1, tol=0, client=client, random_state=0,
               warn_not_converged=False)

        def one_fit(k: int, ct: str) -> float:
            start = time.perf_counter()
            fit_em(GaussianMixtureModel(k, ct), blocks, max_iter=args.iters, tol=0, client=client, random_state=0,
                   warn_not_converged=False)
            return time.perf_counter() - start

        def grid() -> tuple[float, int]:
            start = time.perf_counter()
            result = select(blocks, grid_k, grid_types, max_iter=args.iters, tol=0, client=client, random_state=0)
            return time.perf_counter() - start, result.n_passes

        singles, grids = [], []
        for _ in range(args.repeats):
            singles.append(one_fit(4, "full"))
            seconds, n_passes = grid()
            grids.append(seconds)
        separate = sum(one_fit(k, ct) for k in grid_k for ct in grid_types)
    single, shared = min(singles), min(grids)
    mode = "streamed from Zarr every pass" if args.stream else "persisted in worker memory"
    print(f"data {args.n_samples:,} x {args.n_features} ({mode}), {args.iters} iterations each, 2 workers")
    if args.repeats > 1:
        print("  runs: one fit " + ", ".join(f"{s:.2f}" for s in singles)
              + " s; grid " + ", ".join(f"{s:.2f}" for s in grids) + " s (best of each below)")
    print(f"one fit (K=4, full):          {single:7.2f} s")
    print(f"6 separate fits:              {separate:7.2f} s  ({separate / single:.2f}x one fit)")
    print(f"grid of 6 in shared passes:   {shared:7.2f} s  ({shared / single:.2f}x one fit), {n_passes} passes"
          " (incl. the in-memory initialisation and the final scoring pass)")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
