"""Variational Gaussian mixture: dask-em's BayesianGaussianMixture against scikit-learn's.

Both start from the same initial responsibilities (every row assigned to
the nearest of K rows drawn at random) with the same prior (scikit-learn's
defaults from the data) and run the same number of iterations (``tol=0``).
Printed side by side, from one run: the whole call (initial update, the
iterations and, for scikit-learn, its final E-step and prior defaults) and
the time per iteration, in wall and CPU seconds, and how far the two fits
are apart.

    python benchmarks/bench_vbgmm.py                    # N=1,000,000, D=16, K=8, full
    python benchmarks/bench_vbgmm.py --types full diag --iters 10

scikit-learn's time per iteration is (fit with ``max_iter=n``) minus (fit
with ``max_iter=1``), divided by n - 1. dask-em's is the mean wall time of
the engine's iterations (E-step pass, tree reduction, update and ELBO on
the client), after one warm-up pass that compiles the kernels in the
workers. CPU seconds: all threads of scikit-learn's process; all worker
processes plus the client for dask-em.
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

from bench_gmm import _cluster_cpu, blas_info, make_data, round_trip


def initial_centers(X: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return X[rng.choice(len(X), k, replace=False)].copy()


def nearest(X: np.ndarray, centers: np.ndarray, rows: int = 65_536) -> np.ndarray:
    """Label of the nearest centre, computed as dask-em's hard assignment does (about their mean)."""
    center = centers.mean(axis=0)
    c = centers - center
    c_sq = (c * c).sum(axis=1)
    labels = np.empty(len(X), np.int64)
    for start in range(0, len(X), rows):
        Y = X[start : start + rows] - center
        labels[start : start + rows] = ((Y * Y).sum(axis=1)[:, None] - 2.0 * (Y @ c.T) + c_sq).argmin(axis=1)
    return labels


def time_sklearn(X: np.ndarray, labels: np.ndarray, k: int, ct: str, n_iter: int) -> dict:
    from sklearn.mixture import BayesianGaussianMixture

    resp = np.zeros((len(X), k))
    resp[np.arange(len(X)), labels] = 1.0

    class FromResponsibilities(BayesianGaussianMixture):
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, resp)

    def fit(max_iter: int) -> tuple[float, float, object]:
        model = FromResponsibilities(n_components=k, covariance_type=ct, max_iter=max_iter, tol=0.0)
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X)
        return time.perf_counter() - start, time.process_time() - cpu, model

    base, base_cpu, _ = fit(1)
    total, total_cpu, model = fit(n_iter)
    return {"call": total, "call_cpu": total_cpu, "iter": (total - base) / (n_iter - 1),
            "iter_cpu": (total_cpu - base_cpu) / (n_iter - 1), "model": model}


def time_dask_em(client, blocks, X: np.ndarray, centers: np.ndarray, k: int, ct: str, n_iter: int) -> dict:
    from dask_em import expected_stats, fit_em
    from dask_em.models.gmm import HardAssignment
    from dask_em.models.vbgmm import BayesianGaussianMixtureModel

    hard = HardAssignment(centers=centers, covariance_type=ct)
    cov = np.cov(X.T) if ct in ("full", "tied") else X.var(axis=0, ddof=1)
    model = BayesianGaussianMixtureModel(k, ct).with_prior_defaults(X.shape[1], X.mean(axis=0), cov)
    start0 = model.params_from_stats(expected_stats(hard, blocks, None, client), hard.reference())
    expected_stats(model, blocks, start0, client)  # warm-up: compiles the kernels in every worker
    seconds: list[float] = []
    cpu = _cluster_cpu(client) + time.process_time()
    wall = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = model.params_from_stats(expected_stats(hard, blocks, None, client), hard.reference())
        result = fit_em(model, blocks, start, max_iter=n_iter, tol=0.0, tol_on="total", client=client,
                        callbacks=[lambda info: seconds.append(info.seconds)])
    wall = time.perf_counter() - wall
    cpu = _cluster_cpu(client) + time.process_time() - cpu
    per_iter_cpu = cpu / (n_iter + 1)  # the iterations and the initial pass, alike
    return {"call": wall, "call_cpu": cpu, "iter": float(np.mean(seconds)), "iter_cpu": per_iter_cpu,
            "params": result.params, "history": result.history}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--types", nargs="+", default=["full"])
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: one per core)")
    args = parser.parse_args(argv)

    from distributed import Client

    from dask_em.cluster import local_cluster
    from dask_em.engine import prepare_blocks

    load_before = os.getloadavg()
    X = make_data(args.n, args.d, args.k)
    centers = initial_centers(X, args.k)
    labels = nearest(X, centers)
    sk = {}
    for ct in args.types:
        sk[ct] = time_sklearn(X, labels, args.k, ct, args.iters)
        print(f"scikit-learn {ct}: {sk[ct]['iter']:.3f} s/iteration, {sk[ct]['iter_cpu']:.3f} CPU s/iteration",
              file=sys.stderr, flush=True)
    rows = []
    with local_cluster(n_workers=args.workers) as cluster, Client(cluster) as client:
        n_workers = len(client.scheduler_info()["workers"])
        blocks = prepare_blocks(X, client)
        overhead = round_trip(client, len(blocks.parts))
        for ct in args.types:
            ours = time_dask_em(client, blocks, X, centers, args.k, ct, args.iters)
            ref = sk[ct]["model"]
            params = ours["params"]
            gap = max(
                float(np.max(np.abs(params.means - ref.means_)) / np.abs(ref.means_).max()),
                float(np.max(np.abs(params.covariances - ref.covariances_)) / np.abs(ref.covariances_).max()),
                float(np.max(np.abs(np.asarray(ours["history"]) - np.ravel(ref.lower_bounds_)))
                      / abs(ref.lower_bound_)),
            )
            rows.append((ct, sk[ct], ours, gap))
            print(f"dask-em {ct}: {ours['iter']:.3f} s/iteration, {ours['iter_cpu']:.3f} CPU s/iteration",
                  file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    command = "python benchmarks/bench_vbgmm.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"\n`{command.strip()}`\n")
    print(
        f"N={args.n:,}, D={args.d}, K={args.k}, float64, {args.iters} iterations from the same initial "
        f"responsibilities, Dirichlet process prior with scikit-learn's defaults; {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before and {load_after[0]:.1f} after; "
        f"dask-em on a LocalCluster of {n_workers} single-threaded workers, {len(blocks.parts)} blocks; "
        f"fixed cost of one round trip: {overhead * 1000:.0f} ms. BLAS: {blas_info()}.\n"
    )
    print(
        "| covariance_type | scikit-learn s/iter | dask-em s/iter | speed-up | scikit-learn CPU s/iter | "
        "dask-em CPU s/iter | scikit-learn whole call s (CPU) | dask-em whole call s (CPU) | "
        "max rel. difference |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ct, s, o, gap in rows:
        print(
            f"| {ct} | {s['iter']:.3f} | {o['iter']:.3f} | {s['iter'] / o['iter']:.1f}x | {s['iter_cpu']:.2f} | "
            f"{o['iter_cpu']:.2f} | {s['call']:.2f} ({s['call_cpu']:.2f}) | {o['call']:.2f} ({o['call_cpu']:.2f}) | "
            f"{gap:.1e} |"
        )


if __name__ == "__main__":
    main()
