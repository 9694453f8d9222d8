"""The conjugate prior of the Gaussian mixture: MAP-EM (Fraley & Raftery 2007).

A Dirichlet prior on the weights and a normal-inverse-Wishart prior on each
component (normal-inverse-gamma per feature for ``diag``, on one variance
for ``spherical``, one inverse-Wishart for the shared ``tied``
covariance): Fraley & Raftery (2007), "Bayesian regularization for normal
mixture estimation and model-based clustering", Journal of Classification
24, 155-181. :class:`MAPPrior` holds the prior's part of
:class:`dask_em.models.gmm.GaussianMixtureModel`: its defaults, its log
density and the MAP M-step.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.special

from ._gaussian import (
    EPS10,
    LOG_2PI,
    check_covariance_type,
    component_shape,
    feature_precisions,
    is_square,
    log_det_cholesky,
    one_covariance_from_data,
)
from ..contract import Stats, with_log_prior
from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from .gmm import GaussianMixtureModel, GMMParams


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
    """The prior's values as numbers and arrays (of the MAP mixture and of the variational one)."""

    alpha: float
    kappa: float
    mean: np.ndarray
    dof: float
    scale: np.ndarray
    proper: bool = True  # whether the (inverse-)Wishart or gamma part has its normalising constant


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
        ndim = len(component_shape(ct, 1))
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


def prior_arrays(model: Any, n_features: int, error: type[Exception] = ValueError) -> tuple[np.ndarray, np.ndarray]:
    """``mean_prior`` and ``covariance_prior`` of ``model`` as arrays, checked against ``n_features``.

    Raises
    ------
    error
        If their shapes do not fit ``n_features`` and the covariance type.
    """
    D, ct = int(n_features), model.covariance_type
    m0 = np.asarray(model.mean_prior, np.float64)
    if m0.shape != (D,):
        raise error(f"mean_prior must have n_features = {D} values, got shape {m0.shape}")
    psi = np.asarray(model.covariance_prior, np.float64)
    expected = component_shape(ct, D)
    if psi.shape != expected:
        raise error(f"covariance_prior for covariance_type={ct!r} must have shape {expected}, got {psi.shape}")
    return m0, psi


def data_prior_defaults(
    model: Any, n_features: int, mean: Any, covariance: Any, *, shrink: float | None = None,
    error: type[Exception] = ValueError,
) -> dict[str, Any]:
    """``mean_prior`` and ``covariance_prior`` of ``model`` filled from data moments where unset.

    ``covariance`` in the layout of one covariance of the type
    (:func:`~dask_em.models._gaussian.one_covariance_from_data`), divided by
    ``shrink`` when given.

    Raises
    ------
    error
        If a needed moment is missing, or a full or tied type is given variances only.
    """
    D = int(n_features)
    changes: dict[str, Any] = {}
    if model.mean_prior is None:
        if mean is None:
            raise error("mean_prior is unset: give the data mean to fill it")
        changes["mean_prior"] = np.asarray(mean, np.float64).reshape(D)
    if model.covariance_prior is None:
        if covariance is None:
            raise error("covariance_prior is unset: give the data covariance to fill it")
        try:
            cov = one_covariance_from_data(covariance, model.covariance_type, D)
        except ValueError as exc:
            raise error(str(exc)) from None
        changes["covariance_prior"] = cov if shrink is None else cov / shrink
    return changes


@dataclass(frozen=True)
class GaussianMixtureFields:
    """The fields, and their checks, of the Gaussian mixtures with a conjugate prior.

    The MAP mixture (:class:`~dask_em.models.gmm.GaussianMixtureModel`)
    and the variational one
    (:class:`~dask_em.models.vbgmm.BayesianGaussianMixtureModel`) document
    them; the prior fields mean the same in both, with different defaults.
    The :data:`PRIOR_FIELDS` are keyword-only, so that a subclass can add a
    positional field after ``reg_covar``. Numbers are stored as plain
    ``int``/``float`` and arrays as nested tuples: the configuration goes
    to JSON in checkpoints, exactly.

    Raises
    ------
    InvalidParameterError
        On construction, for a value no fit accepts.
    """

    n_components: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    _: KW_ONLY
    weight_concentration_prior: float | None = None
    mean_precision_prior: float | None = None
    mean_prior: tuple[float, ...] | None = None
    degrees_of_freedom_prior: float | None = None
    covariance_prior: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
            raise InvalidParameterError(f"n_components must be an integer >= 1, got {self.n_components!r}")
        if not (isinstance(self.reg_covar, (int, float, np.number)) and math.isfinite(self.reg_covar) and self.reg_covar >= 0):
            raise InvalidParameterError(f"reg_covar must be a non-negative number, got {self.reg_covar!r}")
        object.__setattr__(self, "n_components", int(self.n_components))
        object.__setattr__(self, "reg_covar", float(self.reg_covar))
        try:
            check_covariance_type(self.covariance_type)
            _check_prior_fields(self)
        except ValueError as exc:
            raise InvalidParameterError(str(exc)) from None


class MAPPrior(GaussianMixtureFields):
    """The prior fields' behaviour, mixed into :class:`~dask_em.models.gmm.GaussianMixtureModel`."""

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
        changes.update(data_prior_defaults(self, D, mean, covariance, shrink=float(K) ** (2.0 / D)))
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
        m0, psi = prior_arrays(self, D)
        # the MAP denominators at n_k = 0 must be positive
        offset = {"full": D + 2, "tied": D + K + 1, "diag": 3, "spherical": D + 2}[ct]
        if not nu + offset > 0:
            raise ValueError(
                f"degrees_of_freedom_prior must exceed {-offset} for covariance_type={ct!r} with "
                f"{D} features, got {nu}; the default is n_features + 2 = {D + 2}"
            )
        proper = nu > D - 1 if is_square(ct) else nu > 0
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
        half_log_kappa_2pi = 0.5 * (math.log(pr.kappa) - LOG_2PI)
        if is_square(ct):
            square = L if ct == "full" else L[None]
            log_det_prec = 2.0 * log_det_cholesky(L, ct, D)  # log |Sigma^-1|
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
            prec = feature_precisions(L, ct, D)  # (K, D)
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
        return with_log_prior(stats, self.log_prior(params))

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
        if is_square(ct):
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
        weights = weights / total if total > 0 else (nk + EPS10) / (nk + EPS10).sum()
        return weights, means, cov
