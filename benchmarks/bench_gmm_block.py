"""The Gaussian-mixture E-step of one block in one thread, by CPU seconds.

On a shared machine CPU time of a single-threaded call says more about the
work than wall time. This times ``GaussianMixtureModel.e_step`` on one
block (default 131,072 x 16, K=8, the benchmark's block size) with BLAS on
one thread, best and median of ``--repeats`` calls after a warm-up, and a
square 2000x2000 GEMM on one thread for scale.

    python benchmarks/bench_gmm_block.py [--types full diag] [--rows 131072]

Compare two versions of the code by running it with each on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=131_072)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--types", nargs="+", default=["full", "diag"])
    args = parser.parse_args(argv)

    import dask_em
    from dask_em.models.gmm import GaussianMixtureModel, GMMParams, precisions_cholesky_from_covariances

    rng = np.random.default_rng(0)
    N, D, K = args.rows, args.d, args.k
    X = rng.normal(size=(N, D)) * 2 + rng.normal(size=(1, D)) * 3
    with threadpool_limits(1):
        A, B = rng.normal(size=(2000, 2000)), rng.normal(size=(2000, 2000))
        C = A @ B
        cpu = time.process_time()
        for _ in range(3):
            np.matmul(A, B, out=C)
        gemm = 3 * 2 * 2000**3 / (time.process_time() - cpu) / 1e9
    print(f"dask_em from {os.path.dirname(dask_em.__file__)}; load average {os.getloadavg()[0]:.1f}")
    print(f"square 2000x2000 GEMM, one thread: {gemm:.1f} GFLOP/s per CPU second")
    for ct in args.types:
        means = X[rng.choice(N, K, replace=False)]
        if ct == "full":
            F = rng.normal(size=(K, D, D)) * 0.3 + np.eye(D)
            cov = F @ F.transpose(0, 2, 1)
        else:
            cov = {"tied": np.eye(D) * 4, "diag": np.full((K, D), 4.0), "spherical": np.full(K, 4.0)}[ct]
        params = GMMParams(np.full(K, 1 / K), means, cov, precisions_cholesky_from_covariances(cov, ct))
        model = GaussianMixtureModel(K, ct)
        with threadpool_limits(1):
            model.e_step(X, params)
            times = []
            for _ in range(args.repeats):
                cpu = time.process_time()
                model.e_step(X, params)
                times.append(time.process_time() - cpu)
        best, median = min(times), float(np.median(times))
        line = f"{ct}: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms CPU per {N:,} rows"
        if ct == "full":
            flops = 4.0 * N * K * D * D / 1e9  # the two stacked GEMMs of the BLAS formulation
            line += f" ({flops / best:.1f} GFLOP/s counted as stacked GEMMs, {flops / best / gemm:.0%} of the GEMM)"
        print(line + f"; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
