"""``MultivariateNormal``: maximum likelihood with missing values, by EM."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.mvn_missing import MVNMissingModel, MVNParams, impute_block, score_block
from ._base import Checkpointing, EMEstimator, map_rows, store_params, validate_in_memory
from ._online import PartialFitMixin


class MultivariateNormal(PartialFitMixin, EMEstimator):
    """A multivariate normal distribution fitted to data with NaN as missing values.

    Any subset of a row's entries may be missing. EM (Dempster, Laird &
    Rubin 1977) maximises the observed-data log-likelihood: the E-step
    completes each row with the conditional expectation of its missing
    entries and adds their conditional covariance; the M-step takes the
    mean and covariance of the completed data. Rows with nothing observed
    are ignored, with a warning.

    Parameters
    ----------
    max_iter : int, default=100
        Maximum number of EM iterations.
    tol : float, default=1e-4
        Stop when the mean observed-data log-likelihood per row changes by
        less than this.
    reg_covar : float, default=0.0
        Added to the diagonal of the covariance after each M-step. Zero
        gives the exact maximum-likelihood estimate; use a small positive
        value for nearly singular data.
    mean_init : array-like of shape (n_features,), optional
        Starting mean; by default the column means of the observed entries
        of a sample.
    covariance_init : array-like of shape (n_features, n_features), optional
        Starting covariance; by default the diagonal of the observed
        column variances of a sample.
    random_state : int or Generator, optional
        Chooses the sample the default start is computed from.
    $em_options

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    covariance_ : ndarray of shape (n_features, n_features)
    $n_passes_
    n_iter_ : int
    converged_ : bool
    lower_bound_ : float
        Observed-data log-likelihood of the last iteration's starting
        parameters, *per row* (mean over the rows with at least one
        observed value), as scikit-learn's ``lower_bound_``.
    lower_bounds_ : list of float
        ``lower_bound_`` of every iteration.
    n_all_missing_ : int
        Rows with no observed value (ignored).
    n_features_in_ : int
    """

    _nan_is_missing = True

    def __init__(self, *, max_iter: int = 100, tol: float = 1e-4, reg_covar: float = 0.0, mean_init: Any = None,
                 covariance_init: Any = None, random_state: Any = None, accelerate: str | None = None,
                 verbose: bool = False) -> None:
        store_params(self, locals())

    def _model(self) -> MVNMissingModel:
        if self.reg_covar < 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar}")
        return MVNMissingModel(reg_covar=float(self.reg_covar))

    def fit(self, X: Any, y: Any = None, *, client: Any = None, checkpoint: str | None = None,
            checkpoint_every: int = 1, resume: bool | None = None, force: bool = False,
            online_passes: int = 0) -> MultivariateNormal:
        """Estimate the mean and covariance from ``X`` with NaN as missing.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
            The data; NaN marks a missing value.
        y : ignored
        $fit_options
        online_passes : int, default=0
            Passes of online (stepwise) EM over shuffled blocks before batch
            EM (see :func:`dask_em.fit_em`).

        Returns
        -------
        self
        """
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         online_passes=online_passes)

    def _set_fitted(self, result: Any, model: MVNMissingModel, blocks: Any) -> None:
        self.mean_ = np.asarray(result.params.mean)
        self.covariance_ = np.asarray(result.params.covariance)
        self.n_all_missing_ = max(int(result.params.n_all_missing), 0)
        self.n_features_in_ = int(blocks.array.shape[1])

    def _initial_params(self, model: MVNMissingModel, blocks: Any, rng: np.random.Generator, client: Any = None) -> MVNParams:
        n_features = int(blocks.array.shape[1])
        start = super()._initial_params(model, blocks, rng, client)
        mean = start.mean if self.mean_init is None else np.asarray(self.mean_init, float)
        cov = start.covariance if self.covariance_init is None else np.asarray(self.covariance_init, float)
        if mean.shape != (n_features,) or cov.shape != (n_features, n_features):
            raise ValueError(
                f"mean_init must have shape ({n_features},) and covariance_init "
                f"({n_features}, {n_features}); got {mean.shape} and {cov.shape}"
            )
        return MVNParams(mean, cov)

    # -- online EM (dask_em.online) --------------------------------------------
    _online_attr = "mean_"

    def _online_start(self, blocks: Any, rng: np.random.Generator, client: Any) -> tuple[Any, Any]:
        model = self._model()
        return model, self._initial_params(model, blocks, rng)

    def _online_set(self, state: Any) -> None:
        self.mean_ = np.asarray(state.params.mean)
        self.covariance_ = np.asarray(state.params.covariance)
        self.n_all_missing_ = max(int(state.params.n_all_missing), 0)
        self.converged_ = False
        self.lower_bound_ = state.loglik
        self.n_features_in_ = int(self.mean_.shape[0])

    def impute(self, X: Any) -> Any:
        """Fill missing values with their conditional expectations given each row's observed values.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path
            Rows with NaN as missing values.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples, n_features)
            A copy with NaN replaced; lazy for Dask, Zarr or path input.
            Rows with nothing observed get ``mean_``.
        """
        self._check_fitted("mean_")
        X = validate_in_memory(self, X, reset=False, ensure_all_finite="allow-nan")
        return map_rows(X, impute_block, self.mean_, self.covariance_, n_columns=self.n_features_in_)

    def score_samples(self, X: Any) -> Any:
        """Log-density of the observed entries of each row.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples,)
            0 for rows with nothing observed.
        """
        self._check_fitted("mean_")
        X = validate_in_memory(self, X, reset=False, ensure_all_finite="allow-nan")
        return map_rows(X, score_block, self.mean_, self.covariance_, n_columns=None)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean observed-data log-likelihood per row."""
        values = self.score_samples(X)
        return float(values.mean().compute() if hasattr(values, "compute") else values.mean())
