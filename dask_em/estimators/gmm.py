"""``GaussianMixture``: scikit-learn's Gaussian mixture, fitted out of core on Dask."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..storage.snapshots import resumable_config
from ..data import Blocks, as_dask_array
from ..errors import InvalidDataError
from ..init import kmeans_stats, random_stats, sample_stats
from ..models.gmm_missing import GaussianMixtureMissingModel
from ..models._gaussian import (
    COVARIANCE_TYPES,
    covariances_from_precisions_cholesky,
    data_moments,
    precisions_cholesky_from_covariances,
    precisions_cholesky_from_precisions,
    precisions_from_cholesky,
    sample_moments,
)
from ..models.gmm import GaussianMixtureModel, GMMParams, _rows_output
from ..models.gmm_prior import PRIOR_FIELDS
from ..models.kmeans import kmeans_plusplus
from ._base import Checkpointing, EMEstimator, check_n_samples, map_rows, store_params
from ._online import PartialFitMixin

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")

#: Rows read from the data for the sample-based initialisations.
INIT_SAMPLE_ROWS = 10_000


class _GaussianMixtureBase(EMEstimator):
    """What :class:`GaussianMixture` and :class:`BayesianGaussianMixture` share: checks, fit hooks, per-row outputs."""

    _estimator_type = "density_estimator"

    _not_converged = (
        "Best performing initialization did not converge. Try different init parameters, "
        "or increase max_iter, tol, or check for degenerate data."
    )

    def _fit_model(self) -> Any:
        self._check_parameters()
        return self._model()

    def _fit_data(self, X: Any, model: Any, client: Any, **inputs: Any) -> tuple[Blocks, Any]:
        blocks, model = super()._fit_data(X, model, client)
        K, n_samples = int(self.n_components), blocks.n_samples
        if n_samples < max(K, 2):
            raise InvalidDataError(
                f"expected n_samples >= n_components (and at least 2), got n_components={K}, "
                f"n_samples={n_samples}; decrease n_components or give more data"
            )
        return blocks, model

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None, **fit_kwargs: Any) -> Any:
        """Fit, then the most likely component of every row (lazy for Dask input)."""
        if sample_weight is not None:  # only given on: BayesianGaussianMixture takes no weights
            fit_kwargs["sample_weight"] = sample_weight
        return self.fit(X, **fit_kwargs).predict(X)

    # -- inference ------------------------------------------------------------

    def _check_X(self, X: Any) -> Any:
        self._check_fitted("weights_")
        return self._checked_input(X, ensure_all_finite=getattr(self, "missing", "raise") != "em")

    def _map(self, X: Any, what: str, n_columns: int | None, dtype: Any = None) -> Any:
        X = self._check_X(X)
        if dtype is None:
            # scikit-learn returns float32 log-probabilities for float32 rows
            dtype = np.float32 if getattr(X, "dtype", None) == np.float32 else np.float64
        return map_rows(X, _rows_output, self._model(), self._fitted_params, what, n_columns=n_columns, dtype=dtype)

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of every row under the mixture.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples,)
            Lazy (nothing computed) for Dask, Zarr or path input.
        """
        return self._map(X, "score_samples", None)

    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component for every row: (n_samples, n_components)."""
        return self._map(X, "predict_proba", int(self.n_components))

    def predict(self, X: Any) -> Any:
        """The most likely component of every row: (n_samples,) integers."""
        return self._map(X, "predict", None, dtype=np.int64)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (computes for Dask input)."""
        values = self.score_samples(X)
        if isinstance(values, np.ndarray):
            return float(values.mean())
        return float(values.mean().compute())

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture (in memory).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component each row was drawn from.
        """
        self._check_fitted("weights_")
        check_n_samples(n_samples)
        rs = self.random_state
        rng = rs if isinstance(rs, (np.random.RandomState, np.random.Generator)) else np.random.RandomState(rs)
        counts = rng.multinomial(n_samples, self.weights_)
        D = self.means_.shape[1]
        if self.covariance_type in ("full", "tied"):
            covs = self.covariances_ if self.covariance_type == "full" else [self.covariances_] * len(counts)
            parts = [rng.multivariate_normal(m, c, int(k)) for m, c, k in zip(self.means_, covs, counts)]
        else:
            parts = [
                m + rng.standard_normal(size=(int(k), D)) * np.sqrt(c)
                for m, c, k in zip(self.means_, self.covariances_, counts)
            ]
        y = np.concatenate([np.full(int(k), j, dtype=int) for j, k in enumerate(counts)])
        return np.vstack(parts), y


class GaussianMixture(PartialFitMixin, _GaussianMixtureBase):
    """Gaussian mixture fitted by EM on Dask, with scikit-learn's interface.

    Every EM iteration is one pass over the data; only the per-component
    sums reach the client. From the same initial parameters the fit
    follows scikit-learn's ``GaussianMixture`` iteration for iteration.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Form of the covariance matrices.
    tol : float, default=1e-3
        Stop when the mean log-likelihood per sample changes by less than this.
    reg_covar : float, default=1e-6
        Non-negative regularisation added to the diagonal of covariances.
    max_iter : int, default=100
        Maximum number of EM iterations per initialisation.
    n_init : int, default=1
        Number of initialisations; the best is kept. They share their
        passes over the data: the first start is computed as
        ``init_params`` says (over all the data for "kmeans" and "random"),
        the others from a sample of the data (their "kmeans" and "random"
        run on the sample: no pass); all of them run ``n_init_iter`` EM
        iterations as members of one stacked model, one pass per iteration
        for all, and the one with the highest log-likelihood continues
        alone to convergence. Passes for ``n_init=10`` are therefore about
        those of ``n_init=1`` plus ``n_init_iter``.
    n_init_iter : int, default=5
        EM iterations every initialisation runs in the shared passes
        before the best continues; with ``n_init_iter >= max_iter`` every
        initialisation runs to the end, as scikit-learn's do.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How initial parameters are chosen when not all of ``weights_init``,
        ``means_init`` and ``precisions_init`` are given:

        - "kmeans": k-means|| seeding and Lloyd iterations over all the
          data (out of core), then every row assigned to its nearest centre
          and one M-step over those hard assignments;
        - "k-means++": k-means++ centres drawn from a sample of the data,
          covariances ``reg_covar * I`` (as scikit-learn);
        - "random": responsibilities drawn uniformly for every row (each
          block from its own seeded generator), then one M-step;
        - "random_from_data": means are rows drawn from a sample of the
          data, covariances ``reg_covar * I`` (as scikit-learn).
    weights_init : array-like of shape (n_components,), optional
        Initial weights.
    means_init : array-like of shape (n_components, n_features), optional
        Initial means.
    precisions_init : array-like, optional
        Initial precision matrices (inverse covariances), shaped as
        ``covariances_`` for the ``covariance_type``.
    random_state : int, Generator or RandomState, optional
        Seed of the initialisations and of :meth:`sample`.
    warm_start : bool, default=False
        Start ``fit`` from the last fit's parameters (with ``n_init=1``).
    $accelerate
    verbose : int, default=0
        Print a progress line per iteration.
    missing : {"raise", "em"}, default="raise"
        What NaN in the data means: an error ("raise"), or values missing
        at random that EM integrates out ("em"): each row's missing entries
        are completed per component by their conditional expectation, and
        the model is fitted to the observed entries. With no NaN present,
        "em" gives the same fit as "raise". With "em", "kmeans" and
        "random" initialisations start from a sample whose NaN are
        replaced by column means.
    weight_concentration_prior : float, optional
        alpha > 0 of a symmetric Dirichlet prior on the weights. Default
        (when another prior parameter is set): 1, a flat prior. With
        alpha > 1 every weight is pulled towards 1 / n_components; with
        alpha < 1 the M-step weight ``max(n_k + alpha - 1, 0)`` (normalised)
        drops a component whose responsibilities sum to less than
        ``1 - alpha`` to weight 0 for good, a way to prune components (the
        prior density is unbounded there, so the log posterior can jump
        when a component is dropped).
    mean_precision_prior : float, optional
        kappa0 > 0: a component's mean has the prior
        N(mean_prior, covariance / kappa0). Default 0.01.
    mean_prior : array-like of shape (n_features,), optional
        m0. Default: the data mean.
    degrees_of_freedom_prior : float, optional
        nu0 of the inverse-Wishart prior on a full or tied covariance, or
        of the inverse-gamma prior (shape nu0 / 2) on a diag variance or a
        spherical variance. Default n_features + 2.
    covariance_prior : float or array-like, optional
        Psi0, the prior's scale: (n_features, n_features) positive definite
        for full and tied, (n_features,) positive for diag, a positive
        number for spherical. Default: the data covariance (denominator
        n - 1) divided by ``n_components ** (2 / n_features)``: the whole
        matrix for full and tied, its diagonal for diag, the mean of the
        diagonal for spherical.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        Shape depends on ``covariance_type`` as in scikit-learn.
    precisions_ : ndarray
    precisions_cholesky_ : ndarray
    converged_ : bool
    $n_passes_
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per sample at the last iteration of the best
        initialisation (under the parameters that entered it). With a
        prior: the log posterior per sample, ``(log-likelihood + log
        prior) / n_samples``, the objective MAP-EM increases (as
        ``BayesianGaussianMixture.lower_bound_`` is its objective, not the
        log-likelihood); ``score(X)`` gives the log-likelihood.
    lower_bounds_ : list of float
        ``lower_bound_`` at every iteration of the best initialisation;
        non-decreasing (up to rounding and ``reg_covar``), with or without
        a prior. Convergence (``tol``) is tested on these values.
    log_prior_ : float
        With a prior: the log prior density of the fitted parameters.
    weight_concentration_prior_, mean_precision_prior_, mean_prior_, degrees_of_freedom_prior_, covariance_prior_
        With a prior: the values the fit used, defaults filled in (the
        model configuration a checkpoint records).
    n_features_in_ : int

    Notes
    -----
    A component that loses all its points (responsibilities summing to
    less than 1e-10) keeps its previous mean and covariance and gets a
    weight of about zero; no NaN enters the model.

    With ``warm_start=True`` the convergence test starts afresh: the first
    iteration of a warm-started fit never counts as converged.

    **MAP with a conjugate prior.** Setting any of the ``*_prior``
    parameters (scikit-learn's ``BayesianGaussianMixture`` names) turns
    the fit into maximum a posteriori EM, not variational inference: the
    result is one point estimate, the mode of the posterior, with the
    conjugate priors of Fraley & Raftery (2007), "Bayesian regularization
    for normal mixture estimation and model-based clustering" (mclust's
    ``priorControl``), and their defaults for unset values. The E-step is
    unchanged; the M-step is the posterior mode (see
    :meth:`dask_em.models.gmm.GaussianMixtureModel._estimate_map`), so
    components with one point, repeated points or none keep a finite,
    positive-definite covariance even with ``reg_covar=0``. The data-derived
    defaults cost no pass of their own: they come from the statistics of
    the initialisation pass ("kmeans", "random": exact over all the data)
    or from its sample ("k-means++", "random_from_data"); with all three
    ``*_init`` given, or a warm start, from a sample of up to 10,000 rows.
    They are recorded in the checkpoint's model configuration, so a resumed
    fit uses the same values bit for bit. ``missing="em"`` does not take a
    prior.
    """

    _params_class = GMMParams

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, n_init_iter: int = 5,
                 init_params: str = "kmeans", weights_init: Any = None, means_init: Any = None,
                 precisions_init: Any = None, random_state: Any = None, warm_start: bool = False, verbose: int = 0,
                 missing: str = "raise", split_every: int = 8, weight_concentration_prior: float | None = None,
                 mean_precision_prior: float | None = None, mean_prior: Any = None,
                 degrees_of_freedom_prior: float | None = None, covariance_prior: Any = None,
                 accelerate: str | None = None) -> None:
        store_params(self, locals())

    # -- checks ---------------------------------------------------------------

    def _check_parameters(self) -> None:
        self._check_ranges(("n_components",))
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if self.missing not in ("raise", "em"):
            raise ValueError(f"missing must be 'raise' or 'em', got {self.missing!r}")
        if self.init_params not in INIT_PARAMS:
            raise ValueError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        self._check_ranges(("tol", "reg_covar", "max_iter", "n_init", "n_init_iter", "split_every"))

    def _checked_inits(self, n_features: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``weights_init``, ``means_init`` and the Cholesky factors of ``precisions_init``."""
        K, D = int(self.n_components), n_features
        weights = means = prec_chol = None
        if self.weights_init is not None:
            weights = np.array(self.weights_init, dtype=np.float64)
            # scikit-learn's messages, which its users' code and tests match
            if weights.shape != (K,):
                raise ValueError(f"The parameter 'weights' should have the shape of ({K},), but got {weights.shape}")
            if np.any(weights < 0) or np.any(weights > 1) or not np.isfinite(weights).all():
                raise ValueError(
                    "The parameter 'weights' should be in the range [0, 1], but got "
                    f"max value {np.min(weights):.5f}, min value {np.max(weights):.5f}"
                )
            if not np.allclose(weights.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError(
                    f"The parameter 'weights' should be normalized, but got sum(weights) = {weights.sum():.5f}"
                )
        if self.means_init is not None:
            means = np.array(self.means_init, dtype=np.float64)
            if means.shape != (K, D):
                raise ValueError(f"The parameter 'means' should have the shape of ({K}, {D}), but got {means.shape}")
            if not np.isfinite(means).all():
                raise ValueError("means_init contains NaN or infinite values")
        if self.precisions_init is not None:
            precisions = np.array(self.precisions_init, dtype=np.float64)
            expected = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[self.covariance_type]
            if precisions.shape != expected:
                raise ValueError(
                    f"The parameter '{self.covariance_type} precision' should have the shape of "
                    f"{expected}, but got {precisions.shape}"
                )
            prec_chol = precisions_cholesky_from_precisions(precisions, self.covariance_type)
        return weights, means, prec_chol

    def _prior_config(self) -> dict[str, Any]:
        return {name: getattr(self, name, None) for name in PRIOR_FIELDS}

    def _model(self) -> GaussianMixtureModel | GaussianMixtureMissingModel:
        config = (int(self.n_components), self.covariance_type, float(self.reg_covar))
        prior = self._prior_config()
        if getattr(self, "missing", "raise") == "em":
            if any(v is not None for v in prior.values()):
                raise ValueError(
                    "a prior (weight_concentration_prior, mean_precision_prior, mean_prior, "
                    "degrees_of_freedom_prior, covariance_prior) is not supported with missing='em'; "
                    "unset the prior or use missing='raise'"
                )
            return GaussianMixtureMissingModel(*config)
        return GaussianMixtureModel(*config, **prior)

    # -- fitting: the hooks of EMEstimator._fit --------------------------------

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, client: Any = None,
            checkpoint: str | None = None, checkpoint_every: int = 1, resume: bool | None = None,
            force: bool = False, online_passes: int = 0) -> GaussianMixture:
        """Estimate the mixture's parameters by EM.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
            The data (float32 or float64; integers are converted).
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Weight of every row in the EM iterations (default 1): an
            integer weight is the same as repeating the row. The weights
            travel with the data's blocks. The initialisation is computed
            from the rows without their weights.
        $fit_options
            The initialisations (shared restarts included) are redone only
            when no snapshot exists.
        online_passes : int, default=0
            Passes of online (stepwise) EM over the blocks in shuffled order
            between the initialisation and batch EM (see
            :func:`dask_em.fit_em`): on large data, a way to reach the
            optimum in fewer passes.

        $fit_returns
            (found in the first pass over the data).
        ValueError
            For invalid hyper-parameters or initial values.
        """
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         sample_weight=sample_weight, online_passes=online_passes)

    @property
    def _input_checks(self) -> dict[str, Any]:  # type: ignore[override]
        return {"ensure_all_finite": getattr(self, "missing", "raise") != "em", "ensure_min_samples": 2}

    def _start(
        self, model: Any, blocks: Blocks, data: Any, rngs: list[np.random.Generator], client: Any,
        checkpointing: Checkpointing,
    ) -> tuple[Any, Any]:
        """The start, and the model with its prior's data-derived defaults filled in.

        Such a prior is completed once: from the checkpoint the fit
        resumes, else by the first start's initialisation pass (or sample),
        else (a warm start, or a resume without a snapshot yet) without a pass.
        """
        n_features = int(blocks.array.shape[1])
        inits = self._checked_inits(n_features)
        first = None
        if isinstance(model, GaussianMixtureModel) and model.has_prior:
            if model.prior_needs_data:
                stored = _stored_prior(model, checkpointing)
                if stored is not None:
                    model = stored
                elif not self._warm() and checkpointing.resume is not True:
                    first, model = self._gmm_start(model, blocks, inits, rngs[0], client)
                else:
                    model = self._fill_prior_without_pass(model, blocks, rngs[0])
            model._prior(n_features)  # check the prior's shapes before any pass
        if self._warm():
            return model, self._fitted_params
        return model, self._restart_start(model, blocks, data, rngs, client, first)

    def _initial_params(self, model: Any, blocks: Blocks, rng: np.random.Generator, client: Any) -> GMMParams:
        return self._gmm_start(model, blocks, self._checked_inits(int(blocks.array.shape[1])), rng, client)[0]

    def _restart_params(self, model: Any, blocks: Blocks, rng: np.random.Generator, client: Any) -> GMMParams:
        return self._sample_start(model, blocks, self._checked_inits(int(blocks.array.shape[1])), rng)

    def _em_options(self, blocks: Blocks, client: Any, run: int, n_runs: int) -> dict[str, Any]:
        # a warm start continues the last fit's convergence test (scikit-learn's warm_start)
        start_value = float(self.lower_bound_) if self._warm() else -math.inf
        return {**super()._em_options(blocks, client, run, n_runs), "start_value": start_value}

    def _set_fitted(self, result: Any, model: Any, blocks: Blocks) -> None:
        self._set_mixture(result.params, np.float32 if blocks.array.dtype == np.float32 else np.float64)
        self.n_features_in_ = int(blocks.array.shape[1])
        self._set_prior_attributes(model, result.params)


    def _sample_start(self, model: Any, blocks: Blocks, inits: Any, rng: np.random.Generator) -> GMMParams:
        """A restart's start from a sample of the data, in this process (no pass).

        "kmeans": k-means++ and Lloyd iterations on the sample, then its
        rows hard-assigned and one M-step; "random": random
        responsibilities of the sample's rows; the other initialisations
        already use a sample only.
        """
        if self.init_params not in ("kmeans", "random") or isinstance(model, GaussianMixtureMissingModel):
            return self._gmm_start(model, blocks, inits, rng, None)[0]
        sample = blocks.sample(max(INIT_SAMPLE_ROWS, model.n_components), rng)
        stats, center = sample_stats(model, sample, self.init_params, rng)
        base = model.params_from_stats(stats, center)
        return _with_inits(base, base.weights, inits, model.covariance_type)

    # -- online EM (dask_em.online) ------------------------------------------
    _online_attr = "weights_"

    def _online_start(self, blocks: Blocks, rng: np.random.Generator, client: Any) -> tuple[Any, GMMParams]:
        self._check_parameters()
        inits = self._checked_inits(int(blocks.array.shape[1]))
        params, model = self._gmm_start(self._model(), blocks, inits, rng, client)
        return model, params

    def _online_set(self, state: Any) -> None:
        self._set_mixture(state.params)
        self.converged_ = False
        self.lower_bound_ = float(state.loglik)
        self.n_features_in_ = int(np.shape(self.means_)[1])
        self._set_prior_attributes(state.model, state.params)

    def _set_prior_attributes(self, model: Any, params: GMMParams) -> None:
        """The prior's values (defaults filled in) and its log density at ``params``, or none."""
        for name in (*PRIOR_FIELDS, "log_prior"):
            self.__dict__.pop(name + "_", None)
        if not (isinstance(model, GaussianMixtureModel) and model.has_prior):
            return
        pr = model._prior(int(np.shape(params.means)[1]))
        self.weight_concentration_prior_ = float(pr.alpha)
        self.mean_precision_prior_ = float(pr.kappa)
        self.mean_prior_ = np.array(pr.mean)
        self.degrees_of_freedom_prior_ = float(pr.dof)
        self.covariance_prior_ = float(pr.scale) if pr.scale.ndim == 0 else np.array(pr.scale)
        self.log_prior_ = float(model.log_prior(params))

    def _fill_prior_without_pass(
        self, model: GaussianMixtureModel, blocks: Blocks, rng: np.random.Generator
    ) -> GaussianMixtureModel:
        """The data-derived prior defaults when no initialisation pass runs.

        A warm start reuses the previous fit's values; otherwise they come
        from a sample of the data.
        """
        n_features = int(blocks.array.shape[1])
        previous = getattr(self, "mean_prior_", None), getattr(self, "covariance_prior_", None)
        if previous[0] is not None and np.shape(previous[0]) == (n_features,):
            filled = model
            if model.mean_prior is None:
                filled = dataclasses.replace(filled, mean_prior=previous[0])
            if model.covariance_prior is None:
                filled = dataclasses.replace(filled, covariance_prior=previous[1])
            return filled.with_prior_defaults(n_features)
        sample = blocks.sample(max(INIT_SAMPLE_ROWS, model.n_components), rng)
        return model.with_prior_defaults(n_features, *sample_moments(sample, model.covariance_type))

    def _set_mixture(self, params: GMMParams, dtype: Any = np.float64) -> None:
        """Fitted attributes in the data's float type, as scikit-learn (fitted in float64)."""
        self.weights_ = np.asarray(params.weights, dtype)
        self.means_ = np.asarray(params.means, dtype)
        self.covariances_ = np.asarray(params.covariances, dtype)
        self.precisions_cholesky_ = np.asarray(params.precisions_cholesky, dtype)
        precisions = precisions_from_cholesky(np.asarray(params.precisions_cholesky), self.covariance_type)
        self.precisions_ = np.asarray(precisions, dtype)

    def _gmm_start(
        self,
        model: GaussianMixtureModel,
        blocks: Blocks,
        inits: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
        rng: np.random.Generator,
        client: Any,
    ) -> tuple[GMMParams, Any]:
        """Initial parameters as scikit-learn's ``_initialize_parameters`` gives them.

        Returns the parameters and the model: a model whose prior needs
        data-derived defaults comes back with them filled, from the
        initialisation's statistics or sample (and then the initial
        parameters are its MAP estimates).
        """
        weights_init, means_init, prec_chol_init = inits
        K = model.n_components
        ct = model.covariance_type
        n_features = int(blocks.array.shape[1])
        needs_data = isinstance(model, GaussianMixtureModel) and model.prior_needs_data
        if weights_init is not None and means_init is not None and prec_chol_init is not None:
            cov = covariances_from_precisions_cholesky(prec_chol_init, ct)
            if needs_data:
                model = self._fill_prior_without_pass(model, blocks, rng)
            return GMMParams(weights_init, means_init, cov, prec_chol_init), model
        n_samples = blocks.n_samples
        if isinstance(model, GaussianMixtureMissingModel):
            # k-means and random responsibilities need complete rows: start
            # from the sample with NaN replaced by column means instead.
            base = model.init_params(blocks.sample(max(INIT_SAMPLE_ROWS, K), rng), rng)
            weights = base.weights
        elif self.init_params in ("kmeans", "random"):
            if self.init_params == "kmeans":
                stats, center = kmeans_stats(model, blocks, rng, client, int(self.split_every))
            else:
                stats, center = random_stats(model, blocks, rng, client, int(self.split_every))
            if needs_data:
                model = model.with_prior_defaults(n_features, *data_moments(stats, center, ct))
            base = model.params_from_stats(stats, center)
            # scikit-learn divides the initial nk by n_samples, not by their sum
            weights = (np.asarray(stats["sum_resp"]) + 10 * np.finfo(np.float64).eps) / n_samples
            if model.has_prior:
                weights = base.weights
        else:
            sample = blocks.sample(max(INIT_SAMPLE_ROWS, K), rng)
            sample = np.asarray(sample, np.float64)
            finite = np.isfinite(sample).all(axis=1)
            if not finite.all():
                raise InvalidDataError(model.describe_invalid(int((~np.isfinite(sample)).sum())))
            if len(sample) < K:
                raise ValueError(f"the data has fewer than n_components={K} rows")
            if needs_data:
                model = model.with_prior_defaults(n_features, *sample_moments(sample, ct))
            if self.init_params == "k-means++":
                means = kmeans_plusplus(sample, K, rng, uniform_draws=True)
            else:
                means = sample[rng.choice(len(sample), size=K, replace=False)]
            # one row per component, as scikit-learn: covariance reg_covar * I
            reg = float(model.reg_covar)
            cov = {
                "full": np.repeat(np.eye(n_features)[None] * reg, K, axis=0),
                "tied": np.eye(n_features) * reg,
                "diag": np.full((K, n_features), reg),
                "spherical": np.full(K, reg),
            }[ct]
            if model.has_prior:
                # the prior's mode, what the MAP M-step gives a component without points
                cov = model._estimate_map(model._zero_stats(n_features), means.mean(axis=0))[2]
            base = GMMParams(np.full(K, 1.0 / K), means, cov, precisions_cholesky_from_covariances(cov, ct))
            weights = np.full(K, (1.0 + 10 * np.finfo(np.float64).eps) / n_samples)
        return _with_inits(base, weights, inits, ct), model

    def _n_parameters(self) -> int:
        K, D = np.shape(self.means_)
        cov = {"full": K * D * (D + 1) / 2.0, "diag": K * D, "tied": D * (D + 1) / 2.0, "spherical": K}[
            self.covariance_type
        ]
        return int(cov + D * K + K - 1)

    def _n_rows(self, X: Any) -> int:
        shape = getattr(X, "shape", None)
        return int(shape[0]) if shape is not None else int(as_dask_array(X).shape[0])

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = self._n_rows(X)
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        n = self._n_rows(X)
        return -2 * self.score(X) * n + 2 * self._n_parameters()


def _with_inits(base: GMMParams, weights: np.ndarray, inits: Any, covariance_type: str) -> GMMParams:
    """``base`` (with ``weights``) where the user's ``weights_init``, ``means_init``, ``precisions_init`` replace it."""
    weights_init, means_init, prec_chol_init = inits
    weights = weights if weights_init is None else weights_init
    means = base.means if means_init is None else means_init
    if prec_chol_init is None:
        cov, prec_chol = base.covariances, base.precisions_cholesky
    else:
        prec_chol = prec_chol_init
        cov = covariances_from_precisions_cholesky(prec_chol, covariance_type)
    return GMMParams(weights, means, cov, prec_chol)


def _stored_prior(model: Any, checkpointing: Checkpointing) -> Any:
    """``model`` with the unset prior fields taken from the checkpoint the fit will resume, if any.

    Only fields left unset are taken: a value the user gives must match the
    checkpoint's, which :func:`dask_em.fit_em` checks. None when there is
    nothing to resume or the checkpoint holds no such values. (Used by
    :class:`BayesianGaussianMixture` too.)
    """
    unset = [name for name in PRIOR_FIELDS if getattr(model, name) is None]
    changes = resumable_config(checkpointing.path, checkpointing.resume, unset)
    if not changes:
        return None
    try:
        filled = dataclasses.replace(model, **changes)
    except ValueError:
        return None  # not a prior this model can take; fit_em reports the difference
    return None if filled.prior_needs_data else filled
