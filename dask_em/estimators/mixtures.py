"""Poisson, Bernoulli and categorical mixtures, scikit-learn style."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..models.mixtures import (
    INITS,
    BernoulliMixtureModel,
    CategoricalMixtureModel,
    PoissonMixtureModel,
    _DiscreteMixture,
)
from ..online import OnlineEM
from ._base import Checkpointing, EMEstimator, check_n_samples, map_rows, store_params
from ._online import PartialFitMixin


class _MixtureEstimator(PartialFitMixin, EMEstimator):
    """fit / predict / score for the discrete mixtures; subclasses name the component parameter."""

    _estimator_type = "density_estimator"
    _docs = {
        "weight_prior": """weight_concentration_prior : float, default=1.0
        Concentration of a symmetric Dirichlet prior on the weights (MAP-EM):
        weights are ``max(N_k + a - 1, 0)`` normalised, so a > 1 keeps small
        components alive and a < 1 prunes them. With a prior (a != 1 or
        ``alpha`` >= 1e-6) ``lower_bound_`` is the log posterior per row,
        which is what EM then increases; ``score`` stays the log-likelihood.""",
        "head": """n_components : int, default=1
    tol : float, default=1e-3
    max_iter : int, default=100
    n_init : int, default=1
        Restarts, sharing their passes (see ``PoissonMixture``).
    n_init_iter : int, default=5
    init_params : {"k-means++", "random", "random_from_data"}, default="k-means++"
        As ``PoissonMixture``'s (the categorical mixture seeds on row proportions).""",
    }

    _model_class: type[_DiscreteMixture]
    _component_attr: str  # fitted attribute of the component parameters, e.g. "lambdas_"
    _init_attr: str  # hyper-parameter with initial component parameters, e.g. "lambdas_init"

    _online_attr = "weights_"

    def _model(self) -> _DiscreteMixture:
        if int(self.n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {self.n_components}")
        if int(self.n_init) < 1:
            raise ValueError(f"n_init must be at least 1, got {self.n_init}")
        if not isinstance(self.n_init_iter, (int, np.integer)) or self.n_init_iter < 0:
            raise ValueError(f"n_init_iter must be an integer >= 0, got {self.n_init_iter!r}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")
        if self.init_params not in INITS:
            raise ValueError(f"init_params must be one of {INITS}, got {self.init_params!r}")
        if not self.weight_concentration_prior > 0:
            raise ValueError(f"weight_concentration_prior must be positive, got {self.weight_concentration_prior}")
        return self._model_class(
            n_components=int(self.n_components), alpha=float(self.alpha), init=self.init_params,
            weight_concentration=float(self.weight_concentration_prior),
        )

    def _initial_params(self, model: _DiscreteMixture, blocks: Any, rng: np.random.Generator, client: Any = None) -> Any:
        start = super()._initial_params(model, blocks, rng, client)
        weights = start.weights if self.weights_init is None else np.asarray(self.weights_init, float)
        component_init = getattr(self, self._init_attr)
        component = getattr(start, model.component_name) if component_init is None else np.asarray(component_init, float)
        K, D = model.n_components, int(blocks.array.shape[1])
        if weights.shape != (K,) or component.shape != (K, D):
            raise ValueError(
                f"weights_init must have shape ({K},) and {self._init_attr} ({K}, {D}); "
                f"got {weights.shape} and {component.shape}"
            )
        fields = {"weights": weights, model.component_name: component}
        if hasattr(start, "mean_total"):
            fields["mean_total"] = start.mean_total
        return model.params_class(**fields)

    _input_checks = None  # counts and binary data are taken as they are
    _not_converged = (
        "best of {self.n_init} initialisation(s) did not converge in {self.max_iter} iterations; "
        "increase max_iter or tol, or check the data"
    )

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, client: Any = None,
            checkpoint: str | None = None, checkpoint_every: int = 1, resume: bool | None = None,
            force: bool = False, online_passes: int = 0) -> Any:
        """Estimate the mixture by EM, keeping the best of ``n_init`` restarts.

        Restarts share their passes: all ``n_init`` starting points (each
        from a sample, no pass) run ``n_init_iter`` EM iterations as
        members of one stacked model, one pass per iteration for all of
        them; the member with the highest log-likelihood then continues
        alone to convergence. With ``n_init_iter >=
        max_iter`` every restart runs to the end in the shared passes.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Weight of every row in the EM iterations (default 1): an
            integer weight is the same as repeating the row. The weights
            travel with the data's blocks; the initialisation draws from
            the rows without their weights.
        $fit_options
            The shared restarts are redone only when no snapshot exists.
        online_passes : int, default=0
            Passes of online EM over shuffled blocks before batch EM (see
            :func:`dask_em.fit_em`).

        Returns
        -------
        self
        """
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         sample_weight=sample_weight, online_passes=online_passes)

    def _set_fitted(self, result: Any, model: _DiscreteMixture, blocks: Any) -> None:
        self._set_params(result.params, model)
        self.n_features_in_ = int(blocks.array.shape[1])

    @property
    def _params_class(self) -> type:  # type: ignore[override]
        return self._model_class.params_class

    def _set_params(self, params: Any, model: _DiscreteMixture) -> None:
        self.weights_ = np.asarray(params.weights)
        setattr(self, self._component_attr, np.asarray(getattr(params, model.component_name)))
        if hasattr(params, "mean_total"):
            self.mean_total_ = float(params.mean_total)

    # -- online EM ------------------------------------------------------------
    def _online_start(self, blocks: Any, rng: np.random.Generator, client: Any) -> tuple[Any, Any]:
        model = self._model()
        return model, self._initial_params(model, blocks, rng)

    def _online_set(self, state: OnlineEM) -> None:
        self._set_params(state.params, state.model)
        self.converged_ = False
        self.lower_bound_ = state.loglik
        self.n_features_in_ = int(np.shape(getattr(self, self._component_attr))[1])

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None, **fit_kwargs: Any) -> Any:
        """Fit, then return the most likely component of each row."""
        return self.fit(X, sample_weight=sample_weight, **fit_kwargs).predict(X)

    # -- per-row outputs ------------------------------------------------------
    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component for each row, shape (n_samples, n_components).

        Lazy (a Dask array) for Dask, Zarr or path input.
        """
        self._check_fitted("weights_")
        return map_rows(X, self._model().predict_proba_block, self._fitted_params, n_columns=int(self.n_components))

    def predict(self, X: Any) -> Any:
        """Most likely component of each row, shape (n_samples,)."""
        proba = self.predict_proba(X)
        return proba.argmax(axis=1)

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each row under the mixture, shape (n_samples,)."""
        self._check_fitted("weights_")
        return map_rows(X, self._model().score_samples_block, self._fitted_params, n_columns=None)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row."""
        values = self.score_samples(X)
        return float(values.mean().compute() if hasattr(values, "compute") else values.mean())

    def _n_parameters(self) -> int:
        return self._model().n_parameters(self.n_features_in_)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        values = self.score_samples(X)
        n = values.shape[0]
        total = float(values.sum().compute() if hasattr(values, "compute") else values.sum())
        return -2.0 * total + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        values = self.score_samples(X)
        total = float(values.sum().compute() if hasattr(values, "compute") else values.sum())
        return -2.0 * total + 2.0 * self._n_parameters()

    def _sample(self, n_samples: int, random_state: Any,
                draw: Callable[[np.random.Generator, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Rows drawn by ``draw(rng, labels)`` and their component labels, sorted by component."""
        self._check_fitted("weights_")
        check_n_samples(n_samples)
        rng = np.random.default_rng(random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        labels = np.repeat(np.arange(len(counts)), counts)
        return draw(rng, labels).astype(np.float64), labels


class PoissonMixture(_MixtureEstimator):
    """Mixture of independent per-feature Poisson distributions, for count data.

    Parameters
    ----------
    n_components : int, default=1
    tol : float, default=1e-3
        Convergence threshold on the mean log-likelihood per row.
    max_iter : int, default=100
    n_init : int, default=1
        Restarts; the one with the highest log-likelihood is kept (see
        ``fit``: they share their passes over the data).
    n_init_iter : int, default=5
        EM iterations every restart runs, in shared passes, before the best
        one continues alone.
    init_params : {"k-means++", "random", "random_from_data"}, default="k-means++"
        k-means++ centres on a sample refined by Lloyd iterations, then
        hard assignments (robust: the components start apart); random
        responsibilities; or random rows as component centres.
    alpha : float, default=1e-10
        Pseudo-count that keeps rates positive (a zero rate gives a count
        of one or more probability zero).
    $weight_prior
    weights_init : array-like of shape (n_components,), optional
    lambdas_init : array-like of shape (n_components, n_features), optional
    $seed_em_options

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    lambdas_ : ndarray of shape (n_components, n_features)
        Poisson rate of each feature in each component.
    n_iter_, converged_, lower_bound_, lower_bounds_, n_features_in_
    """

    _model_class = PoissonMixtureModel
    _component_attr = "lambdas_"
    _init_attr = "lambdas_init"

    def __init__(self, n_components: int = 1, *, tol: float = 1e-3, max_iter: int = 100, n_init: int = 1,
                 n_init_iter: int = 5, init_params: str = "k-means++", alpha: float = 1e-10,
                 weight_concentration_prior: float = 1.0, weights_init: Any = None, lambdas_init: Any = None,
                 random_state: Any = None, accelerate: str | None = None, verbose: bool = False) -> None:
        store_params(self, locals())

    def sample(self, n_samples: int = 1, random_state: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw counts and their component labels, sorted by component."""
        return self._sample(n_samples, random_state, lambda rng, labels: rng.poisson(self.lambdas_[labels]))


class _ProbabilityMixture(_MixtureEstimator):
    """What the Bernoulli and categorical mixtures share: component probabilities."""

    _component_attr = "probabilities_"
    _init_attr = "probabilities_init"

    def __init__(self, n_components: int = 1, *, tol: float = 1e-3, max_iter: int = 100, n_init: int = 1,
                 n_init_iter: int = 5, init_params: str = "k-means++", alpha: float = 1e-10,
                 weight_concentration_prior: float = 1.0, weights_init: Any = None, probabilities_init: Any = None,
                 random_state: Any = None, accelerate: str | None = None, verbose: bool = False) -> None:
        store_params(self, locals())


class BernoulliMixture(_ProbabilityMixture):
    """Mixture of independent per-feature Bernoulli distributions, for binary data.

    Parameters
    ----------
    $head
    alpha : float, default=1e-10
        Pseudo-count that keeps probabilities strictly between 0 and 1.
    $weight_prior
    weights_init : array-like of shape (n_components,), optional
    probabilities_init : array-like of shape (n_components, n_features), optional
    $seed_em_options

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    probabilities_ : ndarray of shape (n_components, n_features)
        Probability that each feature is 1 in each component.
    n_iter_, converged_, lower_bound_, lower_bounds_, n_features_in_
    """

    _model_class = BernoulliMixtureModel

    def sample(self, n_samples: int = 1, random_state: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw binary rows and their component labels, sorted by component."""
        return self._sample(
            n_samples, random_state,
            lambda rng, labels: rng.random((len(labels), self.n_features_in_)) < self.probabilities_[labels],
        )


class CategoricalMixture(_ProbabilityMixture):
    """Mixture of multinomials, for rows of category counts such as document-term matrices.

    Parameters
    ----------
    $head
    alpha : float, default=1e-10
        Pseudo-count added to every category (word) of every component, so
        that no word has probability zero.
    $weight_prior
    weights_init : array-like of shape (n_components,), optional
    probabilities_init : array-like of shape (n_components, n_features), optional
        Rows sum to 1.
    $seed_em_options

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    probabilities_ : ndarray of shape (n_components, n_features)
        Word (category) probabilities of each component; rows sum to 1.
    mean_total_ : float
        Mean row total (document length) of the training data, the default
        length of sampled rows.
    n_iter_, converged_, lower_bound_, lower_bounds_, n_features_in_
    """

    _model_class = CategoricalMixtureModel

    def sample(
        self, n_samples: int = 1, n_trials: int | None = None, random_state: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw count rows of total ``n_trials`` (default: the mean training row total)."""

        def draw(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
            trials = int(round(self.mean_total_)) if n_trials is None else int(n_trials)
            return rng.multinomial(trials, self.probabilities_[labels])

        return self._sample(n_samples, random_state, draw)
