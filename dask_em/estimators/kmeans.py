"""``KMeans``: scikit-learn's k-means on Dask, Lloyd's iterations through the EM engine.

The seeding (k-means||, k-means++, random rows) and Lloyd's options live in
:mod:`dask_em.init`; the per-row outputs in :mod:`dask_em.models.kmeans`.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

from ..data import Blocks
from ..engine import expected_stats
from ..errors import ConvergenceWarning
from ..init import INITS, initial_centers, kmeans_centers, lloyd_options, mean_variance
from ..models.kmeans import (
    KMeansModel,
    KMeansParams,
    LabelledKMeansModel,
    distances_block,
    labels_block,
    min_sq_dist_block,
)
from ._base import Checkpointing, EMEstimator, is_out_of_core, map_rows, store_params
from ._online import PartialFitMixin

__all__ = ["KMeans", "kmeans_centers"]
#: "elkan" is accepted for scikit-learn code and runs Lloyd (see ``KMeans``).
_ALGORITHMS = ("lloyd", "elkan")


class KMeans(PartialFitMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, EMEstimator):
    """k-means clustering on Dask: Lloyd's algorithm as hard EM.

    Every iteration is one pass over the data; nothing but the centers and
    per-cluster sums ever reaches the client. A drop-in for scikit-learn's
    ``KMeans`` (same parameters, attributes, warnings and tags).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"k-means||", "k-means++", "random"}, callable or array-like of shape (n_clusters, n_features), default="k-means||"
        Seeding. "k-means||" (Bahmani et al. 2012) is out of core: a few
        passes over the data, each sampling about ``oversampling_factor *
        n_clusters`` rows. "k-means++" runs on a sample of whole blocks
        (at least 10,000 rows). "random" takes ``n_clusters`` distinct rows.
        A callable is called as ``init(X, n_clusters, random_state)`` with
        the data (a Dask array for out-of-core input) and a
        ``numpy.random.RandomState``, and returns the centers.
    n_init : "auto" or int, default="auto"
        Number of runs from different seeds; the one of lowest inertia is
        kept. "auto": 10 runs for ``init="random"`` or a callable, else 1
        (scikit-learn's rule).
    max_iter : int, default=300
        Maximum number of Lloyd iterations of one run.
    tol : float, default=1e-4
        Stop when the squared total shift of the centers is at most ``tol``
        times the mean variance of the features, as scikit-learn does (the
        variance costs one pass at the start when ``tol > 0``).
    $accelerate
    verbose : int, default=0
        Print scikit-learn's lines on standard output ("Initialization
        complete", "Iteration i, inertia ...", how it converged) and a
        progress line per iteration on standard error.
    random_state : int, Generator, RandomState or None, default=None
        Seed of the initialisation.
    copy_x : bool, default=True
        Accepted for scikit-learn compatibility: dask-em never modifies
        the data (it does not centre it), whatever the value.
    algorithm : {"lloyd", "elkan"}, default="lloyd"
        "elkan" is accepted and runs Lloyd's algorithm: Elkan's bounds are
        per-row state kept across iterations, which one pass over blocks
        per iteration does not keep. The result is the same clustering.
    split_every : int, default=8
        Fan-in of the tree reduction of the statistics.
    oversampling_factor : float, default=2
        k-means|| samples about ``oversampling_factor * n_clusters`` rows per round.
    init_max_iter : int, default=5
        Number of k-means|| rounds.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        In the data's float type (float32 for float32 data; sums are
        accumulated in float64).
    inertia_ : float
        Sum of (weighted) squared distances of the rows to their nearest
        center, under the final centers.
    $n_passes_
    n_iter_ : int
        Lloyd iterations of the kept run.
    labels_ : ndarray or dask.array.Array of shape (n_samples,)
        Nearest center of every row of the training data, lazy for Dask,
        Zarr or path input.
    converged_ : bool
        Whether the kept run met ``tol`` before ``max_iter``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.

    Notes
    -----
    A cluster that loses all its rows keeps its previous center (scikit-learn
    moves it to the row farthest from its center instead); its count is 0
    and nothing becomes NaN.

    ``sample_weight`` weighs every row in the Lloyd iterations and the
    inertia; the seeding ("k-means||", "k-means++", "random") draws from
    the rows without their weights.
    """

    _estimator_type = "clusterer"

    def __init__(self, n_clusters: int = 8, *, init: Any = "k-means||", n_init: int | str = "auto",
                 max_iter: int = 300, tol: float = 1e-4, verbose: int = 0, random_state: Any = None,
                 copy_x: bool = True, algorithm: str = "lloyd", split_every: int = 8,
                 oversampling_factor: float = 2.0, init_max_iter: int = 5, accelerate: str | None = None) -> None:
        store_params(self, locals())

    @property
    def _n_features_out(self) -> int:
        """Number of columns of ``transform`` (for ``get_feature_names_out``)."""
        return int(self.cluster_centers_.shape[0])

    def _validate(self) -> int:
        """Check the hyper-parameters; return the number of runs (scikit-learn's ``_n_init``)."""
        def positive_int(name: str, value: Any, minimum: int) -> None:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        positive_int("n_clusters", self.n_clusters, 1)
        positive_int("max_iter", self.max_iter, 1)
        if self.n_init != "auto":
            positive_int("n_init", self.n_init, 1)
        positive_int("init_max_iter", self.init_max_iter, 1)
        positive_int("split_every", self.split_every, 2)
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        if not (isinstance(self.oversampling_factor, numbers.Real) and self.oversampling_factor > 0):
            raise ValueError(f"oversampling_factor must be positive, got {self.oversampling_factor!r}")
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {_ALGORITHMS}, got {self.algorithm!r} (both run Lloyd's algorithm)"
            )
        if self.algorithm == "elkan" and self.n_clusters == 1:
            warnings.warn(
                "algorithm='elkan' doesn't make sense for a single cluster. Using 'lloyd' instead.",
                RuntimeWarning,
                stacklevel=3,
            )
        if isinstance(self.init, str) and self.init not in INITS:
            raise ValueError(
                f"init must be one of {INITS}, a callable or an array of shape (n_clusters, n_features), "
                f"got {self.init!r}"
            )
        if self.n_init == "auto":
            return 10 if (isinstance(self.init, str) and self.init == "random") or callable(self.init) else 1
        n_init = int(self.n_init)
        if not isinstance(self.init, str) and not callable(self.init) and n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            n_init = 1
        return n_init

    def _initial_centers(
        self, X: Any, blocks: Blocks, rng: np.random.Generator, client: Any, sample_weight: Any = None
    ) -> np.ndarray:
        """The seeding of one run; a callable ``init`` gets the data and a RandomState."""
        init = self.init
        if callable(init):
            data = X if isinstance(X, np.ndarray) else blocks.array
            init = np.asarray(init(data, self.n_clusters, np.random.RandomState(int(rng.integers(2**31)))))
        return initial_centers(
            blocks, self.n_clusters, init, rng, oversampling_factor=self.oversampling_factor,
            init_max_iter=self.init_max_iter, client=client, sample_weight=sample_weight,
        )

    _input_checks: dict[str, Any] = {}
    _restarts = "apart"

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, client: Any = None, checkpoint: Any = None,
            checkpoint_every: int = 1, resume: bool | None = None, force: bool = False) -> KMeans:
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path of shape (n_samples, n_features)
            Training data.
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Weight of every row (default 1). An integer weight is the same
            as repeating the row; the weights travel with the data's blocks.
        $fit_options
            One sub-group per run when ``n_init > 1``.

        Returns
        -------
        self
        """
        self._seed_weight = sample_weight  # k-means++ on few distinct rows seeds on the weighted rows
        try:
            self._fit(X, client=client, checkpointing=Checkpointing(checkpoint, checkpoint_every, resume, force),
                      sample_weight=sample_weight)
            if self.labels_ is None:  # out of core: lazy, as predict's (in memory: from the final pass)
                self.labels_ = self._nearest(self._fit_X, labels_block, None, np.int64)
        finally:
            self.__dict__.pop("_fit_X", None)
            self._seed_weight = None
        return self

    # -- the fit loop's hooks (EMEstimator._fit) --------------------------------
    def _fit_model(self) -> KMeansModel:
        self._n_init = self._validate()
        return KMeansModel(self.n_clusters)

    def _n_runs(self) -> int:
        return self._n_init

    def _fit_data(self, X: Any, model: KMeansModel, client: Any, **inputs: Any) -> tuple[Blocks, KMeansModel]:
        blocks, model = super()._fit_data(X, model, client)
        if blocks.n_samples < self.n_clusters:
            raise ValueError(
                f"n_samples={blocks.n_samples} should be >= n_clusters={self.n_clusters}; "
                "decrease n_clusters or provide more data"
            )
        self._fit_X = X  # for the seeding of a callable init, and labels_
        return blocks, model

    def _initial_params(self, model: KMeansModel, blocks: Blocks, rng: np.random.Generator, client: Any) -> KMeansParams:
        centers = self._initial_centers(self._fit_X, blocks, rng, client, self._seed_weight)
        if self.verbose:
            print("Initialization complete")
        return KMeansParams.from_centers(centers)

    def _em_options(self, blocks: Blocks, client: Any, run: int, n_runs: int) -> dict[str, Any]:
        self._run = run
        if run == 0:  # scikit-learn's tolerance is relative to the data's variance: one pass
            self._tol_scaled = self.tol * mean_variance(blocks, client) if self.tol > 0 else 0.0
        label = f"kmeans run {run + 1}/{n_runs}" if n_runs > 1 else "kmeans"
        return {**super()._em_options(blocks, client, run, n_runs),
                **lloyd_options(self._tol_scaled, verbose=bool(self.verbose), label=label)}

    def _score_run(self, result: Any, model: KMeansModel, data: Any, client: Any) -> float:
        """Minus the inertia of the run's final centers (scikit-learn reports it: one more pass)."""
        if self.verbose and result.converged:
            shift = float(result.params.center_shift)
            how = "strict convergence" if shift == 0 else f"center shift {shift:e} within tolerance {self._tol_scaled:e}"
            print(f"Converged at iteration {result.n_iter - 1}: {how}.")
        # in-memory rows: the pass also returns their labels, the fitted labels_ if this run is kept
        # (the fit loop holds on to the best run's result only)
        in_memory = not is_out_of_core(self._fit_X)
        final = expected_stats(LabelledKMeansModel(model.n_clusters) if in_memory else model, data, result.params,
                               client, self.split_every)
        result.extra["inertia"] = float(final["inertia"])
        if in_memory:
            result.extra["labels"] = np.asarray(final["labels"]).item().joined()
        result.extra["n_distinct"] = int(np.count_nonzero(final["counts"]))
        if self.verbose:
            print(f"dask-em: run {self._run + 1}/{self._n_init}: inertia {result.extra['inertia']:.8g}, "
                  f"{result.n_iter} iterations", file=sys.stderr)
        return -result.extra["inertia"]

    _not_converged = "k-means did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); increase max_iter or tol"

    def _warn_not_converged(self, best: Any) -> None:
        if self.tol > 0:  # with tol=0, scikit-learn runs max_iter iterations and says nothing
            super()._warn_not_converged(best)
        if best.extra["n_distinct"] < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({best.extra['n_distinct']}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _set_result(self, result: Any) -> None:
        self.n_iter_ = int(result.n_iter)
        self.converged_ = bool(result.converged)

    def _set_fitted(self, result: Any, model: KMeansModel, blocks: Blocks) -> None:
        dtype = np.float32 if blocks.array.dtype == np.float32 else np.float64
        self.cluster_centers_ = np.asarray(result.params.cluster_centers, dtype=dtype)
        self.inertia_ = result.extra["inertia"]
        self.n_features_in_ = int(blocks.array.shape[1])
        self.labels_ = result.extra.get("labels")

    # -- online (stepwise) k-means: dask_em.online on running counts and sums
    _online_attr = "cluster_centers_"

    def _online_start(self, blocks: Blocks, rng: np.random.Generator, client: Any) -> tuple[Any, Any]:
        self._validate()
        centers = initial_centers(
            blocks, self.n_clusters, self.init, rng, oversampling_factor=self.oversampling_factor,
            init_max_iter=self.init_max_iter, client=client,
        )
        return KMeansModel(self.n_clusters), KMeansParams.from_centers(centers)

    def _online_set(self, state: Any) -> None:
        self.cluster_centers_ = np.array(state.params.cluster_centers)
        self.n_features_in_ = int(self.cluster_centers_.shape[1])
        self.converged_ = False

    def _nearest(self, X: Any, func: Any, n_columns: int | None, dtype: Any = np.float64) -> Any:
        """``func(block, centers)`` over the rows (centers in float64)."""
        return map_rows(X, func, np.asarray(self.cluster_centers_, np.float64), n_columns=n_columns, dtype=dtype)

    def _check_input(self, X: Any) -> Any:
        self._check_fitted("cluster_centers_")
        return self._checked_input(X)

    def predict(self, X: Any) -> Any:
        """Index of the nearest center of every row.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples,), int64
            Lazy (nothing computed) for Dask, Zarr or path input.
        """
        return self._nearest(self._check_input(X), labels_block, None, np.int64)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None, **fit_params: Any) -> Any:
        """Fit, then return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight, **fit_params).labels_

    def transform(self, X: Any) -> Any:
        """Euclidean distance of every row to every center.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples, n_clusters)
        """
        return self._nearest(self._check_input(X), distances_block, self.n_clusters)

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None, **fit_params: Any) -> Any:
        """Fit, then return ``transform(X)``."""
        return self.fit(X, sample_weight=sample_weight, **fit_params).transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Minus the (weighted) inertia of ``X`` under the fitted centers (computed)."""
        X = self._check_input(X)
        d2 = self._nearest(X, min_sq_dist_block, None)
        if sample_weight is not None:
            d2 = d2 * (sample_weight if isinstance(sample_weight, da.Array) else np.asarray(sample_weight, np.float64))
        if isinstance(d2, np.ndarray):
            return -float(d2.sum())
        return -float(d2.sum().compute())
