"""Distributed initialisations: k-means|| seeding, Lloyd's iterations, random responsibilities.

The starts of the clustering and mixture estimators, run on Dask (or in
this process) through the engine: no scikit-learn here, so that workers
running :class:`RandomResponsibilities` or a k-means|| round import only
numpy and the models.

- :func:`initial_centers`: "k-means||" (:func:`kmeans_parallel_init`, out
  of core), "k-means++" on a sample, or random rows;
- :func:`kmeans_centers`: seeding then Lloyd's iterations (:func:`lloyd_options`
  through :func:`dask_em.fit_em`), e.g. the centres of a mixture's "kmeans" start;
- :func:`kmeans_stats`, :func:`random_stats`: a Gaussian mixture's initial
  statistics over all the data (hard k-means assignments, or random
  responsibilities, one seeded generator per block), and
  :func:`sample_stats`, the same on an in-memory sample (no pass).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from .contract import Stats
from .data import Blocks, in_memory_blocks
from .engine import expected_stats, fit_em, map_parts
from .errors import InvalidDataError
from .executor import compute
from .monitor import count_pass
from .models.gmm import SUB_BLOCK_ROWS, GaussianMixtureModel, HardAssignment, _with_index, _Workspace
from .models.kmeans import (
    KMeansModel,
    KMeansParams,
    _count_nearest,
    _finite_rows,
    _moments_block,
    _oversample_block,
    kmeans_in_memory,
    kmeans_plusplus,
    nearest_center,
)

__all__ = [
    "RandomResponsibilities",
    "initial_centers",
    "kmeans_centers",
    "kmeans_parallel_init",
    "kmeans_stats",
    "lloyd_options",
    "mean_variance",
    "random_stats",
    "sample_stats",
]

#: Seeding methods of :func:`initial_centers`.
INITS = ("k-means||", "k-means++", "random")


# ---------------------------------------------------------------------------
# k-means seeding
# ---------------------------------------------------------------------------


def _rows(blocks: Blocks, client: Any, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` (sorted) of the data, reading only the blocks that hold them."""
    assert blocks.array is not None
    values = in_memory_blocks(blocks) if client is None else None
    if values is not None:  # no graph for a few rows of data in this process
        index = np.sort(index)
        starts = np.cumsum((0, *blocks.array.chunks[0][:-1]))
        which = np.searchsorted(starts, index, side="right") - 1
        return np.concatenate(
            [np.asarray(values[b][index[which == b] - starts[b]], np.float64) for b in np.unique(which)]
        ) if len(index) else np.zeros((0, blocks.array.shape[1]))
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
    blocks: Blocks, n_clusters: int, rng: np.random.Generator, *, oversampling_factor: float = 2.0,
    n_rounds: int = 5, client: Any = None,
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
    """Weighted k-means++ on the distinct rows of ``X`` (sorted), each weighing the sum of its copies' weights.

    With fewer distinct rows than clusters (constant or repetitive data),
    each distinct row stands as many times as it takes (its weight shared
    among its copies): some centers then coincide, and the fit reports
    fewer distinct clusters.
    """
    X, n_invalid = _finite_rows(X)
    if n_invalid:
        raise _invalid_error(n_invalid)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)  # computes Dask weights
    keep = w > 0
    rows, inverse = np.unique(np.asarray(X[keep], np.float64), axis=0, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=w[keep], minlength=len(rows))
    copies = -(-n_clusters // max(len(rows), 1))
    if copies > 1:
        rows, weights = np.repeat(rows, copies, axis=0), np.repeat(weights / copies, copies)
    return kmeans_plusplus(rows, n_clusters, rng, sample_weight=weights)


def _sample_size(blocks: Blocks, n_clusters: int) -> int:
    return int(min(blocks.n_samples, max(10_000, 100 * n_clusters)))


def initial_centers(
    blocks: Blocks, n_clusters: int, init: Any, rng: np.random.Generator, *, oversampling_factor: float = 2.0,
    init_max_iter: int = 5, client: Any = None, sample_weight: np.ndarray | None = None,
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
        raise ValueError(f"init must be one of {INITS} or an array of shape (n_clusters, n_features), got {init!r}")
    centers = np.array(init, dtype=np.float64)  # a copy: the caller's array is never touched
    n_features = blocks.array.shape[1] if blocks.array is not None else centers.shape[-1]
    # scikit-learn's messages
    if centers.ndim != 2 or centers.shape[0] != n_clusters:
        raise ValueError(
            f"The shape of the initial centers {centers.shape} does not match the number of clusters {n_clusters}."
        )
    if centers.shape[1] != n_features:
        raise ValueError(
            f"The shape of the initial centers {centers.shape} does not match the number of "
            f"features of the data {n_features}."
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


# ---------------------------------------------------------------------------
# Lloyd's iterations
# ---------------------------------------------------------------------------


def lloyd_options(tol_scaled: float, *, verbose: bool = False, label: str = "") -> dict[str, Any]:
    """:func:`dask_em.fit_em`'s options that make its iterations Lloyd's, stopping as scikit-learn does.

    The fit stops when the squared total shift of the centers is at most
    ``tol_scaled`` (the engine's own log-likelihood tolerance is switched
    off). ``verbose`` adds a progress line (labelled ``label``) and
    scikit-learn's "Iteration i, inertia ..." lines.
    """
    callbacks: list[Callable[[Any], None]] = []
    if verbose:
        from .progress import Progress

        callbacks += [Progress(label=label), _print_inertia]
    return {
        "tol": 0.0, "tol_on": "mean", "verbose": False, "callbacks": callbacks,
        "stop": lambda old, new: float(new.center_shift) <= tol_scaled,
    }


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
    result = fit_em(
        KMeansModel(n_clusters), blocks, KMeansParams.from_centers(centers), max_iter=max_iter,
        split_every=split_every, client=client, warn_not_converged=False, **lloyd_options(tol_scaled),
    )
    return np.array(result.params.cluster_centers)


# ---------------------------------------------------------------------------
# Gaussian mixtures' starts
# ---------------------------------------------------------------------------


#: Above this many rows, a mixture's "kmeans" start clusters a uniform
#: sample of this many rows in memory rather than running Lloyd's
#: iterations over all the data (see :func:`kmeans_stats`).
KMEANS_START_ROWS = 20_000


def kmeans_stats(
    model: GaussianMixtureModel, blocks: Blocks, rng: np.random.Generator, client: Any, split_every: int = 8
) -> tuple[Stats, np.ndarray]:
    """Hard-assignment statistics around k-means centres, about a reference point.

    Up to :data:`KMEANS_START_ROWS` rows (and for weighted rows): seeding,
    Lloyd's iterations to convergence over all the data (:func:`kmeans_centers`),
    then one pass assigning every row to its nearest centre, as scikit-learn's
    "kmeans" start does. Above it, the centres come from k-means++ and
    Lloyd's iterations on a uniform sample of that many rows in memory: one
    read of the sampled rows and the assignment pass, instead of a pass per
    Lloyd iteration (50-150 on overlapping data, more than the EM fit
    itself), while the EM iterations that follow refine the start. NaN or
    infinite values are reported in the words of ``model``.
    """
    K = model.n_components
    sampled = blocks.array is not None and blocks.n_samples > max(KMEANS_START_ROWS, K) and not blocks.weighted
    try:
        if sampled:
            rows = _rows(blocks, client, rng.choice(blocks.n_samples, KMEANS_START_ROWS, replace=False))
            count_pass()  # the sampled rows lie in (nearly) every block
            rows, n_invalid = _finite_rows(rows)
            if n_invalid:
                raise _invalid_error(n_invalid)
            centers = kmeans_in_memory(rows, K, rng, n_iter=300, tol=1e-4)
        else:
            centers = kmeans_centers(blocks, K, rng=rng, client=client, split_every=split_every)
    except InvalidDataError as exc:
        found = re.search(r"(\d+) NaN", str(exc))
        if found is None:
            raise
        raise InvalidDataError(model.describe_invalid(int(found.group(1)))) from None
    hard = HardAssignment(centers=np.asarray(centers, np.float64), covariance_type=model.covariance_type)
    stats = expected_stats(hard, blocks, None, client, split_every)
    return stats, hard.reference()


def random_stats(
    model: GaussianMixtureModel, blocks: Blocks, rng: np.random.Generator, client: Any, split_every: int = 8
) -> tuple[Stats, np.ndarray]:
    """Statistics of uniformly random responsibilities of every row (one seeded generator per block), one pass."""
    sample = np.asarray(blocks.sample(1000, rng), np.float64)
    finite = np.isfinite(sample).all(axis=1)
    center = sample[finite].mean(axis=0) if finite.any() else np.zeros(sample.shape[1])
    random_model = RandomResponsibilities(
        n_components=model.n_components,
        covariance_type=model.covariance_type,
        seed=int(rng.integers(2**63)),
        center=tuple(float(c) for c in center),
    )
    indexed = Blocks(
        parts=[dask.delayed(_with_index, pure=True)(i, part) for i, part in enumerate(blocks.parts)],
        n_samples=blocks.n_samples,
        array=blocks.array,
        fingerprint=blocks.fingerprint,
        client=blocks.client,
    )
    stats = expected_stats(random_model, indexed, None, client, split_every)
    return stats, center


def sample_stats(
    model: GaussianMixtureModel, sample: np.ndarray, init: str, rng: np.random.Generator
) -> tuple[Stats, np.ndarray]:
    """:func:`kmeans_stats` (``init="kmeans"``) or :func:`random_stats` (``"random"``) on an in-memory sample.

    k-means++ and Lloyd's iterations on the sample's finite rows, then
    their hard assignments; or random responsibilities of those rows. No
    pass over the data (a restart's start).
    """
    sample = np.asarray(sample, np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if init == "kmeans":
        hard = HardAssignment(kmeans_in_memory(sample, model.n_components, rng), model.covariance_type)
        return hard.e_step(sample, None), hard.reference()
    center = sample.mean(axis=0)
    random = RandomResponsibilities(
        model.n_components, model.covariance_type, int(rng.integers(2**63)), tuple(float(c) for c in center)
    )
    return random.e_step((0, sample), None), center


@dataclass(frozen=True)
class RandomResponsibilities:
    """Statistics of uniformly random responsibilities (scikit-learn's "random" init).

    The engine maps :meth:`e_step` over ``(block_index, block)`` pairs;
    each block's draws come from a generator seeded by ``seed`` and the
    block's index, so the result does not depend on scheduling.
    """

    n_components: int
    covariance_type: str
    seed: int
    center: tuple[float, ...]

    def init_params(self, sample: Any, rng: np.random.Generator) -> None:  # pragma: no cover - unused
        return None

    def e_step(self, item: tuple[int, Any], params: Any) -> Stats:
        """Random-responsibility sums of one block, about ``center``."""
        index, block = item
        X = np.asarray(block)
        K = self.n_components
        D = X.shape[1]
        model = GaussianMixtureModel(K, self.covariance_type)
        stats = model._zero_stats(D)
        work = _Workspace(min(SUB_BLOCK_ROWS, X.shape[0]), K, D, self.covariance_type)
        rng = np.random.default_rng([self.seed, index])
        center = np.asarray(self.center)
        n_invalid = 0
        for start in range(0, X.shape[0], SUB_BLOCK_ROWS):
            Y = np.subtract(X[start : start + SUB_BLOCK_ROWS], center, dtype=np.float64)
            resp = rng.uniform(size=(Y.shape[0], K))
            resp /= resp.sum(axis=1, keepdims=True)
            bad = ~np.isfinite(Y).all(axis=1)
            if bad.any():
                n_invalid += int((~np.isfinite(Y[bad])).sum())
                Y[bad] = 0.0
                resp[bad] = 0.0
            model._accumulate(stats, Y, resp, work)
        stats["n"] = np.array(float(X.shape[0]))
        stats["loglik"] = np.array(0.0)
        stats["n_invalid"] = np.array(n_invalid)
        return stats

    def describe_invalid(self, n_invalid: int) -> str:
        """Same message as the mixture model's."""
        return GaussianMixtureModel(self.n_components, self.covariance_type).describe_invalid(n_invalid)

    def m_step(self, stats: Stats, params: Any) -> Any:  # pragma: no cover - one pass only
        return params
