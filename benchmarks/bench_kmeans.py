"""KMeans benchmark: dask-em against scikit-learn and dask-ml, 20 Lloyd iterations.

1,000,000 x 16 float64, K=8, all three from the same initial centers.

- scikit-learn ``KMeans(algorithm="lloyd", max_iter=20, tol=0, n_init=1)``
  in this process (compiled, multithreaded over the machine's cores);
- dask-em ``KMeans`` with no client, in this process (the default a user
  gets: Dask's thread pool), as a whole call, reported first;
- dask-em ``KMeans`` on a LocalCluster (one single-threaded worker
  process per core), data persisted once;
- dask-ml ``KMeans`` on the same LocalCluster (optional: skipped if
  dask-ml is not installed or fails to import).

It also measures the fixed cost of one Dask round trip over the same
persisted blocks (a trivial E-step through the same engine call) and the
single-thread cost of the E-step kernel on the whole array in this process.

Run (the OPENBLAS variables pick a slower kernel on this machine; unset
them for the benchmark only)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_kmeans.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings

import dask.array as da
import numpy as np
from distributed import Client

from dask_em import KMeans
from dask_em.cluster import local_cluster
from dask_em.engine import expected_stats, fit_em, prepare_blocks
from dask_em.models.kmeans import KMeansModel, KMeansParams


@dataclasses.dataclass(frozen=True)
class _Trivial:
    """An E-step that reads nothing but the block's length: the round-trip cost."""

    def init_params(self, sample, rng):
        return np.zeros(1)

    def e_step(self, block, params):
        return {"n": np.array(float(block.shape[0])), "loglik": np.array(0.0)}

    def m_step(self, stats, params):
        return params


def make_data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs (labels keep changing for many iterations)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=1.5, size=(k, d))
    X = means[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    centers = X[rng.choice(n, k, replace=False)].copy()
    return X, centers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timed fits")
    args = parser.parse_args()
    n, d, k, n_iter = args.n_samples, args.n_features, args.n_clusters, args.n_iter

    X, C0 = make_data(n, d, k)
    rows: list[tuple[str, float, str]] = []

    def best_of(fn):
        times = []
        out = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    def timed(fn):
        """Best wall seconds of ``fn()``, the CPU seconds (this process, all threads) of that call, its result."""
        best = (float("inf"), 0.0, None)
        for _ in range(args.repeat):
            start, cpu = time.perf_counter(), time.process_time()
            out = fn()
            wall = time.perf_counter() - start
            if wall < best[0]:
                best = (wall, time.process_time() - cpu, out)
        return best

    from sklearn.cluster import KMeans as SKKMeans

    sk_time, sk_cpu, sk = timed(
        lambda: SKKMeans(k, init=C0, n_init=1, max_iter=n_iter, tol=0, algorithm="lloyd").fit(X)
    )

    # What a user gets by default: no client, this process's thread pool.
    def here_fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return KMeans(k, init=C0, max_iter=n_iter, tol=0).fit(X)

    here_fit()  # warm: compile or load numba's cache
    here_time, here_cpu, here = timed(here_fit)
    sk_iter = sk_time / sk.n_iter_
    rows.append(("scikit-learn KMeans(lloyd), whole fit", sk_iter, f"n_iter_={sk.n_iter_}"))
    rows.append(("dask-em KMeans in this process (default), whole fit", here_time / here.n_iter_,
                 f"n_iter_={here.n_iter_}"))

    # Single-thread E-step kernel on the whole array, in this process.
    model = KMeansModel(k)
    p0 = KMeansParams.from_centers(C0)
    model.e_step(X[:1000], p0)  # compile / load the cache
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        kernel, _ = best_of(lambda: model.e_step(X, p0))

    with local_cluster() as cluster, Client(cluster) as client:
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        blocks = prepare_blocks(da.from_array(X, chunks=(131_072, -1)), client, persist=True)
        client.wait_for_workers(n_workers)
        expected_stats(model, blocks, p0, client)  # warm the workers (numba cache)

        # Fixed cost of one iteration: a trivial E-step over the same blocks.
        trivial = _Trivial()
        params = np.zeros(1)
        expected_stats(trivial, blocks, params, client)
        trips = []
        for _ in range(20):
            start = time.perf_counter()
            expected_stats(trivial, blocks, params, client)
            trips.append(time.perf_counter() - start)
        round_trip = statistics.median(trips)

        # Engine iterations alone, timed per iteration by the engine.
        seconds: list[float] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_em(
                model, blocks, p0, max_iter=n_iter, tol=0.0, client=client,
                callbacks=[lambda info: seconds.append(info.seconds)],
            )
        em_iter = statistics.median(seconds)

        # The estimator, as a user calls it (one extra pass for the final inertia).
        def ours_fit():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return KMeans(k, init=C0, max_iter=n_iter, tol=0).fit(blocks.array, client=client)

        # dask-ml on the same cluster and data; its fits alternate with ours so
        # that both see the same background load.
        ml_fit = None
        try:
            import dask_ml.cluster

            def ml_fit():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return dask_ml.cluster.KMeans(n_clusters=k, init=C0, max_iter=n_iter, tol=0).fit(blocks.array)

        except Exception as exc:  # benchmark-only dependency
            print(f"dask-ml not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        ours_times, ml_times = [], []
        ours = ml = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            ours = ours_fit()
            ours_times.append(time.perf_counter() - start)
            if ml_fit is not None:
                try:
                    start = time.perf_counter()
                    ml = ml_fit()
                    ml_times.append(time.perf_counter() - start)
                except Exception as exc:
                    print(f"dask-ml failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    ml_fit = None
        ours_iter = min(ours_times) / ours.n_iter_
        ml_iter = min(ml_times) / ml.n_iter_ if ml_times else None
        rel = float(np.max(np.abs(ours.cluster_centers_ - sk.cluster_centers_) / np.abs(sk.cluster_centers_).max()))
        inertia_rel = abs(ours.inertia_ / sk.inertia_ - 1)

        rows.append(("dask-em KMeans, whole fit (incl. final inertia pass)", ours_iter, f"n_iter_={ours.n_iter_}"))
        rows.append(("dask-em engine iteration (median)", em_iter, f"{n_workers} workers, {len(blocks.parts)} blocks"))
        rows.append(("Dask round trip, trivial E-step (median)", round_trip, "fixed cost per iteration"))
        rows.append(
            ("dask-em iteration minus round trip", max(em_iter - round_trip, 0.0), "compute part of an iteration")
        )
        rows.append(("dask-em E-step kernel, 1 thread, whole array", kernel, "in-process, no Dask"))

        if ml_iter is not None:
            rows.append(("dask-ml KMeans, whole fit", ml_iter, f"n_iter_={ml.n_iter_}"))

    print(f"\nKMeans, {n:,} x {d}, K={k}, {n_iter} Lloyd iterations from the same centers\n")
    # What a user sees first: whole calls (best of --repeat), with this process's CPU seconds.
    print(f"- whole call as a user sees it, dask-em in this process (default, no client): {here_time:.3f} s "
          f"(CPU {here_cpu:.3f} s, n_iter_={here.n_iter_}); scikit-learn {sk_time:.3f} s (CPU {sk_cpu:.3f} s): "
          f"{here_time / sk_time:.2f}x its wall time, {here_cpu / sk_cpu:.2f}x its CPU time")
    print(f"- whole call on the LocalCluster (data persisted): dask-em {min(ours_times):.3f} s, "
          f"{min(ours_times) / sk_time:.2f}x scikit-learn's time"
          + (f"; dask-ml {min(ml_times):.3f} s, {min(ml_times) / here_time:.1f}x dask-em in this process's time"
             if ml_times else ""))
    print("\nBreakdown per iteration (cluster figures unless noted):\n")
    print("| what | s/iter | note |")
    print("| --- | ---: | --- |")
    for name, value, note in rows:
        print(f"| {name} | {value:.4f} | {note} |")
    print()
    print(f"- dask-em whole fit / scikit-learn: {ours_iter / sk_iter:.2f}x the time per iteration")
    print(
        f"- breakdown only (not a user-visible time): iteration minus round trip / scikit-learn "
        f"{max(em_iter - round_trip, 0.0) / sk_iter:.2f}x"
    )
    if ml_iter is not None:
        print(f"- dask-ml / dask-em whole fit: dask-em is {ml_iter / ours_iter:.1f}x faster per iteration")
    print(f"- parity with scikit-learn: centers max abs diff / max |center| = {rel:.2e}, inertia rel diff = {inertia_rel:.2e}")
    print("\ncommand: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_kmeans.py")


if __name__ == "__main__":
    main()
