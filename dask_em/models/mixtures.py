"""Mixtures of Poisson, Bernoulli and categorical (multinomial) distributions.

Each component has independent per-feature parameters; the E-step computes
responsibilities and the statistics ``sum_resp (K,)`` and ``sum_x (K, D)``
(responsibility-weighted sums of the rows), from which every family's
M-step is closed form. Values outside a family's support are counted in the
E-step (``n_invalid``) and reported after the first pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
from scipy.special import gammaln, logsumexp

from ..errors import InvalidDataError
from ..contract import Stats, split_weights, with_log_prior

#: Floor on probabilities and rates inside logarithms: a zero times log(0)
#: stays zero, and a positive count under a zero rate is very unlikely
#: instead of -inf. Use ``alpha`` to avoid zeros in the first place.
_LOG_FLOOR = np.log(np.finfo(np.float64).tiny)
_EPS = 10 * np.finfo(np.float64).eps
#: Initialisations of the discrete mixtures (see ``_DiscreteMixture.init_params``).
INITS = ("k-means++", "random", "random_from_data")
#: Lloyd iterations on the sample after k-means++ seeding.
INIT_LLOYD_ITERATIONS = 10


def _safe_log(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(a), _LOG_FLOOR)


@dataclasses.dataclass(frozen=True)
class PoissonMixtureParams:
    """weights (K,), lambdas (K, D): per-component, per-feature Poisson rates."""

    weights: np.ndarray
    lambdas: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"weights": "simplex", "lambdas": "positive"}


@dataclasses.dataclass(frozen=True)
class BernoulliMixtureParams:
    """weights (K,), probabilities (K, D): per-component probability of a 1."""

    weights: np.ndarray
    probabilities: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"weights": "simplex", "probabilities": "unit"}


@dataclasses.dataclass(frozen=True)
class CategoricalMixtureParams:
    """weights (K,), probabilities (K, D) with rows summing to 1, mean_total (): mean row total."""

    weights: np.ndarray
    probabilities: np.ndarray
    mean_total: np.ndarray = dataclasses.field(default_factory=lambda: np.array(1.0))

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"weights": "simplex", "probabilities": "simplex", "mean_total": "fixed"}


@dataclasses.dataclass(frozen=True)
class _DiscreteMixture:
    """What the three families share: responsibilities, sums, weights.

    Parameters
    ----------
    n_components : int
    alpha : float
        Pseudo-count of the family's M-step (each family's docstring gives it).
    init : {"k-means++", "random", "random_from_data"}
    weight_concentration : float
        Dirichlet concentration on the weights; 1 is flat (maximum likelihood).
    """

    n_components: int = 1
    alpha: float = 1e-10
    init: str = "k-means++"
    weight_concentration: float = 1.0

    params_class: ClassVar[type]
    component_name: ClassVar[str]

    # -- family-specific pieces ------------------------------------------
    def component_log_prob(self, X: np.ndarray, params: Any) -> np.ndarray:
        """log p(x | component k) for every row and component, shape (n, K)."""
        raise NotImplementedError

    def invalid_mask(self, X: np.ndarray) -> np.ndarray:
        """True where a value is outside the family's support."""
        raise NotImplementedError

    def new_components(self, sum_x: np.ndarray, sum_resp: np.ndarray) -> np.ndarray:
        """Component parameters from the weighted sums (the M-step)."""
        raise NotImplementedError

    def describe_invalid(self, n: int) -> str:
        """The message for ``n`` values outside the support."""
        raise NotImplementedError

    def component_log_prior(self, component: np.ndarray) -> float:
        """Log density, up to a constant, of the prior whose mode ``alpha`` gives."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    def _make_params(self, weights: np.ndarray, component: np.ndarray, stats: Stats | None) -> Any:
        return self.params_class(weights, component)

    def _clean(self, block: Any) -> tuple[np.ndarray, int]:
        X = np.asarray(block, dtype=np.float64)
        bad = self.invalid_mask(X)
        n_bad = int(bad.sum())
        if n_bad:
            X = np.where(bad, 0.0, X)
        return X, n_bad

    def weighted_log_prob(self, X: np.ndarray, params: Any) -> np.ndarray:
        """log weight_k + log p(x | k), shape (n, K)."""
        return self.component_log_prob(X, params) + _safe_log(params.weights)

    def seeding_rows(self, X: np.ndarray) -> np.ndarray:
        """The rows k-means++ seeding measures distances between (the rows themselves)."""
        return X

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> Any:
        """Initial parameters from an in-memory sample of rows.

        - "k-means++" (default): k-means++ centres on the sample (on row
          proportions for the categorical mixture), a few Lloyd iterations
          on it, then every row wholly to its nearest centre and one M-step.
          Components start apart, so EM does not have to break the symmetry
          of near-identical components, where it crawls;
        - "random": random responsibilities for every row, then one M-step
          (components start near the overall mean);
        - "random_from_data": random rows as centres.
        """
        X, _ = self._clean(sample)
        K = self.n_components
        if self.init == "k-means++":
            from .kmeans import kmeans_in_memory, nearest_center

            Z = self.seeding_rows(X)
            if len(Z) < K:
                raise ValueError(f"the sample has {len(Z)} rows, fewer than n_components={K}; give more data")
            labels = nearest_center(Z, kmeans_in_memory(Z, K, rng, INIT_LLOYD_ITERATIONS))[0]
            resp = np.zeros((len(X), K))
            resp[np.arange(len(X)), labels] = 1.0
        elif self.init == "random":
            resp = rng.uniform(size=(len(X), K))
            resp /= resp.sum(axis=1, keepdims=True)
        elif self.init == "random_from_data":
            # each chosen row pulls half of the weight of its component
            resp = np.full((len(X), K), 0.5 / K)
            chosen = rng.choice(len(X), size=K, replace=len(X) < K)
            resp[chosen] = 0.0
            resp[chosen, np.arange(K)] = 0.5 * len(X)
        else:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        sum_resp = resp.sum(axis=0)
        stats = {"n": np.array(float(len(X))), "sum_resp": sum_resp, "sum_x": resp.T @ X}
        return self.m_step(stats, None)

    def e_step(self, block: Any, params: Any) -> Stats:
        """Statistics of one block.

        Returns ``n`` (), ``loglik`` (), ``sum_resp`` (K,) = sum of the
        responsibilities, ``sum_x`` (K, D) = responsibility-weighted sum of
        the rows, and ``n_invalid`` () = values outside the support. A
        :class:`~dask_em.contract.Weighted` block weighs every row's
        contribution (``n`` is then the sum of the weights).
        """
        rows, w = split_weights(block)
        X, n_bad = self._clean(rows)
        weighted = self.weighted_log_prob(X, params)
        log_norm = logsumexp(weighted, axis=1)
        resp = np.exp(weighted - log_norm[:, None])
        if w is not None:  # every row's contribution times its weight
            resp *= w[:, None]
            return {
                "n": np.array(float(w.sum())),
                "loglik": np.array(float(w @ log_norm)),
                "sum_resp": resp.sum(axis=0),
                "sum_x": resp.T @ X,
                "n_invalid": np.array(n_bad),
            }
        return {
            "n": np.array(float(len(X))),
            "loglik": np.array(log_norm.sum()),
            "sum_resp": resp.sum(axis=0),
            "sum_x": resp.T @ X,
            "n_invalid": np.array(n_bad),
        }

    def m_step(self, stats: Stats, params: Any) -> Any:
        """Weights and component parameters; ``10 * eps`` keeps empty components finite.

        With ``weight_concentration`` a != 1 the weights are the mode of
        their Dirichlet posterior, ``max(N_k + a - 1, 0)`` normalised.
        """
        nk = stats["sum_resp"] + _EPS
        counts = nk if self.weight_concentration == 1.0 else np.maximum(nk + self.weight_concentration - 1.0, 0.0) + _EPS
        return self._make_params(counts / counts.sum(), self.new_components(stats["sum_x"], nk), stats)

    @property
    def has_prior(self) -> bool:
        """Whether the pseudo-counts are large enough to count as a prior in the objective."""
        return self.weight_concentration != 1.0 or self.alpha >= 1e-6

    def log_prior(self, params: Any) -> float:
        """Log density, up to a constant, of the Dirichlet on the weights and the components' prior."""
        log_w = float(np.sum(_safe_log(params.weights)))
        return (self.weight_concentration - 1.0) * log_w + self.component_log_prior(getattr(params, self.component_name))

    def finish_stats(self, stats: Stats, params: Any) -> Stats:
        """With a prior, ``loglik`` becomes the log posterior, the objective MAP-EM increases.

        The data's log-likelihood alone is kept under ``"loglik_data"``.
        """
        if not self.has_prior or params is None:
            return stats
        return with_log_prior(stats, self.log_prior(params))

    # -- per-row outputs (also used lazily by the estimators) ---------------
    def _checked_rows(self, block: np.ndarray) -> np.ndarray:
        X, n_bad = self._clean(block)
        if n_bad:
            raise InvalidDataError(self.describe_invalid(n_bad))
        return X

    def predict_proba_block(self, block: np.ndarray, params: Any) -> np.ndarray:
        """Responsibilities of the rows of a block, shape (n, K)."""
        weighted = self.weighted_log_prob(self._checked_rows(block), params)
        return np.exp(weighted - logsumexp(weighted, axis=1, keepdims=True))

    def score_samples_block(self, block: np.ndarray, params: Any) -> np.ndarray:
        """Log-likelihood of each row, shape (n,)."""
        return logsumexp(self.weighted_log_prob(self._checked_rows(block), params), axis=1)

    def n_parameters(self, n_features: int) -> int:
        """Free parameters (for BIC and AIC)."""
        return self.n_components * n_features + self.n_components - 1


def _not_counts(X: np.ndarray) -> np.ndarray:
    """True where a value is not a non-negative integer count (the Poisson and categorical support)."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(X) | (X < 0) | (X != np.floor(X))


def _count_invalid_message(n: int, what: str, hint: str) -> str:
    return f"{n} values are outside the support of the {what}; {hint}"


@dataclasses.dataclass(frozen=True)
class PoissonMixtureModel(_DiscreteMixture):
    """Mixture of products of independent Poisson distributions (count data).

    The pseudo-count ``alpha`` keeps rates positive:
    ``lambdas = (sum_x + alpha) / (sum_resp + alpha)``.
    """

    params_class: ClassVar[type] = PoissonMixtureParams
    component_name: ClassVar[str] = "lambdas"

    def component_log_prob(self, X: np.ndarray, params: PoissonMixtureParams) -> np.ndarray:
        lam = params.lambdas
        return X @ _safe_log(lam).T - lam.sum(axis=1) - gammaln(X + 1.0).sum(axis=1, keepdims=True)

    invalid_mask = staticmethod(_not_counts)

    def new_components(self, sum_x: np.ndarray, nk: np.ndarray) -> np.ndarray:
        return (sum_x + self.alpha) / (nk[:, None] + self.alpha)

    def component_log_prior(self, component: np.ndarray) -> float:
        # Gamma(shape alpha + 1, rate alpha) on every rate: its M-step is new_components
        return float(self.alpha * np.sum(_safe_log(component) - component))

    def describe_invalid(self, n: int) -> str:
        return _count_invalid_message(
            n, "Poisson mixture", "counts must be non-negative integers (no NaN or inf); round or drop them"
        )


@dataclasses.dataclass(frozen=True)
class BernoulliMixtureModel(_DiscreteMixture):
    """Mixture of products of independent Bernoulli distributions (binary data).

    The pseudo-count ``alpha`` keeps probabilities inside (0, 1):
    ``probabilities = (sum_x + alpha) / (sum_resp + 2 alpha)``.
    """

    params_class: ClassVar[type] = BernoulliMixtureParams
    component_name: ClassVar[str] = "probabilities"

    def component_log_prob(self, X: np.ndarray, params: BernoulliMixtureParams) -> np.ndarray:
        p = params.probabilities
        log_p, log_q = _safe_log(p), _safe_log(1.0 - p)
        return X @ (log_p - log_q).T + log_q.sum(axis=1)

    def invalid_mask(self, X: np.ndarray) -> np.ndarray:
        return (X != 0) & (X != 1)

    def new_components(self, sum_x: np.ndarray, nk: np.ndarray) -> np.ndarray:
        return (sum_x + self.alpha) / (nk[:, None] + 2 * self.alpha)

    def component_log_prior(self, component: np.ndarray) -> float:
        # Beta(alpha + 1, alpha + 1) on every probability
        return float(self.alpha * np.sum(_safe_log(component) + _safe_log(1.0 - component)))

    def describe_invalid(self, n: int) -> str:
        return _count_invalid_message(
            n, "Bernoulli mixture", "values must be 0 or 1 (no NaN); binarise the data first, e.g. X > 0"
        )


@dataclasses.dataclass(frozen=True)
class CategoricalMixtureModel(_DiscreteMixture):
    """Mixture of multinomials: rows are counts of categories (e.g. words in documents).

    ``log p(x | k) = log (N! / prod x_d!) + sum_d x_d log probabilities[k, d]``
    with ``N`` the row total. The pseudo-count ``alpha`` is added to every
    category of every component.
    """

    params_class: ClassVar[type] = CategoricalMixtureParams
    component_name: ClassVar[str] = "probabilities"

    def component_log_prob(self, X: np.ndarray, params: CategoricalMixtureParams) -> np.ndarray:
        coef = gammaln(X.sum(axis=1) + 1.0) - gammaln(X + 1.0).sum(axis=1)
        return X @ _safe_log(params.probabilities).T + coef[:, None]

    invalid_mask = staticmethod(_not_counts)

    def new_components(self, sum_x: np.ndarray, nk: np.ndarray) -> np.ndarray:
        counts = sum_x + self.alpha
        return counts / counts.sum(axis=1, keepdims=True)

    def component_log_prior(self, component: np.ndarray) -> float:
        # Dirichlet(alpha + 1) on every component's category probabilities
        return float(self.alpha * np.sum(_safe_log(component)))

    def seeding_rows(self, X: np.ndarray) -> np.ndarray:
        """Row proportions: documents of different lengths but the same topic are close."""
        totals = X.sum(axis=1, keepdims=True)
        return X / np.maximum(totals, 1.0)

    def _make_params(self, weights: np.ndarray, component: np.ndarray, stats: Stats | None) -> Any:
        total = float(stats["sum_x"].sum() / stats["n"]) if stats is not None else 1.0
        return CategoricalMixtureParams(weights, component, np.array(total))

    def describe_invalid(self, n: int) -> str:
        return _count_invalid_message(
            n, "categorical (multinomial) mixture", "counts must be non-negative integers (no NaN or inf)"
        )

    def n_parameters(self, n_features: int) -> int:
        return self.n_components * (n_features - 1) + self.n_components - 1
