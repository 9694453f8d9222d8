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

Only a system of the size of the *missing* part is solved per row, and its
factorisation is done once per missingness pattern: the rows of a block are
sorted by pattern (bit-packed masks) and a compiled loop refactorises only
when the pattern changes. The products over all ``D`` features are BLAS
calls over the whole block.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numba
import numpy as np

from ..errors import DaskEMError, InvalidDataError
from .base import Stats

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------
# Shared conditional-Gaussian machinery (also used by the Gaussian mixture
# with missing values).
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Patterns:
    """Rows of a block that miss some but not all entries, sorted by pattern.

    Attributes
    ----------
    rows : ndarray of int64
        Row indices, grouped so that rows with the same pattern are adjacent.
    pattern_id : ndarray of int64
        Pattern number of each entry of ``rows`` (changes mark a new pattern).
    n_patterns : int
        Number of distinct patterns among ``rows``.
    """

    rows: np.ndarray
    pattern_id: np.ndarray
    n_patterns: int


def missingness_patterns(miss: np.ndarray) -> Patterns:
    """Group the partially observed rows of a boolean mask by pattern.

    Parameters
    ----------
    miss : ndarray of bool, shape (n_rows, n_features)
        True where a value is missing.
    """
    n_miss = miss.sum(axis=1)
    rows = np.flatnonzero((n_miss > 0) & (n_miss < miss.shape[1]))
    if rows.size == 0:
        return Patterns(rows.astype(np.int64), np.zeros(0, np.int64), 0)
    packed = np.packbits(miss[rows], axis=1, bitorder="little")
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((len(rows), pad), np.uint8)], axis=1)
    keys = np.ascontiguousarray(packed).view(np.uint64)
    if keys.shape[1] == 1:
        order = np.argsort(keys[:, 0], kind="stable")
        sorted_keys = keys[order, 0]
        change = sorted_keys[1:] != sorted_keys[:-1]
    else:
        order = np.lexsort(keys.T[::-1])
        sorted_keys = keys[order]
        change = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    pattern_id = np.concatenate([[0], np.cumsum(change)]).astype(np.int64)
    return Patterns(rows[order].astype(np.int64), pattern_id, int(pattern_id[-1]) + 1)


@numba.njit(cache=True, nogil=True)
def _cholesky_sub(prec, idx, m, L):  # pragma: no cover - compiled
    """Lower Cholesky factor of prec[idx[:m]][:, idx[:m]] into L; returns log det."""
    logdet = 0.0
    for a in range(m):
        for b in range(a + 1):
            s = prec[idx[a], idx[b]]
            for c in range(b):
                s -= L[a, c] * L[b, c]
            if a == b:
                L[a, a] = math.sqrt(s)
                logdet += 2.0 * math.log(L[a, a])
            else:
                L[a, b] = s / L[b, b]
    return logdet


@numba.njit(cache=True, nogil=True)
def _complete_rows(dev, R, miss, rows, pattern_id, prec, quad, logdet_mm):  # pragma: no cover - compiled
    """Fill the missing deviations of ``dev`` with their conditional means.

    ``dev`` holds x - mu with zeros at missing entries and ``R = dev @ prec``;
    ``quad`` holds dev' prec dev per row on entry and the observed-part
    Mahalanobis term on exit; ``logdet_mm`` receives log det Lambda_mm.
    """
    D = dev.shape[1]
    idx = np.empty(D, np.int64)
    L = np.empty((D, D))
    y = np.empty(D)
    current = -1
    m = 0
    ld = 0.0
    for t in range(rows.shape[0]):
        i = rows[t]
        if pattern_id[t] != current:
            current = pattern_id[t]
            m = 0
            for j in range(D):
                if miss[i, j]:
                    idx[m] = j
                    m += 1
            ld = _cholesky_sub(prec, idx, m, L)
        # y = L^-1 r_m (forward substitution), then d_m = -L^-T y
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
        quad[i] -= s2
        logdet_mm[i] = ld


@numba.njit(cache=True, nogil=True)
def _add_conditional_cov(miss, rows, pattern_id, prec, weights, out):  # pragma: no cover - compiled
    """out[m, m] += sum over rows of weights[row] * Lambda_mm^-1, once per pattern."""
    D = miss.shape[1]
    idx = np.empty(D, np.int64)
    L = np.empty((D, D))
    Linv = np.zeros((D, D))
    n = rows.shape[0]
    t = 0
    while t < n:
        i = rows[t]
        current = pattern_id[t]
        w = 0.0
        while t < n and pattern_id[t] == current:
            w += weights[rows[t]]
            t += 1
        if w == 0.0:
            continue
        m = 0
        for j in range(D):
            if miss[i, j]:
                idx[m] = j
                m += 1
        _cholesky_sub(prec, idx, m, L)
        for a in range(m):
            for b in range(m):
                Linv[a, b] = 0.0
        for a in range(m):
            Linv[a, a] = 1.0 / L[a, a]
            for b in range(a):
                s = 0.0
                for c in range(b, a):
                    s -= L[a, c] * Linv[c, b]
                Linv[a, b] = s / L[a, a]
        # Lambda_mm^-1 = Linv' Linv
        for a in range(m):
            for b in range(a + 1):
                s = 0.0
                for c in range(a, m):
                    s += Linv[c, a] * Linv[c, b]
                out[idx[a], idx[b]] += w * s
                if a != b:
                    out[idx[b], idx[a]] += w * s


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
    """

    dev: np.ndarray
    logpdf: np.ndarray


def condition(
    X: np.ndarray, miss: np.ndarray, patterns: Patterns, mean: np.ndarray, precision: np.ndarray, logdet: float
) -> Conditional:
    """Conditional means of the missing entries and observed log-densities.

    Parameters
    ----------
    X : ndarray, shape (n_rows, n_features)
        Data with NaN at missing entries (and finite elsewhere).
    miss : ndarray of bool
        ``np.isnan(X)``.
    patterns : Patterns
        ``missingness_patterns(miss)``.
    mean, precision, logdet
        The Gaussian: mean, precision matrix and log det of the covariance.
    """
    dev = X - mean
    dev[miss] = 0.0
    R = dev @ precision
    quad = np.einsum("ij,ij->i", dev, R)
    logdet_mm = np.zeros(len(X))
    if patterns.rows.size:
        _complete_rows(dev, R, miss, patterns.rows, patterns.pattern_id, precision, quad, logdet_mm)
    n_obs = miss.shape[1] - miss.sum(axis=1)
    logpdf = -0.5 * (n_obs * _LOG_2PI + logdet + logdet_mm + quad)
    empty = n_obs == 0
    if empty.any():
        logpdf[empty] = 0.0
        dev[empty] = 0.0
    return Conditional(dev, logpdf)


def conditional_cov_sum(
    miss: np.ndarray, patterns: Patterns, precision: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Sum over rows of ``weights * Cov[x_m | x_o]``, embedded in a (D, D) matrix."""
    out = np.zeros((miss.shape[1], miss.shape[1]))
    if patterns.rows.size:
        w = np.ones(miss.shape[0]) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
        _add_conditional_cov(miss, patterns.rows, patterns.pattern_id, precision, w, out)
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
        inf = np.isinf(X)
        n_inf = int(inf.sum())
        if n_inf:
            X = np.where(inf, np.nan, X)
        miss = np.isnan(X)
        all_missing = miss.all(axis=1)
        patterns = missingness_patterns(miss)
        precision, logdet = precision_and_logdet(params.covariance)
        cond = condition(X, miss, patterns, params.mean, precision, logdet)
        n = len(X) - int(all_missing.sum())
        dev = cond.dev
        sum_dev = dev.sum(axis=0)
        sum_ddT = dev.T @ dev + conditional_cov_sum(miss, patterns, precision)
        return {
            "n": np.array(float(n)),
            "loglik": np.array(cond.logpdf.sum()),
            "sum_x": sum_dev + n * params.mean,
            "sum_ddT": sum_ddT,
            "n_observed": (~miss).sum(axis=0).astype(np.float64),
            "n_all_missing": np.array(float(all_missing.sum())),
            "n_invalid": np.array(n_inf),
        }

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
    cond = condition(X, miss, missingness_patterns(miss), mean, precision, logdet)
    out = X.copy()
    out[miss] = (cond.dev + mean)[miss]
    return out


def score_block(block: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Log-density of the observed entries of each row (0 when none is observed)."""
    X = as_float_block(block)
    miss = np.isnan(X)
    precision, logdet = precision_and_logdet(covariance)
    return condition(X, miss, missingness_patterns(miss), mean, precision, logdet).logpdf
