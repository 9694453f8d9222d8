"""HMMs: dask-em against hmmlearn, same data, same initial parameters.

1,000 sequences of 1,000 steps, K=5 states, 10 EM iterations. The emission
model is chosen with ``--emission``:

* ``gaussian-diag`` (default): D=4 features, diagonal covariances;
  hmmlearn ``GaussianHMM(covariance_type="diag")``;
* ``gaussian-full``: the same data, full covariances; hmmlearn
  ``GaussianHMM(covariance_type="full")``;
* ``categorical``: ``--symbols`` symbols (default 8); hmmlearn ``CategoricalHMM``;
* ``poisson``: D=4 count features; hmmlearn ``PoissonHMM``.

hmmlearn runs with ``implementation="log"`` (its default) and
``"scaling"``, and "scaling" again with BLAS limited to one thread (its
full covariances make many small triangular solves that a multi-threaded
BLAS slows down); dask-em twice: in this process with no client (the
default a user gets: Dask's thread pool, one thread per core), as a whole
``fit(X, lengths)`` call divided by the iterations (partitioning included),
and on a LocalCluster of ``--workers`` single-threaded worker processes with
the data scattered once (not counted).

Every row has wall and CPU seconds per iteration (CPU of this process, all
threads, plus the cluster's workers for the cluster row) and two ratios
against dask-em in this process: wall (what a user sees) and CPU (the work,
so a one-process library is not compared with two processes' wall time).

    python benchmarks/bench_hmm.py [--emission gaussian-diag] [--n-seq 1000] [--length 1000] [--iters 10]

It also times the E-step of one partition of half the data in this process
(one thread): the three-pass path (emission log-densities of the whole
partition, forward-backward, statistics) by part, and the model's E-step
as shipped (a fused compiled kernel where the model has one), and prints
the load average beside each measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

from bench_gmm import _cluster_cpu

EMISSIONS = ("gaussian-diag", "gaussian-full", "categorical", "poisson")


def _states(rng: np.random.Generator, n_seq: int, length: int, startprob: np.ndarray,
            transmat: np.ndarray) -> np.ndarray:
    K = len(startprob)
    n = n_seq * length
    states = np.empty(n, dtype=np.int64)
    cdf = np.cumsum(transmat, axis=1)
    u = rng.random(n)
    for s in range(n_seq):
        lo = s * length
        states[lo] = rng.choice(K, p=startprob)
        for t in range(lo + 1, lo + length):
            states[t] = min(np.searchsorted(cdf[states[t - 1]], u[t], side="right"), K - 1)
    return states


def make_data(n_seq: int, length: int, K: int, D: int, seed: int = 0):
    """Gaussian observations with diagonal covariances and a diagonal start."""
    rng = np.random.default_rng(seed)
    transmat = 0.8 * np.eye(K) + 0.2 * rng.dirichlet(np.ones(K), size=K)
    startprob = rng.dirichlet(np.ones(K))
    means = rng.normal(scale=3.0, size=(K, D))
    sds = rng.uniform(0.5, 1.5, size=(K, D))
    states = _states(rng, n_seq, length, startprob, transmat)
    n = n_seq * length
    X = means[states] + sds[states] * rng.normal(size=(n, D))
    init = dict(
        startprob=np.full(K, 1.0 / K),
        transmat=0.5 * np.eye(K) + 0.5 / K,
        means=means + rng.normal(scale=0.5, size=(K, D)),
        covars=np.ones((K, D)),
    )
    return X, np.full(n_seq, length), init


def make_case(emission: str, n_seq: int, length: int, K: int, D: int, M: int, seed: int = 0):
    """Data, lengths and initial parameters (hmmlearn's attribute names without ``_``)."""
    if emission == "gaussian-diag":
        return make_data(n_seq, length, K, D, seed)
    if emission == "gaussian-full":
        X, lengths, init = make_data(n_seq, length, K, D, seed)
        init["covars"] = np.tile(np.eye(D), (K, 1, 1))
        return X, lengths, init
    rng = np.random.default_rng(seed)
    transmat = 0.8 * np.eye(K) + 0.2 * rng.dirichlet(np.ones(K), size=K)
    startprob = rng.dirichlet(np.ones(K))
    states = _states(rng, n_seq, length, startprob, transmat)
    init = dict(startprob=np.full(K, 1.0 / K), transmat=0.5 * np.eye(K) + 0.5 / K)
    if emission == "categorical":
        emissionprob = rng.dirichlet(np.full(M, 0.5), size=K)
        cdf = np.cumsum(emissionprob, axis=1)
        X = np.minimum((cdf[states] <= rng.random(len(states))[:, None]).sum(axis=1), M - 1)
        X = X.reshape(-1, 1).astype(np.int64)
        init["emissionprob"] = 0.5 * emissionprob + 0.5 * rng.dirichlet(np.ones(M), size=K)
    elif emission == "poisson":
        lambdas = rng.uniform(0.5, 12.0, size=(K, D))
        X = rng.poisson(lambdas[states]).astype(np.int64)
        init["lambdas"] = lambdas * rng.uniform(0.7, 1.3, size=(K, D))
    else:
        raise ValueError(f"--emission must be one of {EMISSIONS}, got {emission!r}")
    return X, np.full(n_seq, length), init


def _estimator(emission: str, K: int, n_iter: int, init: dict, M: int):
    from dask_em import CategoricalHMM, GaussianHMM, PoissonHMM

    common = dict(max_iter=n_iter, tol=0.0, startprob_init=init["startprob"], transmat_init=init["transmat"])
    if emission.startswith("gaussian"):
        return GaussianHMM(K, covariance_type=emission.split("-")[1], means_init=init["means"],
                           covars_init=init["covars"], **common)
    if emission == "categorical":
        return CategoricalHMM(K, n_features=M, emissionprob_init=init["emissionprob"], **common)
    return PoissonHMM(K, lambdas_init=init["lambdas"], **common)


def _reference(emission: str, K: int, n_iter: int, init: dict, M: int, impl: str):
    from hmmlearn import hmm

    kw = dict(init_params="", n_iter=n_iter, tol=-np.inf, implementation=impl)
    if emission.startswith("gaussian"):
        ref = hmm.GaussianHMM(K, covariance_type=emission.split("-")[1], **kw)
        ref.means_, ref.covars_ = init["means"], init["covars"]
    elif emission == "categorical":
        ref = hmm.CategoricalHMM(K, n_features=M, **kw)
        ref.emissionprob_ = init["emissionprob"]
    else:
        ref = hmm.PoissonHMM(K, **kw)
        ref.lambdas_ = init["lambdas"]
    ref.startprob_, ref.transmat_ = init["startprob"], init["transmat"]
    return ref


def _model_and_params(emission: str, K: int, D: int, init: dict, M: int):
    from dask_em.models import hmm as m

    if emission.startswith("gaussian"):
        model = m.GaussianHMMModel(n_components=K, covariance_type=emission.split("-")[1])
        return model, m.GaussianHMMParams(init["startprob"], init["transmat"], init["means"], init["covars"])
    if emission == "categorical":
        model = m.CategoricalHMMModel(n_components=K, n_features=M)
        return model, m.CategoricalHMMParams(init["startprob"], init["transmat"], init["emissionprob"])
    model = m.PoissonHMMModel(n_components=K)
    return model, m.PoissonHMMParams(init["startprob"], init["transmat"], init["lambdas"])


def _load() -> tuple[float, ...]:
    return tuple(round(v, 2) for v in os.getloadavg())


def _best(func, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def kernel_profile(X: np.ndarray, lengths: np.ndarray, init: dict, K: int, emission: str = "gaussian-diag",
                   M: int = 0) -> list[tuple[str, float]]:
    """Best-of-5 seconds of one partition's E-step in one thread, by part."""
    from dask_em.models.hmm.base import _HMMBase, forward_backward

    half = len(lengths) // 2
    values = X[: int(lengths[:half].sum())]
    values = values.astype(np.float64) if emission != "categorical" else values
    part = (values, lengths[:half].astype(np.int64))
    D = X.shape[1] if X.ndim == 2 else 1
    model, params = _model_and_params(emission, K, D, init, M)
    model.e_step(part, params)
    _HMMBase.e_step(model, part, params)
    logB, _ = model.log_emission(part[0], params)
    gamma = np.empty_like(logB)

    def fb() -> None:
        forward_backward(logB.copy(), part[1], params.startprob, params.transmat, gamma, np.zeros(K),
                         np.zeros((K, K)))

    copy = _best(logB.copy)
    shipped = "fused kernel: whole E-step" if emission == "gaussian-diag" else "model.e_step as shipped: whole E-step"
    return [
        ("three-pass: emission log-densities", _best(lambda: model.log_emission(part[0], params))),
        ("three-pass: scaled forward-backward", max(_best(fb) - copy, 0.0)),
        ("three-pass: statistics", _best(lambda: model.emission_stats(part[0], gamma, params))),
        ("three-pass: whole E-step", _best(lambda: _HMMBase.e_step(model, part, params))),
        (shipped, _best(lambda: model.e_step(part, params))),
    ]


def _max_rel(ours, ref, emission: str) -> float:
    name = {"categorical": "emissionprob_", "poisson": "lambdas_"}.get(emission, "means_")
    a, b = getattr(ours, name), getattr(ref, name)
    return max(
        float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))),
        float(np.max(np.abs(ours.transmat_ - ref.transmat_) / ref.transmat_)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emission", choices=EMISSIONS, default="gaussian-diag")
    parser.add_argument("--n-seq", type=int, default=1000)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--states", type=int, default=5)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--symbols", type=int, default=8, help="number of symbols (categorical)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true", help="skip the one-partition E-step profile")
    args = parser.parse_args()

    from distributed import Client

    from dask_em import sequence_blocks
    from dask_em.cluster import local_cluster

    warnings.simplefilter("ignore")
    load_start = _load()
    emission = args.emission
    K, D, M, n_iter = args.states, args.features, args.symbols, args.iters
    X, lengths, init = make_case(emission, args.n_seq, args.length, K, D, M)
    rows = []

    def ref(impl: str, blas_threads: int | None = None) -> tuple[float, float, object]:
        from threadpoolctl import threadpool_limits

        model = _reference(emission, K, n_iter, init, M, impl)
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            start, cpu = time.perf_counter(), time.process_time()
            model.fit(X, lengths)
            return (time.perf_counter() - start) / n_iter, (time.process_time() - cpu) / n_iter, model

    # in this process, no client: the default; warm first (numba compiles or loads its cache)
    here = _estimator(emission, K, n_iter, init, M)
    here.set_params(max_iter=1).fit(X[: 10 * args.length], lengths[:10])
    here.set_params(max_iter=n_iter)
    start, cpu = time.perf_counter(), time.process_time()
    here.fit(X, lengths)
    here_wall, here_cpu = (time.perf_counter() - start) / n_iter, (time.process_time() - cpu) / n_iter
    load_here = _load()

    with local_cluster(n_workers=args.workers) as cluster, Client(cluster, set_as_default=False) as client:
        ours = _estimator(emission, K, n_iter, init, M)
        # warm-up: compile the kernels in the workers (numba caches them on disk)
        ours.set_params(max_iter=1).fit(X[: 10 * args.length], lengths[:10], client=client)
        ours.set_params(max_iter=n_iter)
        # partition and scatter the data once (what a persisted dataset costs once)
        start = time.perf_counter()
        blocks = sequence_blocks(X, lengths, client=client, dtype=ours._values_dtype)
        setup = time.perf_counter() - start
        start, cpu = time.perf_counter(), _cluster_cpu(client) + time.process_time()
        ours.fit(blocks, client=client)
        per_iter = (time.perf_counter() - start) / n_iter
        per_iter_cpu = (_cluster_cpu(client) + time.process_time() - cpu) / n_iter
    load_fit = _load()
    scaling, scaling_cpu, ref_scaling = ref("scaling")
    log, log_cpu, ref_log = ref("log")
    # hmmlearn's full covariances make many small triangular solves, which a 2-thread BLAS
    # on a busy 2-core machine makes several times slower: also time it with one BLAS thread
    scaling_1, scaling_1_cpu, _ = ref("scaling", blas_threads=1)
    load_ref = _load()
    profile = [] if args.no_profile else kernel_profile(X, lengths, init, K, emission, M)
    load_profile = _load()
    diff = _max_rel(ours, ref_scaling, emission)
    loglik_rel = abs(ours.history_[-1] - ref_scaling.monitor_.history[-1]) / abs(ref_scaling.monitor_.history[-1])
    cls = {"categorical": "CategoricalHMM", "poisson": "PoissonHMM"}.get(emission, "GaussianHMM")
    rows.append((f"dask-em {cls}, in this process (default, no client; whole call / iterations)", here_wall, here_cpu))
    rows.append((f"dask-em {cls}, LocalCluster of {args.workers} workers (data scattered once)", per_iter,
                 per_iter_cpu))
    rows.append((f'hmmlearn {cls} implementation="scaling"', scaling, scaling_cpu))
    rows.append((f'hmmlearn {cls} implementation="log"', log, log_cpu))
    rows.append((f'hmmlearn {cls} implementation="scaling", BLAS limited to 1 thread', scaling_1, scaling_1_cpu))

    print(f"command: python {' '.join(sys.argv)}")
    if emission.startswith("gaussian"):
        what = f"D={D}, {emission.split('-')[1]}"
    elif emission == "categorical":
        what = f"{M} symbols"
    else:
        what = f"D={D} Poisson counts"
    print(f"data: {args.n_seq} sequences x {args.length} steps, K={K}, {what}, {n_iter} iterations\n")
    print(f"load average (1, 5, 15 min): {load_start} at start, {load_here} after dask-em in process, "
          f"{load_fit} after dask-em on the cluster, "
          f"{load_ref} after hmmlearn, {load_profile} after the kernel profile\n")
    print(f"dask-em: {len(blocks.parts)} partitions, scattered once in {setup:.2f} s (not in s/iter)\n")
    print("| implementation | s/iter | CPU s/iter | dask-em in process faster by (wall) | (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name, sec, cpu in rows:
        print(f"| {name} | {sec:.3f} | {cpu:.3f} | {sec / here_wall:.1f}x | {cpu / here_cpu:.1f}x |")
    print(f"\nmax relative difference of {'means' if emission.startswith('gaussian') else 'emission'}/transmat "
          f"vs hmmlearn after {n_iter} iterations: {diff:.1e}; log-likelihood: {loglik_rel:.1e}")
    if profile:
        n_part = int(lengths[: len(lengths) // 2].sum())
        print(f"\nE-step of one partition of {n_part:,} steps in one thread (best of 5):\n")
        print("| part | s |")
        print("|---|---:|")
        for name, sec in profile:
            print(f"| {name} | {sec:.4f} |")


if __name__ == "__main__":
    main()
