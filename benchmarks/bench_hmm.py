"""GaussianHMM: dask-em against hmmlearn, same data, same initial parameters.

1,000 sequences of 1,000 steps, K=5 states, D=4 features, diagonal
covariances, 10 EM iterations. hmmlearn runs with ``implementation="log"``
(its default) and ``"scaling"``; dask-em on a LocalCluster of one
single-threaded worker process per core.

    python benchmarks/bench_hmm.py [--n-seq 1000] [--length 1000] [--iters 10]

It also times the E-step of one partition of half the data in this process
(one thread): the fused diagonal kernel against the three-pass path
(emission log-densities, forward-backward, statistics) that full and tied
covariances use, and prints the load average beside each measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np


def make_data(n_seq: int, length: int, K: int, D: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    transmat = 0.8 * np.eye(K) + 0.2 * rng.dirichlet(np.ones(K), size=K)
    startprob = rng.dirichlet(np.ones(K))
    means = rng.normal(scale=3.0, size=(K, D))
    sds = rng.uniform(0.5, 1.5, size=(K, D))
    n = n_seq * length
    states = np.empty(n, dtype=np.int64)
    cdf = np.cumsum(transmat, axis=1)
    u = rng.random(n)
    for s in range(n_seq):
        lo = s * length
        states[lo] = rng.choice(K, p=startprob)
        for t in range(lo + 1, lo + length):
            states[t] = min(np.searchsorted(cdf[states[t - 1]], u[t], side="right"), K - 1)
    X = means[states] + sds[states] * rng.normal(size=(n, D))
    init = dict(
        startprob=np.full(K, 1.0 / K),
        transmat=0.5 * np.eye(K) + 0.5 / K,
        means=means + rng.normal(scale=0.5, size=(K, D)),
        covars=np.ones((K, D)),
    )
    return X, np.full(n_seq, length), init


def _load() -> tuple[float, ...]:
    return tuple(round(v, 2) for v in os.getloadavg())


def _best(func, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def kernel_profile(X: np.ndarray, lengths: np.ndarray, init: dict, K: int) -> list[tuple[str, float]]:
    """Best-of-5 seconds of one partition's E-step in one thread, by part."""
    from dask_em.models.hmm import GaussianHMMModel, GaussianHMMParams, _HMMBase, forward_backward

    half = len(lengths) // 2
    part = (X[: int(lengths[:half].sum())], lengths[:half].astype(np.int64))
    model = GaussianHMMModel(n_components=K, covariance_type="diag")
    params = GaussianHMMParams(init["startprob"], init["transmat"], init["means"], init["covars"])
    model.e_step(part, params)
    _HMMBase.e_step(model, part, params)
    logB, _ = model.log_emission(part[0], params)
    gamma = np.empty_like(logB)

    def fb() -> None:
        forward_backward(logB.copy(), part[1], params.startprob, params.transmat, gamma, np.zeros(K),
                         np.zeros((K, K)))

    copy = _best(logB.copy)
    return [
        ("three-pass: emission log-densities", _best(lambda: model.log_emission(part[0], params))),
        ("three-pass: scaled forward-backward", max(_best(fb) - copy, 0.0)),
        ("three-pass: statistics", _best(lambda: model.emission_stats(part[0], gamma, params))),
        ("three-pass: whole E-step", _best(lambda: _HMMBase.e_step(model, part, params))),
        ("fused kernel: whole E-step", _best(lambda: model.e_step(part, params))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-seq", type=int, default=1000)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--states", type=int, default=5)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client

    from dask_em import GaussianHMM, sequence_blocks
    from dask_em.cluster import local_cluster
    from hmmlearn import hmm

    warnings.simplefilter("ignore")
    load_start = _load()
    K, D, n_iter = args.states, args.features, args.iters
    X, lengths, init = make_data(args.n_seq, args.length, K, D)
    rows = []

    def ref(impl: str) -> tuple[float, object]:
        model = hmm.GaussianHMM(K, covariance_type="diag", init_params="", n_iter=n_iter, tol=-np.inf,
                                implementation=impl)
        model.startprob_, model.transmat_ = init["startprob"], init["transmat"]
        model.means_, model.covars_ = init["means"], init["covars"]
        start = time.perf_counter()
        model.fit(X, lengths)
        return (time.perf_counter() - start) / n_iter, model

    with local_cluster(n_workers=args.workers) as cluster, Client(cluster, set_as_default=False) as client:
        ours = GaussianHMM(K, covariance_type="diag", max_iter=n_iter, tol=0.0, startprob_init=init["startprob"],
                           transmat_init=init["transmat"], means_init=init["means"], covars_init=init["covars"])
        # warm-up: compile the kernels in the workers (numba caches them on disk)
        ours.set_params(max_iter=1).fit(X[: 10 * args.length], lengths[:10], client=client)
        ours.set_params(max_iter=n_iter)
        # partition and scatter the data once (what a persisted dataset costs once)
        start = time.perf_counter()
        blocks = sequence_blocks(X, lengths, client=client, dtype=np.float64)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        ours.fit(blocks, client=client)
        per_iter = (time.perf_counter() - start) / n_iter
    load_fit = _load()
    scaling, ref_scaling = ref("scaling")
    log, ref_log = ref("log")
    load_ref = _load()
    profile = kernel_profile(X, lengths, init, K)
    load_profile = _load()
    diff = max(
        float(np.max(np.abs(ours.means_ - ref_scaling.means_) / np.abs(ref_scaling.means_))),
        float(np.max(np.abs(ours.transmat_ - ref_scaling.transmat_) / ref_scaling.transmat_)),
    )
    loglik_rel = abs(ours.history_[-1] - ref_scaling.monitor_.history[-1]) / abs(ref_scaling.monitor_.history[-1])
    rows.append(("dask-em GaussianHMM (2 workers)", per_iter))
    rows.append(('hmmlearn GaussianHMM implementation="scaling"', scaling))
    rows.append(('hmmlearn GaussianHMM implementation="log"', log))

    print(f"command: python {' '.join(sys.argv)}")
    print(f"data: {args.n_seq} sequences x {args.length} steps, K={K}, D={D}, diag, {n_iter} iterations\n")
    print(f"load average (1, 5, 15 min): {load_start} at start, {load_fit} after dask-em, "
          f"{load_ref} after hmmlearn, {load_profile} after the kernel profile\n")
    print(f"dask-em: {len(blocks.parts)} partitions, scattered once in {setup:.2f} s (not in s/iter)\n")
    print("| implementation | s/iter | speed-up of dask-em |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {sec / per_iter:.1f}x |")
    print(f"\nmax relative difference of means/transmat vs hmmlearn after {n_iter} iterations: {diff:.1e}; "
          f"log-likelihood: {loglik_rel:.1e}")
    n_part = int(lengths[: len(lengths) // 2].sum())
    print(f"\nE-step of one partition of {n_part:,} steps in one thread (best of 5):\n")
    print("| part | s |")
    print("|---|---:|")
    for name, sec in profile:
        print(f"| {name} | {sec:.4f} |")


if __name__ == "__main__":
    main()
