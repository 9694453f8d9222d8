"""A Gaussian mixture on data with missing values (NaN), by EM.

The E-step computes, for every component, the log-density of each row's
observed entries, the responsibilities from those, and the component's
completed rows (conditional means of the missing entries) and conditional
covariances. It returns exactly the statistics of
:class:`dask_em.models.gmm.GaussianMixtureModel` (centred on the mixture
mean), now of the completed data, so the M-step *is* that model's M-step:
with no value missing the two models give the same parameters to rounding.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from scipy.special import logsumexp

from ..errors import InvalidDataError
from ..contract import Stats
from ._gaussian import COVARIANCE_TYPES, recenter_moments
from .gmm import GaussianMixtureModel, GMMParams, reference_point
from .mvn_missing import as_float_block, condition, conditional_cov_sum, missingness_patterns

_LOG_2PI = math.log(2.0 * math.pi)
#: Rows per sub-block of the E-step.
SUB_BLOCK_ROWS = 2048


@dataclasses.dataclass(frozen=True)
class GMMMissingParams(GMMParams):
    """:class:`GMMParams` plus the number of rows with nothing observed in the last pass.

    ``n_all_missing`` is a diagnostic (-1 before the first iteration); it
    lets the M-step warn once about ignored rows.
    """

    n_all_missing: np.ndarray = dataclasses.field(default_factory=lambda: np.array(-1))


def _with_count(params: GMMParams, n_all_missing: int) -> GMMMissingParams:
    return GMMMissingParams(
        weights=params.weights,
        means=params.means,
        covariances=params.covariances,
        precisions_cholesky=params.precisions_cholesky,
        n_all_missing=np.array(n_all_missing),
    )


@dataclasses.dataclass(frozen=True)
class GaussianMixtureMissingModel:
    """A mixture of ``n_components`` Gaussians, fitted with NaN as missing values.

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of the covariances, as in scikit-learn.

    Notes
    -----
    Statistics of :meth:`e_step`: those of
    :class:`~dask_em.models.gmm.GaussianMixtureModel` (``sum_resp``,
    ``sum_x``, ``sum_xxT`` or ``sum_xx``, measured from the mixture mean),
    where each row is completed per component with the conditional mean of
    its missing entries and the conditional covariance is added to the
    second moments; plus ``n_observed`` (D,) observed values per column,
    ``n_all_missing`` () rows with nothing observed (ignored) and
    ``n_invalid`` () infinite values.
    """

    n_components: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6

    def __post_init__(self) -> None:
        self._complete_model()  # validates the configuration

    def _complete_model(self) -> GaussianMixtureModel:
        return GaussianMixtureModel(self.n_components, self.covariance_type, self.reg_covar)

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> GMMMissingParams:
        """The complete-data initialisation on the sample with NaN replaced by column means."""
        X = as_float_block(sample)
        X = np.where(np.isfinite(X), X, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            col = np.nanmean(X, axis=0)
        col = np.where(np.isfinite(col), col, 0.0)
        X = X[~np.isnan(X).all(axis=1)]
        X = np.where(np.isnan(X), col, X)
        return _with_count(self._complete_model().init_params(X, rng), -1)

    def param_constraints(self, params: GMMParams) -> dict[str, str]:
        """As the complete-data mixture's (see :mod:`dask_em.accelerate`)."""
        return self._complete_model().param_constraints(params)

    def complete_params(self, params: GMMParams) -> GMMParams:
        """``params`` with the precision factors recomputed from the covariances."""
        return self._complete_model().complete_params(params)

    def e_step(self, block: Any, params: GMMParams) -> Stats:
        """Expected complete-data statistics of one block (see the class notes)."""
        X = as_float_block(block)
        n_rows, D = X.shape
        K = self.n_components
        ct = self.covariance_type
        center = reference_point(params)
        means = np.asarray(params.means, np.float64)
        a = means - center
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(params.weights, np.float64))
        stats = self._complete_model()._zero_stats(D)
        gauss = _component_gaussians(params, ct)
        n = 0
        n_all = 0
        n_inf = 0
        loglik = 0.0
        n_observed = np.zeros(D)
        for start in range(0, n_rows, SUB_BLOCK_ROWS):
            part = X[start : start + SUB_BLOCK_ROWS]
            inf = np.isinf(part)
            if inf.any():
                n_inf += int(inf.sum())
                part = np.where(inf, np.nan, part)
            miss = np.isnan(part)
            n_seen = D - miss.sum(axis=1)
            empty = n_seen == 0
            n_observed += len(part) - miss.sum(axis=0)
            if ct in ("diag", "spherical"):
                logp, completed = _diag_conditionals(part, miss, center, a, gauss)
            else:
                logp, completed = _full_conditionals(part, miss, center, a, means, gauss)
            weighted = logp + log_w
            row_ll = logsumexp(weighted, axis=1)
            resp = np.exp(weighted - row_ll[:, None])
            resp[empty] = 0.0
            row_ll[empty] = 0.0
            n_all += int(empty.sum())
            n += len(part) - int(empty.sum())
            loglik += float(row_ll.sum())
            stats["sum_resp"] += resp.sum(axis=0)
            completed.accumulate(stats, resp, miss)
        stats["n"] = np.array(float(n))
        stats["loglik"] = np.array(loglik)
        stats["n_observed"] = n_observed
        stats["n_all_missing"] = np.array(float(n_all))
        stats["n_invalid"] = np.array(n_inf)
        return stats

    def recenter_stats(self, stats: Stats, old: GMMParams, new: GMMParams) -> Stats:
        """Statistics taken about ``old``'s mixture mean, moved to ``new``'s (for online EM)."""
        return recenter_moments(stats, reference_point(old) - reference_point(new))

    def m_step(self, stats: Stats, params: GMMParams) -> GMMMissingParams:
        """The complete-data M-step of :class:`GaussianMixtureModel` on the completed statistics.

        Raises
        ------
        InvalidDataError
            If a column has no observed value at all.
        """
        empty = np.flatnonzero(np.asarray(stats["n_observed"]) == 0)
        if empty.size:
            raise InvalidDataError(
                f"column(s) {empty.tolist()} have no observed value (all NaN); a Gaussian mixture "
                "cannot be estimated for them. Drop these columns before fitting."
            )
        n_all_missing = int(stats["n_all_missing"])
        previous = int(getattr(params, "n_all_missing", -1))
        if n_all_missing > 0 and previous != n_all_missing:
            warnings.warn(
                f"{n_all_missing} row(s) have no observed value; they are ignored in the fit",
                UserWarning,
                stacklevel=3,
            )
        core = {k: v for k, v in stats.items() if k not in ("n_observed", "n_all_missing")}
        return _with_count(self._complete_model().m_step(core, params), n_all_missing)

    def describe_invalid(self, n: int) -> str:
        """The message for ``n`` infinite values."""
        return (
            f"{n} values are infinite; NaN marks a missing value, but inf cannot be fitted. "
            "Replace infinite values with NaN (missing) or finite values."
        )

    def weighted_log_prob(self, X: np.ndarray, params: GMMParams) -> np.ndarray:
        """log weight_k + log-density of each row's observed entries under component k: (n, K).

        Rows with nothing observed get the log weights.
        """
        X = as_float_block(X)
        X = np.where(np.isinf(X), np.nan, X)
        miss = np.isnan(X)
        center = reference_point(params)
        means = np.asarray(params.means, np.float64)
        gauss = _component_gaussians(params, self.covariance_type)
        if self.covariance_type in ("diag", "spherical"):
            logp, _ = _diag_conditionals(X, miss, center, means - center, gauss)
        else:
            logp, _ = _full_conditionals(X, miss, center, means - center, means, gauss)
        with np.errstate(divide="ignore"):
            return logp + np.log(np.asarray(params.weights, np.float64))


# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Gaussians:
    precisions: np.ndarray  # (K, D, D) for full/tied, (K, D) for diag/spherical
    logdets: np.ndarray  # (K,) log det of the covariances
    tied: bool


def _component_gaussians(params: GMMParams, ct: str) -> _Gaussians:
    K, D = np.shape(params.means)
    pc = np.asarray(params.precisions_cholesky, np.float64)
    if ct == "full":
        prec = np.einsum("kij,klj->kil", pc, pc)
        logdets = -2.0 * np.log(np.diagonal(pc, axis1=1, axis2=2)).sum(axis=1)
        return _Gaussians(prec, logdets, False)
    if ct == "tied":
        prec = pc @ pc.T
        return _Gaussians(np.broadcast_to(prec, (K, D, D)), np.full(K, -2.0 * np.log(np.diag(pc)).sum()), True)
    if ct == "diag":
        P = pc**2
    else:
        P = np.repeat((pc**2)[:, None], D, axis=1)
    return _Gaussians(P, -np.log(P).sum(axis=1), False)


@dataclasses.dataclass
class _DiagCompleted:
    Y0: np.ndarray  # (n, D) rows about the centre, zeros at missing entries
    a: np.ndarray  # (K, D) means about the centre
    var: np.ndarray  # (K, D) variances

    def accumulate(self, stats: Stats, resp: np.ndarray, miss: np.ndarray) -> None:
        r_miss = resp.T @ miss.astype(np.float64)  # (K, D): weight of rows missing each entry
        stats["sum_x"] += resp.T @ self.Y0 + r_miss * self.a
        stats["sum_xx"] += resp.T @ (self.Y0 * self.Y0) + r_miss * (self.a * self.a + self.var)


def _diag_conditionals(
    X: np.ndarray, miss: np.ndarray, center: np.ndarray, a: np.ndarray, g: _Gaussians
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


def _full_conditionals(
    X: np.ndarray, miss: np.ndarray, center: np.ndarray, a: np.ndarray, means: np.ndarray, g: _Gaussians
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


__all__ = ["COVARIANCE_TYPES", "GMMMissingParams", "GaussianMixtureMissingModel"]
