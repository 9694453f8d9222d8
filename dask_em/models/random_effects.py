"""The linear mixed model by EM, maximum likelihood or REML.

``y_i = X_i b + Z_i u_i + e_i`` for each group ``i``, with
``u_i ~ N(0, G)`` and ``e_i ~ N(0, s^2 I)`` independent (Laird & Ware
1982). The complete data are ``(y, u)`` (and, for REML, ``b`` with a flat
prior), and EM updates

* ``G = (1/m) sum_i (E[u_i] E[u_i]' + Cov[u_i])``,
* ``s^2 = (1/N) sum_i (|E[e_i]|^2 + tr Cov[e_i])``,

with the fixed effects at their generalised-least-squares value ``b(G,
s^2) = (sum X_i' V_i^-1 X_i)^-1 sum X_i' V_i^-1 y_i`` (Laird, Lange &
Stram 1987). For REML the posterior moments also carry the uncertainty of
``b``: ``Cov[u_i]`` gains ``B_i C B_i'`` and ``tr Cov[e_i]`` gains
``s^4 tr(C X_i' V_i^-2 X_i)``, with ``C = (sum X_i' V_i^-1 X_i)^-1``.

One pass per iteration. ``b(G, s^2)`` and ``C`` are only known once all
groups are summed, but every posterior moment is a polynomial of degree
two in ``b`` (and linear in ``C``): ``E[u_i] = a_i - B_i b`` with
``a_i = G Z_i' V_i^-1 y_i`` and ``B_i = G Z_i' V_i^-1 X_i``. So each
group adds the coefficients of those polynomials, and the M-step
evaluates them at ``b(G, s^2)``. Per group only the cross-products of
``[Z, X, y]`` are needed and ``V_i^-1`` is never formed (Woodbury, with
``K_i = (s^2 I + G Z_i'Z_i)^-1 G``).

The monitored log-likelihood is the profile (ML) or restricted (REML)
log-likelihood of ``(G, s^2)``: its ``log det(sum X' V^-1 X)`` and
``b``-dependent parts are completed from the summed statistics by
:meth:`RandomEffectsModel.finish_stats`. Each iteration (GLS for ``b``,
then an EM step for ``G, s^2``) never decreases it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np

from ..contract import Stats

_LOG_2PI = math.log(2.0 * math.pi)
#: Rows per sub-block when forming per-group cross-products.
SUB_BLOCK_ROWS = 16384


@dataclasses.dataclass(frozen=True)
class RandomEffectsParams:
    """Parameters of the linear mixed model.

    Attributes
    ----------
    fe_params : ndarray of shape (n_fixed,)
        Fixed effects: the GLS estimate at the variance components of the
        previous iteration.
    cov_re : ndarray of shape (n_random, n_random)
        ``G``, covariance of the random effects of a group.
    scale : ndarray of shape ()
        ``s^2``, residual variance.
    """

    fe_params: np.ndarray
    cov_re: np.ndarray
    scale: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"cov_re": "spd", "scale": "positive"}


@dataclasses.dataclass(frozen=True)
class RandomEffectsModel:
    """Linear mixed model ``y = X b + Z u + e`` fitted by EM.

    Parameters
    ----------
    method : {"ml", "reml"}
        Maximum likelihood or restricted maximum likelihood.
    min_scale : float
        Smallest residual variance, relative to the variance of the
        response (keeps ``V`` invertible for a perfect fit).
    """

    method: str = "reml"
    min_scale: float = 1e-12

    def __post_init__(self) -> None:
        if self.method not in ("ml", "reml"):
            raise ValueError(f"method must be 'ml' or 'reml', got {self.method!r}")

    # ------------------------------------------------------------------ init
    def init_params(self, sample: Any, rng: np.random.Generator) -> RandomEffectsParams:
        """OLS fixed effects; the OLS residual variance split between ``G`` and ``s^2``.

        ``sample`` is a :class:`dask_em.data.groups.GroupedBlock` (a few groups).
        """
        X, y, Z = np.asarray(sample.X), np.asarray(sample.y), sample.Z_or_ones
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ beta
        var = float(resid @ resid) / max(len(y) - X.shape[1], 1)
        var = var if var > 0 else 1.0
        zscale = np.maximum((Z**2).mean(axis=0), 1e-12)
        return RandomEffectsParams(beta, np.diag(0.5 * var / zscale), np.array(0.5 * var))

    # ---------------------------------------------------------------- E-step
    def e_step(self, block: Any, params: RandomEffectsParams) -> Stats:
        """Per-group polynomial coefficients of the posterior moments, summed."""
        G = np.asarray(params.cov_re, np.float64)
        s2 = float(params.scale)
        q = G.shape[0]
        p = np.asarray(params.fe_params).shape[0]
        X, y, Z = block.X, block.y, block.Z_or_ones
        if X.shape[1] != p or Z.shape[1] != q:
            raise ValueError(
                f"the block has {X.shape[1]} fixed and {Z.shape[1]} random columns, the parameters "
                f"{p} and {q}"
            )
        starts = np.asarray(block.starts, np.int64)
        bad = ~(np.isfinite(X).all(axis=1) & np.isfinite(y) & np.isfinite(Z).all(axis=1))
        n_invalid = int(bad.sum())
        cross = _group_cross_products(Z, X, y, starts, bad)
        ZZ = cross[:, :q, :q]
        ZX = cross[:, :q, q : q + p]
        Zy = cross[:, :q, q + p]
        XX = cross[:, q : q + p, q : q + p]
        Xy = cross[:, q : q + p, q + p]
        yy = cross[:, q + p, q + p]
        n = np.diff(starts).astype(np.float64)
        if n_invalid:
            n = n - np.add.reduceat(bad.astype(np.float64), starts[:-1])
        XZ = np.swapaxes(ZX, 1, 2)

        D = s2 * np.eye(q)[None] + G[None] @ ZZ  # (m, q, q)
        K = np.linalg.solve(D, np.broadcast_to(G, D.shape))
        K = 0.5 * (K + np.swapaxes(K, 1, 2))
        _, logdet_D = np.linalg.slogdet(D)
        logdet_V = (n - q) * math.log(s2) + logdet_D

        ZZK = ZZ @ K
        ZWZ = (ZZ - ZZK @ ZZ) / s2
        ZWX = (ZX - ZZK @ ZX) / s2
        ZWy = (Zy - np.einsum("mij,mj->mi", ZZK, Zy)) / s2
        XZK = XZ @ K
        XWX = (XX - XZK @ ZX) / s2
        XWy = (Xy - np.einsum("mij,mj->mi", XZK, Zy)) / s2
        yWy = (yy - np.einsum("mi,mij,mj->m", Zy, K, Zy)) / s2

        a = ZWy @ G  # G symmetric: rows are G Z'V^-1 y
        B = G[None] @ ZWX  # (m, q, p)
        cov_u = G[None] - G[None] @ ZWZ @ G[None]
        # Residual e = (y - Z a) - (X - Z B) b, as coefficients in b.
        ZZa = np.einsum("mij,mj->mi", ZZ, a)
        e0 = yy - 2.0 * np.einsum("mi,mi->m", a, Zy) + np.einsum("mi,mi->m", a, ZZa)
        BtZy = np.einsum("mij,mi->mj", B, Zy)
        e1 = Xy - np.einsum("mij,mj->mi", XZ, a) - BtZy + np.einsum("mij,mi->mj", B, ZZa)
        XZB = XZ @ B
        e2 = XX - XZB - np.swapaxes(XZB, 1, 2) + np.swapaxes(B, 1, 2) @ ZZ @ B
        trW = (n - np.einsum("mij,mji->m", K, ZZ)) / s2
        XW2X = (XX - 2.0 * XZK @ ZX + XZK @ ZZ @ K @ ZX) / (s2 * s2)

        # The log-likelihood at the fixed effects that entered (completed to
        # the profile or restricted one in finish_stats).
        return {
            "n": np.array(float(n.sum())),
            "n_groups": np.array(float(len(n))),
            "loglik": np.array(-0.5 * float((n * _LOG_2PI + logdet_V).sum())),
            "n_invalid": np.array(n_invalid),
            "sum_ywy": np.array(float(yWy.sum())),
            "sum_xwx": XWX.sum(axis=0),
            "sum_xwy": XWy.sum(axis=0),
            "sum_xw2x": XW2X.sum(axis=0),
            "sum_aa": np.einsum("mi,mj->ij", a, a),
            "sum_aB": np.einsum("mi,mjk->ijk", a, B),
            "sum_BB": np.einsum("mij,mkl->ijkl", B, B),
            "sum_cov_u": cov_u.sum(axis=0),
            "sum_e0": np.array(float(e0.sum())),
            "sum_e1": e1.sum(axis=0),
            "sum_e2": e2.sum(axis=0),
            "sum_tr_cov_e": np.array(float((s2 * n - s2 * s2 * trW).sum())),
        }

    def describe_invalid(self, n: int) -> str:
        """The error message for ``n`` rows with NaN or infinite values."""
        return (
            f"{n} rows have NaN or infinite values in X, y or Z; the mixed model needs finite "
            "values. Drop those rows (or impute them) before fitting."
        )

    # --------------------------------------------------- completed statistics
    def finish_stats(self, stats: Stats, params: RandomEffectsParams) -> Stats:
        """Complete the summed statistics: GLS fixed effects and the (restricted) log-likelihood.

        Adds ``fe_gls (p,)`` and ``fe_cov (p, p)`` (``C``) and replaces
        ``loglik`` by the profile (ML) or restricted (REML) log-likelihood
        of the variance components that entered the iteration.
        """
        stats = dict(stats)
        XWX = np.asarray(stats["sum_xwx"], np.float64)
        XWy = np.asarray(stats["sum_xwy"], np.float64)
        p = XWX.shape[0]
        try:
            chol = np.linalg.cholesky(XWX)
        except np.linalg.LinAlgError as exc:
            raise ValueError(
                "X' V^-1 X is singular: the fixed-effect columns are collinear (or a column is "
                "constant zero); drop redundant columns of X"
            ) from exc
        C = np.linalg.inv(XWX)
        C = 0.5 * (C + C.T)
        beta = C @ XWy
        quad = float(stats["sum_ywy"]) - float(beta @ XWy)
        loglik = float(stats["loglik"]) - 0.5 * quad
        if self.method == "reml":
            logdet = 2.0 * float(np.log(np.diag(chol)).sum())
            loglik += 0.5 * p * _LOG_2PI - 0.5 * logdet
        stats["loglik"] = np.array(loglik)
        stats["fe_gls"] = beta
        stats["fe_cov"] = C
        return stats

    # ---------------------------------------------------------------- M-step
    def m_step(self, stats: Stats, params: RandomEffectsParams) -> RandomEffectsParams:
        """Evaluate the posterior moments at the GLS fixed effects; update ``G`` and ``s^2``."""
        if "fe_gls" not in stats:
            stats = self.finish_stats(stats, params)
        beta = np.asarray(stats["fe_gls"], np.float64)
        C = np.asarray(stats["fe_cov"], np.float64)
        m = float(stats["n_groups"])
        N = float(stats["n"])
        aB = np.asarray(stats["sum_aB"]) @ beta  # sum a (B b)'
        BB = np.asarray(stats["sum_BB"])
        bb = np.einsum("ijkl,j,l->ik", BB, beta, beta)
        uu = np.asarray(stats["sum_aa"]) - aB - aB.T + bb + np.asarray(stats["sum_cov_u"])
        e = float(stats["sum_e0"]) - 2.0 * float(beta @ stats["sum_e1"]) + float(beta @ stats["sum_e2"] @ beta)
        e += float(stats["sum_tr_cov_e"])
        if self.method == "reml":
            s2 = float(params.scale)
            uu = uu + np.einsum("ijkl,jl->ik", BB, C)
            e += s2 * s2 * float(np.einsum("ij,ji->", C, stats["sum_xw2x"]))
        G = 0.5 * (uu + uu.T) / m
        scale = max(e / N, self.min_scale)
        return RandomEffectsParams(beta, G, np.array(scale))


def _group_cross_products(Z: np.ndarray, X: np.ndarray, y: np.ndarray, starts: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per-group ``[Z X y]' [Z X y]``, shape (n_groups, k, k), skipping bad rows."""
    D = np.concatenate([Z, X, y[:, None]], axis=1)
    if bad.any():
        D = np.where(bad[:, None], 0.0, D)
    k = D.shape[1]
    m = len(starts) - 1
    out = np.zeros((m, k, k))
    # Groups in sub-blocks of about SUB_BLOCK_ROWS rows: bounded temporaries.
    g = 0
    while g < m:
        end = int(np.searchsorted(starts, starts[g] + SUB_BLOCK_ROWS, side="right")) - 1
        end = min(max(end, g + 1), m)
        a, b = int(starts[g]), int(starts[end])
        rows = D[a:b]
        outer = (rows[:, :, None] * rows[:, None, :]).reshape(b - a, k * k)
        out[g:end] = np.add.reduceat(outer, starts[g:end] - a, axis=0).reshape(end - g, k, k)
        g = end
    return out


def blup_block(block: Any, params: RandomEffectsParams) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of the random effects of each group (the BLUPs).

    Returns
    -------
    labels : ndarray of shape (n_groups,)
    u : ndarray of shape (n_groups, n_random)
        ``G Z_i' V_i^-1 (y_i - X_i b)`` at ``params``.
    """
    G = np.asarray(params.cov_re, np.float64)
    s2 = float(params.scale)
    beta = np.asarray(params.fe_params, np.float64)
    Z = block.Z_or_ones
    r = block.y - block.X @ beta
    starts = np.asarray(block.starts, np.int64)
    q = G.shape[0]
    if len(starts) < 2:
        return block.labels, np.zeros((0, q))
    bad = np.zeros(len(r), bool)
    cross = _group_cross_products(Z, np.zeros((len(r), 0)), r, starts, bad)
    ZZ, Zr = cross[:, :q, :q], cross[:, :q, q]
    D = s2 * np.eye(q)[None] + G[None] @ ZZ
    K = np.linalg.solve(D, np.broadcast_to(G, D.shape))
    ZWr = (Zr - np.einsum("mij,mjk,mk->mi", ZZ, K, Zr)) / s2
    return block.labels, ZWr @ G


def blup_frame(block: Any, params: RandomEffectsParams, columns: list[str]) -> Any:
    """:func:`blup_block` as a pandas DataFrame indexed by group id (``RandomEffects.random_effects_``; run on workers)."""
    import pandas as pd

    labels, u = blup_block(block, params)
    return pd.DataFrame(u, index=pd.Index(labels, name="group"), columns=columns)
