"""Gaussian mixture EM: dask-em on its default LocalCluster against scikit-learn.

Both fit the same data from the same initial parameters for the same number
of iterations (no convergence test); the script reports seconds per EM
iteration for each, their ratio, and how far the two fits are apart.

    python benchmarks/bench_gmm.py                      # N=1,000,000, D=16, K=8, full and diag
    python benchmarks/bench_gmm.py --n 200000 --types full tied diag spherical

scikit-learn's time per iteration is (fit with max_iter=n) minus (fit with
max_iter=1), divided by n - 1: its fit ends with one extra E-step that this
removes. dask-em's is the mean wall time of the iterations as the engine
reports them (E-step pass, tree reduction, M-step on the client), after
one warm-up pass that compiles the kernels in the workers. CPU seconds per
iteration (all threads of scikit-learn's process; all worker processes
plus the client for dask-em) are printed too: on a machine shared with
other work they say more about the work done than wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings

import numpy as np


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """A mixture of ``k`` Gaussians with random full covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    factors = rng.normal(scale=0.5, size=(k, d, d)) / np.sqrt(d) + np.eye(d)[None]
    labels = rng.integers(k, size=n)
    X = np.empty((n, d))
    for j in range(k):
        rows = labels == j
        X[rows] = centers[j] + rng.standard_normal((int(rows.sum()), d)) @ factors[j].T
    return X


def initial_values(X: np.ndarray, k: int, covariance_type: str, seed: int = 1) -> dict[str, np.ndarray]:
    """Shared starting point: random rows as means, the data's variances as covariances."""
    rng = np.random.default_rng(seed)
    var = X[:100_000].var(axis=0)
    precisions = {
        "full": np.repeat(np.diag(1.0 / var)[None], k, axis=0),
        "tied": np.diag(1.0 / var),
        "diag": np.repeat((1.0 / var)[None], k, axis=0),
        "spherical": np.full(k, 1.0 / var.mean()),
    }[covariance_type]
    return {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": X[rng.choice(len(X), k, replace=False)].copy(),
        "precisions_init": precisions,
    }


def blas_info() -> str:
    from threadpoolctl import threadpool_info

    parts = [
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} ({i.get('num_threads')} threads)"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    env = {v: os.environ[v] for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ}
    return ", ".join(parts) + (f"; env {env}" if env else "")


def time_sklearn(X: np.ndarray, k: int, covariance_type: str, n_iter: int, inits: dict) -> tuple[float, float, object]:
    from sklearn.mixture import GaussianMixture

    def fit(max_iter: int) -> tuple[float, float, object]:
        gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=max_iter, tol=0.0, **inits)
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X)
        return time.perf_counter() - start, time.process_time() - cpu, gm

    # max_iter=0 fails in scikit-learn with precisions_init, so difference against one iteration
    base, base_cpu, _ = fit(1)
    total, total_cpu, gm = fit(n_iter)
    return (total - base) / (n_iter - 1), (total_cpu - base_cpu) / (n_iter - 1), gm


def time_dask_em(client, blocks, k: int, covariance_type: str, n_iter: int, inits: dict) -> tuple[float, float, object]:
    from dask_em import expected_stats, fit_em
    from dask_em.models._gaussian import covariances_from_precisions_cholesky, precisions_cholesky_from_precisions
    from dask_em.models.gmm import GaussianMixtureModel, GMMParams

    model = GaussianMixtureModel(k, covariance_type)
    prec_chol = precisions_cholesky_from_precisions(inits["precisions_init"], covariance_type)
    params = GMMParams(
        inits["weights_init"],
        inits["means_init"],
        covariances_from_precisions_cholesky(prec_chol, covariance_type),
        prec_chol,
    )
    expected_stats(model, blocks, params, client)  # warm-up: compiles the kernels in every worker
    seconds: list[float] = []
    cpu = _cluster_cpu(client) + time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_em(
            model, blocks, params, max_iter=n_iter, tol=0.0, client=client,
            callbacks=[lambda info: seconds.append(info.seconds)],
        )
    cpu = _cluster_cpu(client) + time.process_time() - cpu
    return float(np.mean(seconds)), cpu / n_iter, result.params


def _parameter_gap(params, sk) -> float:
    """Largest difference of the means and covariances from scikit-learn's, relative to their scale."""
    return max(
        float(np.max(np.abs(np.asarray(params.means) - sk.means_) / np.abs(sk.means_).max())),
        float(np.max(np.abs(np.asarray(params.covariances) - sk.covariances_) / np.abs(sk.covariances_).max())),
    )


def _cluster_cpu(client) -> float:
    """CPU seconds used so far by the worker processes (all their threads); none in this process."""
    return 0.0 if client is None else float(sum(client.run(time.process_time).values()))


def gemm_rate(size: int = 2000, repeats: int = 5) -> tuple[float, float]:
    """GFLOP/s of a square ``size`` x ``size`` float64 product (BLAS default threads): wall and CPU."""
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(size, size)), rng.normal(size=(size, size))
    C = A @ B
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        np.matmul(A, B, out=C)
    flops = 2.0 * size**3 * repeats / 1e9
    return flops / (time.perf_counter() - start), flops / (time.process_time() - cpu)


def full_flops(n: int, d: int, k: int) -> float:
    """Floating-point operations of a full-covariance E-step in the stacked-GEMM form:
    rows times stacked Cholesky factors (2 n d k d) and the weighted Gram matrices (2 n k d d)."""
    return 4.0 * n * k * d * d


def round_trip(client, n_blocks: int) -> float:
    """Seconds of one compute of a trivial tree reduction over ``n_blocks`` tasks."""
    import dask

    parts = [dask.delayed(np.ones)(1) for _ in range(n_blocks)]
    total = dask.delayed(sum)(parts)
    client.compute(total).result()
    start = time.perf_counter()
    for _ in range(10):
        client.compute(total).result()
    return (time.perf_counter() - start) / 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--types", nargs="+", default=["full", "diag"])
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    args = parser.parse_args(argv)

    from distributed import Client

    from dask_em.cluster import local_cluster
    from dask_em.engine import prepare_blocks

    X = make_data(args.n, args.d, args.k)
    gemm_wall, gemm_cpu = gemm_rate()
    print(f"square 2000x2000 GEMM: {gemm_wall:.1f} GFLOP/s wall, {gemm_cpu:.1f} GFLOP/s per CPU second",
          file=sys.stderr, flush=True)
    rows = []
    sk_results = {}
    for ct in args.types:
        inits = initial_values(X, args.k, ct)
        sk_results[ct] = time_sklearn(X, args.k, ct, args.iters, inits)
        print(f"scikit-learn {ct}: {sk_results[ct][0]:.3f} s/iteration, {sk_results[ct][1]:.3f} CPU s/iteration",
              file=sys.stderr, flush=True)

    with local_cluster(n_workers=args.workers) as cluster, Client(cluster) as client:
        n_workers = len(client.scheduler_info()["workers"])
        start = time.perf_counter()
        blocks = prepare_blocks(X, client)
        load = time.perf_counter() - start
        overhead = round_trip(client, len(blocks.parts))
        for ct in args.types:
            inits = initial_values(X, args.k, ct)
            ours, ours_cpu, params = time_dask_em(client, blocks, args.k, ct, args.iters, inits)
            sk_seconds, sk_cpu, sk = sk_results[ct]
            rows.append((ct, sk_seconds, ours, sk_seconds / ours, sk_cpu, ours_cpu, _parameter_gap(params, sk)))
            print(f"dask-em {ct}: {ours:.3f} s/iteration, {ours_cpu:.3f} CPU s/iteration", file=sys.stderr, flush=True)

    # dask-em's default without a client: this process, one thread per core
    local_blocks = prepare_blocks(X, None)
    for ct in args.types:
        ours, ours_cpu, params = time_dask_em(None, local_blocks, args.k, ct, args.iters, initial_values(X, args.k, ct))
        sk_seconds, sk_cpu, sk = sk_results[ct]
        rows.append((f"{ct}, in this process", sk_seconds, ours, sk_seconds / ours, sk_cpu, ours_cpu,
                     _parameter_gap(params, sk)))
        print(f"dask-em {ct} in this process: {ours:.3f} s/iteration, {ours_cpu:.3f} CPU s/iteration",
              file=sys.stderr, flush=True)

    command = "python benchmarks/bench_gmm.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"\n`{command.strip()}`\n")
    print(
        f"N={args.n:,}, D={args.d}, K={args.k}, float64, {args.iters} iterations from the same initial "
        f"parameters; {platform.machine()}, {os.cpu_count()} cores; dask-em on a LocalCluster of "
        f"{n_workers} single-threaded workers (rows \"in this process\": no client, dask-em's default: "
        f"its thread pool, the same blocks), {len(blocks.parts)} blocks (persisted in {load:.2f} s); "
        f"fixed cost of one round trip over {len(blocks.parts)} tasks: {overhead * 1000:.0f} ms. "
        f"BLAS: {blas_info()}.\n"
    )
    print(
        "| covariance_type | scikit-learn s/iter | dask-em s/iter | speed-up | "
        "scikit-learn CPU s/iter | dask-em CPU s/iter (workers + client) | max rel. difference of parameters |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ct, sk_seconds, ours, ratio, sk_cpu, ours_cpu, gap in rows:
        print(f"| {ct} | {sk_seconds:.3f} | {ours:.3f} | {ratio:.1f}x | {sk_cpu:.2f} | {ours_cpu:.2f} | {gap:.1e} |")
    flops = full_flops(args.n, args.d, args.k) / 1e9
    print(
        f"\nSquare 2000x2000 GEMM in this run: {gemm_wall:.1f} GFLOP/s wall, {gemm_cpu:.1f} GFLOP/s per CPU second. "
        f"A full-covariance iteration counted as stacked GEMMs ({flops:.1f} GFLOP): "
        + ", ".join(
            f"dask-em {r[2] and flops / r[2]:.1f} GFLOP/s wall ({flops / r[2] / gemm_wall:.0%} of the GEMM), "
            f"{flops / r[5]:.1f} per CPU second ({flops / r[5] / gemm_cpu:.0%})"
            for r in rows if r[0].startswith("full")
        )
    )


if __name__ == "__main__":
    main()
