"""Conditional Gaussians: the machinery of the missing-data models.

Every row may miss any subset of its entries. The missing-data models
(:mod:`.mvn_missing`, :mod:`.gmm_missing`) complete each row
with the conditional expectation of its missing entries given the observed
ones and adds the conditional covariance to the second moments. It works
through the precision matrix ``Lambda = Sigma^-1``: for a row whose entries
``m`` are missing and ``o`` observed,

* ``E[x_m | x_o] = mu_m - Lambda_mm^-1 Lambda_mo (x_o - mu_o)``,
* ``Cov[x_m | x_o] = Lambda_mm^-1``,
* ``log det Sigma_oo = log det Sigma + log det Lambda_mm``,
* ``(x_o - mu_o)' Sigma_oo^-1 (x_o - mu_o) = d0' Lambda d0 - |L^-1 r_m|^2``
  with ``d0`` the deviation with zeros at the missing entries,
  ``r = Lambda d0`` and ``L`` the Cholesky factor of ``Lambda_mm``.

Only a system of the size of the *missing* part is solved per row, and it
is factorised once per missingness pattern: the distinct patterns of a
block are found from bit-packed row masks, ``Lambda_mm`` of each pattern is
factorised and inverted once, and a compiled loop visits the rows in block
order (sequential memory access) solving with its pattern's factor. With
per-entry missingness nearly every row has its own pattern, and the cost is
then a solve of size ``m`` (about 4 for 20% of 20 features) per row. The
products over all ``D`` features are BLAS calls over the whole block.

The second part conditions every component of a Gaussian mixture at once
(:func:`component_gaussians`, :func:`diag_conditionals` for independent
features, :func:`full_conditionals` otherwise, sharing the block's
patterns); their ``accumulate`` adds the completed rows' statistics in the
layout of :class:`dask_em.models.gmm.GaussianMixtureModel`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, TYPE_CHECKING

import numba
import numpy as np

from ..errors import DaskEMError
from ._gaussian import LOG_2PI as _LOG_2PI
from ._gaussian import (
    feature_precisions,
    inverse_and_logdet,
    is_square,
    log_det_cholesky,
    precisions_from_cholesky,
)
from ..contract import Stats

if TYPE_CHECKING:
    from .gmm import GMMParams


@dataclasses.dataclass
class Patterns:
    """The distinct missingness patterns among the partially observed rows of a block.

    Attributes
    ----------
    rows : ndarray of int64, shape (n_partial,)
        Rows that miss some but not all entries, in block order.
    pattern_id : ndarray of int64, shape (n_partial,)
        Pattern of each of ``rows``.
    n_patterns : int
    counts : ndarray of int64, shape (n_patterns,)
        Rows per pattern.
    missing_idx : ndarray of int64
        Missing columns of every pattern, concatenated.
    idx_offset : ndarray of int64, shape (n_patterns + 1,)
        Pattern ``p`` misses ``missing_idx[idx_offset[p]:idx_offset[p + 1]]``.
    """

    rows: np.ndarray
    pattern_id: np.ndarray
    n_patterns: int
    counts: np.ndarray
    missing_idx: np.ndarray
    idx_offset: np.ndarray


def missingness_patterns(miss: np.ndarray) -> Patterns:
    """Find the distinct missingness patterns of a block (bit-packed row masks).

    Parameters
    ----------
    miss : ndarray of bool, shape (n_rows, n_features)
        True where a value is missing.
    """
    n_miss = miss.sum(axis=1)
    rows = np.flatnonzero((n_miss > 0) & (n_miss < miss.shape[1])).astype(np.int64)
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return Patterns(rows, empty, 0, empty, empty, np.zeros(1, np.int64))
    keys = _pattern_keys(miss[rows])
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    rep = miss[rows[first]]
    idx_offset = np.concatenate([[0], np.cumsum(rep.sum(axis=1))]).astype(np.int64)
    missing_idx = np.nonzero(rep)[1].astype(np.int64)  # row-major: grouped by pattern
    return Patterns(rows, inverse.ravel().astype(np.int64), len(first), counts.astype(np.int64), missing_idx, idx_offset)


@dataclasses.dataclass
class Factors:
    """Cholesky factors of ``Lambda_mm`` for every pattern of a block, under one precision.

    ``L[L_offset[p]:L_offset[p + 1]]`` is the row-major (m, m) lower factor
    of pattern ``p`` and ``logdet[p]`` is ``log det Lambda_mm``.
    """

    L: np.ndarray
    L_offset: np.ndarray
    logdet: np.ndarray


@numba.njit(cache=True, nogil=True, inline="always")
def _factor_pattern(prec, missing_idx, i0, m, L, base):  # pragma: no cover - compiled
    """Cholesky factor of ``Lambda_mm`` for the ``m`` missing columns ``missing_idx[i0:i0 + m]``.

    Written row-major (m, m) into ``L`` at ``base``; returns ``log det Lambda_mm``.
    """
    ld = 0.0
    for a in range(m):
        for b in range(a + 1):
            s = prec[missing_idx[i0 + a], missing_idx[i0 + b]]
            for c in range(b):
                s -= L[base + a * m + c] * L[base + b * m + c]
            if a == b:
                if s <= 0.0:
                    s = 1e-300  # only reached for a precision that is not positive definite
                L[base + a * m + a] = math.sqrt(s)
                ld += 2.0 * math.log(L[base + a * m + a])
            else:
                L[base + a * m + b] = s / L[base + b * m + b]
    return ld


@numba.njit(cache=True, nogil=True)
def _factor_patterns(prec, missing_idx, idx_offset, L_offset, L, logdet):  # pragma: no cover - compiled
    for p in range(idx_offset.shape[0] - 1):
        i0 = idx_offset[p]
        logdet[p] = _factor_pattern(prec, missing_idx, i0, idx_offset[p + 1] - i0, L, L_offset[p])


def factor_patterns(patterns: Patterns, precision: np.ndarray) -> Factors:
    """Factorise ``Lambda_mm`` once per pattern."""
    m = np.diff(patterns.idx_offset)
    L_offset = np.concatenate([[0], np.cumsum(m * m)]).astype(np.int64)
    L = np.zeros(int(L_offset[-1]))
    logdet = np.zeros(patterns.n_patterns)
    if patterns.n_patterns:
        _factor_patterns(precision, patterns.missing_idx, patterns.idx_offset, L_offset, L, logdet)
    return Factors(L, L_offset, logdet)


@numba.njit(cache=True, nogil=True, inline="always")
def _fill_missing_row(dev, R, i, missing_idx, i0, m, L, base, y):  # pragma: no cover - compiled
    """Set row ``i``'s missing deviations to their conditional means; return ``|y|^2``.

    ``L`` (at ``base``) is the Cholesky factor of the row pattern's
    ``Lambda_mm``: y = L^-1 r_m by forward substitution, then d_m = -L^-T y.
    """
    s2 = 0.0
    for a in range(m):
        s = R[i, missing_idx[i0 + a]]
        for c in range(a):
            s -= L[base + a * m + c] * y[c]
        y[a] = s / L[base + a * m + a]
        s2 += y[a] * y[a]
    for a in range(m - 1, -1, -1):
        s = y[a]
        for c in range(a + 1, m):
            s -= L[base + c * m + a] * y[c]
        y[a] = s / L[base + a * m + a]
    for a in range(m):
        dev[i, missing_idx[i0 + a]] = -y[a]
    return s2


@numba.njit(cache=True, nogil=True)
def _complete_rows(dev, R, rows, pattern_id, missing_idx, idx_offset, L, L_offset, quad):  # pragma: no cover - compiled
    """Fill the missing deviations of ``dev`` with their conditional means.

    ``dev`` holds x - mu with zeros at missing entries and ``R = dev @ prec``;
    ``quad`` holds dev' prec dev per row on entry and the observed-part
    Mahalanobis term on exit. Rows are visited in block order, so memory
    is read sequentially; each row's pattern factor is looked up.
    """
    D = dev.shape[1]
    y = np.empty(D)
    for t in range(rows.shape[0]):
        i = rows[t]
        p = pattern_id[t]
        i0 = idx_offset[p]
        m = idx_offset[p + 1] - i0
        base = L_offset[p]
        s2 = _fill_missing_row(dev, R, i, missing_idx, i0, m, L, base, y)
        quad[i] -= s2


@numba.njit(cache=True, nogil=True, inline="always")
def _inverse_from_factor(L, base, m, Linv, C):  # pragma: no cover - compiled
    """``C[:m, :m]`` (lower triangle) := ``Lambda_mm^-1 = Linv' Linv`` from the factor at ``base`` of ``L``.

    ``Linv`` is scratch of at least (m, m).
    """
    for a in range(m):
        Linv[a, a] = 1.0 / L[base + a * m + a]
        for b in range(a):
            s = 0.0
            for c in range(b, a):
                s -= L[base + a * m + c] * Linv[c, b]
            Linv[a, b] = s / L[base + a * m + a]
    for a in range(m):
        for b in range(a + 1):
            s = 0.0
            for c in range(a, m):
                s += Linv[c, a] * Linv[c, b]
            C[a, b] = s


@numba.njit(cache=True, nogil=True)
def _add_conditional_cov(missing_idx, idx_offset, L, L_offset, weights, out):  # pragma: no cover - compiled
    """out[m, m] += weights[p] * Lambda_mm^-1 for every pattern p."""
    D = out.shape[0]
    Linv = np.zeros((D, D))
    C = np.zeros((D, D))
    for p in range(idx_offset.shape[0] - 1):
        w = weights[p]
        if w == 0.0:
            continue
        i0 = idx_offset[p]
        m = idx_offset[p + 1] - i0
        _inverse_from_factor(L, L_offset[p], m, Linv, C)
        for a in range(m):
            for b in range(a + 1):
                out[missing_idx[i0 + a], missing_idx[i0 + b]] += w * C[a, b]
                if a != b:
                    out[missing_idx[i0 + b], missing_idx[i0 + a]] += w * C[a, b]


@numba.njit(cache=True, nogil=True)
def deviations(X, mean, dev, n_seen, n_observed):  # pragma: no cover - compiled
    """dev = X - mean with zeros where X is not finite; observed counts per row and column; returns #inf."""
    n_inf = 0
    for i in range(X.shape[0]):
        seen = 0
        for j in range(X.shape[1]):
            v = X[i, j]
            if math.isfinite(v):
                dev[i, j] = v - mean[j]
                seen += 1
                n_observed[j] += 1.0
            else:
                dev[i, j] = 0.0
                if v == v:
                    n_inf += 1
        n_seen[i] = seen
    return n_inf


@numba.njit(cache=True, nogil=True, inline="always")
def _row_dot(dev, R, i):  # pragma: no cover - compiled
    """``dev[i] @ R[i]``: the row's quadratic form ``d0' Lambda d0``."""
    quad = 0.0
    for j in range(dev.shape[1]):
        quad += dev[i, j] * R[i, j]
    return quad


@numba.njit(cache=True, nogil=True, inline="always")
def _condition_row(dev, R, i, seen, logdet, missing_idx, i0, m, L, base, logdet_mm, y):  # pragma: no cover - compiled
    """Complete row ``i`` (:func:`_fill_missing_row`) and return its observed log-density.

    ``logdet_mm`` is ``log det Lambda_mm`` of the row's pattern (0 with nothing missing).
    """
    quad = _row_dot(dev, R, i)  # before the completion: d0' Lambda d0
    s2 = _fill_missing_row(dev, R, i, missing_idx, i0, m, L, base, y)
    return -0.5 * (seen * _LOG_2PI + logdet + logdet_mm + quad - s2)


@numba.njit(cache=True, nogil=True)
def condition_rowwise(X, dev, R, n_seen, prec, logdet, cov_lower, logpdf):  # pragma: no cover - compiled
    """Fused per-row conditioning: completion, log-density, covariance sum.

    Non-finite entries of ``X`` are missing. ``cov_lower`` receives the lower
    triangle of the summed ``Lambda_mm^-1``. Each row factorises its own
    ``Lambda_mm`` unless the previous row had the same pattern.
    """
    D = dev.shape[1]
    idx = np.empty(D, np.int64)
    prev = np.empty(D, np.int64)
    L = np.empty(D * D)  # the current pattern's factor, row-major (m, m) as in Factors.L
    Linv = np.zeros((D, D))
    Cinv = np.zeros((D, D))
    y = np.empty(D)
    m_prev = -1
    ld = 0.0
    for i in range(X.shape[0]):
        seen = n_seen[i]
        if seen == 0:
            logpdf[i] = 0.0
            continue
        m = D - seen
        if m == 0:
            logpdf[i] = _condition_row(dev, R, i, seen, logdet, idx, 0, 0, L, 0, 0.0, y)
            continue
        k = 0
        for j in range(D):
            if not math.isfinite(X[i, j]):
                idx[k] = j
                k += 1
        same = m == m_prev
        if same:
            for a in range(m):
                if idx[a] != prev[a]:
                    same = False
                    break
        if not same:
            ld = _factor_pattern(prec, idx, 0, m, L, 0)
            _inverse_from_factor(L, 0, m, Linv, Cinv)
            for a in range(m):
                prev[a] = idx[a]
            m_prev = m
        for a in range(m):
            for b in range(a + 1):
                cov_lower[idx[a], idx[b]] += Cinv[a, b]
        logpdf[i] = _condition_row(dev, R, i, seen, logdet, idx, 0, m, L, 0, ld, y)


@numba.njit(cache=True, nogil=True)
def condition_by_pattern(dev, R, n_seen, pattern_id, missing_idx, idx_offset, L, L_offset, logdets, logdet, logpdf):  # pragma: no cover - compiled
    """Fused per-row conditioning with one precomputed factor per pattern.

    Like :func:`condition_rowwise`, but ``Lambda_mm`` was factorised once
    per distinct pattern of the block; rows are visited in block order and
    look their factor up.
    """
    y = np.empty(dev.shape[1])
    for i in range(dev.shape[0]):
        seen = n_seen[i]
        if seen == 0:
            logpdf[i] = 0.0
            continue
        p = pattern_id[i]
        i0 = idx_offset[p]
        logpdf[i] = _condition_row(
            dev, R, i, seen, logdet, missing_idx, i0, idx_offset[p + 1] - i0, L, L_offset[p], logdets[p], y
        )


def block_patterns(miss: np.ndarray) -> Patterns:
    """Missingness patterns of every row of a block (complete and empty rows included).

    ``rows`` is all rows and ``pattern_id`` the pattern of each; patterns
    with nothing missing factorise to nothing, and the caller skips rows
    with nothing observed.
    """
    keys = _pattern_keys(miss)
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    rep = miss[first]
    idx_offset = np.concatenate([[0], np.cumsum(rep.sum(axis=1))]).astype(np.int64)
    missing_idx = np.nonzero(rep)[1].astype(np.int64)
    rows = np.arange(len(miss), dtype=np.int64)
    return Patterns(rows, inverse.ravel().astype(np.int64), len(first), counts.astype(np.int64), missing_idx, idx_offset)


def precision_and_logdet(covariance: np.ndarray) -> tuple[np.ndarray, float]:
    """The precision matrix and log det of a covariance (Cholesky based).

    Raises
    ------
    DaskEMError
        If the covariance is not positive definite.
    """
    try:
        precision, logdet = inverse_and_logdet(covariance)
    except np.linalg.LinAlgError:
        raise DaskEMError(
            "the covariance matrix is not positive definite (ill-defined empirical covariance); "
            "try a positive reg_covar, dropping constant or duplicated columns, or scaling the input data"
        ) from None
    return 0.5 * (precision + precision.T), logdet


@dataclasses.dataclass
class Conditional:
    """Result of conditioning one block on its observed entries.

    Attributes
    ----------
    dev : ndarray, shape (n_rows, n_features)
        Completed deviation from the mean (conditional mean minus ``mu``
        at missing entries); zero rows for rows with nothing observed.
    logpdf : ndarray, shape (n_rows,)
        Log-density of the observed entries (0 for rows with nothing observed).
    patterns, factors : Patterns and Factors, or None
        The per-pattern factors when rows were grouped by pattern, reusable
        for :func:`conditional_cov_sum` with other weights.
    cov_sum : ndarray of shape (n_features, n_features) or None
        Unweighted sum of the conditional covariances, when asked for.
    """

    dev: np.ndarray
    logpdf: np.ndarray
    patterns: Patterns | None = None
    factors: Factors | None = None
    cov_sum: np.ndarray | None = None


#: Rows inspected to decide whether a block's patterns repeat.
PATTERN_PROBE = 1024


def _pattern_keys(miss: np.ndarray) -> np.ndarray:
    """One sortable key per row of a boolean mask: a uint64 for up to 64 columns."""
    packed = np.packbits(miss, axis=1, bitorder="little")
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((len(miss), pad), np.uint8)], axis=1)
    keys = np.ascontiguousarray(packed).view(np.uint64)
    if keys.shape[1] == 1:
        return keys[:, 0]
    return keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()


def patterns_mostly_unique(miss: np.ndarray) -> bool:
    """Whether the first partially observed rows of a block rarely share a pattern.

    Decides between grouping rows by pattern (few patterns: factorise once
    per pattern) and factorising per row (values missing independently per
    entry: grouping would cost more than it saves).
    """
    n_miss = miss.sum(axis=1)
    rows = np.flatnonzero((n_miss > 0) & (n_miss < miss.shape[1]))[:PATTERN_PROBE]
    if len(rows) < 64:
        return False
    return len(np.unique(_pattern_keys(miss[rows]))) > 0.5 * len(rows)


def condition(
    X: np.ndarray,
    miss: np.ndarray,
    mean: np.ndarray,
    precision: np.ndarray,
    logdet: float,
    *,
    cov_sum: bool = False,
    patterns: Patterns | None = None,
) -> Conditional:
    """Conditional means of the missing entries and observed log-densities.

    Parameters
    ----------
    X : ndarray, shape (n_rows, n_features)
        Data with NaN at missing entries (and finite elsewhere).
    miss : ndarray of bool
        ``np.isnan(X)``.
    mean, precision, logdet
        The Gaussian: mean, precision matrix and log det of the covariance.
    cov_sum : bool
        Also return the unweighted sum of the conditional covariances.
    patterns : Patterns, optional
        ``missingness_patterns(miss)`` when already known (e.g. shared by
        the components of a mixture).
    """
    dev = X - mean
    any_missing = bool(miss.any())
    if any_missing:
        dev[miss] = 0.0
    R = dev @ precision
    quad = np.einsum("ij,ij->i", dev, R)
    if not any_missing:
        out = Conditional(dev, -0.5 * (X.shape[1] * _LOG_2PI + logdet + quad))
        if cov_sum:
            out.cov_sum = np.zeros((X.shape[1], X.shape[1]))
        return out
    logdet_mm = np.zeros(len(X))
    n_obs = miss.shape[1] - miss.sum(axis=1)
    partial = np.flatnonzero((n_obs > 0) & (n_obs < miss.shape[1])).astype(np.int64)
    out = Conditional(dev, quad)
    D = miss.shape[1]
    if partial.size:
        if patterns is None:
            patterns = missingness_patterns(miss)
        factors = factor_patterns(patterns, precision)
        _complete_rows(
            dev, R, patterns.rows, patterns.pattern_id, patterns.missing_idx, patterns.idx_offset,
            factors.L, factors.L_offset, quad,
        )
        logdet_mm[patterns.rows] = factors.logdet[patterns.pattern_id]
        out.patterns, out.factors = patterns, factors
        if cov_sum:
            out.cov_sum = conditional_cov_sum(patterns, factors, D)
    elif cov_sum:
        out.cov_sum = np.zeros((D, D))
    logpdf = -0.5 * (n_obs * _LOG_2PI + logdet + logdet_mm + quad)
    empty = n_obs == 0
    if empty.any():
        logpdf[empty] = 0.0
        dev[empty] = 0.0
    out.logpdf = logpdf
    return out


def conditional_cov_sum(
    patterns: Patterns, factors: Factors, n_features: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Sum over rows of ``weight * Cov[x_m | x_o]``, embedded in a (D, D) matrix.

    Parameters
    ----------
    weights : ndarray of shape (n_patterns,), optional
        Summed row weights per pattern; by default the number of rows.
    """
    out = np.zeros((n_features, n_features))
    if patterns.n_patterns:
        w = patterns.counts.astype(np.float64) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        _add_conditional_cov(patterns.missing_idx, patterns.idx_offset, factors.L, factors.L_offset, w, out)
    return out


def as_float_block(block: Any) -> np.ndarray:
    """A float64 C-contiguous copy-if-needed of a block."""
    return np.ascontiguousarray(block, dtype=np.float64)


def observed_moments(sample: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sample with NaN at every non-finite value, and its columns' observed means and variances.

    A column with no observed value gets mean 0; one with no spread, variance 1.
    """
    X = as_float_block(sample)
    X = np.where(np.isfinite(X), X, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(X, axis=0)
        var = np.nanvar(X, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    var = np.where(np.isfinite(var) & (var > 0), var, 1.0)
    return X, mean, var


# --------------------------------------------------------------------------
# Every component of a Gaussian mixture
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ComponentGaussians:
    """Every component's precision and log det of its covariance, for conditioning."""

    precisions: np.ndarray  # (K, D, D) for full/tied, (K, D) for diag/spherical
    logdets: np.ndarray  # (K,) log det of the covariances
    tied: bool
    independent: bool = False  # diag or spherical: features independent given the component


def component_gaussians(params: GMMParams, ct: str) -> ComponentGaussians:
    """The precisions and covariance log-determinants of every component of a mixture."""
    K, D = np.shape(params.means)
    pc = np.asarray(params.precisions_cholesky, np.float64)
    if is_square(ct):
        prec = precisions_from_cholesky(pc, ct)
        logdets = np.broadcast_to(-2.0 * log_det_cholesky(pc, ct, D), (K,))
        return ComponentGaussians(np.broadcast_to(prec, (K, D, D)), logdets, ct == "tied")
    P = feature_precisions(pc, ct, D)
    return ComponentGaussians(P, -np.log(P).sum(axis=1), False, True)


@dataclasses.dataclass
class _DiagCompleted:
    Y0: np.ndarray  # (n, D) rows about the centre, zeros at missing entries
    a: np.ndarray  # (K, D) means about the centre
    var: np.ndarray  # (K, D) variances

    def accumulate(self, stats: Stats, resp: np.ndarray, miss: np.ndarray) -> None:
        r_miss = resp.T @ miss.astype(np.float64)  # (K, D): weight of rows missing each entry
        stats["sum_x"] += resp.T @ self.Y0 + r_miss * self.a
        stats["sum_xx"] += resp.T @ (self.Y0 * self.Y0) + r_miss * (self.a * self.a + self.var)


def diag_conditionals(
    X: np.ndarray, miss: np.ndarray, center: np.ndarray, a: np.ndarray, g: ComponentGaussians
) -> tuple[np.ndarray, _DiagCompleted]:
    """Independent features: missing entries are the mean, observed ones enter the density."""
    obs = (~miss).astype(np.float64)
    Y0 = np.where(miss, 0.0, X - center)
    P = g.precisions
    Pa = P * a
    quad = (Y0 * Y0) @ P.T - 2.0 * Y0 @ Pa.T + obs @ (Pa * a).T
    logp = -0.5 * (obs.sum(axis=1)[:, None] * _LOG_2PI - obs @ np.log(P).T + quad)
    return logp, _DiagCompleted(Y0, a, 1.0 / P)


@dataclasses.dataclass
class _FullCompleted:
    Y: list[np.ndarray]  # per component: completed rows about the centre, (n, D)
    factors: list[Any]
    patterns: Any
    tied: bool

    def accumulate(self, stats: Stats, resp: np.ndarray, miss: np.ndarray) -> None:
        D = miss.shape[1]
        pat = self.patterns
        for k, Yk in enumerate(self.Y):
            r = resp[:, k]
            stats["sum_x"][k] += r @ Yk
            outer = (Yk * r[:, None]).T @ Yk
            if pat.n_patterns:
                w = np.bincount(pat.pattern_id, weights=r[pat.rows], minlength=pat.n_patterns)
                outer += conditional_cov_sum(pat, self.factors[k], D, w)
            if self.tied:
                stats["sum_xxT"] += outer
            else:
                stats["sum_xxT"][k] += outer


def full_conditionals(
    X: np.ndarray, miss: np.ndarray, center: np.ndarray, a: np.ndarray, means: np.ndarray, g: ComponentGaussians
) -> tuple[np.ndarray, _FullCompleted]:
    """Per component: completed rows and observed log-densities (patterns shared by all)."""
    patterns = missingness_patterns(miss)
    K = len(means)
    logp = np.empty((len(X), K))
    Y, factors = [], []
    for k in range(K):
        cond = condition(X, miss, means[k], g.precisions[k], float(g.logdets[k]), patterns=patterns)
        logp[:, k] = cond.logpdf
        Y.append(cond.dev + a[k])
        factors.append(cond.factors)
    return logp, _FullCompleted(Y, factors, patterns, g.tied)


def component_conditionals(
    X: np.ndarray, miss: np.ndarray, center: np.ndarray, a: np.ndarray, means: np.ndarray, g: ComponentGaussians
) -> tuple[np.ndarray, Any]:
    """Observed log-densities (n, K) of every row under every component, and the completed rows.

    ``a`` are the means about ``center``; the second value's ``accumulate``
    adds the completed statistics (:func:`diag_conditionals` or
    :func:`full_conditionals`, as the covariance type asks).
    """
    if g.independent:
        return diag_conditionals(X, miss, center, a, g)
    return full_conditionals(X, miss, center, a, means, g)
