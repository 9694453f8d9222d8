"""KMeans E-step kernel: thread CPU of one block over a grid of clusters x features.

One E-step (nearest centers, exact distances, counts and sums, the farthest
rows) on a block of 16.8 MB (131,072 rows of 16 float64 features; fewer rows
of more features), in one thread of this process: the best of three rounds,
each the mean of ``--reps`` calls.

To compare two versions, run this script alternately in each checkout's
environment (two copies of the package in one process clash in numba)::

    python benchmarks/bench_kmeans_kernel.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_kmeans_kernel.py

``--grid 8x16 10x784`` measures only those K x D.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import dask_em
from dask_em.models.kmeans import KMeansModel, KMeansParams

GRID = ["8x16", "3x4", "16x16", "2x2", "64x8", "256x8", "1000x16", "8x64", "10x784", "100x50"]


def block_cpu_ms(k: int, d: int, reps: int) -> tuple[int, float]:
    """Rows of the block and the best mean thread CPU of one E-step, in ms."""
    n = 131072 * 16 // max(d, 16)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)) + rng.integers(0, 4, size=(n, 1))
    model, params = KMeansModel(k), KMeansParams.from_centers(X[rng.choice(n, k, replace=False)])
    model.e_step(X, params)  # compiled kernels loaded
    reps = max(1, reps // 4) if k >= 256 else reps
    best = np.inf
    for _ in range(3):
        t = time.thread_time()
        for _ in range(reps):
            model.e_step(X, params)
        best = min(best, (time.thread_time() - t) / reps * 1e3)
    return n, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="*", default=GRID, help="K x D pairs, such as 8x16")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    print(f"dask_em from {dask_em.__file__}")
    for pair in args.grid:
        k, d = map(int, pair.split("x"))
        n, ms = block_cpu_ms(k, d, args.reps)
        print(f"K={k:5d} D={d:4d} rows={n:7d}: {ms:7.2f} ms thread CPU per E-step", flush=True)


if __name__ == "__main__":
    main()
