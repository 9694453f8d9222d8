"""``BayesianGaussianMixture``: scikit-learn's variational Gaussian mixture, fitted on Dask."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from ..data import Blocks
from ..engine import expected_stats, fit_em, prepare_blocks
from ..errors import ConvergenceWarning, InvalidDataError, InvalidParameterError
from ..executor import where
from ..contract import Stats
from ..models._gaussian import data_moments, precisions_from_cholesky
from ..models.gmm import GaussianMixtureModel, HardAssignment, _Workspace
from ..models.vbgmm import PRIOR_FIELDS, BayesianGaussianMixtureModel, VBGMMParams
from ._base import EMEstimator, run_checkpoint, run_rngs, validate_in_memory
from .gmm import INIT_PARAMS, GaussianMixture, _stored_prior


class BayesianGaussianMixture(EMEstimator):
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
    accelerate : {None, "squarem"}, default=None
        ``"squarem"`` extrapolates the EM iterations (SQUAREM, Varadhan &
        Roland 2008; see :mod:`dask_em.accelerate`): the same optimum in a
        fraction of the passes where plain EM is slow, never a lower
        log-likelihood at any recorded step. None runs plain EM, which
        matches the reference libraries iteration by iteration.
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
    n_passes_ : int
        Passes over the data the last ``fit`` made: initialisation,
        restarts and refused extrapolations included.
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

    _estimator_type = "density_estimator"

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weight_concentration_prior_type: str = "dirichlet_process",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior: Any = None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        split_every: int = 8,
        accelerate: str | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.accelerate = accelerate
        self.split_every = split_every

    # -- shared with GaussianMixture: one implementation of each ---------------------

    _check_X = GaussianMixture._check_X
    _map = GaussianMixture._map
    _kmeans_stats = GaussianMixture._kmeans_stats
    _random_stats = GaussianMixture._random_stats
    _initial_params = GaussianMixture._initial_params
    score_samples = GaussianMixture.score_samples
    predict_proba = GaussianMixture.predict_proba
    predict = GaussianMixture.predict
    score = GaussianMixture.score
    fit_predict = GaussianMixture.fit_predict
    sample = GaussianMixture.sample

    # -- checks ---------------------------------------------------------------

    def _check_params(self) -> None:
        """The checks of a fit, without data (run on configurations read from files too)."""
        check = getattr(super(), "_check_params", None)  # the shared rules, where the base class has them
        if check is not None:
            check()
        self._check_parameters()
        self._model()

    def _check_parameters(self) -> None:
        """The fit's own parameters; the model's (:meth:`_model`) check themselves."""
        if self.init_params not in INIT_PARAMS:
            raise InvalidParameterError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise InvalidParameterError(f"tol must be a non-negative number, got {self.tol!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise InvalidParameterError(f"max_iter must be an integer >= 0, got {self.max_iter!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise InvalidParameterError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if not isinstance(self.split_every, (int, np.integer)) or self.split_every < 2:
            raise InvalidParameterError(f"split_every must be an integer >= 2, got {self.split_every!r}")

    def _model(self) -> BayesianGaussianMixtureModel:
        return BayesianGaussianMixtureModel(
            self.n_components,
            self.covariance_type,
            self.reg_covar,
            self.weight_concentration_prior_type,
            **{name: getattr(self, name) for name in PRIOR_FIELDS},
        )

    # -- fitting --------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        client: Any = None,
        checkpoint: str | None = None,
        checkpoint_every: int = 1,
        resume: bool | None = None,
        force: bool = False,
    ) -> BayesianGaussianMixture:
        """Fit the variational distributions.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
        y : ignored
        client : distributed.Client, optional
            Where to run (see :func:`dask_em.executor.where`); by default this process.
        checkpoint, checkpoint_every, resume, force
            Zarr snapshots of the fit; see :func:`dask_em.fit_em`. With
            ``n_init > 1`` each initialisation has its own sub-group.

        Returns
        -------
        self

        Raises
        ------
        InvalidDataError
            For data that is not 2-D and numeric, or holds NaN or infinite values.
        InvalidParameterError
            For invalid hyper-parameters or priors (a ``ValueError``).
        """
        self._check_parameters()
        model = self._model()
        # NaN and infinite values are counted and reported by the first pass
        X = validate_in_memory(self, X, reset=True, ensure_all_finite=False, ensure_min_samples=2)
        K = int(self.n_components)
        with where(client, data=X, verbose=bool(self.verbose)) as active:
            blocks = prepare_blocks(X, active)
            n_samples, n_features = (int(s) for s in blocks.array.shape)
            if n_samples < max(K, 2):
                raise InvalidDataError(
                    f"expected n_samples >= n_components (and at least 2), got n_components={K}, "
                    f"n_samples={n_samples}; decrease n_components or give more data"
                )
            if not model.prior_needs_data:
                model.prior(n_features)  # check the prior's shapes before any pass
            do_init = not (self.warm_start and hasattr(self, "converged_"))
            rngs = run_rngs(self.random_state, int(self.n_init) if do_init else 1)
            resolved = None  # the prior's data-derived defaults, filled once
            best = best_model = None
            for run, rng in enumerate(rngs):
                run_path = run_checkpoint(checkpoint, run) if len(rngs) > 1 else checkpoint
                run_model, start = model, None
                if model.prior_needs_data:
                    run_model = _stored_prior(model, run_path, resume) or resolved  # type: ignore[arg-type]
                    if run_model is None and not do_init:
                        run_model = self._previous_prior(model, n_features)
                    if run_model is None:
                        stats, center, moments = self._initial_stats(blocks, rng, active, need_moments=True)
                        run_model = model.with_prior_defaults(n_features, *moments)
                        start = run_model.params_from_stats(stats, center)
                    run_model.prior(n_features)
                    resolved = resolved or run_model
                if start is None:
                    start = self._start(run_model, blocks, rng, active) if do_init else self._fitted_params
                result = fit_em(
                    run_model,
                    blocks,
                    params=start,
                    max_iter=int(self.max_iter),
                    tol=float(self.tol),
                    tol_on="total",
                    split_every=int(self.split_every),
                    client=active,
                    random_state=rng,
                    verbose=bool(self.verbose),
                    accelerate=self.accelerate,
                    checkpoint=run_path,
                    checkpoint_every=checkpoint_every,
                    resume=resume,
                    force=force,
                    checkpoint_meta=self.checkpoint_meta(),
                    warn_not_converged=False,
                )
                if best is None or result.lower_bound > best.lower_bound:
                    best, best_model = result, run_model
        assert best is not None and best_model is not None
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init parameters, "
                "or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._set_fitted(best.params, best_model)
        self.converged_ = bool(best.converged)
        self.n_iter_ = int(best.n_iter)
        self.lower_bound_ = float(best.lower_bound)
        self.lower_bounds_ = [float(v) for v in best.history]
        self.n_features_in_ = n_features
        return self

    def _start(self, model: BayesianGaussianMixtureModel, blocks: Blocks, rng: np.random.Generator, client: Any) -> Any:
        """The initialisation, deferred: fit_em skips it when it resumes a checkpoint."""

        def start() -> VBGMMParams:
            stats, center, _ = self._initial_stats(blocks, rng, client, need_moments=False)
            return model.params_from_stats(stats, center)

        return start

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
            stats, center = self._kmeans_stats(gmm, blocks, rng, client)
        elif self.init_params == "random":
            stats, center = self._random_stats(gmm, blocks, rng, client)
        else:
            # GaussianMixture's choice of rows; its covariances are not used
            # (a positive reg_covar keeps them factorisable).
            rows = self._initial_params(
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

    @property
    def _fitted_params(self) -> VBGMMParams:
        self._check_fitted("weight_concentration_")
        return VBGMMParams(
            weight_concentration=np.asarray(self.weight_concentration_, np.float64),
            mean_precision=np.asarray(self.mean_precision_, np.float64),
            means=np.asarray(self.means_, np.float64),
            degrees_of_freedom=np.asarray(self.degrees_of_freedom_, np.float64),
            covariances=np.asarray(self.covariances_, np.float64),
            precisions_cholesky=np.asarray(self.precisions_cholesky_, np.float64),
        )

    def _set_fitted(self, params: VBGMMParams, model: BayesianGaussianMixtureModel) -> None:
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
