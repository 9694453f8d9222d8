"""Model selection for Gaussian mixtures: a grid fitted in shared passes, ranked by BIC.

Every model of the grid (``n_components`` x ``covariance_type`` x restarts)
is a member of one stacked model whose E-step reads a block once and
shares the work between the members: the block is centred once, the
log-densities of all ``full`` components come from one product with the
side-by-side Cholesky factors of their precisions, those of all ``diag``
and ``spherical`` components from one product of ``[x*x, x]`` with their
stacked coefficients, each member's responsibilities are normalised on
their own, and the statistics of all members come from three more
products. ``tied`` members run their own E-step on the same block. An
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

import numba
import numpy as np

from .errors import DaskEMError
from .contract import Stats
from .models._gaussian import LOG_2PI as _LOG_2PI
from .models._gaussian import COVARIANCE_TYPES, normalize_columns, recenter_moments
from .models.gmm import (
    GaussianMixtureModel,
    GMMParams,
    HardAssignment,
    reference_point,
    sub_block_rows,
)
from .models.gmm_kernels import _FAST
from .monitor import ConvergenceMonitor

__all__ = ["ModelSelection", "StackedModel", "n_parameters", "select"]

#: Rows of the in-memory sample the members are initialised from.
INIT_SAMPLE_ROWS = 20_000
#: Lloyd iterations on that sample before the first EM pass.
INIT_LLOYD_ITERATIONS = 10


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Number of free parameters of a Gaussian mixture (as scikit-learn counts them)."""
    K, D = n_components, n_features
    cov = {
        "full": K * D * (D + 1) // 2,
        "tied": D * (D + 1) // 2,
        "diag": K * D,
        "spherical": K,
    }[covariance_type]
    return int(cov + K * D + K - 1)


@dataclass(frozen=True)
class StackedModel:
    """Several models fitted on the same blocks in one pass.

    Parameters
    ----------
    members : tuple of models
        Each with ``e_step``/``m_step``.
    loglik_only : bool
        Return only the log-likelihoods (and ``n``) of the shared members:
        for a scoring pass, whose statistics nobody uses.

    Its parameters are a tuple with one entry per member; ``None`` marks a
    member that is not run (converged or failed).

    Gaussian mixtures with ``full``, ``diag`` or ``spherical`` covariances
    share one E-step (:func:`_shared_e_step`): every block is centred once
    on a shared point, the log-densities of all their components come from
    two matrix products, each member's columns are normalised on their own,
    and the statistics of all of them come from three more products. Their
    sums are returned stacked under ``"shared/..."`` keys, about the shared
    centre; :meth:`own_stats` cuts out one member's sums and moves them to
    the member's own reference point. Any other member (``tied``, or not a
    Gaussian mixture) runs its own ``e_step`` on the same block; its
    statistics are its own keys prefixed with ``"i/"``.

    The top-level ``"n"`` and ``"n_invalid"`` describe the block and
    ``"loglik"`` is 0: each member's log-likelihood is in its own
    statistics.
    """

    members: tuple[Any, ...]
    loglik_only: bool = False

    def init_params(self, sample: Any, rng: np.random.Generator) -> tuple[Any, ...]:
        return tuple(m.init_params(sample, rng) for m in self.members)

    def e_step(self, block: Any, params: tuple[Any, ...]) -> Stats:
        X = np.asarray(block)  # read once, shared by every member
        out: Stats = {"n": np.array(float(X.shape[0])), "loglik": np.array(0.0), "n_invalid": np.array(0)}
        layout = _Layout.of(self.members, params)
        first = True
        if layout.members:
            shared = _shared_e_step(X, _Plan.of(layout, self.members, params), self.loglik_only)
            out["n"], out["n_invalid"], first = shared.pop("n_first"), shared.pop("n_invalid"), False
            out.update(shared)
        for i in layout.others:
            stats = self.members[i].e_step(X, params[i])
            n_invalid = stats.pop("n_invalid", np.array(0))
            if first:
                out["n"], out["n_invalid"], first = stats["n"], n_invalid, False
            for key, value in stats.items():
                out[f"{i}/{key}"] = value
        return out

    def own_stats(self, stats: Stats, params: tuple[Any, ...], i: int) -> Stats:
        """The statistics of member ``i`` as its own ``e_step`` returns them.

        ``params`` must be those the pass ran with (they fix the layout
        and the shared centre). Sums about the shared centre ``s`` move to
        the member's reference point ``c`` exactly, with ``d = s - c``:
        ``sum_x + N d``, ``S + sum_x d' + d sum_x' + N d d'`` (full) and
        ``S + 2 d sum_x + N d^2`` (diag, spherical).
        """
        layout = _Layout.of(self.members, params)
        if i not in layout.position:
            return member_stats(stats, i)
        pos = layout.position[i]
        own: Stats = {"n": np.asarray(stats["shared/n"])[pos], "loglik": np.asarray(stats["shared/loglik"])[pos]}
        if "shared/sum_resp" not in stats:  # a scoring pass
            return own
        lo, hi = layout.bounds[pos], layout.bounds[pos + 1]
        sum_resp = np.asarray(stats["shared/sum_resp"], np.float64)[lo:hi]
        sum_x_s = np.asarray(stats["shared/sum_x"], np.float64)[lo:hi]
        d = layout.center - reference_point(params[i])
        own["sum_resp"] = sum_resp.copy()
        own["sum_x"] = sum_x_s
        if self.members[i].covariance_type == "full":
            own["sum_xxT"] = np.asarray(stats["shared/sum_xxT"], np.float64)[lo:hi]
        else:
            own["sum_xx"] = np.asarray(stats["shared/sum_xx"], np.float64)[lo - layout.n_full : hi - layout.n_full]
        return recenter_moments(own, d)

    def m_step(self, stats: Stats, params: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            None if p is None else m.m_step(self.own_stats(stats, params, i), p)
            for i, (m, p) in enumerate(zip(self.members, params))
        )

    def describe_invalid(self, n_invalid: int) -> str:
        describe = getattr(self.members[0], "describe_invalid", None)
        return describe(n_invalid) if describe else f"{n_invalid} values are outside the models' support"


def member_stats(stats: Stats, i: int) -> Stats:
    """The statistics of member ``i`` of a :class:`StackedModel` that ran its own
    E-step (for shared members use :meth:`StackedModel.own_stats`)."""
    prefix = f"{i}/"
    return {key[len(prefix) :]: value for key, value in stats.items() if key.startswith(prefix)}


# -- the shared E-step ---------------------------------------------------------

_SHARED_TYPES = ("full", "diag", "spherical")


@dataclass(frozen=True)
class _Layout:
    """Which members share the E-step, and where their columns are.

    The shared members are ordered ``full`` first, then ``diag`` and
    ``spherical``, each group in member order; member ``members[j]`` owns
    the columns ``bounds[j]:bounds[j + 1]`` of the stacked log-densities.
    The shared centre is the first shared member's reference point.
    """

    members: tuple[int, ...]
    others: tuple[int, ...]
    bounds: np.ndarray
    n_full: int
    center: np.ndarray
    position: dict[int, int]

    @classmethod
    def of(cls, models: Sequence[Any], params: Sequence[Any]) -> "_Layout":
        full, diag, others = [], [], []
        for i, (m, p) in enumerate(zip(models, params)):
            if p is None:
                continue
            if isinstance(m, GaussianMixtureModel) and m.covariance_type in _SHARED_TYPES:
                (full if m.covariance_type == "full" else diag).append(i)
            else:
                others.append(i)
        shared = tuple(full + diag)
        sizes = [int(np.shape(params[i].weights)[0]) for i in shared]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n_full = int(bounds[len(full)])
        center = reference_point(params[min(shared)]) if shared else np.zeros(0)
        return cls(shared, tuple(others), bounds, n_full, center, {i: j for j, i in enumerate(shared)})


@dataclass(frozen=True)
class _Plan:
    """Constants of the shared E-step under one set of parameters (no data).

    ``factors`` (D, Kf*D) holds every full component's precision Cholesky
    factor side by side and ``offsets`` (Kf*D,) its mean about the shared
    centre times that factor, as in the members' own E-step. For the diag
    and spherical components ``log N(y | a, 1/p) = const - sum_j p_j y_j^2 / 2
    + sum_j p_j a_j y_j - sum_j p_j a_j^2 / 2`` is linear in ``[y*y, y]``:
    ``quad`` (2D, Kd) holds the coefficients and ``const_d`` the rest.
    """

    layout: _Layout
    factors: np.ndarray
    offsets: np.ndarray
    const_f: np.ndarray
    quad: np.ndarray
    const_d: np.ndarray
    rows: int

    @classmethod
    def of(cls, layout: _Layout, models: Sequence[Any], params: Sequence[Any]) -> "_Plan":
        c = layout.center
        D = c.shape[0]
        factors, offsets, const_f, quad, const_d = [], [], [], [], []
        for i in layout.members:
            p, ct = params[i], models[i].covariance_type
            weights = np.asarray(p.weights, np.float64)
            a = np.asarray(p.means, np.float64) - c
            prec_chol = np.asarray(p.precisions_cholesky, np.float64)
            K = weights.shape[0]
            with np.errstate(divide="ignore"):
                log_w = np.log(weights)
            if ct == "full":
                log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
                factors.append(prec_chol.transpose(1, 0, 2).reshape(D, K * D))
                offsets.append(np.einsum("ki,kij->kj", a, prec_chol).reshape(K * D))
                const_f.append(log_w + log_det - 0.5 * D * _LOG_2PI)
            else:
                if ct == "diag":
                    log_det = np.log(prec_chol).sum(axis=1)
                    prec = prec_chol**2
                else:
                    log_det = D * np.log(prec_chol)
                    prec = np.repeat((prec_chol**2)[:, None], D, axis=1)
                quad.append(np.concatenate([-0.5 * prec, prec * a], axis=1).T)
                const_d.append(log_w + log_det - 0.5 * D * _LOG_2PI - 0.5 * (prec * a * a).sum(axis=1))
        Kf = layout.n_full
        return cls(
            layout=layout,
            factors=np.ascontiguousarray(np.concatenate(factors, axis=1) if factors else np.zeros((D, 0))),
            offsets=np.concatenate(offsets) if offsets else np.zeros(0),
            const_f=np.concatenate(const_f) if const_f else np.zeros(0),
            quad=np.ascontiguousarray(np.concatenate(quad, axis=1) if quad else np.zeros((2 * D, 0))),
            const_d=np.concatenate(const_d) if const_d else np.zeros(0),
            rows=sub_block_rows(Kf, D, "full") if Kf else 4096,
        )


def _shared_e_step(X: np.ndarray, plan: _Plan, loglik_only: bool = False) -> Stats:
    """The shared members' sums over one block, stacked, about the shared centre.

    Returns ``shared/sum_resp`` (Ktot,), ``shared/sum_x`` (Ktot, D),
    ``shared/sum_xxT`` (Kf, D, D), ``shared/sum_xx`` (Kd, D),
    ``shared/loglik`` and ``shared/n`` (one per shared member), and
    ``n_first`` (the first member's ``n``) and ``n_invalid`` for the block.

    Rows are treated as each member's own E-step treats them: a row whose
    log-likelihood is not finite under a member adds nothing to that
    member's sums; if its values are finite (densities that overflow) the
    member's log-likelihood becomes ``-inf``. Non-finite values are counted
    once per block.

    The stacked log-probabilities and responsibilities are held transposed,
    (Ktot, rows), so that the normalisation runs along rows in SIMD lanes
    whatever the members' sizes.
    """
    layout = plan.layout
    M = len(layout.members)
    Kf = layout.n_full
    Ktot = int(layout.bounds[-1])
    Kd = Ktot - Kf
    D = layout.center.shape[0]
    rows = min(plan.rows, max(X.shape[0], 1))
    # [y*y | y | 1]: the diag log-densities read the first 2D columns, the
    # first-moment product the last D + 1 (the ones give sum_resp).
    YY = np.empty((rows, 2 * D + 1))
    YY[:, 2 * D] = 1.0
    Z_all = np.empty((rows, Kf * D))
    W_all = np.empty((rows, Kf * D))
    G_all = np.empty((rows, Kd))
    respT = np.empty((Ktot, rows))
    top, total, spare = np.empty(rows), np.empty(rows), np.empty(rows)
    scale_bits = np.empty(rows, np.int64)
    bad_all = np.empty((M, rows), np.bool_)
    sum_x1 = np.zeros((Ktot, D + 1))
    sum_xx = np.zeros((Kd, D))
    sum_xxT = np.zeros((Kf * D, D))
    loglik = np.zeros(M)
    n_bad_rows = np.zeros(M)
    n_invalid = 0
    # Non-finite values and overflowing densities are counted, not warned about.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, X.shape[0], rows):
            part = X[start : start + rows]
            n = part.shape[0]
            Y, Y2, Y1 = YY[:n, D : 2 * D], YY[:n, :D], YY[:n, D:]
            np.subtract(part, layout.center, out=Y)
            if Kd:
                np.multiply(Y, Y, out=Y2)
                np.matmul(YY[:n, : 2 * D], plan.quad, out=G_all[:n])
            if Kf:
                np.matmul(Y, plan.factors, out=Z_all[:n])
            _log_prob_grid(Z_all, plan.offsets, plan.const_f, G_all, plan.const_d, respT, n)
            resp = respT[:, :n]
            if normalize_columns(respT, n, layout.bounds, top, total, scale_bits, spare, bad_all, loglik):
                bad = bad_all[:, :n]  # (M, n)
                bad_any = bad.any(axis=0)
                nonfinite = ~np.isfinite(part[bad_any])
                n_invalid += int(nonfinite.sum())
                overflow = ~nonfinite.any(axis=1)  # finite rows with non-finite densities
                for j in range(M):
                    bad_j = bad[j]
                    if bad_j.any():
                        resp[layout.bounds[j] : layout.bounds[j + 1], bad_j] = 0.0
                        if overflow[bad_j[bad_any]].any():
                            loglik[j] = -np.inf
                n_bad_rows += bad.sum(axis=1)
                # rows no member keeps (non-finite values, or densities that
                # overflow for every member) are zeroed: keeps 0 * inf out of the sums
                drop = bad.all(axis=0)
                drop[np.flatnonzero(bad_any)[~overflow]] = True
                YY[:n][drop, : 2 * D] = 0.0
            if loglik_only:
                continue
            sum_x1 += resp @ Y1
            if Kd:
                sum_xx += resp[Kf:] @ Y2
            if Kf:
                W = W_all[:n]
                _weigh_rows_grid(respT, Y, W)
                sum_xxT += W.T @ Y
    n_valid = X.shape[0] - n_bad_rows
    out: Stats = {
        "shared/loglik": loglik,
        "shared/n": n_valid,
        "n_first": np.array(float(n_valid[0])),
        "n_invalid": np.array(n_invalid),
    }
    if not loglik_only:
        out["shared/sum_resp"] = sum_x1[:, D].copy()
        out["shared/sum_x"] = np.ascontiguousarray(sum_x1[:, :D])
        out["shared/sum_xx"] = sum_xx
        out["shared/sum_xxT"] = sum_xxT.reshape(Kf, D, D)
    return out


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _log_prob_grid(Z, offsets, const_f, G, const_d, outT, n):  # pragma: no cover - compiled
    """Stacked log-probabilities of the first ``n`` rows, transposed:
    outT[k, i] for the Kf full components from their whitened rows Z (as
    the members' own kernel), then const_d + G for the diag/spherical ones."""
    Kf = const_f.shape[0]
    Kd = const_d.shape[0]
    D = Z.shape[1] // Kf if Kf else 0
    for i in range(n):
        for k in range(Kf):
            base = k * D
            s = 0.0
            for j in range(D):
                v = Z[i, base + j] - offsets[base + j]
                s += v * v
            outT[k, i] = const_f[k] - 0.5 * s
    for k in range(Kd):
        c = const_d[k]
        for i in range(n):
            outT[Kf + k, i] = c + G[i, k]


@numba.njit(cache=True, nogil=True)
def _weigh_rows_grid(respT, Y, W):  # pragma: no cover - compiled
    """W[i, kD + j] = respT[k, i] * Y[i, j] for the first W.shape[1] / D
    components (the full ones) and the first W.shape[0] rows."""
    n = W.shape[0]
    D = Y.shape[1]
    Kf = W.shape[1] // D
    for i in range(n):
        for k in range(Kf):
            r = respT[k, i]
            for j in range(D):
                W[i, k * D + j] = r * Y[i, j]


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
