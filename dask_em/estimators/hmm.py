"""Hidden Markov models with hmmlearn's vocabulary, fitted by Baum-Welch on Dask.

Sequences are partitioned across workers (whole sequences per partition,
balanced by total length); every EM iteration is one pass over them.
Each estimator here is the emission-specific face of
:class:`~dask_em.estimators._hmm_base._BaseHMM`: its model class, its
parameters, and how they are initialised and checked.

Initialisation and restarts
---------------------------
EM for HMMs has local optima. By default (``n_init=4``) the estimators draw
``n_init`` initial parameter sets and run ``n_init_iter`` short EM
iterations on all of them *in the same passes over the data* (one stacked
E-step per partition evaluates every set), then continue the set with the
highest log-likelihood to convergence. Parameters given through
``*_init`` are the same in every set; when every parameter is given there
is a single run.

Per-parameter initialisation: Gaussian means by k-means (the library's
out-of-core k-means for the first set, k-means++ plus Lloyd on a sample for
the others), covariances from the sample covariance plus ``min_covar``
(as hmmlearn), symbol probabilities from the data frequencies of a sample
with random multiplicative noise, Poisson rates drawn from a gamma
distribution matching the sample mean and variance (as hmmlearn), mixture
weights uniform and mixture means spread around their state's k-means
centre, start probabilities uniform-Dirichlet and transition rows a mix of
the identity and a uniform-Dirichlet draw.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidDataError
from ..models._gaussian import covariance_shape, from_tied, n_covariance_parameters
from ..models.hmm import CategoricalHMMModel, GaussianHMMModel, GMMHMMModel, PoissonHMMModel
from ..models.hmm.base import _prior
from ..models.hmm.workers import part_max
from ..models.kmeans import kmeans_in_memory
from ..data.sequences import SequenceBlocks, sequence_blocks
from ._base import store_params
from ._hmm_base import _BaseHMM, _common_doc, _normalize_rows


# ---------------------------------------------------------------------------
# Gaussian initial values, shared by GaussianHMM and GMMHMM
# ---------------------------------------------------------------------------


def _finite_rows(sample: np.ndarray) -> np.ndarray:
    """The sample's rows without NaN or inf (the first pass counts those and raises the model's message)."""
    X = np.asarray(sample, dtype=np.float64)
    return X[np.isfinite(X).all(axis=1)]


def _state_means(est: _BaseHMM, X: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any,
                 run: int) -> np.ndarray:
    """One centre per state: the library's k-means over all blocks for the first run, on the sample otherwise."""
    K = est.n_components
    if run == 0:
        try:
            from ..init import kmeans_centers

            centres = kmeans_centers(
                blocks.values_blocks(), K, init="k-means++", max_iter=20, rng=rng, client=client,
                split_every=est.split_every,
            )
            if centres is not None:
                return centres
        except (ImportError, InvalidDataError):  # k-means unavailable, or NaN in the data
            pass
    if len(X) < K:
        raise InvalidDataError(f"n_samples={len(X)} should be >= n_components={K}; decrease n_components")
    return kmeans_in_memory(X, K, rng, n_iter=20)


def _sample_covariance(X: np.ndarray, min_covar: float) -> np.ndarray:
    """The sample covariance plus ``min_covar`` on its diagonal (hmmlearn's initial covariance)."""
    return np.atleast_2d(np.cov(X.T)) + min_covar * np.eye(X.shape[1])


def _covariance_shape(covariance_type: str, K: int, D: int, M: int | None = None) -> tuple[int, ...]:
    """Compact shape of the covariances; with ``M`` mixture components per state, each state's as a mixture's."""
    if M is None:
        return covariance_shape(covariance_type, K, D)
    return (K, *covariance_shape(covariance_type, M, D))


def _initial_covars(cv: np.ndarray, covariance_type: str, K: int, M: int | None = None) -> np.ndarray:
    """The covariance ``cv`` in the compact shape of ``covariance_type`` (per state's mixture with ``M``)."""
    if M is None:
        return from_tied(cv, covariance_type, K)
    return np.broadcast_to(from_tied(cv, covariance_type, M), _covariance_shape(covariance_type, K, cv.shape[0], M)).copy()


class GaussianHMM(_BaseHMM):
    """Hidden Markov model with Gaussian emissions.

    Parameters
    ----------
    covariance_type : {"diag", "spherical", "full", "tied"}, default="diag"
        Form of the state covariances.
    min_covar : float, default=1e-3
        Added to the diagonal of the initial covariances (as hmmlearn).
    means_prior, means_weight, covars_prior, covars_weight : float or array-like
        hmmlearn's priors (defaults 0, 0, 1e-2, 1).
    means_init, covars_init : array-like, optional
        Initial means (n_components, n_features) and covariances in the
        shape of ``covariance_type`` (see ``covars_``).
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_ : ndarray of shape (n_components,)
    transmat_ : ndarray of shape (n_components, n_components)
    means_ : ndarray of shape (n_components, n_features)
    covars_ : ndarray of shape (n_components, n_features, n_features)
        Full matrices whatever ``covariance_type``, as hmmlearn returns them.
    converged_, n_iter_, history_, lower_bound_
        Convergence information (total log-likelihoods).
    """

    _model_class = GaussianHMMModel
    _emission_params = ("means", "covars")
    _letters = {"s": "startprob", "t": "transmat", "m": "means", "c": "covars"}

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: str = "diag",
        min_covar: float = 1e-3,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        means_prior: Any = 0.0,
        means_weight: Any = 0.0,
        covars_prior: Any = 1e-2,
        covars_weight: Any = 1.0,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        means_init: Any = None,
        covars_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        store_params(self, locals())

    def _model_options(self, n_features: int) -> dict[str, Any]:
        return dict(
            covariance_type=self.covariance_type,
            means_prior=_prior(self.means_prior),
            means_weight=_prior(self.means_weight),
            covars_prior=_prior(self.covars_prior),
            covars_weight=_prior(self.covars_weight),
        )

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        K, D = self.n_components, n_features
        if "means" in given and given["means"].shape != (K, D):
            raise InvalidDataError(
                f"X has {D} features but means_init has shape {given['means'].shape}; expected ({K}, {D})"
            )
        if "covars" in given:
            given["covars"] = self._compact_covars(given["covars"], D)

    def _compact_covars(self, covars: np.ndarray, D: int) -> np.ndarray:
        """Covariances in the compact shape of ``covariance_type`` (accepts the full form)."""
        K, ct = self.n_components, self.covariance_type
        covars = np.asarray(covars, dtype=np.float64)
        compact = _covariance_shape(ct, K, D)
        if covars.shape == compact:
            return covars
        if ct == "spherical" and covars.size == K:
            # hmmlearn accepts one variance per state in any shape, e.g. (K, 1) or (K, 1, 1)
            return covars.reshape(K)
        if covars.shape == (K, D, D):
            if ct == "diag":
                return np.array([np.diag(c) for c in covars])
            if ct == "spherical":
                return covars[:, 0, 0].copy()
            if ct == "tied":
                return covars[0].copy()
        raise InvalidDataError(
            f"covariances of shape {covars.shape} do not fit covariance_type={ct!r} with "
            f"{K} components and {D} features; expected {compact}"
        )

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        X = _finite_rows(sample)
        out: dict[str, np.ndarray] = {}
        if "means" not in given:
            out["means"] = _state_means(self, X, rng, blocks, client, run)
        if "covars" not in given:
            out["covars"] = _initial_covars(_sample_covariance(X, self.min_covar), self.covariance_type, self.n_components)
        return out

    def _emission_scalars(self) -> dict[str, int]:
        K, D = self.n_components, int(self.n_features)
        return {"means": K * D, "covars": n_covariance_parameters(self.covariance_type, K, D)}

    def _set_emission_attributes(self, params: Any, model: GaussianHMMModel) -> None:
        self.means_ = np.asarray(params.means)
        self.covars_ = model.full_covars(params.covars, self.means_.shape[1])

    def _current_emission(self, model: GaussianHMMModel) -> dict[str, np.ndarray]:
        means = np.asarray(self.means_, float)
        return {"means": means, "covars": self._compact_covars(self.covars_, means.shape[1])}


class GMMHMM(_BaseHMM):
    """Hidden Markov model with Gaussian-mixture emissions (hmmlearn's ``GMMHMM``).

    Parameters
    ----------
    n_mix : int, default=1
        Number of Gaussian components of each state's mixture.
    covariance_type : {"diag", "spherical", "full", "tied"}, default="diag"
        Form of the component covariances; "tied": all components of a
        state share one full matrix (as in hmmlearn).
    min_covar : float, default=1e-3
        Added to the diagonal of the initial covariances (as hmmlearn).
    weights_prior : float or array-like, default=1.0
        Dirichlet concentration of each state's mixture weights.
    means_prior, means_weight : float or array-like, default=0.0
        Mean and precision of the normal prior of the means.
    covars_prior, covars_weight : float or array-like, optional
        hmmlearn's inverse-gamma (spherical, diag) or inverse-Wishart
        (full, tied) prior; None takes hmmlearn's defaults for the type.
    weights_init : array-like of shape (n_components, n_mix), optional
    means_init : array-like of shape (n_components, n_mix, n_features), optional
    covars_init : array-like, optional
        In the shape of ``covars_``.
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_, transmat_
    weights_ : ndarray of shape (n_components, n_mix)
    means_ : ndarray of shape (n_components, n_mix, n_features)
    covars_ : ndarray
        In the compact shape of ``covariance_type``, as hmmlearn (see
        :class:`dask_em.models.hmm.GMMHMMParams`).
    converged_, n_iter_, history_, lower_bound_
    """

    _model_class = GMMHMMModel
    _emission_params = ("weights", "means", "covars")
    _letters = {"s": "startprob", "t": "transmat", "w": "weights", "m": "means", "c": "covars"}
    _emission_shape_doc = "(n_components, n_mix, n_features)"

    def __init__(
        self,
        n_components: int = 1,
        n_mix: int = 1,
        covariance_type: str = "diag",
        min_covar: float = 1e-3,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        weights_prior: Any = 1.0,
        means_prior: Any = 0.0,
        means_weight: Any = 0.0,
        covars_prior: Any = None,
        covars_weight: Any = None,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        weights_init: Any = None,
        means_init: Any = None,
        covars_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        store_params(self, locals())

    @property
    def _emission_attribute(self) -> str:
        return "means_"

    def _model_options(self, n_features: int) -> dict[str, Any]:
        return dict(
            n_mix=self.n_mix,
            covariance_type=self.covariance_type,
            weights_prior=_prior(self.weights_prior),
            means_prior=_prior(self.means_prior),
            means_weight=_prior(self.means_weight),
            covars_prior=None if self.covars_prior is None else _prior(self.covars_prior),
            covars_weight=None if self.covars_weight is None else _prior(self.covars_weight),
        )

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        K, M, D = self.n_components, self.n_mix, n_features
        shapes = {"weights": (K, M), "means": (K, M, D), "covars": _covariance_shape(self.covariance_type, K, D, M)}
        for name, shape in shapes.items():
            if name in given and given[name].shape != shape:
                raise InvalidDataError(
                    f"{name}_init must have shape {shape} (n_components={K}, n_mix={M}, {D} features, "
                    f"covariance_type={self.covariance_type!r}), got shape {given[name].shape}"
                )
        if "weights" in given and not np.allclose(given["weights"].sum(axis=1), 1):
            raise ValueError(f"weights_init must have rows summing to 1, got row sums {given['weights'].sum(axis=1)}")

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        K, M = self.n_components, self.n_mix
        X = _finite_rows(sample)
        cv = _sample_covariance(X, self.min_covar)
        out: dict[str, np.ndarray] = {"weights": np.full((K, M), 1.0 / M)}
        if "means" not in given:
            centres = _state_means(self, X, rng, blocks, client, run)
            # components spread around their state's centre, by a fraction of the data's spread
            spread = rng.multivariate_normal(np.zeros(X.shape[1]), 0.1 * cv, size=(K, M))
            out["means"] = centres[:, None, :] + (spread if M > 1 else 0.0)
        if "covars" not in given:
            out["covars"] = _initial_covars(cv, self.covariance_type, K, M)
        return out

    def _emission_scalars(self) -> dict[str, int]:
        K, M, D = self.n_components, int(self.n_mix), int(self.n_features)
        return {"weights": M - 1, "means": K * M * D,
                "covars": K * n_covariance_parameters(self.covariance_type, M, D)}


class CategoricalHMM(_BaseHMM):
    """Hidden Markov model with categorical emissions (symbols ``0 .. n_features - 1``).

    ``X`` holds one column of integer symbols (shape (n_samples, 1) or
    (n_samples,)).

    Parameters
    ----------
    n_features : int, optional
        Number of symbols; inferred from ``emissionprob_init`` or the data.
    emissionprob_prior : float or array-like, default=1.0
        Dirichlet concentration of each row of ``emissionprob_``.
    emissionprob_init : array-like of shape (n_components, n_features), optional
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_, transmat_
    emissionprob_ : ndarray of shape (n_components, n_features)
    converged_, n_iter_, history_, lower_bound_
    """

    _model_class = CategoricalHMMModel
    _emission_params = ("emissionprob",)
    _letters = {"s": "startprob", "t": "transmat", "e": "emissionprob"}
    _values_dtype = None

    def __init__(
        self,
        n_components: int = 1,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        emissionprob_prior: Any = 1.0,
        n_features: int | None = None,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        emissionprob_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        store_params(self, locals())

    def _n_features_of(self, blocks: SequenceBlocks) -> int:
        if blocks.n_features != 1:
            raise InvalidDataError(
                f"CategoricalHMM expects one column of integer symbols, got {blocks.n_features} columns"
            )
        if self.emissionprob_init is not None:
            return int(np.asarray(self.emissionprob_init).shape[1])
        if self.n_features is not None:
            return int(self.n_features)
        if getattr(self, "emissionprob_", None) is not None and "emissionprob" not in self._names(self.init_params, "init_params"):
            return int(np.asarray(self.emissionprob_).shape[1])
        # the largest symbol, read from the data (one small pass over the partitions)
        maxima = blocks.compute(*blocks.map_parts(part_max))
        top = max(float(m) for m in maxima)
        if not np.isfinite(top) or top < 0:
            raise InvalidDataError("cannot infer n_features: the symbols are not non-negative numbers; give n_features")
        return int(math.floor(top)) + 1

    def _model_options(self, n_features: int) -> dict[str, Any]:
        return dict(n_features=int(n_features), emissionprob_prior=_prior(self.emissionprob_prior))

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        if "emissionprob" in given and given["emissionprob"].shape != (self.n_components, n_features):
            raise ValueError(
                f"emissionprob_init must have shape ({self.n_components}, {n_features}), got {given['emissionprob'].shape}"
            )

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        M = model.n_features
        x = np.asarray(sample).ravel()
        x = x[np.isfinite(x) & (x >= 0) & (x < M) & (x == np.floor(x))].astype(np.int64)
        freq = np.bincount(x, minlength=M).astype(float) + 1.0
        freq /= freq.sum()
        # data frequencies, perturbed so that the states differ
        return {"emissionprob": _normalize_rows(freq * rng.uniform(0.25, 1.75, size=(self.n_components, M)))}

    def _emission_scalars(self) -> dict[str, int]:
        return {"emissionprob": self.n_components * (int(self.n_features) - 1)}

    def _check_input(self, values: np.ndarray) -> None:
        if values.shape[1] != 1:
            raise InvalidDataError(f"CategoricalHMM expects one column of integer symbols, got {values.shape[1]} columns")

    def _lazy_blocks(self, X: Any, lengths: Any) -> SequenceBlocks:
        blocks = sequence_blocks(
            X, lengths, client=None, n_partitions=self.n_partitions, persist=False,
            segment_length=getattr(self, "segment_length", None),
        )
        self._check_input(np.empty((0, blocks.n_features)))
        return blocks


class PoissonHMM(_BaseHMM):
    """Hidden Markov model with independent Poisson counts per feature.

    Parameters
    ----------
    lambdas_prior, lambdas_weight : float or array-like, default=0.0
        hmmlearn's gamma prior on the rates.
    lambdas_init : array-like of shape (n_components, n_features), optional
    (see the module docstring for the others)

    Attributes
    ----------
    startprob_, transmat_
    lambdas_ : ndarray of shape (n_components, n_features)
    converged_, n_iter_, history_, lower_bound_
    """

    _model_class = PoissonHMMModel
    _emission_params = ("lambdas",)
    _letters = {"s": "startprob", "t": "transmat", "l": "lambdas"}

    def __init__(
        self,
        n_components: int = 1,
        startprob_prior: Any = 1.0,
        transmat_prior: Any = 1.0,
        lambdas_prior: Any = 0.0,
        lambdas_weight: Any = 0.0,
        algorithm: str = "viterbi",
        implementation: str = "log",
        random_state: Any = None,
        max_iter: int = 100,
        tol: float = 1e-2,
        verbose: bool = False,
        params: Any = None,
        init_params: Any = None,
        startprob_init: Any = None,
        transmat_init: Any = None,
        lambdas_init: Any = None,
        n_init: int = 4,
        n_init_iter: int = 5,
        split_every: int = 8,
        n_partitions: int | None = None,
        n_iter: int | None = None,
        accelerate: str | None = None,
        segment_length: int | None = None,
    ) -> None:
        store_params(self, locals())

    def _model_options(self, n_features: int) -> dict[str, Any]:
        return dict(lambdas_prior=_prior(self.lambdas_prior), lambdas_weight=_prior(self.lambdas_weight))

    def _check_given(self, model: Any, given: dict[str, np.ndarray], n_features: int) -> None:
        super()._check_given(model, given, n_features)
        if "lambdas" in given and given["lambdas"].shape != (self.n_components, n_features):
            raise InvalidDataError(
                f"X has {n_features} features but lambdas_init has shape {given['lambdas'].shape}; "
                f"expected ({self.n_components}, {n_features})"
            )

    def _emission_init(self, model: Any, sample: np.ndarray, rng: np.random.Generator, blocks: SequenceBlocks, client: Any, run: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        X = _finite_rows(sample)
        mean = np.maximum(X.mean(axis=0), 1e-3) if len(X) else np.ones(blocks.n_features)
        var = np.maximum(X.var(axis=0), 1e-3) if len(X) else np.ones(blocks.n_features)
        return {"lambdas": rng.gamma(shape=mean**2 / var, scale=var / mean, size=(self.n_components, len(mean)))}

    def _emission_scalars(self) -> dict[str, int]:
        return {"lambdas": self.n_components * int(self.n_features)}


for _cls in (GaussianHMM, GMMHMM, CategoricalHMM, PoissonHMM):
    _cls.__doc__ = (_cls.__doc__ or "") + "\n    Common parameters\n    -----------------" + _common_doc()

__all__ = ["CategoricalHMM", "GMMHMM", "GaussianHMM", "PoissonHMM"]
