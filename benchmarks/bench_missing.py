"""Seconds per EM iteration: MultivariateNormal with missing values vs a complete-data Gaussian.

Cases on the same data (n_samples x n_features, correlated Gaussian):

* complete data, ``GaussianMixtureModel(n_components=1, covariance_type="full")``
  (what ``dask_em.GaussianMixture(n_components=1)`` runs), the reference;
* complete data, ``MVNMissingModel`` (the missing-data model without NaN);
* 20% missing completely at random, per entry (nearly every row has its own
  missingness pattern);
* 20% missing by column blocks: 80% of the rows each miss one of four
  blocks of 5 columns (few patterns, as in data merged from several sources).

All cases run through ``dask_em.fit_em`` on the same LocalCluster with the
data persisted in the workers; the median over iterations after the first
is reported, with the CPU seconds the E-steps took (summed over blocks,
measured inside the workers; less sensitive to other load on the machine).

Run: python benchmarks/bench_missing.py [--n-samples 1000000] [--n-features 20] [--iters 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from typing import Any

import dask.array as da
import numpy as np

from dask_em import fit_em
from dask_em.cluster import get_client, local_cluster
from dask_em.engine import prepare_blocks
from dask_em.models.mvn_missing import MVNMissingModel


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    X = rng.normal(size=(n, d)) @ (A + np.eye(d)) + rng.normal(size=d)
    return X


@dataclasses.dataclass(frozen=True)
class Timed:
    """Wraps a model and adds the E-step's CPU seconds (summed over blocks) to its statistics.

    The machine may be shared: CPU time of the E-steps is less sensitive to
    other load than wall time.
    """

    inner: Any

    def init_params(self, sample, rng):
        return self.inner.init_params(sample, rng)

    def e_step(self, block, params):
        start = time.process_time()
        stats = self.inner.e_step(block, params)
        stats["cpu_seconds"] = np.array(time.process_time() - start)
        return stats

    def m_step(self, stats, params):
        self.cpu.append(float(stats["cpu_seconds"]))
        return self.inner.m_step({k: v for k, v in stats.items() if k != "cpu_seconds"}, params)

    def describe_invalid(self, n):
        return self.inner.describe_invalid(n)

    @property
    def cpu(self) -> list[float]:
        return _CPU.setdefault(id(self), [])


_CPU: dict[int, list[float]] = {}


def _seconds_per_iteration(model, blocks, client, iters: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    timed = Timed(model)
    params = model.init_params(blocks.sample(10_000, rng), rng)
    times: list[float] = []
    fit_em(timed, blocks, params, max_iter=iters, tol=0.0, client=client, warn_not_converged=False,
           callbacks=[lambda info: times.append(info.seconds)])
    rest = times[1:] or times
    cpu = timed.cpu[1:] or timed.cpu
    return statistics.median(rest), min(rest), statistics.median(cpu)


def main() -> None:
    warnings.filterwarnings("ignore", message="Sending large graph")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=20)
    parser.add_argument("--missing", type=float, default=0.2)
    parser.add_argument("--chunk-rows", type=int, default=62_500)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--small", action="store_true", help="20,000 rows, 3 iterations")
    args = parser.parse_args()
    if args.small:
        args.n_samples, args.iters, args.chunk_rows = 20_000, 3, 5_000
    n, d = args.n_samples, args.n_features
    X = _data(n, d)
    rng = np.random.default_rng(1)
    mcar = X.copy()
    mcar[rng.random(X.shape) < args.missing] = np.nan
    # each hit row misses one of four blocks of d/4 columns; P(hit) = 4 * missing gives that fraction overall
    n_groups = 4
    width = d // n_groups
    which = rng.integers(0, n_groups, size=n)
    hit = rng.random(n) < min(1.0, args.missing * n_groups)
    blocks_missing = X.copy()
    for g in range(n_groups):
        rows = np.flatnonzero(hit & (which == g))
        blocks_missing[rows, g * width : (g + 1) * width] = np.nan

    from dask_em.models.gmm import GaussianMixtureModel

    cases = [
        ("complete, GaussianMixture K=1 full", GaussianMixtureModel(1, "full"), X),
        ("complete, MultivariateNormal", MVNMissingModel(), X),
        (f"{args.missing:.0%} MCAR per entry, MultivariateNormal", MVNMissingModel(), mcar),
        (f"{np.isnan(blocks_missing).mean():.0%} missing by column blocks, MultivariateNormal", MVNMissingModel(), blocks_missing),
    ]
    print(f"{n} x {d}, chunks of {args.chunk_rows} rows, {args.iters} iterations, 2-worker LocalCluster")
    with local_cluster(n_workers=2) as cluster:
        from distributed import Client

        with Client(cluster) as client, get_client(client) as active:
            results = []
            for name, model, data in cases:
                blocks = prepare_blocks(da.from_array(data, chunks=(args.chunk_rows, -1)), active, persist=True)
                start = time.perf_counter()
                median, best, cpu = _seconds_per_iteration(model, blocks, active, args.iters)
                results.append((name, median, best, cpu))
                del blocks
    reference, reference_cpu = results[0][1], results[0][3]
    print("| case | wall s/iteration (median) | best | ratio | E-step CPU s/iteration | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for name, median, best, cpu in results:
        print(f"| {name} | {median:.3f} | {best:.3f} | {median / reference:.2f}x | {cpu:.3f} | {cpu / reference_cpu:.2f}x |")


if __name__ == "__main__":
    main()
