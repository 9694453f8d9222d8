"""A multivariate normal fitted by EM on data with missing values (NaN).

Every row may miss any subset of its entries. The E-step completes each row
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
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, ClassVar

import numba
import numpy as np

from ..errors import DaskEMError, InvalidDataError
from ..contract import Stats

_LOG_2PI = math.log(2.0 * math.pi)
#: Rows per sub-block of the E-step: keeps the temporaries in cache.
SUB_BLOCK_ROWS = 4096


# --------------------------------------------------------------------------
# Shared conditional-Gaussian machinery (also used by the Gaussian mixture
# with missing values).
# --------------------------------------------------------------------------


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


@numba.njit(cache=True, nogil=True)
def _factor_patterns(prec, missing_idx, idx_offset, L_offset, L, logdet):  # pragma: no cover - compiled
    for p in range(idx_offset.shape[0] - 1):
        i0 = idx_offset[p]
        m = idx_offset[p + 1] - i0
        base = L_offset[p]
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
        logdet[p] = ld


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


@numba.njit(cache=True, nogil=True)
def _add_conditional_cov(missing_idx, idx_offset, L, L_offset, weights, out):  # pragma: no cover - compiled
    """out[m, m] += weights[p] * Lambda_mm^-1 for every pattern p."""
    D = out.shape[0]
    Linv = np.zeros((D, D))
    for p in range(idx_offset.shape[0] - 1):
        w = weights[p]
        if w == 0.0:
            continue
        i0 = idx_offset[p]
        m = idx_offset[p + 1] - i0
        base = L_offset[p]
        for a in range(m):
            Linv[a, a] = 1.0 / L[base + a * m + a]
            for b in range(a):
                s = 0.0
                for c in range(b, a):
                    s -= L[base + a * m + c] * Linv[c, b]
                Linv[a, b] = s / L[base + a * m + a]
        # Lambda_mm^-1 = Linv' Linv
        for a in range(m):
            for b in range(a + 1):
                s = 0.0
                for c in range(a, m):
                    s += Linv[c, a] * Linv[c, b]
                out[missing_idx[i0 + a], missing_idx[i0 + b]] += w * s
                if a != b:
                    out[missing_idx[i0 + b], missing_idx[i0 + a]] += w * s


@numba.njit(cache=True, nogil=True)
def _deviations(X, mean, dev, n_seen, n_observed):  # pragma: no cover - compiled
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


@numba.njit(cache=True, nogil=True)
def _condition_rowwise(X, dev, R, n_seen, prec, logdet, cov_lower, logpdf):  # pragma: no cover - compiled
    """Fused per-row conditioning: quadratic form, completion, log-density, covariance sum.

    Non-finite entries of ``X`` are missing. ``cov_lower`` receives the lower
    triangle of the summed ``Lambda_mm^-1``. Each row factorises its own
    ``Lambda_mm`` unless the previous row had the same pattern.
    """
    D = dev.shape[1]
    idx = np.empty(D, np.int64)
    prev = np.empty(D, np.int64)
    L = np.empty((D, D))
    Linv = np.zeros((D, D))
    Cinv = np.zeros((D, D))
    y = np.empty(D)
    m_prev = -1
    ld = 0.0
    log2pi = math.log(2.0 * math.pi)
    for i in range(X.shape[0]):
        quad = 0.0
        for j in range(D):
            quad += dev[i, j] * R[i, j]
        seen = n_seen[i]
        if seen == 0:
            logpdf[i] = 0.0
            continue
        m = D - seen
        if m == 0:
            logpdf[i] = -0.5 * (D * log2pi + logdet + quad)
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
            ld = 0.0
            for a in range(m):
                for b in range(a + 1):
                    s = prec[idx[a], idx[b]]
                    for c in range(b):
                        s -= L[a, c] * L[b, c]
                    if a == b:
                        if s <= 0.0:
                            s = 1e-300
                        L[a, a] = math.sqrt(s)
                        ld += 2.0 * math.log(L[a, a])
                    else:
                        L[a, b] = s / L[b, b]
            for a in range(m):
                Linv[a, a] = 1.0 / L[a, a]
                for b in range(a):
                    s = 0.0
                    for c in range(b, a):
                        s -= L[a, c] * Linv[c, b]
                    Linv[a, b] = s / L[a, a]
            for a in range(m):
                for b in range(a + 1):
                    s = 0.0
                    for c in range(a, m):
                        s += Linv[c, a] * Linv[c, b]
                    Cinv[a, b] = s
            for a in range(m):
                prev[a] = idx[a]
            m_prev = m
        for a in range(m):
            for b in range(a + 1):
                cov_lower[idx[a], idx[b]] += Cinv[a, b]
        s2 = 0.0
        for a in range(m):
            s = R[i, idx[a]]
            for c in range(a):
                s -= L[a, c] * y[c]
            y[a] = s / L[a, a]
            s2 += y[a] * y[a]
        for a in range(m - 1, -1, -1):
            s = y[a]
            for c in range(a + 1, m):
                s -= L[c, a] * y[c]
            y[a] = s / L[a, a]
        for a in range(m):
            dev[i, idx[a]] = -y[a]
        logpdf[i] = -0.5 * (seen * log2pi + logdet + ld + quad - s2)


@numba.njit(cache=True, nogil=True)
def _condition_by_pattern(dev, R, n_seen, pattern_id, missing_idx, idx_offset, L, L_offset, logdets, logdet, logpdf):  # pragma: no cover - compiled
    """Fused per-row conditioning with one precomputed factor per pattern.

    Like :func:`_condition_rowwise`, but ``Lambda_mm`` was factorised once
    per distinct pattern of the block; rows are visited in block order and
    look their factor up.
    """
    D = dev.shape[1]
    y = np.empty(D)
    log2pi = math.log(2.0 * math.pi)
    for i in range(dev.shape[0]):
        quad = 0.0
        for j in range(D):
            quad += dev[i, j] * R[i, j]
        seen = n_seen[i]
        if seen == 0:
            logpdf[i] = 0.0
            continue
        p = pattern_id[i]
        i0 = idx_offset[p]
        m = idx_offset[p + 1] - i0
        base = L_offset[p]
        s2 = _fill_missing_row(dev, R, i, missing_idx, i0, m, L, base, y)
        logpdf[i] = -0.5 * (seen * log2pi + logdet + logdets[p] + quad - s2)


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
        chol = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        raise DaskEMError(
            "the covariance matrix is not positive definite (ill-defined empirical covariance); "
            "try a positive reg_covar, dropping constant or duplicated columns, or scaling the input data"
        ) from None
    inv_chol = np.linalg.inv(chol)
    precision = inv_chol.T @ inv_chol
    return 0.5 * (precision + precision.T), 2.0 * float(np.log(np.diag(chol)).sum())


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
_PATTERN_PROBE = 1024


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
    rows = np.flatnonzero((n_miss > 0) & (n_miss < miss.shape[1]))[:_PATTERN_PROBE]
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


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MVNParams:
    """Parameters of :class:`MVNMissingModel`.

    Attributes
    ----------
    mean : ndarray of shape (n_features,)
    covariance : ndarray of shape (n_features, n_features)
    n_all_missing : ndarray, 0-d
        Rows with no observed value seen by the last E-step (diagnostic;
        such rows are ignored). -1 before the first iteration.
    """

    mean: np.ndarray
    covariance: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"covariance": "spd"}
    n_all_missing: np.ndarray = dataclasses.field(default_factory=lambda: np.array(-1))


@dataclasses.dataclass(frozen=True)
class MVNMissingModel:
    """A multivariate normal distribution with NaN as missing values.

    Parameters
    ----------
    reg_covar : float
        Added to the diagonal of the covariance after each M-step.

    Notes
    -----
    Statistics returned by :meth:`e_step` (sums over the block):

    ``n`` ()
        Rows with at least one observed value.
    ``loglik`` ()
        Observed-data log-likelihood of those rows.
    ``sum_x`` (D,)
        Sum of the completed rows (conditional means at missing entries).
    ``sum_ddT`` (D, D)
        Sum of ``(x - mean)(x - mean)^T`` over completed rows plus the
        conditional covariances of the missing entries, where ``mean`` is
        the parameter that entered the E-step (centering keeps the
        covariance accurate for data far from the origin).
    ``n_observed`` (D,)
        Observed values per column.
    ``n_all_missing`` ()
        Rows with no observed value (ignored).
    ``n_invalid`` ()
        Infinite values (an error).
    """

    reg_covar: float = 0.0

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> MVNParams:
        """Column means and variances of the observed entries of a sample."""
        sample = as_float_block(sample)
        sample = np.where(np.isfinite(sample), sample, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(sample, axis=0)
            var = np.nanvar(sample, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        var = np.where(np.isfinite(var) & (var > 0), var, 1.0)
        return MVNParams(mean, np.diag(var + self.reg_covar))

    def e_step(self, block: Any, params: MVNParams) -> Stats:
        """Expected complete-data statistics of one block (see the class notes)."""
        X = as_float_block(block)
        D = X.shape[1]
        precision, logdet = precision_and_logdet(params.covariance)
        n = 0
        loglik = 0.0
        n_inf = 0
        n_all_missing = 0
        sum_dev = np.zeros(D)
        sum_ddT = np.zeros((D, D))
        n_observed = np.zeros(D)
        finite = np.isfinite(X)
        head = ~finite[: 4 * _PATTERN_PROBE]
        per_row = patterns_mostly_unique(head)
        if not per_row and not finite.all():
            # few distinct patterns: factorise Lambda_mm once per pattern of the block
            patterns = block_patterns(~finite)
            factors = factor_patterns(patterns, precision)
            m = np.diff(patterns.idx_offset)
            weights = np.where(m < D, patterns.counts, 0).astype(np.float64)  # empty rows are ignored
            sum_ddT += conditional_cov_sum(patterns, factors, D, weights)
        else:
            patterns = factors = None
        dev_buf = np.empty((min(SUB_BLOCK_ROWS, X.shape[0]), D))
        seen_buf = np.empty(dev_buf.shape[0], np.int64)
        logpdf_buf = np.empty(dev_buf.shape[0])
        cov_lower = np.zeros((D, D))
        # cache-sized sub-blocks: every temporary stays small
        for start in range(0, X.shape[0], SUB_BLOCK_ROWS):
            part = X[start : start + SUB_BLOCK_ROWS]
            rows = part.shape[0]
            dev, n_seen, logpdf = dev_buf[:rows], seen_buf[:rows], logpdf_buf[:rows]
            n_inf += _deviations(part, params.mean, dev, n_seen, n_observed)
            R = dev @ precision
            if patterns is not None:
                _condition_by_pattern(
                    dev, R, n_seen, patterns.pattern_id[start : start + rows], patterns.missing_idx,
                    patterns.idx_offset, factors.L, factors.L_offset, factors.logdet, logdet, logpdf,
                )
            else:
                _condition_rowwise(part, dev, R, n_seen, precision, logdet, cov_lower, logpdf)
            empty = int(np.count_nonzero(n_seen == 0))
            n_all_missing += empty
            n += rows - empty
            loglik += float(logpdf.sum())
            sum_dev += dev.sum(axis=0)
            sum_ddT += dev.T @ dev
        sum_ddT += cov_lower + cov_lower.T - np.diag(np.diag(cov_lower))
        return {
            "n": np.array(float(n)),
            "loglik": np.array(loglik),
            "sum_x": sum_dev + n * params.mean,
            "sum_ddT": sum_ddT,
            "n_observed": n_observed,
            "n_all_missing": np.array(float(n_all_missing)),
            "n_invalid": np.array(n_inf),
        }

    def recenter_stats(self, stats: Stats, old: MVNParams, new: MVNParams) -> Stats:
        """``sum_ddT`` taken about ``old.mean`` moved to ``new.mean`` (for online EM).

        With ``a = old.mean``, ``b = new.mean`` and ``e = b - a``:
        ``sum (x-b)(x-b)' = sum (x-a)(x-a)' - u e' - e u' + n e e'`` where
        ``u = sum_x - n a``.
        """
        out = dict(stats)
        n = float(stats["n"])
        e = np.asarray(new.mean, np.float64) - np.asarray(old.mean, np.float64)
        u = np.asarray(stats["sum_x"], np.float64) - n * np.asarray(old.mean, np.float64)
        out["sum_ddT"] = np.asarray(stats["sum_ddT"], np.float64) - np.outer(u, e) - np.outer(e, u) + n * np.outer(e, e)
        return out

    def m_step(self, stats: Stats, params: MVNParams) -> MVNParams:
        """Mean and covariance of the completed data.

        Raises
        ------
        InvalidDataError
            If a column has no observed value at all.
        """
        empty = np.flatnonzero(stats["n_observed"] == 0)
        if empty.size:
            raise InvalidDataError(
                f"column(s) {empty.tolist()} have no observed value (all NaN); a normal distribution "
                "cannot be estimated for them. Drop these columns before fitting."
            )
        n = float(stats["n"])
        n_all_missing = int(stats["n_all_missing"])
        if n_all_missing > 0 and int(params.n_all_missing) != n_all_missing:
            warnings.warn(
                f"{n_all_missing} row(s) have no observed value; they are ignored in the fit",
                UserWarning,
                stacklevel=3,
            )
        mean = stats["sum_x"] / n
        delta = mean - params.mean
        covariance = stats["sum_ddT"] / n - np.outer(delta, delta)
        covariance = 0.5 * (covariance + covariance.T)
        covariance.flat[:: len(mean) + 1] += self.reg_covar
        precision_and_logdet(covariance)  # fail here, on the client, with advice
        return MVNParams(mean, covariance, np.array(n_all_missing))

    def describe_invalid(self, n: int) -> str:
        """The message for ``n`` infinite values."""
        return (
            f"{n} values are infinite; NaN marks a missing value, but inf cannot be fitted. "
            "Replace infinite values with NaN (missing) or finite values."
        )


def impute_block(block: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Replace NaN in ``block`` by conditional expectations given the observed entries.

    Rows with nothing observed get the mean.
    """
    X = as_float_block(block)
    miss = np.isnan(X)
    if not miss.any():
        return X
    precision, logdet = precision_and_logdet(covariance)
    cond = condition(X, miss, mean, precision, logdet)
    out = X.copy()
    out[miss] = (cond.dev + mean)[miss]
    return out


def score_block(block: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Log-density of the observed entries of each row (0 when none is observed)."""
    X = as_float_block(block)
    miss = np.isnan(X)
    precision, logdet = precision_and_logdet(covariance)
    return condition(X, miss, mean, precision, logdet).logpdf
