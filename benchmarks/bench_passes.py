"""Passes to tolerance: plain EM, SQUAREM, Anderson and the reference library, from the same start.

On data larger than memory every EM iteration is a full read of the store,
so the number of passes is the time to answer. For problems where plain EM
is slow (overlapping Gaussian components, an HMM with sticky states, a
multivariate normal with 30% of its values missing, factor analysis), this
runs, in one process and one run:

- the reference library (scikit-learn or hmmlearn) from the same starting
  parameters and tolerance, and its iteration count (its whole call);
- dask-em with plain EM (``accelerate=None``);
- dask-em with SQUAREM (``accelerate="squarem"``);
- dask-em with Anderson acceleration (``accelerate="anderson"``);
- for the models with ``fit(X, online_passes=...)`` (the GMM, the missing-data
  normal): one online (stepwise) EM pass over the shuffled blocks, then plain
  EM or SQUAREM. The data go to dask-em as a Dask array of ``BLOCKS`` blocks
  in every dask-em row, so the online pass has blocks to step through;

and prints passes over the data (``n_passes_``: initialisation, refused
extrapolations and all), the passes each dask-em fit took to first reach
plain EM's final log-likelihood within 1e-7 per sample (the issue's
criterion), wall and CPU seconds of the whole call, and the final
log-likelihood per sample. The problems are fitted in this process
(dask-em's default), so every pass is a pass over in-memory blocks.

    python benchmarks/bench_passes.py                 # all problems, full sizes
    python benchmarks/bench_passes.py --small         # a tenth of the sizes
    python benchmarks/bench_passes.py --problems gmm hmm
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def _warm_up() -> None:
    """Compile dask-em's kernels once (numba caches them on disk) so no timed call pays for it."""
    import dask_em

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dask_em.GaussianMixture(2, max_iter=2).fit(X)
        dask_em.GaussianHMM(2, n_iter=2).fit(X)
        Y = X.copy()
        Y[::7, 1] = np.nan
        dask_em.MultivariateNormal(max_iter=2).fit(Y)
        dask_em.FactorAnalysis(1, max_iter=2).fit(X)


#: Blocks of the data in every dask-em fit (the online pass steps through them).
BLOCKS = 20


def _blocked(X: np.ndarray) -> Any:
    """``X`` as a Dask array of :data:`BLOCKS` row blocks (kept in memory)."""
    import dask.array as da

    return da.from_array(X, chunks=(-(-len(X) // BLOCKS), X.shape[1]))


#: The dask-em fits of a problem: (label, accelerate, online passes before the batch fit).
FITS = [("plain EM", None, 0), ("squarem", "squarem", 0), ("anderson", "anderson", 0)]
ONLINE_FITS = [("online pass + plain EM", None, 1), ("online pass + squarem", "squarem", 1)]


def _timed(fit: Callable[[], Any]) -> tuple[Any, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fit()
    return out, time.perf_counter() - start, time.process_time() - cpu


def gmm_problem(n: int) -> list[dict[str, Any]]:
    """4 overlapping full-covariance components in 6 dimensions (tol 1e-9 per sample)."""
    from sklearn.mixture import GaussianMixture as SkGMM

    import dask_em

    rng = np.random.default_rng(0)
    k, d = 4, 6
    centers = rng.normal(size=(k, d))  # about one standard deviation apart: heavily overlapping
    scales = np.sqrt(1.0 + rng.random(k))
    labels = rng.integers(k, size=n)
    X = centers[labels] + scales[labels, None] * rng.standard_normal((n, d))
    start = {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": X[np.random.default_rng(1).choice(n, k, replace=False)],
        "precisions_init": np.repeat(np.linalg.inv(np.cov(X.T))[None], k, axis=0),
    }
    common = dict(n_components=k, covariance_type="full", tol=1e-9, max_iter=5000, **start)
    rows = []
    sk, wall, cpu = _timed(lambda: SkGMM(**common).fit(X))
    rows.append(("scikit-learn GaussianMixture", sk.n_iter_ + 1, wall, cpu, float(sk.score(X))))
    data = _blocked(X)
    for label, acc, online in FITS + ONLINE_FITS:
        g, wall, cpu = _timed(lambda: dask_em.GaussianMixture(**common, accelerate=acc).fit(data, online_passes=online))
        rows.append((f"dask-em {label}", g.n_passes_, wall, cpu, float(g.score(X)), g.lower_bounds_))
    return [dict(problem=f"GMM full, {n:,} x {d}, K={k}, overlapping, tol 1e-9", rows=rows)]


def hmm_problem(n: int) -> list[dict[str, Any]]:
    """A 3-state Gaussian HMM with sticky states (0.98 on the diagonal) and overlapping emissions."""
    from hmmlearn.hmm import GaussianHMM as HLGaussianHMM

    import dask_em

    k, d = 3, 2
    length = 2000
    rng = np.random.default_rng(2)
    truth = HLGaussianHMM(k, covariance_type="diag", random_state=3)
    truth.startprob_ = np.full(k, 1.0 / k)
    truth.transmat_ = np.full((k, k), 0.005) + np.eye(k) * (1 - 0.005 * k)
    truth.means_ = np.array([[0.0, 0.0], [0.6, 0.3], [0.2, 0.7]])
    truth.covars_ = np.ones((k, d))
    n_seq = max(1, n // length)
    X = np.concatenate([truth.sample(length, random_state=int(rng.integers(1 << 30)))[0] for _ in range(n_seq)])
    lengths = [length] * n_seq
    start = dict(
        startprob=np.full(k, 1.0 / k),
        transmat=np.full((k, k), 1.0 / k),
        means=X[np.random.default_rng(4).choice(len(X), k, replace=False)],
        covars=np.tile(X.var(axis=0), (k, 1)),
    )
    tol = 1e-9 * len(X)  # hmmlearn's tol is on the total log-likelihood: 1e-9 per sample

    def hmmlearn_fit() -> Any:
        model = HLGaussianHMM(k, covariance_type="diag", n_iter=5000, tol=tol, init_params="", params="stmc")
        model.startprob_, model.transmat_, model.means_, model.covars_ = (start[f] for f in start)
        return model.fit(X, lengths)

    def ours(acc: str | None) -> Any:
        model = dask_em.GaussianHMM(k, covariance_type="diag", n_iter=5000, tol=tol, init_params="", accelerate=acc)
        model.startprob_, model.transmat_, model.means_, model.covars_ = (start[f] for f in start)
        return model.fit(X, lengths)

    rows = []
    hl, wall, cpu = _timed(hmmlearn_fit)
    rows.append(("hmmlearn GaussianHMM", hl.monitor_.iter, wall, cpu, float(hl.score(X, lengths)) / len(X)))
    for label, acc, _ in FITS:
        h, wall, cpu = _timed(lambda: ours(acc))
        rows.append((f"dask-em {label}", h.n_passes_, wall, cpu, float(h.score(X, lengths)) / len(X),
                     [v / len(X) for v in h.history_]))
    return [dict(problem=f"GaussianHMM diag, {n_seq} x {length} steps, K={k}, sticky, tol {tol:g} (total)", rows=rows)]


def mvn_problem(n: int) -> list[dict[str, Any]]:
    """A correlated 8-dimensional normal with 30% of its values missing at random (tol 1e-9)."""
    import dask_em

    rng = np.random.default_rng(5)
    d = 8
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + np.eye(d) * 0.2
    X = rng.multivariate_normal(np.arange(d, dtype=float), cov, size=n)
    X[rng.random(X.shape) < 0.3] = np.nan
    rows = []
    data = _blocked(X)
    for label, acc, online in FITS + ONLINE_FITS:
        m, wall, cpu = _timed(lambda: dask_em.MultivariateNormal(tol=1e-9, max_iter=5000, accelerate=acc)
                              .fit(data, online_passes=online))
        rows.append((f"dask-em {label}", m.n_passes_, wall, cpu, float(m.lower_bound_), m.lower_bounds_))
    return [dict(problem=f"MultivariateNormal, {n:,} x {d}, 30% missing, tol 1e-9", rows=rows)]


def factor_problem(n: int) -> list[dict[str, Any]]:
    """Factor analysis with 4 factors in 20 dimensions and heteroscedastic noise (tol 1e-9)."""
    from sklearn.decomposition import FactorAnalysis as SkFA

    import dask_em

    rng = np.random.default_rng(6)
    d, q = 20, 4
    W = rng.normal(size=(d, q))
    X = rng.normal(size=(n, q)) @ W.T + rng.normal(size=(n, d)) * rng.uniform(0.3, 2.0, d)
    rows = []
    sk, wall, cpu = _timed(lambda: SkFA(q, tol=1e-9, max_iter=5000).fit(X))
    rows.append(("scikit-learn FactorAnalysis (SVD iterations, not EM)", sk.n_iter_, wall, cpu, float(sk.score(X))))
    data = _blocked(X)
    for label, acc, _ in FITS:
        f, wall, cpu = _timed(lambda: dask_em.FactorAnalysis(q, tol=1e-9, max_iter=5000, random_state=0,
                                                             accelerate=acc).fit(data))
        rows.append((f"dask-em {label}", f.n_passes_, wall, cpu, float(f.score(X)), f.lower_bounds_))
    return [dict(problem=f"FactorAnalysis, {n:,} x {d}, {q} factors, tol 1e-9", rows=rows)]


PROBLEMS = {"gmm": (gmm_problem, 100_000), "hmm": (hmm_problem, 100_000),
            "mvn": (mvn_problem, 100_000), "factor": (factor_problem, 100_000)}


def passes_to(target: float, history: list[float], n_passes: int) -> int | None:
    """Passes until the fit's recorded value first reached ``target`` (plain EM's last value - 1e-7 per sample).

    The history holds one value per accepted pass, so the passes after the
    first value at or above ``target`` are taken off the total; refused
    extrapolations after it stay counted, so this is an upper bound.
    """
    reached = [i for i, value in enumerate(history) if value >= target]
    return n_passes - (len(history) - 1 - reached[0]) if reached else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=sorted(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--small", action="store_true", help="a tenth of the sizes")
    args = parser.parse_args(argv)
    print(f"# {' '.join(shlex.quote(a) for a in ['python', *sys.argv])}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    _warm_up()
    for name in args.problems:
        make, n = PROBLEMS[name]
        for result in make(n // 10 if args.small else n):
            print(f"\n{result['problem']}")
            print("| fit | passes | to plain EM's optimum | wall s | CPU s | log-likelihood per sample |\n"
                  "|---|---:|---:|---:|---:|---:|")
            plain = next(row[5] for row in result["rows"] if row[0] == "dask-em plain EM")
            for label, passes, wall, cpu, loglik, *history in result["rows"]:
                reached = passes_to(plain[-1] - 1e-7, history[0], passes) if history else None
                print(f"| {label} | {passes} | {'' if reached is None else reached} | {wall:.2f} | {cpu:.2f} "
                      f"| {loglik:.10f} |", flush=True)
    print(f"\n# load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
