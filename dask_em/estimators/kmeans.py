"""k-means on Dask: out-of-core k-means|| seeding and Lloyd through the EM engine."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

from ..data import Blocks, in_memory_blocks, weighted_blocks
from ..engine import expected_stats, fit_em, map_parts, prepare_blocks
from ..executor import compute, where
from ..errors import ConvergenceWarning, InvalidDataError
from ..models.kmeans import (
    _count_nearest,
    _finite_rows,
    _moments_block,
    _oversample_block,
    KMeansModel,
    KMeansParams,
    center_distances,
    kmeans_plusplus,
    nearest_center,
)
from ._base import EMEstimator, map_rows, run_checkpoint, run_rngs, validate_in_memory
from ._online import PartialFitMixin

__all__ = ["KMeans", "kmeans_centers", "kmeans_parallel_init"]

_INITS = ("k-means||", "k-means++", "random")
#: "elkan" is accepted for scikit-learn code and runs Lloyd (see ``KMeans``).
_ALGORITHMS = ("lloyd", "elkan")


# ---------------------------------------------------------------------------
# Per-block tasks (module level so that workers can unpickle them).
# ---------------------------------------------------------------------------


def _finite(block: np.ndarray) -> np.ndarray:
    """``block``, refused when it holds NaN or inf (they would get a label and a nan inertia)."""
    n_invalid = int(np.count_nonzero(~np.isfinite(block)))
    if n_invalid:
        raise _invalid_error(n_invalid)
    return block


def _labels(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return nearest_center(_finite(block), centers)[0]


def _min_sq_dist(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return nearest_center(_finite(block), centers)[1]


def _distances(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return center_distances(_finite(block), centers)


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------


def _rows(blocks: Blocks, client: Any, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` (sorted) of the data, reading only the blocks that hold them."""
    assert blocks.array is not None
    values = in_memory_blocks(blocks) if client is None else None
    if values is not None:  # no graph for a few rows of data in this process
        index = np.sort(index)
        starts = np.cumsum((0, *blocks.array.chunks[0][:-1]))
        which = np.searchsorted(starts, index, side="right") - 1
        return np.array([values[b][i - starts[b]] for b, i in zip(which, index)], dtype=np.float64)
    (rows,) = compute(client if client is not None else blocks.client, blocks.array[np.sort(index)])
    return np.asarray(rows, dtype=np.float64)


def _invalid_error(n_invalid: int) -> InvalidDataError:
    return InvalidDataError(KMeansModel().describe_invalid(n_invalid))


def weighted_lloyd(
    X: np.ndarray, weights: np.ndarray, centers: np.ndarray, max_iter: int = 100
) -> np.ndarray:
    """Lloyd's algorithm on a small in-memory weighted set (k-means|| candidates).

    An empty cluster keeps its center; stops when no label changes.
    """
    centers = np.array(centers, dtype=np.float64)
    labels = None
    for _ in range(max_iter):
        new_labels, _ = nearest_center(X, centers)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        mass = np.bincount(labels, weights=weights, minlength=len(centers))
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, X * weights[:, None])
        filled = mass > 0
        centers[filled] = sums[filled] / mass[filled, None]
    return centers


def kmeans_parallel_init(
    blocks: Blocks,
    n_clusters: int,
    rng: np.random.Generator,
    *,
    oversampling_factor: float = 2.0,
    n_rounds: int = 5,
    client: Any = None,
) -> np.ndarray:
    """k-means|| seeding (Bahmani et al. 2012), one pass over the blocks per round.

    The data never leaves the workers: each round sends the current
    candidates to every block and brings back only the rows sampled there
    (about ``oversampling_factor * n_clusters`` in all). A last pass
    counts the rows nearest to each candidate; weighted k-means++ and a few
    weighted Lloyd steps on the candidates, on the client, give the centers.

    Parameters
    ----------
    blocks : Blocks
        The data.
    n_clusters : int
        Number of centers.
    rng : numpy.random.Generator
        Source of all randomness; each block's draws are seeded from one
        integer of it, the round and the block's index, so the result does
        not depend on the number of workers or the scheduling.
    oversampling_factor : float
        ``l / n_clusters``: rows expected to be sampled per round, per center.
    n_rounds : int
        Number of sampling rounds (passes over the data).
    client : distributed.Client, optional
        Where to compute; by default the blocks' client.

    Returns
    -------
    ndarray of shape (n_clusters, n_features)

    Raises
    ------
    InvalidDataError
        If the data holds NaN or infinite values (found in the first round).
    """
    n = blocks.n_samples
    seed = int(rng.integers(2**63))
    candidates = _rows(blocks, client, rng.integers(n, size=1))
    if not np.isfinite(candidates).all():
        candidates = np.zeros_like(candidates)  # the first round counts and reports the bad values
    oversampling = float(oversampling_factor) * n_clusters
    for round_ in range(n_rounds):
        results = map_parts(_oversample_block, blocks, client, candidates, oversampling, seed, round_, index=True)
        n_invalid = sum(r[3] for r in results)
        if n_invalid:
            raise _invalid_error(n_invalid)
        phi = math.fsum(r[0] for r in results)
        if phi <= 0.0:
            break  # every row coincides with a candidate
        threshold = oversampling / phi
        new = [r[1][r[2] < threshold] for r in results]
        candidates = np.concatenate([candidates, *new], axis=0)
    counts = map_parts(_count_nearest, blocks, client, candidates)
    weights = np.sum(counts, axis=0)
    if np.count_nonzero(weights) < n_clusters:
        # Fewer distinct candidates than clusters (tiny or repetitive data):
        # add random rows so that k-means++ has enough to choose from.
        extra = _rows(blocks, client, rng.choice(n, size=min(n, 4 * n_clusters), replace=False))
        candidates = np.concatenate([candidates, extra])
        weights = np.concatenate([weights, np.ones(len(extra))])
    keep = weights > 0
    candidates, weights = candidates[keep], weights[keep]
    centers = kmeans_plusplus(candidates, n_clusters, rng, sample_weight=weights)
    return weighted_lloyd(candidates, weights, centers)


def _distinct_rows_plusplus(
    X: np.ndarray, sample_weight: np.ndarray | None, n_clusters: int, rng: np.random.Generator
) -> np.ndarray:
    """Weighted k-means++ on the distinct rows of ``X`` (sorted), each weighing the sum of its copies' weights."""
    X, n_invalid = _finite_rows(X)
    if n_invalid:
        raise _invalid_error(n_invalid)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)  # computes Dask weights
    keep = w > 0
    rows, inverse = np.unique(np.asarray(X[keep], np.float64), axis=0, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=w[keep], minlength=len(rows))
    return kmeans_plusplus(rows, n_clusters, rng, sample_weight=weights)


def _sample_size(blocks: Blocks, n_clusters: int) -> int:
    return int(min(blocks.n_samples, max(10_000, 100 * n_clusters)))


def initial_centers(
    blocks: Blocks,
    n_clusters: int,
    init: Any,
    rng: np.random.Generator,
    *,
    oversampling_factor: float = 2.0,
    init_max_iter: int = 5,
    client: Any = None,
    sample_weight: np.ndarray | None = None,
) -> np.ndarray:
    """Initial centers by ``init``: "k-means||", "k-means++", "random" or an array.

    "k-means++" runs on a random sample of whole blocks (at least 10,000
    rows); "random" picks ``n_clusters`` distinct rows uniformly from all
    the data, reading only the blocks that hold them. When the sample would
    hold every row, "k-means||" and "k-means++" both run weighted k-means++
    on the distinct rows (``sample_weight``, in memory, summed over
    repeats), so that weighting a row and repeating it seed alike.
    """
    if isinstance(init, str):
        small = blocks.array is not None and blocks.n_samples <= _sample_size(blocks, n_clusters)
        if init in ("k-means||", "k-means++") and small:  # (sequences' blocks have no array to index)
            # Every row fits in the sample: weighted k-means++ on the distinct rows in sorted order, so
            # the seeds depend only on the weighted data (a row of weight 3 seeds as three copies would).
            return _distinct_rows_plusplus(_rows(blocks, client, np.arange(blocks.n_samples)), sample_weight,
                                           n_clusters, rng)
        if init == "k-means||":
            return kmeans_parallel_init(
                blocks, n_clusters, rng, oversampling_factor=oversampling_factor, n_rounds=init_max_iter,
                client=client,
            )
        if init == "k-means++":
            sample = blocks.sample(_sample_size(blocks, n_clusters), rng)
            sample, n_invalid = _finite_rows(sample)
            if n_invalid:
                raise _invalid_error(n_invalid)
            return kmeans_plusplus(sample, n_clusters, rng)
        if init == "random":
            return _rows(blocks, client, rng.choice(blocks.n_samples, size=n_clusters, replace=False))
        raise ValueError(f"init must be one of {_INITS} or an array of shape (n_clusters, n_features), got {init!r}")
    centers = np.array(init, dtype=np.float64)
    n_features = blocks.array.shape[1] if blocks.array is not None else centers.shape[-1]
    if centers.shape != (n_clusters, n_features):
        raise ValueError(
            f"init array has shape {centers.shape}, expected (n_clusters, n_features) = "
            f"({n_clusters}, {n_features})"
        )
    if not np.isfinite(centers).all():
        raise ValueError("init array contains NaN or infinite values")
    return centers


def mean_variance(blocks: Blocks, client: Any = None) -> float:
    """Mean over the features of the variance of the data (one pass).

    Block moments are merged on the client in block order (Chan et al.'s
    pairwise update), so the result does not depend on scheduling.
    """
    parts = map_parts(_moments_block, blocks, client)
    n, mean, m2 = 0, None, None
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        if mean is None:
            n, mean, m2 = nb, mb, m2b
            continue
        delta = mb - mean
        total = n + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + delta**2 * (n * nb / total)
        n = total
    return float(np.mean(m2 / n)) if n else 0.0


def lloyd(
    blocks: Blocks,
    params: Any,
    *,
    n_clusters: int,
    max_iter: int,
    tol_scaled: float,
    split_every: int = 8,
    client: Any = None,
    verbose: bool = False,
    checkpoint: Any = None,
    checkpoint_every: int = 1,
    resume: bool | None = None,
    force: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
    label: str = "",
    accelerate: str | None = None,
) -> tuple[KMeansParams, int, bool]:
    """Lloyd's iterations through :func:`dask_em.fit_em`.

    Stops as scikit-learn does, when the squared total shift of the centers
    is at most ``tol_scaled`` (the engine's own log-likelihood tolerance is
    switched off). Returns the parameters, the number of iterations and
    whether that criterion was met.
    """
    callbacks: list[Any] = []
    if verbose:
        from ..progress import Progress

        callbacks += [Progress(label=label), _print_inertia]
    result = fit_em(
        KMeansModel(n_clusters),
        blocks,
        params,
        max_iter=max_iter,
        tol=0.0,
        tol_on="mean",
        split_every=split_every,
        client=client,
        callbacks=callbacks,
        verbose=False,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        force=force,
        checkpoint_meta=checkpoint_meta,
        stop=lambda old, new: float(new.center_shift) <= tol_scaled,
        warn_not_converged=False,
        accelerate=accelerate,
    )
    if verbose and result.converged:
        shift = float(result.params.center_shift)
        how = "strict convergence" if shift == 0 else f"center shift {shift:e} within tolerance {tol_scaled:e}"
        print(f"Converged at iteration {result.n_iter - 1}: {how}.")
    return result.params, result.n_iter, result.converged


def _print_inertia(info: Any) -> None:
    """scikit-learn's verbose line (standard output, iterations counted from 0)."""
    print(f"Iteration {info.iteration - 1}, inertia {-info.loglik:.3f}.")


def kmeans_centers(
    blocks: Blocks,
    n_clusters: int,
    *,
    init: Any = "k-means||",
    max_iter: int = 300,
    tol: float = 1e-4,
    rng: np.random.Generator,
    client: Any,
    split_every: int = 8,
) -> np.ndarray:
    """Cluster centers by k-means, out of core (e.g. to initialise a mixture).

    Parameters
    ----------
    blocks : Blocks
        The data (see :func:`dask_em.engine.prepare_blocks`).
    n_clusters : int
        Number of centers.
    init : {"k-means||", "k-means++", "random"} or ndarray of shape (n_clusters, n_features)
        Seeding method.
    max_iter : int
        Maximum number of Lloyd iterations after seeding (0: seeding only).
    tol : float
        Relative tolerance on the squared shift of the centers, as in
        scikit-learn (multiplied by the mean variance of the data).
    rng : numpy.random.Generator
        Source of randomness.
    client : distributed.Client or None
        Where to compute.

    Returns
    -------
    ndarray of shape (n_clusters, n_features), float64
    """
    if blocks.n_samples < n_clusters:
        raise ValueError(
            f"n_samples={blocks.n_samples} should be >= n_clusters={n_clusters}; decrease n_clusters"
        )
    centers = initial_centers(blocks, n_clusters, init, rng, client=client)
    if max_iter <= 0:
        return centers
    tol_scaled = tol * mean_variance(blocks, client) if tol > 0 else 0.0
    params, _, _ = lloyd(
        blocks,
        KMeansParams.from_centers(centers),
        n_clusters=n_clusters,
        max_iter=max_iter,
        tol_scaled=tol_scaled,
        split_every=split_every,
        client=client,
    )
    return np.array(params.cluster_centers)


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
    accelerate : {None, "squarem"}, default=None
        ``"squarem"`` extrapolates the EM iterations (SQUAREM, Varadhan &
        Roland 2008; see :mod:`dask_em.accelerate`): the same optimum in a
        fraction of the passes where plain EM is slow, never a lower
        log-likelihood at any recorded step. None runs plain EM, which
        matches the reference libraries iteration by iteration.
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
    n_passes_ : int
        Passes over the data the last ``fit`` made: initialisation,
        restarts and refused extrapolations included.
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

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: Any = "k-means||",
        n_init: int | str = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        verbose: int = 0,
        random_state: Any = None,
        copy_x: bool = True,
        algorithm: str = "lloyd",
        split_every: int = 8,
        oversampling_factor: float = 2.0,
        init_max_iter: int = 5,
        accelerate: str | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.accelerate = accelerate
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.split_every = split_every
        self.oversampling_factor = oversampling_factor
        self.init_max_iter = init_max_iter

    def _check_params(self) -> None:  # noqa: D102 (see EMEstimator._check_params)
        super()._check_params()
        self._validate()

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
        if isinstance(self.init, str) and self.init not in _INITS:
            raise ValueError(
                f"init must be one of {_INITS}, a callable or an array of shape (n_clusters, n_features), "
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
        if not isinstance(init, str):
            centers = np.array(init, dtype=np.float64)  # a copy: the user's array is never touched
            n_features = int(blocks.array.shape[1])
            if centers.ndim != 2 or centers.shape[0] != self.n_clusters:
                raise ValueError(
                    f"The shape of the initial centers {centers.shape} does not match the number of "
                    f"clusters {self.n_clusters}."
                )
            if centers.shape[1] != n_features:
                raise ValueError(
                    f"The shape of the initial centers {centers.shape} does not match the number of "
                    f"features of the data {n_features}."
                )
            if not np.isfinite(centers).all():
                raise ValueError("init array contains NaN or infinite values")
            return centers
        return initial_centers(
            blocks,
            self.n_clusters,
            str(init),
            rng,
            oversampling_factor=self.oversampling_factor,
            init_max_iter=self.init_max_iter,
            client=client,
            sample_weight=sample_weight,
        )

    def fit(
        self,
        X: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        client: Any = None,
        checkpoint: Any = None,
        checkpoint_every: int = 1,
        resume: bool | None = None,
        force: bool = False,
    ) -> KMeans:
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like, dask array, zarr array or path of shape (n_samples, n_features)
            Training data.
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Weight of every row (default 1). An integer weight is the same
            as repeating the row; the weights travel with the data's blocks.
        client : distributed.Client, optional
            Where to run (see :func:`dask_em.executor.where`); by default this process.
        checkpoint : str, optional
            Zarr path or URL for resumable snapshots (one sub-group per run
            when ``n_init > 1``).
        checkpoint_every : int
            Snapshot every this many iterations.
        resume : bool, optional
            Resume from ``checkpoint`` if it exists (None), always, or never.
        force : bool
            Resume even if the data or configuration changed.

        Returns
        -------
        self
        """
        n_init = self._validate()
        self._n_init = n_init
        X = validate_in_memory(self, X, reset=True)
        rngs = run_rngs(self.random_state, n_init)
        with where(client, data=X, verbose=self.verbose) as active:
            blocks = prepare_blocks(X, active)
            n_features = int(blocks.array.shape[1])
            if blocks.n_samples < self.n_clusters:
                raise ValueError(
                    f"n_samples={blocks.n_samples} should be >= n_clusters={self.n_clusters}; "
                    "decrease n_clusters or provide more data"
                )
            data = blocks if sample_weight is None else weighted_blocks(blocks, sample_weight, active)
            tol_scaled: float | None = None if self.tol > 0 else 0.0
            model = KMeansModel(self.n_clusters)
            best = None
            for run, rng in enumerate(rngs):
                def init(rng: np.random.Generator = rng) -> KMeansParams:
                    centers = self._initial_centers(X, blocks, rng, active, sample_weight)
                    if self.verbose:
                        print("Initialization complete")
                    return KMeansParams.from_centers(centers)

                if tol_scaled is None:
                    tol_scaled = self.tol * mean_variance(blocks, active)
                params, n_iter, converged = lloyd(
                    data,
                    init,
                    n_clusters=self.n_clusters,
                    max_iter=self.max_iter,
                    tol_scaled=tol_scaled,
                    split_every=self.split_every,
                    client=active,
                    verbose=bool(self.verbose),
                    checkpoint=run_checkpoint(checkpoint, run) if n_init > 1 else checkpoint,
                    checkpoint_every=checkpoint_every,
                    resume=resume,
                    force=force,
                    checkpoint_meta=self.checkpoint_meta(),
                    label=f"kmeans run {run + 1}/{n_init}" if n_init > 1 else "kmeans",
                    accelerate=self.accelerate,
                )
                # scikit-learn reports the inertia of the final centers: one more pass.
                final = expected_stats(model, data, params, active, self.split_every)
                inertia = float(final["inertia"])
                if self.verbose:
                    print(f"dask-em: run {run + 1}/{n_init}: inertia {inertia:.8g}, {n_iter} iterations",
                          file=sys.stderr)
                if best is None or inertia < best[0]:
                    best = (inertia, params, n_iter, converged, int(np.count_nonzero(final["counts"])))
        inertia, params, n_iter, converged, n_distinct = best
        if not converged and self.tol > 0:
            warnings.warn(
                f"k-means did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); "
                "increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        if n_distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({n_distinct}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=2,
            )
        dtype = np.float32 if blocks.array.dtype == np.float32 else np.float64
        self.cluster_centers_ = np.asarray(params.cluster_centers, dtype=dtype)
        self.inertia_ = inertia
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.n_features_in_ = n_features
        self.labels_ = self._nearest(X, _labels, None, np.int64)
        return self

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
        X = validate_in_memory(self, X, reset=False)
        shape = getattr(X, "shape", None)
        if shape is not None and len(shape) == 2 and shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        return X

    def predict(self, X: Any) -> Any:
        """Index of the nearest center of every row.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples,), int64
            Lazy (nothing computed) for Dask, Zarr or path input.
        """
        return self._nearest(self._check_input(X), _labels, None, np.int64)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None, **fit_params: Any) -> Any:
        """Fit, then return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight, **fit_params).labels_

    def transform(self, X: Any) -> Any:
        """Euclidean distance of every row to every center.

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples, n_clusters)
        """
        return self._nearest(self._check_input(X), _distances, self.n_clusters)

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None, **fit_params: Any) -> Any:
        """Fit, then return ``transform(X)``."""
        return self.fit(X, sample_weight=sample_weight, **fit_params).transform(X)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Minus the (weighted) inertia of ``X`` under the fitted centers (computed)."""
        X = self._check_input(X)
        d2 = self._nearest(X, _min_sq_dist, None)
        if sample_weight is not None:
            d2 = d2 * (sample_weight if isinstance(sample_weight, da.Array) else np.asarray(sample_weight, np.float64))
        if isinstance(d2, np.ndarray):
            return -float(d2.sum())
        return -float(d2.sum().compute())
