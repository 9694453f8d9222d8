"""Model selection for Gaussian mixtures: a grid fitted in shared passes, ranked by BIC.

Every model of the grid (``n_components`` x ``covariance_type`` x restarts)
is a member of one stacked model whose E-step reads a block once and
shares the work between the members: the block is centred once, the
log-densities of all ``full`` components come from one product with the
side-by-side Cholesky factors of their precisions, those of all ``diag``
and ``spherical`` components from one product of ``[x*x, x]`` with their
stacked coefficients, each member's responsibilities are normalised on
their own, and the statistics of all members come from three more
products (:mod:`dask_em.models.gmm_grid`). ``tied`` members run their own
E-step on the same block. An
iteration of the whole grid is therefore one pass over the data, one
``compute``, and one tree reduction of all the members' statistics
together. A member that has converged leaves the stack and costs nothing
afterwards. After the last iteration one more shared pass, computing
log-likelihoods only, scores every member's final parameters, which gives
the BIC.

BIC follows scikit-learn's sign: ``-2 log L + p log n``, smaller is better
(mclust reports the negative).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DaskEMError
from .models._gaussian import COVARIANCE_TYPES, n_parameters
from .contract import Stats
from .models.gmm import GaussianMixtureModel, GMMParams, HardAssignment
from .models.gmm_grid import StackedModel
from .monitor import ConvergenceMonitor

__all__ = ["ModelSelection", "StackedModel", "n_parameters", "select"]

#: Rows of the in-memory sample the members are initialised from.
INIT_SAMPLE_ROWS = 20_000
#: Lloyd iterations on that sample before the first EM pass.
INIT_LLOYD_ITERATIONS = 10


@dataclass
class _Member:
    n_components: int
    covariance_type: str
    run: int
    model: GaussianMixtureModel
    params: GMMParams | None = None
    monitor: ConvergenceMonitor | None = None
    active: bool = True
    error: str | None = None
    loglik: float = -math.inf  # total log-likelihood of the final parameters


@dataclass
class ModelSelection:
    """The outcome of :func:`select`.

    Attributes
    ----------
    table : list of dict
        One row per grid cell (the best restart of each), best first:
        ``rank``, ``n_components``, ``covariance_type``, ``bic``, ``aic``,
        ``loglik`` (total), ``n_parameters``, ``n_iter``, ``converged``,
        ``error``.
    best_params_ : GMMParams
        Parameters of the model with the smallest BIC.
    best_estimator_ : dask_em.GaussianMixture
        That model as a fitted estimator (when the estimator class exists).
    n_passes : int
        Passes over the data for the whole grid (iterations + final scoring).
    seconds : float
        Wall time of the whole selection.
    history : dict
        Monitored log-likelihood per sample at each iteration, per
        ``(n_components, covariance_type, run)``.
    """

    table: list[dict[str, Any]]
    best_params_: GMMParams
    n_samples: int
    n_passes: int
    seconds: float
    history: dict[tuple[int, str, int], list[float]] = field(default_factory=dict)
    best_estimator_: Any = None

    @property
    def best(self) -> dict[str, Any]:
        """The first row of :attr:`table`."""
        return self.table[0]

    def summary(self, top: int = 5) -> str:
        """An mclust-style BIC table (n_components by covariance_type) and the top models."""
        types = [t for t in COVARIANCE_TYPES if any(r["covariance_type"] == t for r in self.table)]
        ks = sorted({r["n_components"] for r in self.table})
        cell = {(r["n_components"], r["covariance_type"]): r for r in self.table}
        width = max(12, max((len(f"{r['bic']:.1f}") for r in self.table if r["bic"] is not None), default=0) + 2)
        lines = [f"BIC (smaller is better) on {self.n_samples:,} samples, {self.n_passes} passes over the data, "
                 f"{self.seconds:.2f} s"]
        lines.append(f"{'K':>4}" + "".join(f"{t:>{width}}" for t in types))
        for k in ks:
            row = f"{k:>4}"
            for t in types:
                r = cell.get((k, t))
                if r is None:
                    text = ""
                elif r["bic"] is None:
                    text = "failed"
                else:
                    text = f"{r['bic']:.1f}" + ("*" if r["rank"] == 1 else " ")
                row += f"{text:>{width}}"
            lines.append(row)
        lines.append("")
        lines.append("top models:")
        best_bic = self.table[0]["bic"]
        for r in self.table[:top]:
            if r["bic"] is None:
                continue
            lines.append(
                f"  {r['rank']}. n_components={r['n_components']:<3} covariance_type={r['covariance_type']:<9} "
                f"BIC {r['bic']:.1f} (+{r['bic'] - best_bic:.1f})  {r['n_iter']} iterations"
                + ("" if r["converged"] else ", not converged")
            )
        failed = [r for r in self.table if r["error"]]
        for r in failed:
            lines.append(f"  failed: n_components={r['n_components']} {r['covariance_type']}: {r['error']}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _lloyd_init(model: GaussianMixtureModel, sample: np.ndarray, rng: np.random.Generator) -> GMMParams:
    """k-means++ then a few Lloyd iterations on the sample, then a hard-assignment M-step."""
    from .models.kmeans import kmeans_plusplus, nearest_center

    K = model.n_components
    centers = kmeans_plusplus(sample, K, rng)
    for _ in range(INIT_LLOYD_ITERATIONS):
        labels, _ = nearest_center(sample, centers)
        counts = np.bincount(labels, minlength=K).astype(np.float64)
        # per-feature bincounts: np.add.at is ~10x slower, and a one-hot
        # product would call the client's multithreaded BLAS
        sums = np.stack([np.bincount(labels, sample[:, j], minlength=K) for j in range(sample.shape[1])], axis=1)
        keep = counts > 0
        new = centers.copy()
        new[keep] = sums[keep] / counts[keep, None]
        if np.allclose(new, centers):
            break
        centers = new
    hard = HardAssignment(centers=centers, covariance_type=model.covariance_type)
    return model.params_from_stats(hard.e_step(sample, None), hard.reference())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def select(
    X: Any,
    n_components: Iterable[int] = range(1, 7),
    covariance_types: Sequence[str] = COVARIANCE_TYPES,
    *,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    random_state: int | None = None,
    split_every: int = 8,
    client: Any = None,
    scheduler: str | None = None,
    verbose: bool = False,
) -> ModelSelection:
    """Fit a grid of Gaussian mixtures in shared passes and rank them by BIC.

    Parameters
    ----------
    X : array-like, dask array, zarr array or path
        Data of shape (n_samples, n_features).
    n_components : iterable of int
        Numbers of components to try.
    covariance_types : sequence of {"full", "tied", "diag", "spherical"}
        Covariance types to try.
    n_init : int
        Restarts per grid cell (each from its own k-means++ seeding); the
        restart with the highest log-likelihood represents the cell.
    max_iter, tol, reg_covar
        As for :class:`dask_em.GaussianMixture` (``tol`` on the
        log-likelihood per sample).
    random_state : int, optional
        Seed of the sample and the initialisations.
    split_every : int
        Fan-in of the tree reduction.
    client, scheduler
        Where to run; see :func:`dask_em.executor.where`.
    verbose : bool
        Print one progress line per shared iteration on standard error.

    Returns
    -------
    ModelSelection
        The ranked table, the best parameters, and the best estimator.

    Notes
    -----
    Every member starts from k-means++ centres refined by a few Lloyd
    iterations on an in-memory sample of :data:`INIT_SAMPLE_ROWS` rows
    (read from a few random blocks), then runs EM on all the data. An
    iteration costs one read of the data for the whole grid; its
    arithmetic is the sum of the members' E-steps.

    Examples
    --------
    >>> result = dask_em.select("data.zarr", n_components=range(1, 7))  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    """
    from .engine import expected_stats, prepare_blocks
    from .executor import where

    start_time = time.perf_counter()
    ks = sorted({int(k) for k in n_components})
    types = list(dict.fromkeys(covariance_types))
    if not ks or ks[0] < 1:
        raise ValueError(f"n_components must be positive integers, got {ks}")
    bad = [t for t in types if t not in COVARIANCE_TYPES]
    if bad or not types:
        raise ValueError(f"covariance_types must be among {COVARIANCE_TYPES}, got {list(covariance_types)}")
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    seeds = np.random.SeedSequence(random_state)
    members = [
        _Member(k, t, run, GaussianMixtureModel(k, t, reg_covar))
        for k in ks for t in types for run in range(n_init)
    ]
    member_seeds = seeds.spawn(len(members) + 1)

    with where(client, scheduler, data=X, verbose=verbose) as active:
        blocks = prepare_blocks(X, active)
        n_samples = blocks.n_samples
        if ks[-1] > n_samples:
            raise ValueError(f"n_components={ks[-1]} is more than the {n_samples} samples; try fewer components")
        sample = np.asarray(blocks.sample(INIT_SAMPLE_ROWS, np.random.default_rng(member_seeds[-1])), np.float64)
        sample = sample[np.isfinite(sample).all(axis=1)]
        n_features = sample.shape[1]
        for member, seed in zip(members, member_seeds):
            member.monitor = ConvergenceMonitor(tol=tol, max_iter=max_iter)
            try:
                member.params = _lloyd_init(member.model, sample, np.random.default_rng(seed))
            except Exception as exc:  # e.g. more components than distinct sample rows
                member.active, member.error = False, f"initialisation failed: {_short(exc)}"
        stacked = StackedModel(tuple(m.model for m in members))
        n_passes = 0

        def run_pass(model: StackedModel) -> tuple[Stats, tuple[Any, ...]]:
            nonlocal n_passes
            params = tuple(m.params if m.active else None for m in members)
            n_passes += 1
            return expected_stats(model, blocks, params, active, split_every), params

        iteration = 0
        while any(m.active for m in members):
            tick = time.perf_counter()
            stats, params = run_pass(stacked)
            iteration += 1
            for i, member in enumerate(members):
                if not member.active:
                    continue
                own = stacked.own_stats(stats, params, i)
                loglik = float(own["loglik"])
                if not math.isfinite(loglik):
                    member.active, member.error = False, "the log-likelihood is not finite (a collapsed component)"
                    continue
                member.monitor.report(loglik / float(own["n"]))
                try:
                    member.params = member.model.m_step(own, member.params)
                except (DaskEMError, np.linalg.LinAlgError, ValueError) as exc:
                    member.active, member.error = False, _short(exc)
                    continue
                if member.monitor.done:
                    member.active = False
            if verbose:
                running = sum(m.active for m in members)
                print(f"select: iteration {iteration:4d}  {running:3d} of {len(members)} models still running  "
                      f"{time.perf_counter() - tick:6.2f} s", file=sys.stderr, flush=True)

        # One more shared pass scores every member's final parameters; it
        # needs the log-likelihoods only, not the statistics.
        for member in members:
            member.active = member.error is None
        if any(m.active for m in members):
            scoring = StackedModel(stacked.members, loglik_only=True)
            stats, params = run_pass(scoring)
            for i, member in enumerate(members):
                if member.active:
                    member.loglik = float(scoring.own_stats(stats, params, i)["loglik"])
                    if not math.isfinite(member.loglik):
                        member.error = "the log-likelihood of the final parameters is not finite"

    table = _rank(members, n_samples, n_features)
    if table[0]["bic"] is None:
        raise DaskEMError("every model of the grid failed: " + "; ".join(r["error"] for r in table if r["error"]))
    best = next(
        m for m in members
        if (m.n_components, m.covariance_type, m.run)
        == (table[0]["n_components"], table[0]["covariance_type"], table[0]["run"])
    )
    result = ModelSelection(
        table=table,
        best_params_=best.params,
        n_samples=n_samples,
        n_passes=n_passes,
        seconds=time.perf_counter() - start_time,
        history={(m.n_components, m.covariance_type, m.run): list(m.monitor.history) for m in members if m.monitor},
    )
    result.best_estimator_ = _as_estimator(best, reg_covar, max_iter, tol, random_state)
    return result


def _rank(members: list[_Member], n_samples: int, n_features: int) -> list[dict[str, Any]]:
    cells: dict[tuple[int, str], _Member] = {}
    for m in members:
        key = (m.n_components, m.covariance_type)
        current = cells.get(key)
        if current is None or (m.error is None and (current.error is not None or m.loglik > current.loglik)):
            cells[key] = m
    rows = []
    for (k, t), m in cells.items():
        p = n_parameters(k, n_features, t)
        ok = m.error is None
        rows.append({
            "n_components": k,
            "covariance_type": t,
            "run": m.run,
            "bic": -2.0 * m.loglik + p * math.log(n_samples) if ok else None,
            "aic": -2.0 * m.loglik + 2.0 * p if ok else None,
            "loglik": m.loglik if ok else None,
            "n_parameters": p,
            "n_iter": m.monitor.iter if m.monitor else 0,
            "converged": bool(m.monitor.converged) if m.monitor else False,
            "error": m.error,
        })
    rows.sort(key=lambda r: (r["bic"] is None, r["bic"] if r["bic"] is not None else 0.0))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _as_estimator(member: _Member, reg_covar: float, max_iter: int, tol: float, random_state: Any) -> Any:
    """The best member as a fitted :class:`dask_em.GaussianMixture`, if that class exists."""
    try:
        from .estimators.gmm import GaussianMixture
    except ImportError:
        return None
    from .models._gaussian import precisions_from_cholesky

    p = member.params
    est = GaussianMixture(
        n_components=member.n_components, covariance_type=member.covariance_type, reg_covar=reg_covar,
        max_iter=max_iter, tol=tol, random_state=random_state,
    )
    if hasattr(est, "_set_mixture"):
        est._set_mixture(p)
    else:
        est.weights_ = np.asarray(p.weights)
        est.means_ = np.asarray(p.means)
        est.covariances_ = np.asarray(p.covariances)
        est.precisions_cholesky_ = np.asarray(p.precisions_cholesky)
        est.precisions_ = precisions_from_cholesky(est.precisions_cholesky_, member.covariance_type)
    history = list(member.monitor.history) if member.monitor else []
    est.converged_ = bool(member.monitor.converged) if member.monitor else False
    est.n_iter_ = len(history)
    est.lower_bound_ = history[-1] if history else -math.inf
    est.lower_bounds_ = history
    est.n_features_in_ = int(np.shape(p.means)[1])
    return est
