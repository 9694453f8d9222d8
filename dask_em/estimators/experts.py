"""``MixtureOfExperts`` and ``MixtureOfLinearRegressions``: mixtures of linear experts by EM.

Both fit ``y`` from ``X``; the data reach the engine as one array whose
last ``n_targets`` columns are the targets (:func:`xy_array`), so in-memory,
Dask and Zarr inputs, streaming and checkpoints work as for any other model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from sklearn.base import RegressorMixin

from ..data import as_dask_array, open_zarr_array
from ..errors import InvalidDataError
from ..models.experts import ExpertsParams, MixtureOfExpertsModel
from ._base import Checkpointing, EMEstimator, is_out_of_core, map_rows, store_params, validate_in_memory

#: Raised by ``fit`` without targets; holds scikit-learn's wording for a missing ``y``.
NO_TARGETS = (
    "no targets: this estimator requires y to be passed, but the target y is None; give y, "
    "or target_columns (which columns of X are targets), or a Zarr group holding arrays 'X' and 'y'"
)


def _as_target_array(y: Any) -> Any:
    """``y`` as a 2-D numeric (Dask or numpy) array, with a clear error for other dtypes.

    In-memory ``y`` gets scikit-learn's checks and messages (sparse,
    complex, empty); NaN and infinity are left to the fit, which counts them.
    """
    if isinstance(y, str) or hasattr(y, "__fspath__"):
        y = open_zarr_array(str(y))
    elif not isinstance(y, da.Array) and type(y).__module__.startswith("zarr"):
        y = da.from_zarr(y)
    elif not isinstance(y, da.Array):
        y = _checked_array(y, ensure_2d=False, dtype=None, ensure_all_finite=False, input_name="y")
        if y.dtype.kind == "O":  # numbers held as objects, as scikit-learn's y_numeric converts them
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError):
                pass  # not numbers: refused below
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2:
        raise InvalidDataError(f"y must have shape (n_samples,) or (n_samples, n_targets), got shape {y.shape}")
    if np.dtype(y.dtype).kind not in "biuf":
        raise InvalidDataError(
            f"the targets y must be numeric, got dtype {np.dtype(y.dtype)!s}; a mixture of linear experts "
            "regresses numbers (encode categories, or convert the column with astype(float))"
        )
    return y


def xy_array(
    X: Any, y: Any = None, *, target_columns: Sequence[int] | None = None, client: Any = None
) -> tuple[da.Array, int]:
    """Inputs and targets as one Dask array whose last ``n_targets`` columns are the targets.

    Parameters
    ----------
    X : array-like, dask array, zarr array, or str
        The inputs (n_samples, n_features); or, with ``y`` None, a Zarr
        group (path or URL) holding arrays ``X`` and ``y``, or one array
        holding both, with ``target_columns`` saying which columns are targets.
    y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
        Targets, with row chunks matched to those of ``X``.
    target_columns : sequence of int, optional
        With ``y`` None: the columns of ``X`` that are targets (negative
        indices count from the end); the others are the inputs.
    client : distributed.Client, optional
        In-memory input is scattered to its workers.

    Returns
    -------
    (dask.array.Array, int)
        The joined array and ``n_targets``.

    Raises
    ------
    InvalidDataError
        For non-numeric targets, mismatched rows, or missing targets.
    """
    if y is None and target_columns is None:
        if not (isinstance(X, str) or hasattr(X, "__fspath__")):
            raise InvalidDataError(NO_TARGETS)
        X, y = open_zarr_array(str(X), "X"), open_zarr_array(str(X), "y")
    if y is not None:
        if target_columns is not None:
            raise ValueError("give either y or target_columns, not both")
        y = _as_target_array(y)
        if not isinstance(X, (str, da.Array)) and not type(X).__module__.startswith("zarr") and not isinstance(y, da.Array):
            X = np.asarray(X)
            if X.ndim == 2 and X.shape[0] != y.shape[0]:
                raise InvalidDataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}; give one target row per input row")
            if X.ndim == 2 and X.dtype.kind in "biuf":
                joined = np.hstack([X.astype(np.float64, copy=False), y.astype(np.float64, copy=False)])
                return as_dask_array(joined, client=client), int(y.shape[1])
        X = as_dask_array(X, client=client)
        if X.shape[0] != y.shape[0]:
            raise InvalidDataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}; give one target row per input row")
        y = da.from_array(y, chunks=(X.chunks[0], -1)) if isinstance(y, np.ndarray) else y.rechunk((X.chunks[0], -1))
        if y.dtype.kind in "biu":
            y = y.astype(np.float64)
        joined = da.concatenate([X, y.astype(np.result_type(X.dtype, y.dtype))], axis=1)
        return joined.rechunk({1: -1}), int(y.shape[1])  # one block of columns: a row block holds x and y
    A = as_dask_array(X, client=client)
    width = A.shape[1]
    try:
        targets = sorted({int(c) % width if -width <= int(c) < width else _bad_column(c, width) for c in target_columns})
    except TypeError:
        raise ValueError(f"target_columns must be column indices, got {target_columns!r}") from None
    if not targets or len(targets) == width:
        raise InvalidDataError(
            f"target_columns={list(target_columns)} leaves {width - len(targets)} input columns of {width}; "
            "give at least one target and one input"
        )
    inputs = [j for j in range(width) if j not in targets]
    if targets == list(range(width - len(targets), width)):
        return A, len(targets)  # already inputs then targets
    return A[:, inputs + targets], len(targets)


def _rows(X: Any, y: Any) -> Any:
    """``[X, y]`` rows for per-row outputs: numpy for in-memory input (numpy out), else lazy."""
    if isinstance(X, np.ndarray) and not isinstance(y, (str, da.Array)) and np.ndim(X) == 2:
        y = _as_target_array(y)
        if not isinstance(y, da.Array) and len(y) == len(X):
            return np.hstack([X, np.asarray(y, np.float64)])
    return xy_array(X, y)[0]


def _bad_column(c: Any, width: int) -> int:
    raise InvalidDataError(f"target column {c} is out of range for data with {width} columns")


class MixtureOfExperts(RegressorMixin, EMEstimator):
    """Gaussian-gated mixture of linear experts (Xu, Jordan & Hinton 1995), by EM.

    Expert ``k`` predicts ``y = coef_[k] @ x + intercept_[k]`` with Gaussian
    noise of variances ``noise_variance_[k]``; its gate is a Gaussian
    bump ``weights_[k] N(x | means_[k], covariances_[k])`` normalised over
    the experts. The prediction ``E[y | x]`` is a normalised
    radial-basis-function network whose centres and widths are the gates'
    means and covariances. EM maximises the joint likelihood of ``(x, y)``,
    so every M-step is closed form: the Gaussian mixture M-step for the
    gates and one weighted least-squares fit per expert, each iteration one
    pass over the data.

    Parameters
    ----------
    n_components : int, default=2
        Number of experts.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Form of the gate covariances.
    reg_covar : float, default=1e-6
        Added to the diagonal of the gate covariances and to the noise variances.
    max_iter : int, default=100
    tol : float, default=1e-3
        Stop when the mean log-likelihood per row changes by less than this.
    n_init : int, default=1
        Restarts; the one with the highest log-likelihood is kept.
    init_params : {"kmeans", "random"}, default="kmeans"
        Initial responsibilities from k-means++ clusters of the standardised
        ``(x, y)`` rows of a sample, or random ones.
    $seed_em_options

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
        Gate centres.
    covariances_ : ndarray
        Gate covariances, shaped by ``covariance_type`` as in ``GaussianMixture``.
    precisions_cholesky_ : ndarray
    coef_ : ndarray of shape (n_components, n_targets, n_features)
    intercept_ : ndarray of shape (n_components, n_targets)
    noise_variance_ : ndarray of shape (n_components, n_targets)
    n_iter_, converged_, lower_bound_, lower_bounds_, n_features_in_, n_targets_

    Notes
    -----
    A scikit-learn regressor: ``score`` is the coefficient of determination
    R^2 of :meth:`predict`, as for every regressor. The quantity EM
    increases, the log-likelihood (of ``(x, y)`` here; of ``y`` given ``x``
    for :class:`MixtureOfLinearRegressions`), is :meth:`score_samples` per
    row, ``lower_bound_`` per row at the end of the fit, and :meth:`bic`.
    """

    _gating = "gaussian"
    _params_class = ExpertsParams

    def __init__(self, n_components: int = 2, *, covariance_type: str = "full", reg_covar: float = 1e-6,
                 max_iter: int = 100, tol: float = 1e-3, n_init: int = 1, init_params: str = "kmeans",
                 random_state: Any = None, accelerate: str | None = None, verbose: bool = False) -> None:
        store_params(self, locals())

    def _model(self, n_targets: int) -> MixtureOfExpertsModel:
        if int(self.n_init) < 1:
            raise ValueError(f"n_init must be at least 1, got {self.n_init}")
        return MixtureOfExpertsModel(
            n_components=int(self.n_components),
            n_targets=int(n_targets),
            covariance_type=getattr(self, "covariance_type", "full"),
            reg_covar=float(self.reg_covar),
            gating=self._gating,
            init=self.init_params,
        )

    _restarts = "apart"
    _not_converged = (
        "best of {self.n_init} initialisation(s) did not converge in {self.max_iter} iterations; "
        "increase max_iter or tol, or check the data"
    )

    def fit(self, X: Any, y: Any = None, *, target_columns: Sequence[int] | None = None, client: Any = None,
            checkpoint: str | None = None, checkpoint_every: int = 1, resume: bool | None = None,
            force: bool = False) -> MixtureOfExperts:
        """Fit the experts and their gates by EM, keeping the best of ``n_init`` restarts.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path, of shape (n_samples, n_features)
            Inputs; or a Zarr group holding arrays ``X`` and ``y``; or one
            array holding both, with ``target_columns``.
        y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
            Targets (numpy, Dask or Zarr); their row chunks are matched to ``X``'s.
        target_columns : sequence of int, optional
            With ``y`` None, the columns of ``X`` that are the targets.
        $fit_options
            One sub-group per restart.

        Returns
        -------
        self
        """
        X, y = self._fit_xy(X, y, target_columns)
        return self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                         y=y, target_columns=target_columns)

    _input_checks = None  # fit checks the inputs with the targets (_fit_xy)

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags: a regressor (from ``RegressorMixin``) of one or several targets."""
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _fit_xy(self, X: Any, y: Any, target_columns: Sequence[int] | None) -> tuple[Any, Any]:
        """In-memory ``X`` and ``y`` with scikit-learn's checks and messages; other input as given.

        ``X`` gets :func:`validate_in_memory` (which records ``n_features_in_``
        and ``feature_names_in_``), ``y`` the checks of :func:`_as_target_array`;
        NaN and infinity are left to the fit, which counts them in both.
        """
        if y is None and target_columns is None and not is_out_of_core(X):
            raise InvalidDataError(NO_TARGETS)
        if target_columns is not None or is_out_of_core(X) or is_out_of_core(y):
            return X, y  # checked block by block, or split by xy_array
        self._fit_model()  # bad hyper-parameters fail before the data is read
        X = validate_in_memory(self, X, reset=True, ensure_all_finite=False, ensure_min_samples=2)
        return X, _as_target_array(y)

    def _fit_model(self) -> MixtureOfExpertsModel:
        return self._model(1)  # the checks; the fitted model's shape needs the targets: built by _fit_data

    def _fit_data(self, X: Any, model: Any, client: Any, **inputs: Any) -> tuple[Any, MixtureOfExpertsModel]:
        joined, n_targets = xy_array(X, inputs["y"], target_columns=inputs["target_columns"], client=client)
        return super()._fit_data(joined, None, client)[0], self._model(n_targets)

    def _set_fitted(self, result: Any, model: MixtureOfExpertsModel, blocks: Any) -> None:
        p = result.params
        self.weights_ = np.asarray(p.weights)
        self.means_ = np.asarray(p.means)
        self.covariances_ = np.asarray(p.covariances)
        self.precisions_cholesky_ = np.asarray(p.precisions_cholesky)
        self.coef_ = np.asarray(p.coef)
        self.intercept_ = np.asarray(p.intercept)
        self.noise_variance_ = np.asarray(p.noise_variance)
        self.n_targets_ = int(model.n_targets)
        self.n_features_in_ = int(blocks.array.shape[1]) - self.n_targets_

    # -- per-row outputs ------------------------------------------------------

    def predict(self, X: Any) -> Any:
        """Conditional mean ``E[y | x]`` (the RBF network's output), shape (n_samples, n_targets).

        Shape (n_samples,) with one target. Lazy for Dask, Zarr or path input.
        """
        params = self._fitted_params
        out = map_rows(self._checked_input(X), self._model(self.n_targets_).predict_block, params,
                       n_columns=int(self.n_targets_))
        return out[:, 0] if self.n_targets_ == 1 else out

    def predict_proba(self, X: Any, y: Any = None) -> Any:
        """Gate values ``g_k(x)``, shape (n_samples, n_components); with ``y``, the posterior of each expert."""
        params = self._fitted_params
        model = self._model(self.n_targets_)
        if y is None:
            return map_rows(self._checked_input(X), model.gates_block, params, n_columns=int(self.n_components))
        rows = self._joined(X, y, "the posterior")
        return map_rows(rows, model.posterior_block, params, n_columns=int(self.n_components))

    def _joined(self, X: Any, y: Any, what: str) -> Any:
        """``[X, y]`` rows for ``what``, an output that needs the targets; without ``y``, ``X`` must hold both.

        Numpy for in-memory input (with scikit-learn's checks), else lazy.
        """
        width = self.n_features_in_ + self.n_targets_
        if y is None:
            rows = as_dask_array(X) if is_out_of_core(X) else _checked_array(X, dtype=[np.float64, np.float32])
            if rows.shape[1] != width:
                raise InvalidDataError(
                    f"{what} needs the targets: give y, or rows of {self.n_features_in_} inputs "
                    f"followed by {self.n_targets_} target(s) ({width} columns); got shape {rows.shape}"
                )
            return rows
        X = self._checked_input(X)
        return _rows(X, y)

    def score_samples(self, X: Any, y: Any = None) -> Any:
        """Log-likelihood of each row, shape (n_samples,).

        Without ``y``, ``X`` holds the inputs followed by the targets (the
        layout of ``dask-em predict --what score`` on a table of both).
        """
        params = self._fitted_params
        rows = self._joined(X, y, "the log-likelihood")
        return map_rows(rows, self._model(self.n_targets_).score_samples_block, params, n_columns=None)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Coefficient of determination R^2 of :meth:`predict` (scikit-learn's regressor score).

        Averaged uniformly over the targets, as :func:`sklearn.metrics.r2_score`.
        Without ``y``, ``X`` holds the inputs followed by the targets. Out-of-core
        input is reduced lazily, without collecting the predictions.
        """
        self._check_fitted("coef_")
        if y is None:
            rows = self._joined(X, None, "R^2")
            X, y = rows[:, : self.n_features_in_], rows[:, self.n_features_in_ :]
        if not (is_out_of_core(X) or is_out_of_core(y) or is_out_of_core(sample_weight)):
            return float(super().score(X, y, sample_weight=sample_weight))
        return _lazy_r2(self.predict(X), y, sample_weight)

    def bic(self, X: Any, y: Any = None) -> float:
        """Bayesian information criterion on ``(X, y)`` (lower is better)."""
        values = self.score_samples(X, y)
        total = float(values.sum().compute() if hasattr(values, "compute") else values.sum())
        k = self._model(self.n_targets_).n_parameters(self.n_features_in_)
        return -2.0 * total + k * math.log(values.shape[0])


def _checked_array(array: Any, **check: Any) -> np.ndarray:
    """In-memory ``array`` through :func:`sklearn.utils.check_array` (``check``), its messages as InvalidDataError."""
    from sklearn.utils.validation import check_array

    try:
        return check_array(array, **check)
    except ValueError as exc:  # scikit-learn's message, as the library's own error type
        raise InvalidDataError(str(exc)) from None


def _lazy_r2(prediction: Any, y: Any, sample_weight: Any = None) -> float:
    """R^2 of ``prediction`` against ``y`` by Dask reductions, as :func:`sklearn.metrics.r2_score` defines it.

    Per target ``1 - sum w (y - pred)^2 / sum w (y - mean_w y)^2`` (1 for a
    perfect fit of a constant target, 0 for an imperfect one), then the plain
    mean over targets.
    """
    prediction = da.asarray(prediction)
    y = _as_target_array(y)
    y = y if isinstance(y, da.Array) else da.from_array(y, chunks=(prediction.chunks[0], -1))
    prediction = prediction.reshape(y.shape[0], -1).rechunk((y.chunks[0], -1))
    weight = da.ones(y.shape[0], chunks=(y.chunks[0],)) if sample_weight is None else da.asarray(sample_weight)
    weight = weight.rechunk((y.chunks[0],))[:, None]
    mean = (weight * y).sum(axis=0) / weight.sum()
    numerator, denominator = dask.compute(
        (weight * (y - prediction) ** 2).sum(axis=0), (weight * (y - mean) ** 2).sum(axis=0)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        per_target = np.where(denominator != 0, 1.0 - numerator / denominator, np.where(numerator == 0, 1.0, 0.0))
    return float(per_target.mean())


class MixtureOfLinearRegressions(MixtureOfExperts):
    """Mixture of linear regressions with constant gates (latent-class regression, as R's flexmix).

    Each row comes from regression ``k`` with probability ``weights_[k]``,
    whatever its inputs: ``p(y | x) = sum_k w_k N(y | coef_k x + intercept_k,
    diag(noise_variance_k))``. The same machinery as :class:`MixtureOfExperts`
    (the same statistics and weighted least squares), without a model of the
    inputs; the likelihood is the conditional one. ``means_`` are the mean
    inputs of each regression's rows; ``covariances_`` is empty and
    :meth:`predict_proba` without ``y`` returns the weights on every row.

    Parameters
    ----------
    n_components : int, default=2
    reg_covar : float, default=1e-6
        Added to the noise variances.
    max_iter, tol, n_init, init_params, random_state, verbose
        As in :class:`MixtureOfExperts`.
    """

    _gating = "constant"

    def __init__(self, n_components: int = 2, *, reg_covar: float = 1e-6, max_iter: int = 100, tol: float = 1e-3,
                 n_init: int = 1, init_params: str = "kmeans", random_state: Any = None,
                 accelerate: str | None = None, verbose: bool = False) -> None:
        store_params(self, locals())
