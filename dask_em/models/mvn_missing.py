"""A multivariate normal fitted by EM on data with missing values (NaN).

Every row may miss any subset of its entries. The E-step completes each row
with the conditional expectation of its missing entries given the observed
ones and adds the conditional covariance to the second moments, by the
conditional-Gaussian machinery of :mod:`dask_em.models._conditional`
(through the precision matrix, one factorisation per missingness pattern,
compiled loops over the rows in block order). The same machinery serves the
Gaussian mixture with missing values (:mod:`dask_em.models.gmm_missing`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import numpy as np

from ..errors import InvalidDataError
from ._conditional import (
    PATTERN_PROBE,
    as_float_block,
    block_patterns,
    condition,
    condition_by_pattern,
    condition_rowwise,
    conditional_cov_sum,
    deviations,
    factor_patterns,
    observed_moments,
    patterns_mostly_unique,
    precision_and_logdet,
)
from ..contract import Stats

#: Rows per sub-block of the E-step: keeps the temporaries in cache.
SUB_BLOCK_ROWS = 4096


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
        _, mean, var = observed_moments(sample)
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
        head = ~finite[: 4 * PATTERN_PROBE]
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
            n_inf += deviations(part, params.mean, dev, n_seen, n_observed)
            R = dev @ precision
            if patterns is not None:
                condition_by_pattern(
                    dev, R, n_seen, patterns.pattern_id[start : start + rows], patterns.missing_idx,
                    patterns.idx_offset, factors.L, factors.L_offset, factors.logdet, logdet, logpdf,
                )
            else:
                condition_rowwise(part, dev, R, n_seen, precision, logdet, cov_lower, logpdf)
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
