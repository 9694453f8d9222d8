"""``BayesianGaussianMixture``: scikit-learn's variational Gaussian mixture, fitted on Dask."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..data import Blocks
from ..engine import expected_stats
from ..errors import InvalidParameterError
from ..init import kmeans_stats, random_stats
from ..contract import Stats
from ..models._gaussian import data_moments, precisions_from_cholesky
from ..models.gmm import GaussianMixtureModel, HardAssignment, _Workspace
from ..models.gmm_prior import PRIOR_FIELDS
from ..models.vbgmm import BayesianGaussianMixtureModel, VBGMMParams
from ._base import Checkpointing, store_params
from .gmm import INIT_PARAMS, GaussianMixture, _GaussianMixtureBase, _stored_prior


class BayesianGaussianMixture(_GaussianMixtureBase):
    """Variational Bayesian Gaussian mixture on Dask, with scikit-learn's interface.

    Every iteration is one pass over the data: the E-step returns the
    mixture's sums (responsibilities, centred first and second moments),
    the variational update runs on the client. From the same initial
    responsibilities the fit follows scikit-learn's
    ``BayesianGaussianMixture`` iteration for iteration; unneeded
    components get weights near zero, so ``n_components`` is an upper
    bound on the number the data supports.

    Parameters
    ----------
    n_components : int, default=1
        Number of components (an upper bound: the truncation level of the
        Dirichlet process).
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Stop when the lower bound (in total, as scikit-learn) changes by
        less than this.
    reg_covar : float, default=1e-6
        Non-negative regularisation added to the diagonal of the weighted
        covariances before the update.
    max_iter : int, default=100
    n_init : int, default=1
        Number of initialisations; the one with the highest lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        The initial responsibilities, by :class:`GaussianMixture`'s own code:
        k-means|| and Lloyd over all the data (hard assignments), uniformly
        random responsibilities for every row, or one row per component
        (k-means++ seeding, or rows drawn at random, from a sample).
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}, default="dirichlet_process"
    weight_concentration_prior : float, optional
        alpha > 0 (default ``1 / n_components``). Small values put the
        mass on few components.
    mean_precision_prior : float, optional
        kappa0 > 0 (default 1): how tightly the component means are held
        near ``mean_prior``.
    mean_prior : array-like of shape (n_features,), optional
        Default: the data mean.
    degrees_of_freedom_prior : float, optional
        nu0 > n_features - 1 (default n_features).
    covariance_prior : float or array-like, optional
        (n_features, n_features) for full and tied, (n_features,) for diag,
        a number for spherical. Default: the data covariance (denominator
        n - 1), its diagonal, or the diagonal's mean.
    random_state : int, Generator or RandomState, optional
    warm_start : bool, default=False
        Start ``fit`` from the last fit's variational parameters.
    $accelerate
    verbose : int, default=0
    split_every : int, default=8
        Fan-in of the tree reduction of the statistics.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        Expected weights ``E[pi]``.
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        scikit-learn's normalised ones (``W^-1 / nu``) and their inverses.
    weight_concentration_ : ndarray or tuple of two ndarrays
        Dirichlet concentrations, or the Beta parameters of the sticks.
    mean_precision_ : ndarray of shape (n_components,)
    degrees_of_freedom_ : ndarray of shape (n_components,) or float (tied)
    weight_concentration_prior_, mean_precision_prior_, mean_prior_, degrees_of_freedom_prior_, covariance_prior_
        The prior the fit used, defaults filled in.
    converged_ : bool
    $n_passes_
    n_iter_ : int
    lower_bound_ : float
        The evidence lower bound of the best initialisation at its last
        iteration, without constant terms (as scikit-learn's, total, not per sample).
    lower_bounds_ : list of float
        The bound at every iteration; non-decreasing.
    n_features_in_ : int

    Notes
    -----
    The data-derived prior defaults cost no pass of their own with the
    "kmeans" and "random" initialisations (their pass gives the exact
    moments); with "k-means++" and "random_from_data" one pass computes
    them. They are recorded in the checkpoint's model configuration, so a
    resumed fit uses the same values bit for bit.

    With ``warm_start=True`` the convergence test starts afresh: the first
    iteration of a warm-started fit never counts as converged.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, init_params: str = "kmeans",
                 weight_concentration_prior_type: str = "dirichlet_process",
                 weight_concentration_prior: float | None = None, mean_precision_prior: float | None = None,
                 mean_prior: Any = None, degrees_of_freedom_prior: float | None = None, covariance_prior: Any = None,
                 random_state: Any = None, warm_start: bool = False, verbose: int = 0, split_every: int = 8,
                 accelerate: str | None = None) -> None:
        store_params(self, locals())

    _params_class = VBGMMParams
    _gmm_start = GaussianMixture._gmm_start  # the rows GaussianMixture's "k-means++" and "random_from_data" pick

    def _check_parameters(self) -> None:
        """The fit's own parameters; the model's (:meth:`_model`) check themselves."""
        if self.init_params not in INIT_PARAMS:
            raise InvalidParameterError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        self._check_ranges(("tol", "max_iter", "n_init", "split_every"), InvalidParameterError)

    def _model(self) -> BayesianGaussianMixtureModel:
        return BayesianGaussianMixtureModel(
            self.n_components,
            self.covariance_type,
            self.reg_covar,
            self.weight_concentration_prior_type,
            **{name: getattr(self, name) for name in PRIOR_FIELDS},
        )

    # -- fitting: the hooks of EMEstimator._fit --------------------------------

    def fit(self, X: Any, y: Any = None, *, client: Any = None, checkpoint: str | None = None,
            checkpoint_every: int = 1, resume: bool | None = None, force: bool = False) -> BayesianGaussianMixture:
        """Fit the variational distributions.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
        y : ignored
        $fit_options
            With ``n_init > 1`` each initialisation has its own sub-group.

        $fit_returns.
        InvalidParameterError
            For invalid hyper-parameters or priors (a ``ValueError``).
        """
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force))

    _tol_on = "total"
    _restarts = "apart"

    def _start(
        self, model: BayesianGaussianMixtureModel, blocks: Blocks, data: Any, rngs: list[np.random.Generator],
        client: Any, checkpointing: Checkpointing,
    ) -> tuple[BayesianGaussianMixtureModel, Any]:
        """A run's start, and the model with the prior's data-derived defaults filled in (once, by the first run).

        The defaults come from the checkpoint the run resumes, else the
        last fit's (a warm start), else the initialisation's pass.
        """
        rng, n_features = rngs[0], int(blocks.array.shape[1])
        if model.prior_needs_data:
            filled = _stored_prior(model, checkpointing) or (self._previous_prior(model, n_features) if self._warm() else None)
            if filled is None:
                stats, center, moments = self._initial_stats(blocks, rng, client, need_moments=True)
                filled = model.with_prior_defaults(n_features, *moments)
                filled.prior(n_features)
                return filled, filled.params_from_stats(stats, center)
            model = filled
        model.prior(n_features)  # check the prior's shapes before any pass
        if self._warm():
            return model, self._fitted_params

        def start() -> VBGMMParams:  # deferred: fit_em skips it when it resumes a checkpoint
            stats, center, _ = self._initial_stats(blocks, rng, client, need_moments=False)
            return model.params_from_stats(stats, center)

        return model, start

    def _set_fitted(self, result: Any, model: BayesianGaussianMixtureModel, blocks: Blocks) -> None:
        self._set_variational(result.params, model)
        self.n_features_in_ = int(blocks.array.shape[1])

    def _initial_stats(
        self, blocks: Blocks, rng: np.random.Generator, client: Any, *, need_moments: bool
    ) -> tuple[Stats, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Statistics of the initial responsibilities, about a reference point.

        As scikit-learn's ``_initialize_parameters``: hard k-means
        assignments or random responsibilities of every row, or one row per
        component (its responsibility 1) for "k-means++" and
        "random_from_data", the rows :class:`GaussianMixture` picks. With
        ``need_moments``, also the data mean and covariance.
        """
        K, ct = int(self.n_components), self.covariance_type
        gmm = GaussianMixtureModel(K, ct)
        if self.init_params == "kmeans":
            stats, center = kmeans_stats(gmm, blocks, rng, client, int(self.split_every))
        elif self.init_params == "random":
            stats, center = random_stats(gmm, blocks, rng, client, int(self.split_every))
        else:
            # GaussianMixture's choice of rows; its covariances are not used
            # (a positive reg_covar keeps them factorisable).
            rows = self._gmm_start(
                GaussianMixtureModel(K, ct, reg_covar=1.0), blocks, (None, None, None), rng, client
            )[0].means
            rows = np.asarray(rows, np.float64)
            center = rows.mean(axis=0)
            stats = gmm._zero_stats(rows.shape[1])
            gmm._accumulate(stats, rows - center, np.eye(K), _Workspace(K, K, rows.shape[1], ct))
            if need_moments:
                one = HardAssignment(centers=center[None], covariance_type=ct)
                moments = data_moments(expected_stats(one, blocks, None, client, int(self.split_every)), center, ct)
                return stats, center, moments
        return stats, center, data_moments(stats, center, ct) if need_moments else None

    def _previous_prior(self, model: BayesianGaussianMixtureModel, n_features: int) -> BayesianGaussianMixtureModel | None:
        """A warm start's prior: the data-derived values of the previous fit."""
        mean, cov = getattr(self, "mean_prior_", None), getattr(self, "covariance_prior_", None)
        if mean is None or np.shape(mean) != (n_features,):
            return None
        changes = {"mean_prior": mean} if model.mean_prior is None else {}
        if model.covariance_prior is None:
            changes["covariance_prior"] = cov
        return dataclasses.replace(model, **changes)

    # -- fitted state ------------------------------------------------------------

    def _set_variational(self, params: VBGMMParams, model: BayesianGaussianMixtureModel) -> None:
        wc = np.asarray(params.weight_concentration)
        dp = self.weight_concentration_prior_type == "dirichlet_process"
        self.weight_concentration_ = (wc[0], wc[1]) if dp else wc
        self.mean_precision_ = np.asarray(params.mean_precision)
        self.means_ = np.asarray(params.means)
        dof = np.asarray(params.degrees_of_freedom)
        self.degrees_of_freedom_ = float(dof) if dof.ndim == 0 else dof
        self.covariances_ = np.asarray(params.covariances)
        self.precisions_cholesky_ = np.asarray(params.precisions_cholesky)
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)
        self.weights_ = model.expected_weights(params)
        pr = model.prior(self.means_.shape[1])
        self.weight_concentration_prior_ = float(pr.alpha)
        self.mean_precision_prior_ = float(pr.kappa)
        self.mean_prior_ = np.array(pr.mean)
        self.degrees_of_freedom_prior_ = float(pr.dof)
        self.covariance_prior_ = float(pr.scale) if pr.scale.ndim == 0 else np.array(pr.scale)

    def fitted_state(self) -> dict[str, Any]:
        """Fitted attributes for saving; the Dirichlet process's pair of arrays as one (2, K) array."""
        state = super().fitted_state()
        if isinstance(getattr(self, "weight_concentration_", None), tuple):
            state["weight_concentration_"] = np.stack(self.weight_concentration_)
        return state

    def _after_load(self) -> None:
        """Back to scikit-learn's tuple for the Dirichlet process."""
        wc = getattr(self, "weight_concentration_", None)
        if isinstance(wc, np.ndarray) and wc.ndim == 2:
            self.weight_concentration_ = (wc[0], wc[1])
