"""``FactorAnalysis`` and ``PPCA``: linear-Gaussian latent factors by EM, out of core."""

from __future__ import annotations

from typing import Any

import numpy as np

from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin

from ..models.factor import FactorModel, FactorParams, score_block, transform_block
from ._base import SHARED_DOCS, Checkpointing, EMEstimator, map_rows, store_params, validate_in_memory


class _FactorBase(ClassNamePrefixFeaturesOutMixin, TransformerMixin, EMEstimator):
    """What factor analysis and probabilistic PCA share."""

    _noise = "diagonal"
    _nan_is_missing = True
    _docs = {
        "factor_options": """max_iter : int, default=1000
        Maximum number of EM iterations.
    tol : float, default=1e-8
        Stop when the mean log-likelihood per row changes by less than this.
    init_sample : int, default=10000
        Rows of the random sample whose principal components start the fit.
    random_state : int or Generator, optional
        Chooses the starting sample.
    """ + SHARED_DOCS["em_options"],
        "factor_fitted": SHARED_DOCS["n_passes_"] + """
    n_iter_ : int
    converged_ : bool
    lower_bound_ : float
        Log-likelihood per row of the parameters that entered the last iteration.
    lower_bounds_ : list of float
    n_features_in_ : int""",
    }

    def __init__(self, n_components: int = 2, *, max_iter: int = 1000, tol: float = 1e-8, init_sample: int = 10_000,
                 random_state: Any = None, accelerate: str | None = None, verbose: bool = False) -> None:
        store_params(self, locals())

    @property
    def _n_features_out(self) -> int:
        """Number of columns ``transform`` returns (``get_feature_names_out``)."""
        return int(self.components_.shape[0])

    def _model(self) -> FactorModel:
        return FactorModel(n_components=int(self.n_components), noise=self._noise)

    @property
    def _init_rows(self) -> int:  # type: ignore[override]
        return int(self.init_sample)

    def _fit_data(self, X: Any, model: FactorModel, client: Any, **inputs: Any) -> tuple[Any, FactorModel]:
        blocks, model = super()._fit_data(X, model, client)
        n_features = int(blocks.array.shape[1])
        if model.n_components > n_features:
            raise ValueError(
                f"n_components={model.n_components} must not exceed n_features={n_features}; choose fewer components"
            )
        return blocks, model

    def fit(self, X: Any, y: Any = None, *, client: Any = None, checkpoint: str | None = None,
            checkpoint_every: int = 1, resume: bool | None = None, force: bool = False) -> _FactorBase:
        """Fit the model to ``X`` by EM; NaN entries are treated as missing.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
            The data. NaN marks a missing value; infinite values are an error.
        y : ignored
        $fit_options

        Returns
        -------
        self
        """
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force))

    def _set_fitted(self, result: Any, model: FactorModel, blocks: Any) -> None:
        params = result.params
        self.mean_ = np.asarray(params.mean)
        self._set_loadings(np.asarray(params.loadings), np.asarray(params.noise_variance))
        self.n_features_in_ = int(blocks.array.shape[1])

    def _set_loadings(self, loadings: np.ndarray, noise: np.ndarray) -> None:
        self.components_ = loadings.T.copy()
        self.noise_variance_ = noise

    def _loadings(self) -> np.ndarray:
        """The loadings ``W`` (n_features, n_components) from the public attributes."""
        return np.ascontiguousarray(np.asarray(self.components_, np.float64).T)

    @property
    def _fitted_params(self) -> FactorParams:
        """The parameters from the public attributes (scikit-learn's names; see :attr:`EMEstimator._fitted_params`)."""
        self._check_fitted("mean_")
        loadings = self._loadings()
        noise = np.broadcast_to(np.asarray(self.noise_variance_, np.float64), (loadings.shape[0],)).copy()
        return FactorParams(np.asarray(self.mean_, np.float64), loadings, noise)

    def get_covariance(self) -> np.ndarray:
        """The model's covariance ``W W' + Psi``, of shape (n_features, n_features)."""
        params = self._fitted_params
        return params.loadings @ params.loadings.T + np.diag(params.noise_variance)

    def transform(self, X: Any) -> Any:
        """Posterior means of the latent factors, ``E[z | x]``, using each row's observed entries.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples, n_components)
            Lazy for Dask, Zarr or path input; zero for rows with nothing observed.
        """
        params = self._fitted_params
        X = validate_in_memory(self, X, reset=False, ensure_all_finite="allow-nan")
        return map_rows(X, transform_block, params.mean, params.loadings, params.noise_variance,
                        n_columns=params.loadings.shape[1])

    def score_samples(self, X: Any) -> Any:
        """Log-density of the observed entries of each row.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples,)
            Lazy for Dask, Zarr or path input; zero for rows with nothing observed.
        """
        params = self._fitted_params
        X = validate_in_memory(self, X, reset=False, ensure_all_finite="allow-nan")
        return map_rows(X, score_block, params.mean, params.loadings, params.noise_variance, n_columns=None)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (scikit-learn's ``score``)."""
        values = self.score_samples(X)
        return float(values.mean().compute() if hasattr(values, "compute") else values.mean())


class FactorAnalysis(_FactorBase):
    """Factor analysis by EM (Rubin & Thayer 1982), out of core, with missing values.

    ``x = W z + mean + eps`` with ``z ~ N(0, I)`` and ``eps ~ N(0, diag(psi))``.
    Each iteration is one pass over the data; the M-step uses parameter
    expansion (Liu, Rubin & Wu 1998), which keeps EM monotone and converges
    much faster than the plain update.

    Parameters
    ----------
    n_components : int, default=2
        Number of latent factors.
    $factor_options

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Loadings ``W'`` (as scikit-learn's ``FactorAnalysis``).
    noise_variance_ : ndarray of shape (n_features,)
    mean_ : ndarray of shape (n_features,)
    $factor_fitted
    """

    _noise = "diagonal"


class PPCA(_FactorBase):
    """Probabilistic principal component analysis by EM (Tipping & Bishop 1999; Roweis 1998).

    ``x = W z + mean + eps`` with ``z ~ N(0, I)`` and ``eps ~ N(0, sigma^2 I)``.
    The maximum-likelihood ``W`` spans the leading principal subspace; EM
    finds it without forming the feature covariance, out of core, and with
    missing values (NaN) handled exactly.

    Parameters
    ----------
    n_components : int, default=2
        Dimension of the principal subspace.
    $factor_options

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Orthonormal principal axes, by decreasing explained variance (as
        scikit-learn's ``PCA``); the loadings are
        ``components_.T * sqrt(explained_variance_ - noise_variance_)``.
    explained_variance_ : ndarray of shape (n_components,)
        Model variance along each axis (the leading eigenvalues of the
        covariance at the maximum-likelihood solution).
    noise_variance_ : float
        ``sigma^2``.
    mean_ : ndarray of shape (n_features,)
    $factor_fitted
    """

    _noise = "isotropic"

    def _loadings(self) -> np.ndarray:
        # W = axes * sqrt(variance - sigma^2)
        scale = np.sqrt(np.maximum(np.asarray(self.explained_variance_) - self.noise_variance_, 0.0))
        return np.asarray(self.components_, np.float64).T * scale

    def _set_loadings(self, loadings: np.ndarray, noise: np.ndarray) -> None:
        # The likelihood is invariant to rotations of z: report the
        # orthogonal form W = U diag(s), axes by decreasing variance and
        # each axis's largest entry positive.
        U, s, _ = np.linalg.svd(loadings, full_matrices=False)
        signs = np.sign(U[np.abs(U).argmax(axis=0), np.arange(U.shape[1])])
        signs[signs == 0] = 1.0
        U = U * signs
        self.components_ = U.T.copy()
        self.noise_variance_ = float(noise[0])
        self.explained_variance_ = s**2 + self.noise_variance_
