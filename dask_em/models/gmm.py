"""Gaussian mixture model: pure numpy E-step and M-step.

The M-step follows scikit-learn's ``GaussianMixture`` formula for formula
(``nk = sum_resp + 10 * eps``, ``reg_covar`` added to the diagonal), so a
fit from the same initial parameters matches it to rounding.

Statistics are sums of ``x - c`` where ``c`` is a reference point fixed by
the parameters entering the iteration (:func:`reference_point`, the
mixture's mean), the same for every block. Second moments taken about a
point near the data do not lose digits to cancellation when the data sits
far from the origin.

The E-step works on sub-blocks of rows so that every temporary stays in
cache. Log-probabilities and responsibilities are held transposed, (K,
rows), so that their normalisation (:func:`dask_em._kernels.normalize_columns`,
the kernel model selection uses too) runs along rows in SIMD lanes. For
``full`` covariances the whole block is one compiled call
(:func:`_e_step_full`) on sub-blocks of a few hundred centred rows held
transposed: the Mahalanobis terms come from register tiles of the
Cholesky factors of the precisions (skipping their zero triangle) and the
weighted Gram matrices from tiles of their upper triangle, every loop along
rows. For the other types the statistics come from ``respT @ Y`` products.

A component whose responsibilities sum to less than :data:`EMPTY_MASS`
(it has lost all its points) keeps its previous mean and covariance and
its weight becomes ``10 * eps / n_samples``, about zero, so it never turns
into NaN; it can win points back if the data moves towards it.

With a conjugate prior (any ``*_prior`` field set) the M-step is the
maximum a posteriori (MAP) one of Fraley & Raftery (2007), "Bayesian
regularization for normal mixture estimation and model-based clustering",
Journal of Classification 24, 155-181: a Dirichlet prior on the weights and
a normal-inverse-Wishart prior on each component (normal-inverse-gamma per
feature for ``diag``, on one variance for ``spherical``, one inverse-Wishart
for the shared ``tied`` covariance). The E-step is the same; the prior only
changes the M-step and adds the log prior density to the monitored
objective (:meth:`GaussianMixtureModel.finish_stats`), so EM increases the
log posterior. Every component then has a well-defined mean and covariance,
also one with no points or a single point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numba
import numpy as np
import scipy.linalg
import scipy.special

from .._kernels import normalize_columns
from ..errors import DaskEMError
from ..contract import Stats, split_weights

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: A component with less responsibility than this (in samples) is empty.
EMPTY_MASS = 1e-10

#: Rows per sub-block in the E-step: keeps the (rows, K*D) temporaries in cache.
SUB_BLOCK_ROWS = 2048


def sub_block_rows(n_components: int, n_features: int, covariance_type: str) -> int:
    """Rows per sub-block of the loops in Python (about 1 MiB for each
    (rows, K*D) buffer of the full type; the other types, whose temporaries
    are (rows, K), run fastest at about 4,000).

    The full E-step of a whole block runs in one compiled call with its own
    sub-blocks (:func:`_full_kernel_rows`).
    """
    if covariance_type == "full":
        return int(min(8192, max(256, 2**17 // (n_components * n_features))))
    return 4096


def _full_kernel_rows(n_features: int) -> int:
    """Rows per sub-block of :func:`_e_step_full`: its transposed centred rows
    (about 32 KiB) stay in the L1 cache while the kernels sweep them once per
    component. Measured on one core, K=8, D=16: 256 rows 10-20% faster than 1,024."""
    return int(min(2048, max(128, 2**12 // _padded(n_features))))


def _padded(n_features: int) -> int:
    """Features rounded up to a multiple of 4 (the full E-step's unrolling)."""
    return -(-n_features // 4) * 4

_EPS10 = 10 * np.finfo(np.float64).eps
_LOG_2PI = math.log(2 * math.pi)


class IllConditionedCovarianceError(DaskEMError, ValueError):
    """A covariance matrix is not positive definite even with ``reg_covar``."""


def covariance_error_message(dtype: Any = np.float64) -> str:
    """scikit-learn's advice when a covariance cannot be factorised."""
    message = (
        "Fitting the mixture model failed because some components have ill-defined "
        "empirical covariance (for instance caused by singleton or collapsed samples). "
        "Try to decrease the number of components, increase reg_covar, or scale the "
        "input data."
    )
    if np.dtype(dtype) == np.float32:
        message += " The numerical accuracy can also be improved by passing float64 data instead of float32."
    return message


@dataclass(frozen=True)
class GMMParams:
    """Parameters of a Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        (n_components, n_features, n_features) for ``full``,
        (n_features, n_features) for ``tied``, (n_components, n_features)
        for ``diag`` and (n_components,) for ``spherical``.
    precisions_cholesky : ndarray
        Cholesky factors of the precision matrices, same shape as
        ``covariances`` (scikit-learn's ``precisions_cholesky_``).
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray


def reference_point(params: GMMParams) -> np.ndarray:
    """The point statistics are centred on: the mixture mean ``weights @ means``."""
    return np.asarray(params.weights, np.float64) @ np.asarray(params.means, np.float64)


def recenter_moments(
    stats: Stats,
    d: np.ndarray,
    *,
    weight: str = "sum_resp",
    first: str = "sum_x",
    outer: str = "sum_xxT",
    square: str = "sum_xx",
) -> Stats:
    """Weighted moments taken about a point ``s`` re-expressed about ``c``, with ``d = s - c``.

    ``d`` is one point (D,) for all components or one per component (K, D).
    Exact: ``first + N d``, ``outer + first d' + d first' + N d d'`` and
    ``square + 2 d first + N d^2``, with ``N`` each component's ``weight``;
    an ``outer`` of shape (D, D) (a tied covariance) sums the terms over the
    components. Keys absent from ``stats`` are skipped, others pass through.
    """
    out = dict(stats)
    N = np.asarray(stats[weight], np.float64)
    S1 = np.asarray(stats[first], np.float64)
    d = np.broadcast_to(np.asarray(d, np.float64), S1.shape)
    out[first] = S1 + N[:, None] * d
    if outer in stats:
        cross = S1[:, :, None] * d[:, None, :]
        shift = cross + cross.transpose(0, 2, 1) + N[:, None, None] * d[:, :, None] * d[:, None, :]
        S2 = np.asarray(stats[outer], np.float64)
        out[outer] = S2 + (shift.sum(axis=0) if S2.ndim == 2 else shift)
    if square in stats:
        out[square] = np.asarray(stats[square], np.float64) + 2.0 * d * S1 + N[:, None] * (d * d)
    return out


def precisions_cholesky_from_covariances(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of the precisions, as scikit-learn computes them.

    Raises
    ------
    IllConditionedCovarianceError
        If a covariance is not positive definite.
    """
    covariances = np.asarray(covariances, np.float64)
    if covariance_type in ("full", "tied"):
        square = covariances if covariance_type == "full" else covariances[None]
        out = np.empty_like(square)
        for k, cov in enumerate(square):
            try:
                chol = scipy.linalg.cholesky(cov, lower=True)
            except np.linalg.LinAlgError:
                raise IllConditionedCovarianceError(covariance_error_message()) from None
            # LAPACK's triangular inverse, not solve_triangular: that one is a
            # threaded BLAS call whose thread wake-up took 10-200 ms per small
            # matrix on a busy machine, against microseconds for the work.
            inverse, info = scipy.linalg.lapack.dtrtri(chol, lower=1)
            if info != 0:
                raise IllConditionedCovarianceError(covariance_error_message())
            out[k] = inverse.T
        return out if covariance_type == "full" else out[0]
    if np.any(~(covariances > 0.0)):
        raise IllConditionedCovarianceError(covariance_error_message())
    return 1.0 / np.sqrt(covariances)


def precisions_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of given precision matrices (for ``precisions_init``).

    Raises
    ------
    ValueError
        If a precision matrix is not symmetric positive definite.
    """
    precisions = np.asarray(precisions, np.float64)
    if covariance_type in ("full", "tied"):
        square = precisions if covariance_type == "full" else precisions[None]
        out = np.empty_like(square)
        for k, prec in enumerate(square):
            if not np.allclose(prec, prec.T):
                raise ValueError(
                    f"The parameter '{covariance_type} precision' should be symmetric, positive-definite: "
                    f"precisions_init[{k}] is not symmetric"
                )
            try:
                out[k] = scipy.linalg.cholesky(prec, lower=True)
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"The parameter '{covariance_type} precision' should be symmetric, positive-definite: "
                    f"precisions_init[{k}] is not positive definite"
                ) from None
        return out if covariance_type == "full" else out[0]
    if np.any(~(precisions > 0.0)):
        raise ValueError(
            f"The parameter '{covariance_type} precision' should be positive: got min value {np.min(precisions)!r}"
        )
    return np.sqrt(precisions)


def covariances_from_precisions_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances implied by Cholesky factors of precisions."""
    prec_chol = np.asarray(prec_chol, np.float64)
    if covariance_type == "full":
        return np.stack([np.linalg.inv(p @ p.T) for p in prec_chol])
    if covariance_type == "tied":
        return np.linalg.inv(prec_chol @ prec_chol.T)
    return 1.0 / prec_chol**2


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices from their Cholesky factors (scikit-learn's ``precisions_``)."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


#: The prior fields of :class:`GaussianMixtureModel` (scikit-learn's
#: ``BayesianGaussianMixture`` names, with MAP meaning).
PRIOR_FIELDS = (
    "weight_concentration_prior",
    "mean_precision_prior",
    "mean_prior",
    "degrees_of_freedom_prior",
    "covariance_prior",
)


@dataclass(frozen=True)
class _Prior:
    """The prior's values as numbers and arrays."""

    alpha: float
    kappa: float
    mean: np.ndarray
    dof: float
    scale: np.ndarray
    proper: bool


def _as_tuple(value: Any) -> Any:
    """Nested tuples of floats (or a float) for an array-like: JSON-able, hashable, exact."""
    array = np.asarray(value, np.float64)
    if array.ndim == 0:
        return float(array)
    return tuple(_as_tuple(v) for v in array)


def _check_prior_fields(model: Any) -> None:
    """Check the prior fields that can be checked without the data and store arrays as tuples."""
    for name in ("weight_concentration_prior", "mean_precision_prior"):
        value = getattr(model, name)
        if value is not None:
            if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            object.__setattr__(model, name, float(value))
    if model.degrees_of_freedom_prior is not None:
        value = model.degrees_of_freedom_prior
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)):
            raise ValueError(f"degrees_of_freedom_prior must be a finite number, got {value!r}")
        object.__setattr__(model, "degrees_of_freedom_prior", float(value))
    if model.mean_prior is not None:
        mean = np.asarray(model.mean_prior, np.float64)
        if mean.ndim != 1 or not np.isfinite(mean).all():
            raise ValueError(f"mean_prior must be a finite vector of length n_features, got {model.mean_prior!r}")
        object.__setattr__(model, "mean_prior", _as_tuple(mean))
    if model.covariance_prior is not None:
        cov = np.asarray(model.covariance_prior, np.float64)
        ct = model.covariance_type
        ndim = {"full": 2, "tied": 2, "diag": 1, "spherical": 0}[ct]
        if cov.ndim != ndim or not np.isfinite(cov).all():
            what = {2: "a (n_features, n_features) matrix", 1: "a vector of n_features values", 0: "a number"}[ndim]
            raise ValueError(f"covariance_prior for covariance_type={ct!r} must be {what}, got shape {cov.shape}")
        if ndim == 2:
            if cov.shape[0] != cov.shape[1] or not np.allclose(cov, cov.T):
                raise ValueError("covariance_prior must be a symmetric positive-definite matrix")
            try:
                np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ValueError(
                    "covariance_prior is not positive definite (a constant or collinear feature?); "
                    "give a positive-definite covariance_prior or scale the data"
                ) from None
        elif np.any(~(cov > 0)):
            raise ValueError(
                "covariance_prior must be positive (a constant feature?); give positive values "
                "or scale the data"
            )
        object.__setattr__(model, "covariance_prior", _as_tuple(cov))


def data_moments(stats: Stats, center: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the data from mixture statistics (summed over components).

    Works on the statistics of any responsibilities that sum to one per row
    (hard assignments, random ones, an E-step), so the data-derived prior
    defaults cost no pass of their own.

    Returns
    -------
    mean : ndarray of shape (n_features,)
    covariance : ndarray
        (n_features, n_features) for full and tied; the variances
        (n_features,) for diag and spherical. Denominator ``n - 1``.
    """
    n = float(np.asarray(stats["sum_resp"], np.float64).sum())
    total = np.asarray(stats["sum_x"], np.float64).sum(axis=0)
    offset = total / n
    denominator = max(n - 1.0, 1.0)
    if covariance_type in ("full", "tied"):
        S = np.asarray(stats["sum_xxT"], np.float64)
        S = S.sum(axis=0) if covariance_type == "full" else S
        cov = (S - n * np.outer(offset, offset)) / denominator
        return offset + center, 0.5 * (cov + cov.T)
    S = np.asarray(stats["sum_xx"], np.float64).sum(axis=0)
    return offset + center, (S - n * offset * offset) / denominator


def sample_moments(sample: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (as :func:`data_moments`) of the finite rows of an in-memory sample."""
    sample = np.asarray(sample, np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if len(sample) < 2:
        raise ValueError("the data-derived prior defaults need at least two finite rows; give mean_prior and covariance_prior")
    mean = sample.mean(axis=0)
    if covariance_type in ("full", "tied"):
        return mean, np.atleast_2d(np.cov(sample, rowvar=False))
    return mean, sample.var(axis=0, ddof=1)


@dataclass(frozen=True)
class _Prepared:
    """Per-iteration constants of the E-step (no data involved, cheap)."""

    center: np.ndarray  # (D,) reference point
    const: np.ndarray  # (K,) log weight + log det - D/2 log 2 pi
    factors: np.ndarray  # full: (K, P, P) Cholesky factors zero-padded to P = 4 ceil(D/4); tied: (D, D)
    offsets: np.ndarray  # full: (K, P) a_k @ L_k, zero-padded; tied: (K, D); diag/spherical: (K, D) a_k
    scale: np.ndarray  # tied: ones (K, D); diag/spherical: (K, D) precisions
    # full: for each group of 4 columns of the factors, the end of their
    # nonzero rows (a multiple of 4): the E-step skips the zero triangle.
    row_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class _Workspace:
    """Buffers reused across the sub-blocks of one block.

    Allocating them once matters inside Dask workers, whose allocator hands
    freed memory back to the system eagerly (``MALLOC_TRIM_THRESHOLD_``):
    fresh temporaries per sub-block there cost page faults on every use.

    The E-step holds log-probabilities and responsibilities transposed,
    (K, rows), in ``respT`` (:meth:`resp_t` gives the view for a sub-block
    of ``n`` rows, contiguous whatever ``n``), so that the normalisation
    runs along rows in SIMD lanes; for ``full`` covariances the centred
    rows are held transposed too, in ``Yt``.
    """

    def __init__(self, rows: int, K: int, D: int, covariance_type: str) -> None:
        rows = max(rows, 1)
        self.K = K
        self.Y = np.empty((rows, D))
        self.Y2 = np.empty((rows, D)) if covariance_type in ("diag", "spherical") else None
        self.log_prob = np.empty((rows, K))
        self.row_loglik = np.empty(rows)
        self.Z = np.empty((rows, D)) if covariance_type == "tied" else None
        full = covariance_type == "full"
        # full: centred rows transposed, (P, rows) with zero rows below D, and
        # scratch of the compiled kernels (_log_prob_full, _moments_full)
        self.Yt = np.zeros((_padded(D), rows)) if full else None
        self.Zt = np.empty((4, rows)) if full else None
        self.Wt = np.empty((_padded(D), rows)) if full else None
        self.respT = np.empty(K * rows)
        # scratch of normalize_columns
        self.bounds = np.array([0, K], np.int64)
        self.top = np.empty(rows)
        self.total = np.empty(rows)
        self.spare = np.empty(rows)
        self.scale_bits = np.empty(rows, np.int64)
        self.bad = np.empty((1, rows), np.bool_)

    def resp_t(self, n: int) -> np.ndarray:
        """The (K, n) transposed log-probability/responsibility buffer of ``n`` rows."""
        return self.respT[: self.K * n].reshape(self.K, n)


@dataclass(frozen=True)
class GaussianMixtureModel:
    """A mixture of ``n_components`` Gaussians.

    Parameters
    ----------
    n_components : int
        Number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}
        Form of the covariance matrices, as in scikit-learn.
    reg_covar : float
        Non-negative regularisation added to the diagonal of covariances
        (after the MAP formulas too, when there is a prior).
    weight_concentration_prior : float, optional
        alpha > 0 of a symmetric Dirichlet(alpha) prior on the weights
        (None with a prior on: 1, a flat prior that leaves the weights
        at their maximum-likelihood values).
    mean_precision_prior : float, optional
        kappa0 > 0: the prior on a component's mean is
        N(mean_prior, covariance / kappa0) (None with a prior on: 0.01).
    mean_prior : tuple of float of length n_features, optional
        m0, the prior mean of the component means.
    degrees_of_freedom_prior : float, optional
        nu0 of the inverse-Wishart (full, tied) or of the inverse-gamma
        (diag, spherical, shape nu0 / 2) prior (None with a prior on:
        n_features + 2). Values that make the prior improper are accepted
        as long as every MAP denominator stays positive (nu0 > -(D + 2)
        for full and spherical, > -(D + K + 1) for tied, > -3 for diag):
        they give the maximum-likelihood M-step in the limit; the log prior
        then lacks its normalising constant.
    covariance_prior : float or tuple, optional
        Psi0, the scale of the inverse-Wishart: a (D, D) positive-definite
        matrix (nested tuples) for full and tied, D positive values (the
        inverse-gamma scales, twice their rate parameters) for diag, one
        positive value for spherical.

    The model has a prior when any ``*_prior`` field is set; it then
    needs ``mean_prior`` and ``covariance_prior`` (see
    :meth:`with_prior_defaults`, which fills them from data moments), and
    the other fields default as above. Arrays given for the prior fields
    are stored as tuples of floats, so the configuration stays JSON-able
    and exact.

    Notes
    -----
    Statistics returned by :meth:`e_step`, with ``x`` measured from
    :func:`reference_point` of the parameters:

    - ``sum_resp`` (K,): responsibilities summed over rows.
    - ``sum_x`` (K, D): responsibility-weighted sums of ``x``.
    - ``sum_xxT``: (K, D, D) weighted outer products for ``full``; the
      unweighted total (D, D) for ``tied``.
    - ``sum_xx`` (K, D): weighted squares for ``diag`` and ``spherical``.
    - ``n``, ``loglik`` and ``n_invalid`` (NaN or infinite values).
    """

    n_components: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    weight_concentration_prior: float | None = None
    mean_precision_prior: float | None = None
    mean_prior: tuple[float, ...] | None = None
    degrees_of_freedom_prior: float | None = None
    covariance_prior: Any = None

    def __post_init__(self) -> None:
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {self.n_components}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar}")
        _check_prior_fields(self)

    # -- the prior --------------------------------------------------------------

    @property
    def has_prior(self) -> bool:
        """Whether any prior field is set (MAP-EM) or none (maximum likelihood)."""
        return any(getattr(self, name) is not None for name in PRIOR_FIELDS)

    @property
    def prior_needs_data(self) -> bool:
        """Whether the prior lacks ``mean_prior`` or ``covariance_prior``."""
        return self.has_prior and (self.mean_prior is None or self.covariance_prior is None)

    def with_prior_defaults(self, n_features: int, mean: Any = None, covariance: Any = None) -> GaussianMixtureModel:
        """This model with every unset prior field at its default.

        The defaults are those of mclust's ``priorControl`` (Fraley &
        Raftery 2007): ``weight_concentration_prior`` 1 (flat),
        ``mean_precision_prior`` 0.01, ``degrees_of_freedom_prior``
        ``n_features + 2``, ``mean_prior`` the data mean, and
        ``covariance_prior`` the data covariance divided by
        ``n_components ** (2 / n_features)``: the full matrix for full and
        tied, its diagonal for diag, the mean of its diagonal for spherical.

        Parameters
        ----------
        n_features : int
        mean : array-like of shape (n_features,), optional
            The data mean (needed when ``mean_prior`` is unset).
        covariance : array-like, optional
            The data covariance (n_features, n_features), or the variances
            (n_features,) for diag and spherical (needed when
            ``covariance_prior`` is unset).

        Returns
        -------
        GaussianMixtureModel
            The same model when it has no prior.
        """
        if not self.has_prior:
            return self
        D, K = int(n_features), int(self.n_components)
        changes: dict[str, Any] = {}
        if self.weight_concentration_prior is None:
            changes["weight_concentration_prior"] = 1.0
        if self.mean_precision_prior is None:
            changes["mean_precision_prior"] = 0.01
        if self.degrees_of_freedom_prior is None:
            changes["degrees_of_freedom_prior"] = float(D + 2)
        if self.mean_prior is None:
            if mean is None:
                raise ValueError("mean_prior is unset: give the data mean to fill it")
            changes["mean_prior"] = np.asarray(mean, np.float64).reshape(D)
        if self.covariance_prior is None:
            if covariance is None:
                raise ValueError("covariance_prior is unset: give the data covariance to fill it")
            cov = np.asarray(covariance, np.float64)
            var = np.diag(cov) if cov.ndim == 2 else cov.reshape(D)
            shrink = float(K) ** (2.0 / D)
            if self.covariance_type in ("full", "tied"):
                if cov.ndim != 2:
                    raise ValueError("a full or tied covariance_prior default needs the (D, D) data covariance")
                changes["covariance_prior"] = cov / shrink
            elif self.covariance_type == "diag":
                changes["covariance_prior"] = var / shrink
            else:
                changes["covariance_prior"] = float(var.mean() / shrink)
        return replace(self, **changes) if changes else self

    def _prior(self, D: int) -> _Prior:
        """The prior's values as arrays, data-free defaults filled in and checked against D."""
        if self.mean_prior is None or self.covariance_prior is None:
            raise ValueError(
                "the prior of this GaussianMixtureModel lacks mean_prior or covariance_prior; "
                "give them, or fill them from data moments with with_prior_defaults(...)"
            )
        K, ct = int(self.n_components), self.covariance_type
        alpha = 1.0 if self.weight_concentration_prior is None else float(self.weight_concentration_prior)
        kappa = 0.01 if self.mean_precision_prior is None else float(self.mean_precision_prior)
        nu = float(D + 2) if self.degrees_of_freedom_prior is None else float(self.degrees_of_freedom_prior)
        m0 = np.asarray(self.mean_prior, np.float64)
        if m0.shape != (D,):
            raise ValueError(f"mean_prior must have n_features = {D} values, got shape {m0.shape}")
        psi = np.asarray(self.covariance_prior, np.float64)
        expected = {"full": (D, D), "tied": (D, D), "diag": (D,), "spherical": ()}[ct]
        if psi.shape != expected:
            raise ValueError(
                f"covariance_prior for covariance_type={ct!r} must have shape {expected}, got {psi.shape}"
            )
        # the MAP denominators at n_k = 0 must be positive
        offset = {"full": D + 2, "tied": D + K + 1, "diag": 3, "spherical": D + 2}[ct]
        if not nu + offset > 0:
            raise ValueError(
                f"degrees_of_freedom_prior must exceed {-offset} for covariance_type={ct!r} with "
                f"{D} features, got {nu}; the default is n_features + 2 = {D + 2}"
            )
        proper = nu > D - 1 if ct in ("full", "tied") else nu > 0
        return _Prior(alpha=alpha, kappa=kappa, mean=m0, dof=nu, scale=psi, proper=proper)

    def log_prior(self, params: GMMParams) -> float:
        """Log density of the prior at ``params`` (0 without a prior).

        The Dirichlet term sums over the positive weights only (a weight
        set to zero by a concentration below 1 leaves the model). With an
        improper ``degrees_of_freedom_prior`` the normalising constant of
        the (inverse-)Wishart or gamma part is left out.
        """
        if not self.has_prior:
            return 0.0
        weights = np.asarray(params.weights, np.float64)
        means = np.asarray(params.means, np.float64)
        L = np.asarray(params.precisions_cholesky, np.float64)
        K, D = means.shape
        pr = self._prior(D)
        positive = weights > 0
        out = scipy.special.gammaln(K * pr.alpha) - K * scipy.special.gammaln(pr.alpha)
        out += (pr.alpha - 1.0) * float(np.log(weights[positive]).sum())
        diff = means - pr.mean
        ct = self.covariance_type
        half_log_kappa_2pi = 0.5 * (math.log(pr.kappa) - _LOG_2PI)
        if ct in ("full", "tied"):
            square = L if ct == "full" else L[None]
            log_det_prec = 2.0 * np.log(np.diagonal(square, axis1=1, axis2=2)).sum(axis=1)  # log |Sigma^-1|
            trace = np.einsum("ij,kil,kjl->k", pr.scale, square, square)  # tr(Psi Sigma^-1)
            const = 0.0
            if pr.proper:
                sign, log_det_psi = np.linalg.slogdet(pr.scale)
                const = 0.5 * pr.dof * log_det_psi - 0.5 * pr.dof * D * math.log(2.0)
                const -= float(scipy.special.multigammaln(0.5 * pr.dof, D))
            inverse_wishart = const + 0.5 * (pr.dof + D + 1) * log_det_prec - 0.5 * trace
            maha = (np.einsum("ki,kil->kl", diff, np.broadcast_to(square, (K, D, D))) ** 2).sum(axis=1)
            log_det_mean = np.broadcast_to(log_det_prec, (K,))
            normal = D * half_log_kappa_2pi + 0.5 * log_det_mean - 0.5 * pr.kappa * maha
            out += float(normal.sum() + inverse_wishart.sum())
        else:
            prec = L**2 if ct == "diag" else np.repeat((L**2)[:, None], D, axis=1)  # (K, D)
            normal = half_log_kappa_2pi + 0.5 * np.log(prec) - 0.5 * pr.kappa * diff**2 * prec
            shape = 0.5 * pr.dof
            rate = 0.5 * np.broadcast_to(pr.scale, (D,)) if ct == "diag" else 0.5 * pr.scale
            prec_gamma = prec if ct == "diag" else prec[:, 0]
            const = shape * np.log(rate) - scipy.special.gammaln(shape) if pr.proper else np.zeros_like(rate)
            inverse_gamma = const + (shape + 1.0) * np.log(prec_gamma) - rate * prec_gamma
            out += float(normal.sum() + inverse_gamma.sum())
        return float(out)

    def finish_stats(self, stats: Stats, params: GMMParams) -> Stats:
        """With a prior: ``loglik`` becomes the log posterior (plus :meth:`log_prior`).

        The engine calls this on the summed statistics, so the monitored
        value, the convergence test and the decrease warning all work on
        the objective MAP-EM increases. The log-likelihood alone is kept
        under ``"loglik_data"``. Without a prior the statistics pass through.
        """
        if not self.has_prior:
            return stats
        stats = dict(stats)
        loglik = float(stats["loglik"])
        stats["loglik_data"] = np.array(loglik)
        stats["loglik"] = np.array(loglik + self.log_prior(params))
        return stats

    # -- the contract -------------------------------------------------------

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> GMMParams:
        """k-means++ centres from ``sample``, then one hard-assignment M-step on it."""
        sample = np.asarray(sample, np.float64)
        sample = sample[np.isfinite(sample).all(axis=1)]
        centers = kmeans_plusplus(sample, self.n_components, rng)
        hard = HardAssignment(centers=centers, covariance_type=self.covariance_type)
        return self.params_from_stats(hard.e_step(sample, None), centers)

    def e_step(self, block: Any, params: GMMParams) -> Stats:
        """Sums of responsibilities and moments of one block (see class notes).

        Rows with NaN or infinite values are counted in ``n_invalid`` and
        add nothing; finite rows whose densities overflow make ``loglik``
        -inf (the engine reports it with what to try).
        """
        return self.e_step_prepared(block, self.prepare(params))

    def e_step_prepared(self, block: Any, prep: _Prepared) -> Stats:
        """:meth:`e_step` with the constants of :meth:`prepare` given (for
        models that change the per-component constants, such as the
        variational mixture of :mod:`dask_em.models.vbgmm`)."""
        X, w = split_weights(block)
        X = np.asarray(X)
        K, D = self.n_components, prep.center.shape[0]
        stats = self._zero_stats(D)
        loglik = np.zeros(1)
        if self.covariance_type == "full" and w is None and X.ndim == 2 and X.shape[1] == D:
            if X.dtype.kind != "f":
                X = X.astype(np.float64)
            work = _Workspace(min(_full_kernel_rows(D), X.shape[0]), K, D, "full")
            # the whole block in one compiled call: no per-sub-block dispatch
            n_bad, n_invalid, overflow = _e_step_full(
                X, work.Yt.shape[1], prep.center, prep.factors, prep.offsets, prep.row_end, prep.const,
                work.Yt, work.respT, work.Zt, work.Wt, work.bounds, work.top, work.total,
                work.scale_bits, work.spare, work.bad, loglik,
                stats["sum_resp"], stats["sum_x"], stats["sum_xxT"],
            )
            stats["n"] = np.array(float(X.shape[0] - n_bad))
            stats["loglik"] = np.array(-np.inf if overflow else float(loglik[0]))
            stats["n_invalid"] = np.array(int(n_invalid))
            return stats
        rows = sub_block_rows(K, D, self.covariance_type)
        work = _Workspace(min(rows, X.shape[0]), K, D, self.covariance_type)
        overflow = False
        n_bad = 0
        n_invalid = 0
        weighted_loglik = weight_bad = 0.0
        for start in range(0, X.shape[0], rows):
            part = X[start : start + rows]
            n = part.shape[0]
            Y = np.subtract(part, prep.center, out=work.Y[:n])
            respT = self._log_prob_into(Y, prep, work)
            if w is not None:  # the rows' log-likelihoods, before normalising overwrites them
                row_w = w[start : start + rows]
                weighted_loglik += _row_weighted_loglik(respT, row_w)
            if normalize_columns(
                respT, n, work.bounds, work.top, work.total, work.scale_bits, work.spare, work.bad, loglik
            ):
                bad = work.bad[0, :n]
                n_bad += int(bad.sum())
                nonfinite = ~np.isfinite(part[bad])
                n_invalid += int(nonfinite.sum())
                if not nonfinite.any(axis=1).all():
                    overflow = True
                respT[:, bad] = 0.0
                Y[bad] = 0.0
                if w is not None:
                    weight_bad += float(row_w[bad].sum())
            if w is not None:
                respT *= row_w
            self._accumulate_t(stats, Y, respT, work, None if w is None else row_w)
        if w is not None:
            stats["n"] = np.array(float(w.sum()) - weight_bad)
            loglik[0] = weighted_loglik
        else:
            stats["n"] = np.array(float(X.shape[0] - n_bad))
        stats["loglik"] = np.array(-np.inf if overflow else float(loglik[0]))
        stats["n_invalid"] = np.array(n_invalid)
        return stats

    def m_step(self, stats: Stats, params: GMMParams) -> GMMParams:
        """New parameters by scikit-learn's formulas; empty components keep theirs.

        With a prior, the MAP formulas (:meth:`_estimate_map`); every
        component, empty or not, then has a well-defined mean and covariance.
        """
        center = reference_point(params)
        if self.has_prior:
            weights, means, covariances = self._estimate_map(stats, center)
            prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
            return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)
        new = self._estimate(stats, center)
        weights, means, covariances = new
        empty = np.asarray(stats["sum_resp"]) < EMPTY_MASS
        if empty.any():
            means = np.where(empty[:, None], params.means, means)
            if self.covariance_type in ("full", "diag", "spherical"):
                covariances = covariances.copy()
                covariances[empty] = np.asarray(params.covariances)[empty]
        prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
        return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)

    def param_constraints(self, params: GMMParams) -> dict[str, str]:
        """How accelerated EM may move each parameter (see :mod:`dask_em.accelerate`)."""
        square = self.covariance_type in ("full", "tied")
        return {"weights": "simplex", "covariances": "spd" if square else "positive", "precisions_cholesky": "derived"}

    def complete_params(self, params: GMMParams) -> GMMParams:
        """``params`` with the precision factors recomputed from the covariances."""
        prec_chol = precisions_cholesky_from_covariances(params.covariances, self.covariance_type)
        return replace(params, precisions_cholesky=prec_chol)

    def recenter_stats(self, stats: Stats, old: GMMParams, new: GMMParams) -> Stats:
        """Statistics taken about ``old``'s reference point, moved to ``new``'s (for online EM)."""
        return recenter_moments(stats, reference_point(old) - reference_point(new))

    def describe_invalid(self, n_invalid: int) -> str:
        """The error message for ``n_invalid`` NaN or infinite values."""
        return (
            f"the data contains {n_invalid} NaN or infinite value{'s' if n_invalid != 1 else ''}; "
            "a Gaussian mixture needs finite values. Remove or impute them, or fit a model "
            "that treats NaN as missing: dask_em.MultivariateNormal or "
            "dask_em.GaussianMixture(missing='em')."
        )

    # -- helpers --------------------------------------------------------------

    def params_from_stats(self, stats: Stats, center: np.ndarray, previous: GMMParams | None = None) -> GMMParams:
        """Parameters from statistics taken about ``center`` (used by initialisations).

        Components without points get the pooled within-component
        covariance (or ``previous``' values when given) and their mean is
        left at ``previous.means`` or, without it, ``center``. With a
        prior, the MAP estimate (well-defined for empty components too).
        """
        if self.has_prior:
            weights, means, covariances = self._estimate_map(stats, np.asarray(center, np.float64))
            prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
            return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)
        weights, means, covariances = self._estimate(stats, np.asarray(center, np.float64))
        empty = np.asarray(stats["sum_resp"]) < EMPTY_MASS
        if empty.any():
            fallback_means = previous.means if previous is not None else np.broadcast_to(center, means.shape)
            means = np.where(empty[:, None], fallback_means, means)
            if self.covariance_type != "tied":
                if previous is not None:
                    fallback = np.asarray(previous.covariances)
                else:
                    pooled = GaussianMixtureModel(self.n_components, "tied", self.reg_covar)
                    tied_stats = _as_tied_stats(stats, self.covariance_type)
                    tied = pooled._estimate(tied_stats, np.asarray(center, np.float64))[2]
                    fallback = _tied_to(tied, self.covariance_type, self.n_components)
                covariances = covariances.copy()
                covariances[empty] = fallback[empty]
        prec_chol = precisions_cholesky_from_covariances(covariances, self.covariance_type)
        return GMMParams(weights=weights, means=means, covariances=covariances, precisions_cholesky=prec_chol)

    def _estimate(self, stats: Stats, center: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """scikit-learn's ``_estimate_gaussian_parameters`` from centred sums."""
        sum_resp = np.asarray(stats["sum_resp"], np.float64)
        sum_x = np.asarray(stats["sum_x"], np.float64)
        nk = sum_resp + _EPS10
        means = (sum_x + sum_resp[:, None] * center) / nk[:, None]
        a = means - center  # means about the reference point
        D = means.shape[1]
        ct = self.covariance_type
        if ct == "full":
            S = np.asarray(stats["sum_xxT"], np.float64)
            cross = sum_x[:, :, None] * a[:, None, :]
            cov = S - cross - cross.transpose(0, 2, 1) + sum_resp[:, None, None] * (a[:, :, None] * a[:, None, :])
            cov /= nk[:, None, None]
            cov[:, np.arange(D), np.arange(D)] += self.reg_covar
        elif ct == "tied":
            S = np.asarray(stats["sum_xxT"], np.float64)
            cov = (S - (nk[:, None] * a).T @ a) / nk.sum()
            cov[np.arange(D), np.arange(D)] += self.reg_covar
        else:
            S = np.asarray(stats["sum_xx"], np.float64)
            cov = (S - 2 * a * sum_x + sum_resp[:, None] * a * a) / nk[:, None] + self.reg_covar
            if ct == "spherical":
                cov = cov.mean(axis=1)
        weights = nk / nk.sum()
        return weights, means, cov

    def _estimate_map(self, stats: Stats, center: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The MAP M-step of Fraley & Raftery (2007, table 2) from sums about ``center``.

        With ``n_k`` the responsibilities' sum, ``xbar_k`` the weighted
        mean and ``W_k`` the weighted scatter about it:

        - weights ``max(n_k + alpha - 1, 0)``, normalised (the Dirichlet
          mode; with alpha < 1 a component with ``n_k < 1 - alpha`` gets
          weight 0 and leaves the model);
        - means ``(n_k xbar_k + kappa0 m0) / (n_k + kappa0)``;
        - with ``B_k = W_k + kappa0 n_k / (kappa0 + n_k) (xbar_k - m0)(xbar_k - m0)^T``:
          full ``(Psi0 + B_k) / (nu0 + n_k + D + 2)``; tied
          ``(Psi0 + sum_k B_k) / (nu0 + n + D + K + 1)``; diag
          ``(psi0_j + B_k[j, j]) / (nu0 + n_k + 3)``; spherical
          ``(psi0 + tr B_k) / (nu0 + (n_k + 1) D + 2)``;

        then ``reg_covar`` is added to the diagonal. ``B_k`` is computed as
        the scatter about the new mean plus ``kappa0 (mean - m0)(mean - m0)^T``
        (the same matrix), which needs no division by ``n_k``.
        """
        sum_resp = np.asarray(stats["sum_resp"], np.float64)
        sum_x = np.asarray(stats["sum_x"], np.float64)
        K, D = sum_x.shape
        pr = self._prior(D)
        nk = sum_resp
        b = pr.mean - center  # prior mean about the reference point
        a = (sum_x + pr.kappa * b) / (nk + pr.kappa)[:, None]  # MAP means about the reference point
        means = a + center
        d = a - b
        ct = self.covariance_type
        if ct in ("full", "tied"):
            S = np.asarray(stats["sum_xxT"], np.float64)
            cross = sum_x[:, :, None] * a[:, None, :]
            outer = nk[:, None, None] * (a[:, :, None] * a[:, None, :])
            outer += pr.kappa * (d[:, :, None] * d[:, None, :])
            if ct == "full":
                B = S - cross - cross.transpose(0, 2, 1) + outer
                cov = (pr.scale + B) / (pr.dof + nk + D + 2)[:, None, None]
                cov[:, np.arange(D), np.arange(D)] += self.reg_covar
            else:
                B = S - (cross + cross.transpose(0, 2, 1) - outer).sum(axis=0)
                cov = (pr.scale + B) / (pr.dof + nk.sum() + D + K + 1)
                cov[np.arange(D), np.arange(D)] += self.reg_covar
            cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
        else:
            S = np.asarray(stats["sum_xx"], np.float64)
            B = S - 2 * a * sum_x + nk[:, None] * a * a + pr.kappa * d * d
            if ct == "diag":
                cov = (pr.scale + B) / (pr.dof + nk + 3)[:, None] + self.reg_covar
            else:
                cov = (pr.scale + B.sum(axis=1)) / (pr.dof + (nk + 1) * D + 2) + self.reg_covar
        weights = np.maximum(nk + pr.alpha - 1.0, 0.0)
        total = weights.sum()
        weights = weights / total if total > 0 else (nk + _EPS10) / (nk + _EPS10).sum()
        return weights, means, cov

    def _zero_stats(self, D: int) -> Stats:
        K = self.n_components
        stats = {"sum_resp": np.zeros(K), "sum_x": np.zeros((K, D))}
        if self.covariance_type == "full":
            stats["sum_xxT"] = np.zeros((K, D, D))
        elif self.covariance_type == "tied":
            stats["sum_xxT"] = np.zeros((D, D))
        else:
            stats["sum_xx"] = np.zeros((K, D))
        return stats

    def prepare(self, params: GMMParams, log_weights: np.ndarray | None = None) -> _Prepared:
        """Constants of the E-step under ``params`` (cheap: no data involved).

        ``log_weights`` (K,), when given, replaces ``log(params.weights)``
        in the per-component constants; the statistics stay centred on
        :func:`reference_point` of ``params``.
        """
        weights = np.asarray(params.weights, np.float64)
        means = np.asarray(params.means, np.float64)
        prec_chol = np.asarray(params.precisions_cholesky, np.float64)
        K, D = means.shape
        center = reference_point(params)
        a = means - center
        ct = self.covariance_type
        if log_weights is not None:
            log_w = np.asarray(log_weights, np.float64)
        else:
            with np.errstate(divide="ignore"):
                log_w = np.log(weights)
        none = np.zeros((0, 0))
        if ct == "full":
            log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
            P = _padded(D)
            factors = np.zeros((K, P, P))
            factors[:, :D, :D] = prec_chol
            offsets = np.zeros((K, P))
            offsets[:, :D] = np.einsum("ki,kij->kj", a, prec_chol)
            # last nonzero row of each group of 4 columns, over all components
            used = (factors != 0).any(axis=0).reshape(P, P // 4, 4).any(axis=2)  # (rows, column groups)
            last = np.where(used.any(axis=0), P - 1 - np.argmax(used[::-1], axis=0), -1)
            row_end = (-(-(last + 1) // 4) * 4).astype(np.int64)
            return _Prepared(center, log_w + log_det - 0.5 * D * _LOG_2PI, factors, offsets, none, row_end)
        if ct == "tied":
            log_det = np.full(K, np.log(np.diag(prec_chol)).sum())
            const = log_w + log_det - 0.5 * D * _LOG_2PI
            return _Prepared(center, const, np.ascontiguousarray(prec_chol), a @ prec_chol, np.ones((K, D)))
        if ct == "diag":
            log_det = np.log(prec_chol).sum(axis=1)
            prec = prec_chol**2
        else:
            log_det = D * np.log(prec_chol)
            prec = np.repeat((prec_chol**2)[:, None], D, axis=1)
        const = log_w + log_det - 0.5 * D * _LOG_2PI
        return _Prepared(center, const, none, np.ascontiguousarray(a), np.ascontiguousarray(prec))

    def _log_prob_into(self, Y: np.ndarray, prep: _Prepared, work: _Workspace) -> np.ndarray:
        """log(w_k) + log N(x | mu_k, Sigma_k) for centred rows ``Y``, written
        transposed to the workspace: a contiguous (K, n) view."""
        n = Y.shape[0]
        outT = work.resp_t(n)
        ct = self.covariance_type
        if ct == "full":
            _transpose_into(Y, np.zeros(Y.shape[1]), 0, n, work.Yt)
            _log_prob_full(work.Yt, n, prep.factors, prep.offsets, prep.row_end, prep.const, outT, work.Zt)
        elif ct == "tied":
            Z = work.Z[:n]
            np.matmul(Y, prep.factors, out=Z)
            _log_prob_shared(Z, prep.offsets, prep.scale, prep.const, outT)
        else:
            _log_prob_shared(Y, prep.offsets, prep.scale, prep.const, outT)
        return outT

    def _accumulate(self, stats: Stats, Y: np.ndarray, resp: np.ndarray, work: _Workspace) -> None:
        """Add the sums of rows ``Y`` with responsibilities ``resp`` (n, K)."""
        self._accumulate_t(stats, Y, resp.T, work)

    def _accumulate_t(
        self, stats: Stats, Y: np.ndarray, respT: np.ndarray, work: _Workspace, row_w: np.ndarray | None = None
    ) -> None:
        """Add the sums of rows ``Y`` with transposed responsibilities ``respT`` (K, n).

        ``row_w``: the rows' weights, already multiplied into ``respT``; the
        tied covariance's sum over all rows needs them on its own.
        """
        n, D = Y.shape
        ct = self.covariance_type
        if ct == "full":
            _transpose_into(Y, np.zeros(D), 0, n, work.Yt)
            _moments_full(respT, work.Yt, n, work.Wt, stats["sum_resp"], stats["sum_x"], stats["sum_xxT"])
            return
        stats["sum_resp"] += respT.sum(axis=1)
        stats["sum_x"] += respT @ Y
        if ct == "tied":
            stats["sum_xxT"] += Y.T @ Y if row_w is None else (Y * row_w[:, None]).T @ Y
        else:
            Y2 = np.multiply(Y, Y, out=work.Y2[:n]) if work.Y2 is not None else Y * Y
            stats["sum_xx"] += respT @ Y2

    def weighted_log_prob(self, X: np.ndarray, params: GMMParams) -> np.ndarray:
        """log(w_k) + log N(x | mu_k, Sigma_k) for every row: (n_samples, K).

        Raises
        ------
        InvalidDataError
            If ``X`` has NaN or infinite values.
        """
        return self.weighted_log_prob_prepared(X, self.prepare(params))

    def weighted_log_prob_prepared(self, X: np.ndarray, prep: _Prepared) -> np.ndarray:
        """:meth:`weighted_log_prob` with the constants of :meth:`prepare` given."""
        from ..errors import InvalidDataError

        X = np.asarray(X)
        K, D = self.n_components, prep.center.shape[0]
        out = np.empty((X.shape[0], self.n_components))
        rows = sub_block_rows(K, D, self.covariance_type)
        work = _Workspace(min(rows, X.shape[0]), K, D, self.covariance_type)
        for start in range(0, X.shape[0], rows):
            part = X[start : start + rows]
            Y = np.subtract(part, prep.center, out=work.Y[: part.shape[0]])
            out[start : start + rows] = self._log_prob_into(Y, prep, work).T
        if not np.isfinite(out).all():
            bad = ~np.isfinite(out).all(axis=1)
            raise InvalidDataError(self.describe_invalid(int((~np.isfinite(X[bad])).sum())))
        return out


def _row_weighted_loglik(log_probT: np.ndarray, weights: np.ndarray) -> float:
    """sum_i w_i logsumexp_k log_probT[k, i] over the rows whose value is finite (weighted fits only)."""
    top = log_probT.max(axis=0)
    good = np.isfinite(top)
    safe = np.where(good, top, 0.0)
    with np.errstate(under="ignore"):
        row = safe + np.log(np.exp(log_probT - safe).sum(axis=0))
    return float(weights[good] @ row[good])


# Compiled per-row kernels. Re-association lets the inner sums over features
# use SIMD; it never drops NaN/inf checks (no "nnan"/"ninf" flags).
_FAST = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True)
def _transpose_into(X, center, start, n, Yt):  # pragma: no cover - compiled
    """Yt[j, i] = X[start + i, j] - center[j] for ``i < n``: centred rows, transposed."""
    D = center.shape[0]
    for j in range(D):  # feature by feature: strided loads vectorise (gathers), stores are contiguous
        c = center[j]
        for i in range(n):
            Yt[j, i] = X[start + i, j] - c


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _log_prob_full(Yt, n, L, offsets, row_end, const, outT, Zt):  # pragma: no cover - compiled
    """outT[k, i] = const[k] - |L_k^T y_i - offsets[k]|^2 / 2 for transposed rows ``Yt``.

    ``L`` (K, P, P) and ``offsets`` (K, P) are zero-padded to a multiple of
    4 (so are the rows of ``Yt``); ``Zt`` is scratch of (4, n). The loops
    run along rows, in SIMD lanes; each pass over the rows adds 4 features'
    terms to 4 whitened coordinates at once, which keeps the products in
    registers (about twice the rate of one BLAS product with 16 columns
    followed by the squared norms). Rows of ``L`` past ``row_end`` of a
    group of columns are zero (the triangle of a Cholesky factor) and are
    skipped.
    """
    K = L.shape[0]
    P = L.shape[1]
    for k in range(K):
        for i in range(n):
            outT[k, i] = 0.0
        for j in range(0, P, 4):
            o0 = offsets[k, j]
            o1 = offsets[k, j + 1]
            o2 = offsets[k, j + 2]
            o3 = offsets[k, j + 3]
            for i in range(n):
                Zt[0, i] = -o0
                Zt[1, i] = -o1
                Zt[2, i] = -o2
                Zt[3, i] = -o3
            for a in range(0, row_end[j // 4], 4):
                l00 = L[k, a, j]
                l01 = L[k, a, j + 1]
                l02 = L[k, a, j + 2]
                l03 = L[k, a, j + 3]
                l10 = L[k, a + 1, j]
                l11 = L[k, a + 1, j + 1]
                l12 = L[k, a + 1, j + 2]
                l13 = L[k, a + 1, j + 3]
                l20 = L[k, a + 2, j]
                l21 = L[k, a + 2, j + 1]
                l22 = L[k, a + 2, j + 2]
                l23 = L[k, a + 2, j + 3]
                l30 = L[k, a + 3, j]
                l31 = L[k, a + 3, j + 1]
                l32 = L[k, a + 3, j + 2]
                l33 = L[k, a + 3, j + 3]
                for i in range(n):
                    y0 = Yt[a, i]
                    y1 = Yt[a + 1, i]
                    y2 = Yt[a + 2, i]
                    y3 = Yt[a + 3, i]
                    Zt[0, i] += (l00 * y0 + l10 * y1) + (l20 * y2 + l30 * y3)
                    Zt[1, i] += (l01 * y0 + l11 * y1) + (l21 * y2 + l31 * y3)
                    Zt[2, i] += (l02 * y0 + l12 * y1) + (l22 * y2 + l32 * y3)
                    Zt[3, i] += (l03 * y0 + l13 * y1) + (l23 * y2 + l33 * y3)
            for i in range(n):
                z0 = Zt[0, i]
                z1 = Zt[1, i]
                z2 = Zt[2, i]
                z3 = Zt[3, i]
                outT[k, i] += (z0 * z0 + z1 * z1) + (z2 * z2 + z3 * z3)
        c = const[k]
        for i in range(n):
            outT[k, i] = c - 0.5 * outT[k, i]


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _moments_full(respT, Yt, n, Wt, sum_resp, sum_x, sum_xxT):  # pragma: no cover - compiled
    """Add the weighted sums of transposed rows ``Yt`` (first ``n`` columns).

    ``sum_resp[k] += sum_i r_ki``, ``sum_x[k] += sum_i r_ki y_i``,
    ``sum_xxT[k] += sum_i r_ki y_i y_i^T``. Each entry is a reduction along
    rows (SIMD lanes); the Gram matrix goes by tiles of 2 x 4 entries (6
    loads for 8 multiply-adds) over its upper triangle, mirrored: about
    60% of the products of a full Gram matrix. ``Yt`` has zero rows from
    D up to a multiple of 4; ``Wt`` is scratch of the same shape.
    """
    K = respT.shape[0]
    D = sum_x.shape[1]
    P = Yt.shape[0]
    for k in range(K):
        s = 0.0
        for i in range(n):
            s += respT[k, i]
        sum_resp[k] += s
        for a in range(P):
            s = 0.0
            for i in range(n):
                w = respT[k, i] * Yt[a, i]
                Wt[a, i] = w
                s += w
            if a < D:
                sum_x[k, a] += s
        for a in range(0, D, 2):
            for b in range(a - a % 4, D, 4):
                s00 = s01 = s02 = s03 = 0.0
                s10 = s11 = s12 = s13 = 0.0
                for i in range(n):
                    w0 = Wt[a, i]
                    w1 = Wt[a + 1, i]
                    y0 = Yt[b, i]
                    y1 = Yt[b + 1, i]
                    y2 = Yt[b + 2, i]
                    y3 = Yt[b + 3, i]
                    s00 += w0 * y0
                    s01 += w0 * y1
                    s02 += w0 * y2
                    s03 += w0 * y3
                    s10 += w1 * y0
                    s11 += w1 * y1
                    s12 += w1 * y2
                    s13 += w1 * y3
                _add_sym4(sum_xxT, k, a, b, D, s00, s01, s02, s03)
                _add_sym4(sum_xxT, k, a + 1, b, D, s10, s11, s12, s13)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_sym4(S, k, a, b, D, s0, s1, s2, s3):  # pragma: no cover - compiled
    """Add s0..s3 at S[k, a, b..b+3] and mirrored, where on or above the diagonal and inside D."""
    if a < D:
        _add_sym(S, k, a, b, D, s0)
        _add_sym(S, k, a, b + 1, D, s1)
        _add_sym(S, k, a, b + 2, D, s2)
        _add_sym(S, k, a, b + 3, D, s3)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_sym(S, k, a, b, D, s):  # pragma: no cover - compiled
    if a <= b < D:
        S[k, a, b] += s
        if b != a:
            S[k, b, a] += s


@numba.njit(cache=True, nogil=True)
def _e_step_full(X, rows, center, L, offsets, row_end, const, Yt, resp_buf, Zt, Wt, bounds, top, total,
                 scale_bits, spare, bad, loglik, sum_resp, sum_x, sum_xxT):  # pragma: no cover - compiled
    """The full-covariance E-step of a block, sub-block by sub-block of ``rows``.

    Adds to the statistics and ``loglik[0]``; returns the number of rows
    left out (NaN or infinite values, or overflowing densities), the number
    of non-finite values in them and whether any was finite (overflow).
    """
    N = X.shape[0]
    D = center.shape[0]
    K = L.shape[0]
    n_bad = 0
    n_invalid = 0
    overflow = False
    for start in range(0, N, rows):
        n = min(rows, N - start)
        _transpose_into(X, center, start, n, Yt)
        respT = resp_buf[: K * n].reshape((K, n))
        _log_prob_full(Yt, n, L, offsets, row_end, const, respT, Zt)
        if normalize_columns(respT, n, bounds, top, total, scale_bits, spare, bad, loglik):
            for i in range(n):
                if not bad[0, i]:
                    continue
                n_bad += 1
                finite = True
                for j in range(D):
                    if not np.isfinite(X[start + i, j]):
                        n_invalid += 1
                        finite = False
                overflow = overflow or finite
                for k in range(K):
                    respT[k, i] = 0.0
                for j in range(Yt.shape[0]):
                    Yt[j, i] = 0.0
        _moments_full(respT, Yt, n, Wt, sum_resp, sum_x, sum_xxT)
    return n_bad, n_invalid, overflow


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _log_prob_shared(Z, offsets, scale, const, outT):  # pragma: no cover - compiled
    """outT[k, i] = const[k] - sum_j scale[k, j] (Z[i, j] - offsets[k, j])^2 / 2."""
    K, n = outT.shape
    D = Z.shape[1]
    for i in range(n):
        for k in range(K):
            s = 0.0
            for j in range(D):
                v = Z[i, j] - offsets[k, j]
                s += scale[k, j] * v * v
            outT[k, i] = const[k] - 0.5 * s


@numba.njit(cache=True, nogil=True)
def _normalize(log_prob, row_loglik):  # pragma: no cover - compiled
    """Responsibilities in place of log-probabilities (n, K), and each row's logsumexp.

    For the per-row outputs (``predict_proba``, ``score_samples``); the
    E-step uses :func:`dask_em._kernels.normalize_columns`, which gives the
    same responsibilities (within about 2e-16) and sums the rows' values.

    A row whose log-probabilities are not finite (NaN or inf in the data)
    gets a NaN log-likelihood and is left as it is, for the caller to count.
    """
    n, K = log_prob.shape
    for i in range(n):
        top = -np.inf
        for k in range(K):
            if log_prob[i, k] > top:
                top = log_prob[i, k]
        if not np.isfinite(top):
            row_loglik[i] = np.nan
            continue
        total = 0.0
        for k in range(K):
            d = log_prob[i, k] - top
            # Below exp(-700) ~ 1e-304 a responsibility is noise; zero keeps
            # subnormal numbers (slow in every later product) out of the sums.
            e = np.exp(d) if d > -700.0 else 0.0
            log_prob[i, k] = e
            total += e
        inv = 1.0 / total
        for k in range(K):
            log_prob[i, k] *= inv
        row_loglik[i] = np.log(total) + top


@numba.njit(cache=True, nogil=True)
def _weigh_rows(respT, Y, W):  # pragma: no cover - compiled
    """W[i, kD + j] = respT[k, i] * Y[i, j]: every component's weighted rows side by side."""
    K, n = respT.shape
    D = Y.shape[1]
    for i in range(n):
        for k in range(K):
            r = respT[k, i]
            for j in range(D):
                W[i, k * D + j] = r * Y[i, j]


def _as_tied_stats(stats: Stats, covariance_type: str) -> Stats:
    """Pooled second moments from per-component ones (for empty-component fallback)."""
    if covariance_type == "tied":
        return stats
    if covariance_type == "full":
        total = np.asarray(stats["sum_xxT"]).sum(axis=0)
    else:
        total = np.diag(np.asarray(stats["sum_xx"]).sum(axis=0))
    return {"sum_resp": stats["sum_resp"], "sum_x": stats["sum_x"], "sum_xxT": total}


def _tied_to(cov: np.ndarray, covariance_type: str, K: int) -> np.ndarray:
    if covariance_type == "full":
        return np.repeat(cov[None], K, axis=0)
    if covariance_type == "diag":
        return np.repeat(np.diag(cov)[None], K, axis=0)
    return np.full(K, np.diag(cov).mean())


@dataclass(frozen=True)
class HardAssignment:
    """Each row wholly to its nearest centre: the statistics scikit-learn's
    k-means initialisation feeds to the M-step, in one pass.

    Parameters
    ----------
    centers : ndarray of shape (n_components, n_features)
    covariance_type : str
        Which second moments to return (as :class:`GaussianMixtureModel`).

    Statistics are taken about the mean of the centres
    (:meth:`reference`); ``loglik`` is minus the inertia.
    """

    centers: np.ndarray
    covariance_type: str = "full"

    def reference(self) -> np.ndarray:
        """The point statistics are centred on."""
        return np.asarray(self.centers, np.float64).mean(axis=0)

    def init_params(self, sample: Any, rng: np.random.Generator) -> None:  # pragma: no cover - unused
        return None

    def e_step(self, block: Any, params: Any) -> Stats:
        """Hard-assignment sums of one block."""
        X = np.asarray(block)
        centers = np.asarray(self.centers, np.float64)
        K, D = centers.shape
        center = self.reference()
        c = centers - center
        c_sq = (c * c).sum(axis=1)
        model = GaussianMixtureModel(K, self.covariance_type)
        stats = model._zero_stats(D)
        work = _Workspace(min(SUB_BLOCK_ROWS, X.shape[0]), K, D, self.covariance_type)
        inertia = 0.0
        n_valid = 0
        n_invalid = 0
        for start in range(0, X.shape[0], SUB_BLOCK_ROWS):
            Y = np.subtract(X[start : start + SUB_BLOCK_ROWS], center, dtype=np.float64)
            y_sq = (Y * Y).sum(axis=1)
            dist = y_sq[:, None] - 2.0 * (Y @ c.T) + c_sq
            bad = ~np.isfinite(y_sq)
            if bad.any():
                n_invalid += int((~np.isfinite(Y[bad])).sum())
                Y[bad] = 0.0
                dist[bad] = 0.0
            labels = dist.argmin(axis=1)
            resp = np.zeros((Y.shape[0], K))
            resp[np.arange(Y.shape[0]), labels] = 1.0
            resp[bad] = 0.0
            inertia += float(np.maximum(dist[~bad, :].min(axis=1), 0).sum())
            n_valid += int((~bad).sum())
            model._accumulate(stats, Y, resp, work)
        stats["n"] = np.array(float(n_valid))
        stats["loglik"] = np.array(-inertia)
        stats["n_invalid"] = np.array(n_invalid)
        return stats

    def m_step(self, stats: Stats, params: Any) -> Any:  # pragma: no cover - one pass only
        return params

    def describe_invalid(self, n_invalid: int) -> str:
        """Same message as the mixture model's."""
        return GaussianMixtureModel(len(self.centers), self.covariance_type).describe_invalid(n_invalid)


def kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) of in-memory rows.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
    """
    X = np.asarray(X, np.float64)
    n = X.shape[0]
    if n < n_clusters:
        raise ValueError(f"k-means++ needs at least {n_clusters} rows, got {n}")
    n_local_trials = n_local_trials or 2 + int(np.log(n_clusters))
    x_sq = (X * X).sum(axis=1)
    centers = np.empty((n_clusters, X.shape[1]))
    first = int(rng.integers(n))
    centers[0] = X[first]
    closest = np.maximum(x_sq - 2 * X @ X[first] + x_sq[first], 0)
    for c in range(1, n_clusters):
        total = closest.sum()
        if total <= 0:  # all rows coincide with chosen centres
            candidates = rng.integers(n, size=n_local_trials)
        else:
            candidates = np.searchsorted(np.cumsum(closest), rng.random(n_local_trials) * total)
            candidates = np.minimum(candidates, n - 1)
        d = np.maximum(x_sq[None] - 2 * X[candidates] @ X.T + x_sq[candidates, None], 0)
        d = np.minimum(closest[None], d)
        best = int(np.argmin(d.sum(axis=1)))
        closest = d[best]
        centers[c] = X[candidates[best]]
    return centers


# -- per-block outputs of a fitted mixture (run on workers: pure numpy) --


def _rows_output(block: np.ndarray, model: GaussianMixtureModel, params: GMMParams, what: str) -> np.ndarray:
    """Per-row outputs of one block, computed in sub-blocks."""
    block = np.asarray(block)
    log_prob = model.weighted_log_prob(block, params)
    if what == "predict":
        return log_prob.argmax(axis=1).astype(np.int64)
    row = np.empty(log_prob.shape[0])
    _normalize(log_prob, row)
    out = log_prob if what == "predict_proba" else row
    return out.astype(np.float32 if block.dtype == np.float32 else np.float64, copy=False)


def _with_index(index: int, block: Any) -> tuple[int, Any]:
    return index, block
