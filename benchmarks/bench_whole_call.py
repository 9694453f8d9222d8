"""Time to answer on everyday data: whole calls side by side, in this process.

What a user sees: the wall time of the whole ``fit`` call (validation,
initialisation, every pass, scoring), with the CPU seconds of this process
beside it, and the per-iteration figure where it means something. No
client is given, so dask-em runs in this process on its thread pool.

1. Iris-sized GaussianMixture (150 x 4, K=3, default settings), warm:
   median of ``--repeat`` calls; plus the first call of a fresh Python
   process with numba's on-disk cache empty (compilation) and filled.
2. GaussianMixture full, 300,000 x 16, K=8, 5 iterations from ``means_init``
   (``tol=0``), against scikit-learn's whole call from the same means.
3. KMeans, 1,000,000 x 16, K=8, 20 Lloyd iterations from the same centers
   (``n_init=1``, ``tol=0``), against scikit-learn and dask-ml (with its
   defaults, dask's threads in this process: given the numpy array, and given a
   Dask array of dask-em's blocks; the faster is the reference).

Run::

    python benchmarks/bench_whole_call.py            # all three
    python benchmarks/bench_whole_call.py --small    # a quick check at 1/10 the sizes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median wall seconds and median CPU seconds (this process, all threads) of ``fn()``."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def row(what: str, wall: float, cpu: float, n_iter: int | None = None, ref: float | None = None) -> None:
    per_iter = f"{wall / n_iter:8.4f}" if n_iter else "       -"
    ratio = f"{ref / wall:6.2f}x" if ref else "      "
    print(f"{what:62s} {wall:9.4f} {cpu:9.3f} {per_iter} {ratio}", flush=True)


def header(title: str) -> None:
    print(f"\n{title}\n{'call':62s} {'wall s':>9s} {'CPU s':>9s} {'s/iter':>8s} {'speed-up':>7s}", flush=True)


COLD = """
import time; t = time.perf_counter()
import warnings; warnings.simplefilter("ignore")
from sklearn.datasets import load_iris
import dask_em
dask_em.GaussianMixture(3, random_state=0).fit(load_iris().data)
print(time.perf_counter() - t)
"""


def iris(repeat: int) -> None:
    from sklearn.datasets import load_iris
    from sklearn.mixture import GaussianMixture as SKGMM

    import dask_em

    X = load_iris().data
    header("Iris 150 x 4, GaussianMixture(3) defaults, warm (median)")
    dask_em.GaussianMixture(3, random_state=0).fit(X)
    SKGMM(3, random_state=0).fit(X)
    sk_wall, sk_cpu, sk = timed(lambda: SKGMM(3, random_state=0).fit(X), repeat)
    em_wall, em_cpu, em = timed(lambda: dask_em.GaussianMixture(3, random_state=0).fit(X), repeat)
    row(f"scikit-learn ({sk.n_iter_} iterations)", sk_wall, sk_cpu, sk.n_iter_)
    row(f"dask-em ({em.n_iter_} iterations)", em_wall, em_cpu, em.n_iter_)
    print(f"dask-em / scikit-learn wall: {em_wall / sk_wall:.2f}x")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("empty numba cache (compiles)", "filled numba cache"):
            out = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, env=env, check=True)
            print(f"first call in a new process, import included, {label}: {float(out.stdout):.2f} s")


def gmm_full(n: int, repeat: int) -> None:
    from sklearn.mixture import GaussianMixture as SKGMM

    import dask_em

    rng = np.random.default_rng(0)
    d, k, n_iter = 16, 8, 5
    means = rng.normal(scale=3.0, size=(k, d))
    X = means[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    means_init = X[rng.choice(n, k, replace=False)]
    settings = dict(n_components=k, covariance_type="full", max_iter=n_iter, tol=0.0, means_init=means_init)
    header(f"GaussianMixture full, {n:,} x {d}, K={k}, {n_iter} iterations from means_init")
    dask_em.GaussianMixture(**settings).fit(X[:10_000])  # compiled kernels loaded
    sk_wall, sk_cpu, _ = timed(lambda: SKGMM(**settings).fit(X), repeat)
    em_wall, em_cpu, _ = timed(lambda: dask_em.GaussianMixture(**settings).fit(X), repeat)
    row("scikit-learn whole fit", sk_wall, sk_cpu, n_iter)
    row("dask-em whole fit", em_wall, em_cpu, n_iter, ref=sk_wall)


def kmeans(n: int, repeat: int) -> None:
    from sklearn.cluster import KMeans as SKKMeans

    import dask_em

    rng = np.random.default_rng(0)
    d, k, n_iter = 16, 8, 20
    centers = rng.normal(scale=1.5, size=(k, d))
    X = centers[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    C0 = X[rng.choice(n, k, replace=False)].copy()
    header(f"KMeans, {n:,} x {d}, K={k}, {n_iter} Lloyd iterations from the same centers")
    settings = dict(n_clusters=k, init=C0, n_init=1, max_iter=n_iter, tol=0.0)
    dask_em.KMeans(**settings).fit(X[:10_000])
    sk_wall, sk_cpu, sk = timed(lambda: SKKMeans(algorithm="lloyd", **settings).fit(X), repeat)
    em_wall, em_cpu, em = timed(lambda: dask_em.KMeans(**settings).fit(X), repeat)
    row(f"scikit-learn whole fit ({sk.n_iter_} it)", sk_wall, sk_cpu, sk.n_iter_)
    row(f"dask-em whole fit ({em.n_iter_} it)", em_wall, em_cpu, em.n_iter_, ref=sk_wall)
    try:
        import dask.array as da
        from dask_ml.cluster import KMeans as DMKMeans
    except Exception as exc:  # optional: the `bench` extra
        print(f"dask-ml not available ({type(exc).__name__}: {exc})")
        return
    from dask_em.data import as_dask_array

    # dask-ml as its users run it, with its defaults (dask's threaded scheduler in this
    # process, no client): given the numpy array itself (dask-ml cuts it into one block
    # per core), and given a Dask array of dask-em's blocks. The faster is the reference.
    Xd = da.from_array(X, chunks=as_dask_array(X).chunks)
    results = {}
    for label, data in (("numpy input, dask-ml's blocks", X), (f"dask array, {Xd.numblocks[0]} blocks as dask-em's", Xd)):
        dm_wall, dm_cpu, dm = timed(lambda data=data: DMKMeans(**settings).fit(data), repeat)
        row(f"dask-ml whole fit ({dm.n_iter_} it), {label}", dm_wall, dm_cpu, dm.n_iter_, ref=sk_wall)
        results[label] = (dm_wall, dm_cpu)
    dm_wall, dm_cpu = min(results.values())
    print(f"dask-em vs dask-ml (its faster input): {dm_wall / em_wall:.1f}x faster wall, {dm_cpu / em_cpu:.1f}x less CPU; "
          f"vs scikit-learn: {em_wall / sk_wall:.2f}x its wall time, {em_cpu / sk_cpu:.2f}x its CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="1/10 of the sizes, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["iris", "gmm", "kmeans"], default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    repeat = 1 if args.small else args.repeat
    scale = 10 if args.small else 1
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} cores")
    if args.only in (None, "iris"):
        iris(max(repeat, 5))
    if args.only in (None, "gmm"):
        gmm_full(300_000 // scale, repeat)
    if args.only in (None, "kmeans"):
        kmeans(1_000_000 // scale, repeat)
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


if __name__ == "__main__":
    main()
