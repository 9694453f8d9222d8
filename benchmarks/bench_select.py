"""A grid of 6 Gaussian mixtures fitted in shared passes against one fit.

Grid: n_components in {2, 3, 4} x covariance_type in {full, diag}. Both
sides run a fixed number of EM iterations (tol=0) from a k-means++ start
on the same LocalCluster, so the ratio is the cost of an iteration of the
whole grid over an iteration of the largest single model (K=4, full).
Six separate fits are timed too.

    python benchmarks/bench_select.py [--n-samples 1000000] [--n-features 16] [--iters 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from distributed import Client

from dask_em.cluster import local_cluster
from dask_em.datasets import make_blobs_zarr
from dask_em.engine import fit_em
from dask_em.models.gmm import GaussianMixtureModel
from dask_em.select import select


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    grid_k, grid_types = [2, 3, 4], ["full", "diag"]
    with tempfile.TemporaryDirectory() as tmp, local_cluster() as cluster, Client(cluster) as client:
        path = f"{tmp}/blobs.zarr"
        make_blobs_zarr(path, args.n_samples, args.n_features, 3, chunk_rows=62_500, random_state=0, client=client)
        X = client.persist(__import__("dask.array", fromlist=["x"]).from_zarr(path, component="X"))
        # Warm-up: compile the kernels in every worker.
        select(X, [2], ["full", "diag"], max_iter=1, tol=0, client=client, random_state=0)

        def one_fit(k: int, ct: str) -> float:
            start = time.perf_counter()
            fit_em(GaussianMixtureModel(k, ct), X, max_iter=args.iters, tol=0, client=client, random_state=0,
                   warn_not_converged=False)
            return time.perf_counter() - start

        single = one_fit(4, "full")
        separate = sum(one_fit(k, ct) for k in grid_k for ct in grid_types)
        start = time.perf_counter()
        result = select(X, grid_k, grid_types, max_iter=args.iters, tol=0, client=client, random_state=0)
        grid = time.perf_counter() - start
    print(f"data {args.n_samples:,} x {args.n_features}, {args.iters} iterations each, 2 workers")
    print(f"one fit (K=4, full):          {single:7.2f} s")
    print(f"6 separate fits:              {separate:7.2f} s  ({separate / single:.2f}x one fit)")
    print(f"grid of 6 in shared passes:   {grid:7.2f} s  ({grid / single:.2f}x one fit), {result.n_passes} passes"
          " (incl. the in-memory initialisation and the final scoring pass)")


if __name__ == "__main__":
    main()
