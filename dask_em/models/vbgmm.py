"""Variational Bayesian Gaussian mixture: pure numpy E-step and M-step.

Mean-field variational inference (Bishop 2006, "Pattern Recognition and
Machine Learning", section 10.2; Blei & Jordan 2006 for the Dirichlet
process) with scikit-learn's ``BayesianGaussianMixture`` formulas and
conventions, formula for formula, so that a fit from the same initial
responsibilities follows scikit-learn's iteration for iteration:

- weights: a Dirichlet distribution, or a truncated Dirichlet process
  (stick-breaking Beta variables), with concentration ``alpha``;
- each component: a Gaussian-Wishart on its mean and precision, with
  ``mean_prior`` m0, ``mean_precision_prior`` kappa0,
  ``degrees_of_freedom_prior`` nu0 and ``covariance_prior`` Psi0 (the
  Wishart's inverse scale); ``covariances`` are scikit-learn's
  normalised ones, ``W^-1 / nu``.

The E-step is the Gaussian mixture's (:mod:`dask_em.models.gmm`): the
responsibilities of variational inference are those of a Gaussian mixture
with means ``means``, precisions ``nu W`` and per-component constants
``E[log pi_k] + (E[log |Lambda_k|] - D log nu_k - D / kappa_k) / 2``
(:meth:`BayesianGaussianMixtureModel.log_weights`), so the E-step runs
the same compiled kernels with those constants, and returns the same
centred sums. The M-step is the closed-form variational update on the
client.

The objective, ``lower_bound_``, is scikit-learn's evidence lower bound
(ELBO) without its constant terms: the entropy of the responsibilities
plus the normalisers of the variational distributions after the update
(:meth:`BayesianGaussianMixtureModel.finish_stats`). The entropy
``-sum r log r`` needs no per-row work: with ``l_nk`` the log-probability
of row n under component k and ``L_n`` its log-sum-exp,
``sum_k r_nk log r_nk = sum_k r_nk l_nk - L_n``, and
``sum_n r_nk l_nk = c_k sum_n r_nk - M_k / 2`` where ``c_k`` is the
constant and ``M_k`` the responsibility-weighted sum of squared
Mahalanobis distances, which the centred first and second moments give
exactly. The E-step's log-sum-exp total (``loglik``) and its moments
therefore carry everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.special

from ..errors import InvalidParameterError
from ..contract import Stats
from ._gaussian import (
    EPS10,
    feature_precisions,
    is_square,
    log_det_cholesky,
    precisions_cholesky_from_covariances,
)
from .gmm import GaussianMixtureModel, GMMParams, HardAssignment, reference_point
from .gmm_prior import GaussianMixtureFields, _Prior, data_prior_defaults, prior_arrays
from .kmeans import kmeans_plusplus

WEIGHT_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


@dataclass(frozen=True)
class VBGMMParams:
    """Parameters of the variational distributions.

    Attributes
    ----------
    weight_concentration : ndarray
        (n_components,) Dirichlet concentrations, or (2, n_components) for
        the Dirichlet process: the two parameters of each stick's Beta
        distribution (scikit-learn's tuple, stacked).
    mean_precision : ndarray of shape (n_components,)
        kappa_k: a component mean's precision scale.
    means : ndarray of shape (n_components, n_features)
    degrees_of_freedom : ndarray
        nu_k of the Wishart distributions, (n_components,); () for ``tied``.
    covariances : ndarray
        ``W_k^-1 / nu_k`` in scikit-learn's shapes for the covariance type.
    precisions_cholesky : ndarray
        Cholesky factors of the inverses of ``covariances``.
    """

    weight_concentration: np.ndarray
    mean_precision: np.ndarray
    means: np.ndarray
    degrees_of_freedom: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray


def _sum_over_features(func: Any, dof: np.ndarray, n_features: int) -> np.ndarray:
    """``sum_{i < D} func((nu - i) / 2)`` per component, the shape of ``nu``."""
    dof = np.asarray(dof, np.float64)
    return func(0.5 * (dof[..., None] - np.arange(n_features))).sum(axis=-1)


@dataclass(frozen=True)
class BayesianGaussianMixtureModel(GaussianMixtureFields):
    """A Gaussian mixture fitted by variational inference.

    Parameters
    ----------
    n_components : int
        Number of components (the truncation level of a Dirichlet process).
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Non-negative regularisation added to the diagonal of each
        component's weighted covariance before the update.
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}
    weight_concentration_prior : float, optional
        alpha > 0 (None: 1 / n_components).
    mean_precision_prior : float, optional
        kappa0 > 0 (None: 1).
    mean_prior : tuple of float of length n_features, optional
        m0; needed before fitting (:meth:`with_prior_defaults` fills it
        with the data mean).
    degrees_of_freedom_prior : float, optional
        nu0 > n_features - 1 (None: n_features).
    covariance_prior : float or tuple, optional
        Psi0: (D, D) symmetric positive definite for full and tied, D
        positive values for diag, one for spherical; needed before fitting
        (:meth:`with_prior_defaults` fills it with the data covariance).

    Notes
    -----
    Statistics of :meth:`e_step` are those of
    :class:`~dask_em.models.gmm.GaussianMixtureModel`, centred on
    :meth:`reference` of the parameters: ``sum_resp`` (K,), ``sum_x``
    (K, D), ``sum_xxT`` (K, D, D) for full or (D, D) for tied, ``sum_xx``
    (K, D) for diag and spherical, ``n``, ``n_invalid`` and ``loglik``, the
    sum over rows of the log-sum-exp of the unnormalised log
    responsibilities. :meth:`finish_stats` turns ``loglik`` into the ELBO.
    """

    weight_concentration_prior_type: str = "dirichlet_process"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_concentration_prior_type not in WEIGHT_PRIOR_TYPES:
            raise InvalidParameterError(
                f"weight_concentration_prior_type must be one of {WEIGHT_PRIOR_TYPES}, "
                f"got {self.weight_concentration_prior_type!r}"
            )

    # -- the prior --------------------------------------------------------------

    @property
    def has_prior(self) -> bool:
        """Always true: variational inference needs the prior."""
        return True

    @property
    def prior_needs_data(self) -> bool:
        """Whether ``mean_prior`` or ``covariance_prior`` still needs the data's moments."""
        return self.mean_prior is None or self.covariance_prior is None

    def with_prior_defaults(self, n_features: int, mean: Any = None, covariance: Any = None) -> BayesianGaussianMixtureModel:
        """This model with ``mean_prior`` and ``covariance_prior`` filled from data moments.

        scikit-learn's defaults: the data mean, and the data covariance
        (denominator n - 1) for full and tied, the variances for diag, their
        mean for spherical. The arguments are those of
        :meth:`GaussianMixtureModel.with_prior_defaults
        <dask_em.models.gmm.GaussianMixtureModel.with_prior_defaults>`.
        """
        D = int(n_features)
        changes = data_prior_defaults(self, D, mean, covariance, error=InvalidParameterError)
        return replace(self, **changes) if changes else self

    def prior(self, n_features: int) -> _Prior:
        """The prior's values with the data-free defaults, checked against ``n_features``."""
        D = int(n_features)
        if self.prior_needs_data:
            raise InvalidParameterError(
                "this BayesianGaussianMixtureModel lacks mean_prior or covariance_prior; give them, "
                "or fill them from data moments with with_prior_defaults(...)"
            )
        K = int(self.n_components)
        alpha = 1.0 / K if self.weight_concentration_prior is None else float(self.weight_concentration_prior)
        kappa = 1.0 if self.mean_precision_prior is None else float(self.mean_precision_prior)
        nu = float(D) if self.degrees_of_freedom_prior is None else float(self.degrees_of_freedom_prior)
        if not nu > D - 1:
            raise InvalidParameterError(
                f"degrees_of_freedom_prior must be greater than n_features - 1 = {D - 1}, got {nu}; "
                f"the default is n_features = {D}"
            )
        m0, psi = prior_arrays(self, D, InvalidParameterError)
        return _Prior(alpha=alpha, kappa=kappa, mean=m0, dof=nu, scale=psi)

    # -- expectations under the variational distributions -------------------------

    def expected_weights(self, params: VBGMMParams) -> np.ndarray:
        """The mixture weights ``E[pi]`` (scikit-learn's ``weights_``): (K,)."""
        wc = np.asarray(params.weight_concentration, np.float64)
        if self.weight_concentration_prior_type == "dirichlet_process":
            total = wc[0] + wc[1]
            stick = np.hstack((1.0, np.cumprod(wc[1] / total)[:-1]))
            weights = wc[0] / total * stick
            return weights / weights.sum()
        return wc / wc.sum()

    def expected_log_weights(self, params: VBGMMParams) -> np.ndarray:
        """``E[log pi_k]``: (K,)."""
        wc = np.asarray(params.weight_concentration, np.float64)
        digamma = scipy.special.digamma
        if self.weight_concentration_prior_type == "dirichlet_process":
            digamma_sum = digamma(wc[0] + wc[1])
            return digamma(wc[0]) - digamma_sum + np.hstack((0.0, np.cumsum(digamma(wc[1]) - digamma_sum)[:-1]))
        return digamma(wc) - digamma(wc.sum())

    def log_weights(self, params: VBGMMParams) -> np.ndarray:
        """Per-component constants of the E-step, in place of a mixture's ``log w_k``: (K,).

        ``E[log pi_k] + (E[log |Lambda_k|] - D log nu_k - D / kappa_k) / 2``
        with ``E[log |Lambda_k|] = D log 2 + sum_i digamma((nu_k - i) / 2) +
        log |W_k|`` (the ``log |W_k|`` part is the Gaussian's log det).
        """
        D = np.shape(params.means)[1]
        nu = np.asarray(params.degrees_of_freedom, np.float64)
        log_lambda = D * math.log(2.0) + _sum_over_features(scipy.special.digamma, nu, D)
        kappa = np.asarray(params.mean_precision, np.float64)
        extra = 0.5 * (log_lambda - D / kappa) - 0.5 * D * np.log(nu)
        return self.expected_log_weights(params) + extra

    def gaussian_view(self, params: VBGMMParams) -> GMMParams:
        """The Gaussian mixture whose E-step, with :meth:`log_weights`, is this one's."""
        return GMMParams(
            weights=self.expected_weights(params),
            means=np.asarray(params.means, np.float64),
            covariances=np.asarray(params.covariances, np.float64),
            precisions_cholesky=np.asarray(params.precisions_cholesky, np.float64),
        )

    def reference(self, params: VBGMMParams) -> np.ndarray:
        """The point statistics are centred on: ``E[pi] @ means``."""
        return reference_point(self.gaussian_view(params))

    def _gmm(self) -> GaussianMixtureModel:
        return GaussianMixtureModel(int(self.n_components), self.covariance_type, float(self.reg_covar))

    def _prepare(self, params: VBGMMParams) -> Any:
        return self._gmm().prepare(self.gaussian_view(params), log_weights=self.log_weights(params))

    # -- the contract -------------------------------------------------------------

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> VBGMMParams:
        """k-means++ centres from ``sample``, hard assignments, then one variational update."""
        sample = np.asarray(sample, np.float64)
        sample = sample[np.isfinite(sample).all(axis=1)]
        centers = kmeans_plusplus(sample, self.n_components, rng, uniform_draws=True)
        hard = HardAssignment(centers=centers, covariance_type=self.covariance_type)
        return self.params_from_stats(hard.e_step(sample, None), hard.reference())

    def e_step(self, block: Any, params: VBGMMParams) -> Stats:
        """Sums of responsibilities and centred moments of one block (see class notes)."""
        return self._gmm().e_step_prepared(block, self._prepare(params))

    def m_step(self, stats: Stats, params: VBGMMParams) -> VBGMMParams:
        """The variational update from the summed statistics."""
        return self.params_from_stats(stats, self.reference(params))

    def finish_stats(self, stats: Stats, params: VBGMMParams) -> Stats:
        """``loglik`` becomes scikit-learn's lower bound (ELBO without constants).

        The bound is that of the responsibilities of this pass with the
        variational distributions after the update (as scikit-learn
        computes it); the E-step's log-sum-exp total is kept under
        ``"log_normalizer"``.
        """
        stats = dict(stats)
        normalizer = float(stats["loglik"])
        neg_entropy = self._sum_resp_log_resp(stats, params, normalizer)
        new = self.m_step(stats, params)
        stats["log_normalizer"] = np.array(normalizer)
        stats["loglik"] = np.array(-neg_entropy + self.bound_terms(new))
        return stats

    def describe_invalid(self, n_invalid: int) -> str:
        """The error message for ``n_invalid`` NaN or infinite values."""
        return (
            f"the data contains {n_invalid} NaN or infinite value{'s' if n_invalid != 1 else ''}; "
            "a Bayesian Gaussian mixture needs finite values. Remove or impute them first."
        )

    # -- helpers ----------------------------------------------------------------

    def weighted_log_prob(self, X: np.ndarray, params: VBGMMParams) -> np.ndarray:
        """Unnormalised log responsibilities of every row: (n_samples, K).

        scikit-learn's ``_estimate_weighted_log_prob``; their log-sum-exp is
        its ``score_samples``.
        """
        return self._gmm().weighted_log_prob_prepared(X, self._prepare(params))

    def params_from_stats(self, stats: Stats, center: np.ndarray) -> VBGMMParams:
        """The variational update (scikit-learn's ``_m_step``) from sums about ``center``.

        ``nk``, ``xk`` and ``sk`` are scikit-learn's
        ``_estimate_gaussian_parameters`` (``nk`` with ``10 * eps`` added,
        ``reg_covar`` on the diagonal of ``sk``), then:

        - weights: Dirichlet ``alpha + nk``; Dirichlet process
          ``(1 + nk, alpha + sum_{j > k} nk_j)``;
        - ``kappa = kappa0 + nk``, ``means = (kappa0 m0 + nk xk) / kappa``;
        - ``nu = nu0 + nk`` (tied: ``nu0 + n / K``) and ``covariances =
          (Psi0 + nk sk + nk kappa0 / kappa (xk - m0)(xk - m0)^T) / nu``
          (diag and spherical: the diagonal, or its mean, of the same).
        """
        center = np.asarray(center, np.float64)
        sum_x = np.asarray(stats["sum_x"], np.float64)
        K, D = sum_x.shape
        pr = self.prior(D)
        nk = np.asarray(stats["sum_resp"], np.float64) + EPS10
        _, xk, sk = self._gmm()._estimate(stats, center)
        if self.weight_concentration_prior_type == "dirichlet_process":
            rest = np.hstack((np.cumsum(nk[::-1])[-2::-1], 0.0))
            weight_concentration = np.stack([1.0 + nk, pr.alpha + rest])
        else:
            weight_concentration = pr.alpha + nk
        kappa = pr.kappa + nk
        means = (pr.kappa * pr.mean + nk[:, None] * xk) / kappa[:, None]
        diff = xk - pr.mean
        shrink = pr.kappa / kappa
        ct = self.covariance_type
        if ct == "full":
            nu = pr.dof + nk
            cov = pr.scale + nk[:, None, None] * sk + (nk * shrink)[:, None, None] * (diff[:, :, None] * diff[:, None, :])
            cov /= nu[:, None, None]
        elif ct == "tied":
            nu = np.asarray(pr.dof + nk.sum() / K)
            cov = pr.scale + sk * (nk.sum() / K) + pr.kappa / K * ((nk / kappa) * diff.T) @ diff
            cov /= nu
        elif ct == "diag":
            nu = pr.dof + nk
            cov = pr.scale + nk[:, None] * (sk + shrink[:, None] * diff**2)
            cov /= nu[:, None]
        else:
            nu = pr.dof + nk
            cov = (pr.scale + nk * (sk + shrink * np.mean(diff**2, axis=1))) / nu
        return VBGMMParams(
            weight_concentration=weight_concentration,
            mean_precision=kappa,
            means=means,
            degrees_of_freedom=nu,
            covariances=cov,
            precisions_cholesky=precisions_cholesky_from_covariances(cov, ct),
        )

    def bound_terms(self, params: VBGMMParams) -> float:
        """The parameters' part of scikit-learn's lower bound.

        ``- sum log B(nu_k, W_k) - log C(weights) - D/2 sum log kappa_k``
        without constant terms (scikit-learn's ``_compute_lower_bound``
        less the entropy of the responsibilities).
        """
        D = np.shape(params.means)[1]
        K = int(self.n_components)
        ct = self.covariance_type
        nu = np.asarray(params.degrees_of_freedom, np.float64)
        log_det = log_det_cholesky(np.asarray(params.precisions_cholesky, np.float64), ct, D) - 0.5 * D * np.log(nu)
        log_wishart = -(nu * log_det + nu * D * 0.5 * math.log(2.0) + _sum_over_features(scipy.special.gammaln, nu, D))
        log_wishart = K * float(log_wishart) if ct == "tied" else float(np.sum(log_wishart))
        wc = np.asarray(params.weight_concentration, np.float64)
        if self.weight_concentration_prior_type == "dirichlet_process":
            log_norm_weight = -float(np.sum(scipy.special.betaln(wc[0], wc[1])))
        else:
            log_norm_weight = float(scipy.special.gammaln(wc.sum()) - scipy.special.gammaln(wc).sum())
        kappa = np.asarray(params.mean_precision, np.float64)
        return -log_wishart - log_norm_weight - 0.5 * D * float(np.sum(np.log(kappa)))

    def _sum_resp_log_resp(self, stats: Stats, params: VBGMMParams, normalizer: float) -> float:
        """``sum_n sum_k r_nk log r_nk`` of the pass, from its sums (see the module notes)."""
        prep = self._prepare(params)
        center = prep.center
        nk = np.asarray(stats["sum_resp"], np.float64)
        sum_x = np.asarray(stats["sum_x"], np.float64)
        a = np.asarray(params.means, np.float64) - center  # component means about the reference point
        L = np.asarray(params.precisions_cholesky, np.float64)
        ct = self.covariance_type
        if is_square(ct):
            S = np.asarray(stats["sum_xxT"], np.float64)
            square = L if ct == "full" else np.broadcast_to(L, (len(nk), *L.shape))
            aL = np.einsum("ki,kij->kj", a, square)  # L_k^T a_k
            xL = np.einsum("ki,kij->kj", sum_x, square)  # L_k^T sum_x_k
            if ct == "full":
                trace = np.einsum("kij,kil,kjl->k", S, square, square).sum()  # sum_k tr(L_k^T S_k L_k)
            else:
                trace = np.einsum("ij,il,jl->", S, L, L)  # the rows' weights sum to one
            mahalanobis = trace - 2.0 * np.sum(aL * xL) + np.sum(nk * np.sum(aL * aL, axis=1))
        else:
            S = np.asarray(stats["sum_xx"], np.float64)
            prec = feature_precisions(L, ct, a.shape[1])
            mahalanobis = np.sum(prec * (S - 2.0 * a * sum_x + nk[:, None] * a * a))
        return float(np.dot(prep.const, nk) - 0.5 * mahalanobis - normalizer)
