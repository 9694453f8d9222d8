"""Gaussian mixtures of a model-selection grid fitted in one shared E-step.

:class:`StackedModel` holds every member of the grid of
:func:`dask_em.select.select` (``n_components`` x ``covariance_type`` x
restarts) and reads each block once for all of them: the block is centred
once, the log-densities of all ``full`` components come from one product
with the side-by-side Cholesky factors of their precisions, those of all
``diag`` and ``spherical`` components from one product of ``[x*x, x]``
with their stacked coefficients, each member's responsibilities are
normalised on their own (:func:`dask_em.models._gaussian.normalize_columns`,
the kernel of the single mixture's E-step), and the statistics of all
members come from three more products. ``tied`` members, and any other
model, run their own E-step on the same block.

Member ``i``'s statistics carry the key prefix ``r{i}:``, the scheme of
the generic :class:`dask_em.models.stacked.Stacked` (which stacks
parameter sets of one model; the members here are different models, and
the point of this class is their fused E-step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ._gaussian import LOG_2PI, feature_precisions, log_det_cholesky, normalize_columns, recenter_moments
from ..contract import Stats
from .gmm import GaussianMixtureModel, reference_point, sub_block_rows
from .gmm_kernels import _FAST

__all__ = ["StackedModel", "member_stats"]


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
    statistics are its own keys prefixed with ``"r{i}:"``.

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
                out[f"r{i}:{key}"] = value
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
    prefix = f"r{i}:"
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
            log_det = log_det_cholesky(prec_chol, ct, D)
            if ct == "full":
                factors.append(prec_chol.transpose(1, 0, 2).reshape(D, K * D))
                offsets.append(np.einsum("ki,kij->kj", a, prec_chol).reshape(K * D))
                const_f.append(log_w + log_det - 0.5 * D * LOG_2PI)
            else:
                prec = feature_precisions(prec_chol, ct, D)
                quad.append(np.concatenate([-0.5 * prec, prec * a], axis=1).T)
                const_d.append(log_w + log_det - 0.5 * D * LOG_2PI - 0.5 * (prec * a * a).sum(axis=1))
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
