"""k-means as hard EM: Lloyd's algorithm on blocks of data.

The E-step assigns every row of a block to its nearest center and returns
the per-cluster counts and sums; the M-step moves each center to the mean of
its rows. Both are pure numpy (the per-row work is one compiled loop).

The engine monitors a log-likelihood; for k-means that is ``-inertia``
(minus the sum of squared distances of the rows to their nearest center), so
the engine's "log-likelihood never decreases" property is Lloyd's "inertia
never increases".
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
from numba import njit

from ..contract import Stats, split_weights
from .gmm_kernels import _log_prob_shared

__all__ = [
    "KMeansModel",
    "KMeansParams",
    "kmeans_in_memory",
    "kmeans_plusplus",
    "nearest_center",
    "center_distances",
]


@dataclasses.dataclass(frozen=True)
class KMeansParams:
    """Parameters of :class:`KMeansModel`.

    Attributes
    ----------
    cluster_centers : ndarray of shape (n_clusters, n_features)
        The centers, float64.
    center_shift : ndarray of shape ()
        Sum over the centers of the squared distance each moved in the M-step
        that produced them (``inf`` for initial centers). scikit-learn's Lloyd
        stops when this falls to ``tol`` times the mean variance of the data.
    """

    cluster_centers: np.ndarray
    center_shift: np.ndarray = dataclasses.field(default_factory=lambda: np.array(np.inf))

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"center_shift": "fixed"}

    @classmethod
    def from_centers(cls, centers: np.ndarray) -> KMeansParams:
        """Initial parameters from an array of centers (copied to float64)."""
        return cls(np.array(centers, dtype=np.float64, order="C", copy=True), np.array(np.inf))


# ---------------------------------------------------------------------------
# Compiled kernels. The nearest center of a row is the argmin of
# ``||c||^2 - 2 x.c`` (scikit-learn's search); the inertia of the chosen
# center is then summed exactly as ``sum_j (x_j - c_j)^2``. Rows are
# searched a chunk at a time, in one of three ways:
#
# - up to 32 features: the chunk is copied feature-major and its rows sit in
#   SIMD lanes, so each center costs one multiply-add per feature for eight
#   rows at once, with no sum across lanes (the "lanes search");
# - more features, up to DIRECT_MAX_CLUSTERS centers: row by row, the
#   features in SIMD lanes;
# - beyond: one BLAS product per chunk (chunk @ centers.T).
#
# Each search is one compiled kernel (_assign_lanes, _assign_rows), chosen
# in Python so that numba compiles only the one that runs. Thread CPU of
# an E-step on 131,072 rows (16.8 MB), one thread, medians of three
# alternating runs in separate processes (before: the row-by-row search up
# to 16 centers, BLAS beyond): D=16, K=8 3.5 -> 2.2 ms; D=4, K=3 1.3 ->
# 0.9; D=16, K=16 6.2 -> 2.7; D=8, K=64 8.7 -> 3.2; D=8, K=256 34 -> 9.9;
# D=16, K=1000 132 -> 51. Beyond 32 features (searched as before) the
# E-step is unchanged within this machine's noise (+-20% between runs at
# D=64, K=8; D=784, K=10; D=50, K=100). A lanes search of those in blocks
# of 32 features (partial sums kept between blocks), or with 64 features
# unrolled, compiled to scalar code and measured several times slower.
# Either way a row's values are read as float64, so float32 data is
# handled (and accumulated) in float64.
# ---------------------------------------------------------------------------

#: Rows per chunk of the lanes search: a multiple of the eight float64 SIMD
#: lanes, small enough that the feature-major rows of the copy stay apart
#: from each other in the cache (256 rows measured 4-6x slower at D=32).
LANE_ROWS = 64

#: Most features of the lanes search (its compiled variants: 4, 8, 16, 32).
LANE_MAX_FEATURES = 32

#: Rows per chunk of the other searches (a 256 x 16 float64 chunk is 32 KiB).
CHUNK_ROWS = 256

#: Most centers searched row by row (features in SIMD lanes) when there are
#: too many features for the lanes search; BLAS products beyond.
DIRECT_MAX_CLUSTERS = 16


@njit(nogil=True, fastmath=False, cache=True)
def _row_invalid(X, i):  # pragma: no cover - compiled
    # A finite row sum is the fast path; only when it is not finite are
    # the values counted one by one (a huge but finite row can overflow).
    s = 0.0
    for j in range(X.shape[1]):
        s += X[i, j]
    if math.isfinite(s):
        return 0
    bad = 0
    for j in range(X.shape[1]):
        if not math.isfinite(X[i, j]):
            bad += 1
    return bad


@njit(nogil=True, cache=True, inline="always")
def _sq_dist(X, i, C, c):  # pragma: no cover - compiled
    # Inlined into kernels compiled with re-association, which puts the
    # features in SIMD lanes.
    s = 0.0
    for j in range(X.shape[1]):
        t = X[i, j] - C[c, j]
        s += t * t
    return s


@njit(nogil=True, cache=True, inline="always")
def _nearest_row(X, i, C, cc):  # pragma: no cover - compiled
    # Nearest center of row i, the first on ties, the features in SIMD lanes.
    best = 0
    low = np.inf
    for c in range(C.shape[0]):
        dot = 0.0
        for j in range(X.shape[1]):
            dot += X[i, j] * C[c, j]
        v = cc[c] - 2.0 * dot
        if v < low:
            low = v
            best = c
    return best


@njit(nogil=True, cache=True)
def _aligned(n):  # pragma: no cover - compiled
    # A float64 buffer that starts on a cache line: vector loads that
    # straddle two lines made the lanes search 4x slower.
    raw = np.empty(n + 8)
    s = (8 - (raw.ctypes.data % 64) // 8) % 8
    return raw[s : s + n]


@njit(nogil=True, fastmath={"contract"}, boundscheck=False, cache=True)
def _search_lanes(X, start, stop, XT, C2, cc, best_v, best, block):  # pragma: no cover - compiled
    # The nearest of the centers for rows [start, stop) (at most LANE_ROWS),
    # first center on ties: the rows are copied feature-major into XT
    # (padded features stay zero; lanes past the last row hold an earlier
    # chunk's rows, whose labels are not used). C2 is -2 x the centers, with
    # len(block) features (padded with zeros). That length is a
    # compile-time constant (one compiled search per length: 4, 8, 16 or
    # 32), so the feature loops are unrolled and the row loop vectorized.
    p = len(block)
    d = X.shape[1]
    for r in range(stop - start):
        for j in range(p):  # unrolled
            if j < d:
                XT[j * LANE_ROWS + r] = X[start + r, j]
    for i in range(LANE_ROWS):
        best_v[i] = np.inf
        best[i] = 0
    for c in range(C2.shape[0]):
        q = cc[c]
        for i in range(LANE_ROWS):
            a = q
            for j in range(p):
                a += C2[c, j] * XT[j * LANE_ROWS + i]
            if a < best_v[i]:
                best_v[i] = a
                best[i] = c


@njit(nogil=True, cache=True, inline="always")
def _sq_norms(C):  # pragma: no cover - compiled
    k, d = C.shape
    cc = np.empty(k)
    for c in range(k):
        s = 0.0
        for j in range(d):
            s += C[c, j] * C[c, j]
        cc[c] = s
    return cc


@njit(nogil=True, fastmath={"reassoc", "contract"}, cache=True, inline="always")
def _rows_tail(X, w, C, counts, sum_x, d2, lab, start, stop, sums, check, inertia, n_invalid):  # pragma: no cover
    # Exact squared distances of rows [start, stop) to their centers
    # (non-finite for a row holding NaN/inf); with ``sums``, their weighted
    # sums in row order. With ``check``, a row holding NaN/inf is skipped
    # and counted, its distance set to -1. An empty ``w``: unit weights.
    weighted = w.shape[0] > 0
    for i in range(start, stop):
        best = lab[i]
        s = _sq_dist(X, i, C, best)
        d2[i] = s
        if not sums:
            continue
        if check and not math.isfinite(s):
            bad = _row_invalid(X, i)
            if bad:
                n_invalid += bad
                d2[i] = -1.0
                continue
        wi = w[i] if weighted else 1.0
        counts[best] += wi
        for j in range(X.shape[1]):
            sum_x[best, j] += wi * X[i, j]
        inertia += wi * s
    return inertia, n_invalid


@njit(nogil=True, fastmath={"reassoc", "contract"}, cache=True)
def _assign_lanes(X, w, C, counts, sum_x, d2, lab, sums, check):  # pragma: no cover - compiled
    # _assign with the lanes search (up to LANE_MAX_FEATURES features),
    # LANE_ROWS rows at a time (they stay in cache for the tail).
    n, d = X.shape
    k = C.shape[0]
    p = 4  # the search's features: a power of two from 4 to LANE_MAX_FEATURES
    while p < d:
        p *= 2
    C2 = np.zeros((k, p))  # (explicit loops: numba compiles array expressions slowly)
    for c in range(k):
        for j in range(d):
            C2[c, j] = -2.0 * C[c, j]
    cc = _sq_norms(C)
    XT = _aligned(p * LANE_ROWS)
    for i in range(XT.shape[0]):
        XT[i] = 0.0
    best_v = _aligned(LANE_ROWS)
    best = np.empty(LANE_ROWS, dtype=np.int64)
    inertia = 0.0
    n_invalid = 0
    for start in range(0, n, LANE_ROWS):
        stop = min(n, start + LANE_ROWS)
        if p == 4:
            _search_lanes(X, start, stop, XT, C2, cc, best_v, best, (0,) * 4)
        elif p == 8:
            _search_lanes(X, start, stop, XT, C2, cc, best_v, best, (0,) * 8)
        elif p == 16:
            _search_lanes(X, start, stop, XT, C2, cc, best_v, best, (0,) * 16)
        else:
            _search_lanes(X, start, stop, XT, C2, cc, best_v, best, (0,) * 32)
        for r in range(stop - start):
            lab[start + r] = best[r]
        inertia, n_invalid = _rows_tail(X, w, C, counts, sum_x, d2, lab, start, stop, sums, check, inertia, n_invalid)
    return inertia, n_invalid


@njit(nogil=True, fastmath={"reassoc", "contract"}, cache=True)
def _assign_rows(X, w, C, counts, sum_x, d2, lab, sums, check):  # pragma: no cover - compiled
    # _assign with more than LANE_MAX_FEATURES features: row by row up to
    # DIRECT_MAX_CLUSTERS centers, else one BLAS product per chunk of
    # CHUNK_ROWS rows copied as float64 (NaN/inf read as 0).
    n, d = X.shape
    k = C.shape[0]
    cc = _sq_norms(C)
    direct = k <= DIRECT_MAX_CLUSTERS
    CT = np.ascontiguousarray(C.T)
    buf = np.empty((0 if direct else CHUNK_ROWS, d))  # the BLAS search's copy of a chunk
    inertia = 0.0
    n_invalid = 0
    # row by row, chunks of about 32 KiB (8 rows at least), which the tail reads again from the cache
    step = min(CHUNK_ROWS, max(8, 4096 // d)) if direct else CHUNK_ROWS
    for start in range(0, n, step):
        stop = min(n, start + step)
        if direct:
            for i in range(start, stop):
                lab[i] = _nearest_row(X, i, C, cc)
            inertia, n_invalid = _rows_tail(X, w, C, counts, sum_x, d2, lab, start, stop, sums, check, inertia, n_invalid)
            continue
        m = stop - start
        for r in range(m):
            for j in range(d):
                v = X[start + r, j]
                buf[r, j] = v if math.isfinite(v) else 0.0
        G = np.dot(buf[:m], CT)
        for r in range(m):
            b = 0
            low = cc[0] - 2.0 * G[r, 0]
            for c in range(1, k):
                v = cc[c] - 2.0 * G[r, c]
                if v < low:
                    low = v
                    b = c
            lab[start + r] = b
        inertia, n_invalid = _rows_tail(X, w, C, counts, sum_x, d2, lab, start, stop, sums, check, inertia, n_invalid)
    return inertia, n_invalid


def _assign(
    X: np.ndarray,
    w: np.ndarray,
    C: np.ndarray,
    counts: np.ndarray,
    sum_x: np.ndarray,
    d2: np.ndarray,
    lab: np.ndarray,
    sums: bool,
    check: bool,
) -> tuple[float, int]:
    """Nearest centers of all rows of ``X`` (``lab``) and exact squared distances (``d2``).

    With ``sums``, the rows' weighted counts and sums are added to
    ``counts`` and ``sum_x`` (an empty ``w``: unit weights) and the
    inertia is returned. With ``check``, a row holding NaN/inf is skipped
    and counted (distance -1). The kernel is chosen here rather than in a
    compiled caller, so that numba compiles only the one that runs.
    """
    kernel = _assign_lanes if X.shape[1] <= LANE_MAX_FEATURES else _assign_rows
    return kernel(X, w, C, counts, sum_x, d2, lab, sums, check)


def _lloyd_block(
    X: np.ndarray, w: np.ndarray, C: np.ndarray, counts: np.ndarray, sum_x: np.ndarray, d2: np.ndarray, lab: np.ndarray
) -> tuple[float, int]:
    """Lloyd's sums of a block, added to ``counts`` and ``sum_x``; (inertia, NaN/inf values).

    The first sweep looks at no row's values: a row holding NaN/inf makes
    the inertia non-finite, and only then is the block summed again,
    skipping and counting such rows (4% less thread CPU at D=16, K=8 than
    checking every row, alternating runs). Called from Python, not
    compiled: a compiled caller of the kernel doubled its compile time.
    """
    before = (counts.copy(), sum_x.copy())
    inertia, n_invalid = _assign(X, w, C, counts, sum_x, d2, lab, True, False)
    if math.isfinite(inertia):
        return inertia, n_invalid
    counts[...], sum_x[...] = before
    return _assign(X, w, C, counts, sum_x, d2, lab, True, True)


@njit(nogil=True, fastmath=False, cache=True)
def _farthest(d2, w, m):  # pragma: no cover - compiled
    # Indices of the m rows of largest d2 among those with d2 >= 0 and
    # w > 0 (an empty w: unit weights), in decreasing d2, the earlier row
    # first on ties.
    top_d = np.full(m, -1.0)
    top_i = np.full(m, -1, dtype=np.int64)
    for i in range(d2.shape[0]):
        s = d2[i]
        if m == 0 or not s > top_d[m - 1] or (w.shape[0] > 0 and not w[i] > 0):
            continue
        q = m - 1
        while q > 0 and s > top_d[q - 1]:
            top_d[q] = top_d[q - 1]
            top_i[q] = top_i[q - 1]
            q -= 1
        top_d[q] = s
        top_i[q] = i
    return top_i[top_i >= 0]


def _as_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return np.ascontiguousarray(X)


def _centers(centers: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(centers, dtype=np.float64))


def nearest_center(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest center of every row.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
    sq_dist : ndarray of shape (n_samples,), float64
    """
    X = _as_rows(X)
    labels = np.empty(X.shape[0], dtype=np.int64)
    sq_dist = np.empty(X.shape[0], dtype=np.float64)
    none = np.empty(0)
    _assign(X, none, _centers(centers), none, none.reshape(0, 0), sq_dist, labels, False, False)
    return labels, sq_dist


def center_distances(X: np.ndarray, centers: np.ndarray, squared: bool = False) -> np.ndarray:
    """Euclidean distance of every row to every center, shape (n_samples, n_clusters)."""
    X = _as_rows(X)
    C = _centers(centers)
    halfT = np.empty((C.shape[0], X.shape[0]))
    # the Gaussian kernel with unit scales and no constant: -|x - c|^2 / 2, exactly halved
    _log_prob_shared(X, C, np.ones_like(C), np.zeros(C.shape[0]), halfT)
    out = np.multiply(halfT.T, -2.0)
    return out if squared else np.sqrt(out, out=out)


def kmeans_plusplus(
    X: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    sample_weight: np.ndarray | None = None,
    n_local_trials: int | None = None,
    uniform_draws: bool = False,
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on in-memory rows.

    The one k-means++ of the library: k-means, the Gaussian mixtures, the
    variational mixture, the mixture of experts and model selection all
    seed with it.

    Each new center is the best, by the resulting potential, of
    ``n_local_trials`` rows drawn with probability proportional to weight
    times squared distance to the nearest center chosen so far.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Candidate rows (a sample of the data, or k-means|| candidates).
    n_clusters : int
        Number of centers to choose (at most ``n_samples``).
    rng : numpy.random.Generator
    sample_weight : ndarray of shape (n_samples,), optional
        Weight of every row (e.g. how many data rows a candidate stands for).
    n_local_trials : int, optional
        Default ``2 + int(log(n_clusters))``.
    uniform_draws : bool
        Draw the rows picked uniformly (the first center without weights,
        and candidates once every row coincides with a center) by
        ``rng.integers`` rather than ``rng.choice``. Both are uniform but
        consume the generator differently; the Gaussian mixtures seed this
        way, so that their seeded fits keep the centers they always had,
        and refuse fewer rows than centers (ValueError).

    Returns
    -------
    ndarray of shape (n_clusters, n_features), float64
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if uniform_draws and n < n_clusters:  # the mixtures refuse; k-means may repeat rows
        raise ValueError(f"k-means++ needs at least {n_clusters} rows, got {n}")
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, X.shape[1]))
    if uniform_draws and sample_weight is None:
        first = int(rng.integers(n))
    else:
        first = int(rng.choice(n, p=w / w.sum()))
    centers[0] = X[first]
    closest = center_distances(X, X[first : first + 1], squared=True)[:, 0]
    for c in range(1, n_clusters):
        weighted = w * closest
        total = weighted.sum()
        if total <= 0:
            # Every row already coincides with a center: take any unused row.
            candidates = rng.integers(n, size=n_local_trials) if uniform_draws else rng.choice(n, size=1)
        else:
            cdf = np.cumsum(weighted)
            candidates = np.searchsorted(cdf, rng.uniform(size=n_local_trials) * cdf[-1], side="right")
            candidates = np.minimum(candidates, n - 1)
        dist = center_distances(X, X[candidates], squared=True)
        np.minimum(dist, closest[:, None], out=dist)
        potentials = w @ dist
        best = int(np.argmin(potentials))
        closest = dist[:, best].copy()
        centers[c] = X[candidates[best]]
    return centers


@dataclasses.dataclass(frozen=True)
class FarthestRows:
    """The rows farthest from their nearest center: where empty clusters are moved.

    One block's value holds its ``m`` farthest rows (``m = n_clusters - 1``,
    the most clusters that can be empty); ``a + b`` keeps the ``m``
    farthest of both, so the tree of sums yields the data's ``m`` farthest
    rows, the same whatever the chunking (ties go to the earlier block).

    Attributes
    ----------
    sq_dist : ndarray of shape (m,)
        Squared distance of each row to its nearest center, decreasing.
    rows : ndarray of shape (m, n_features)
    weights : ndarray of shape (m,)
    labels : ndarray of shape (m,)
        The nearest center of each row.
    """

    sq_dist: np.ndarray
    rows: np.ndarray
    weights: np.ndarray
    labels: np.ndarray

    @classmethod
    def of_block(cls, X: np.ndarray, w: np.ndarray, d2: np.ndarray, labels: np.ndarray, m: int) -> FarthestRows:
        """The ``m`` rows of a block farthest from their center (rows of weight 0 or invalid excluded; an empty ``w``: unit weights)."""
        order = _farthest(d2, w, m)
        weights = np.asarray(w[order], np.float64) if len(w) else np.ones(len(order))
        return cls(d2[order], np.asarray(X[order], dtype=np.float64), weights, labels[order])

    def __add__(self, other: FarthestRows) -> FarthestRows:
        m = max(len(self.sq_dist), len(other.sq_dist))
        d2 = np.concatenate([self.sq_dist, other.sq_dist])
        keep = np.argsort(-d2, kind="stable")[:m]
        return FarthestRows(
            d2[keep],
            np.concatenate([self.rows, other.rows])[keep],
            np.concatenate([self.weights, other.weights])[keep],
            np.concatenate([self.labels, other.labels])[keep],
        )

    def relocate(self, counts: np.ndarray, sums: np.ndarray) -> None:
        """Give each empty cluster (in index order) one of the farthest rows, in place.

        As scikit-learn, nothing moves when every row sits on its center
        (more clusters than distinct rows): relocating is pointless there.
        """
        if len(self.sq_dist) == 0 or not self.sq_dist[0] > 0:
            return
        empty = np.flatnonzero(counts == 0)
        for cluster, x, w, label in zip(empty, self.rows, self.weights, self.labels):
            sums[label] -= w * x
            counts[label] -= w
            sums[cluster] = w * x
            counts[cluster] = w


@dataclasses.dataclass(frozen=True)
class KMeansModel:
    """k-means (Lloyd's algorithm) as hard EM.

    Parameters
    ----------
    n_clusters : int
        Number of clusters.

    Notes
    -----
    Statistics of one block (all sums; shapes with K clusters, D features):

    - ``n`` : number of rows (sum of their weights for weighted blocks),
    - ``loglik`` : minus the inertia of the block (what the engine monitors),
    - ``inertia`` : sum of squared distances to the nearest center,
    - ``counts (K,)`` : rows nearest to each center,
    - ``sum_x (K, D)`` : sum of those rows,
    - ``n_invalid`` : NaN and infinite values (such rows are skipped).

    - ``farthest`` : :class:`FarthestRows`, the block's ``K - 1`` rows
      farthest from their center (combined by keeping the farthest).

    A cluster that receives no rows is moved onto the row farthest from its
    center, which leaves its own cluster, as scikit-learn does (the
    ``farthest`` rows travel with the sums, so this costs no extra pass).
    Distances and sums are computed in float64 for float32 data too.
    """

    n_clusters: int = 8

    def init_params(self, sample: np.ndarray, rng: np.random.Generator) -> KMeansParams:
        """k-means++ centers chosen from an in-memory sample of the rows."""
        sample = np.asarray(sample, dtype=np.float64)
        if sample.shape[0] < self.n_clusters:
            raise ValueError(
                f"n_samples={sample.shape[0]} should be >= n_clusters={self.n_clusters}; "
                "decrease n_clusters or provide more data"
            )
        return KMeansParams.from_centers(kmeans_plusplus(sample, self.n_clusters, rng))

    def e_step(self, block: np.ndarray, params: KMeansParams) -> Stats:
        """Assign the rows of ``block`` to their nearest center and sum them.

        ``block`` may be :class:`~dask_em.contract.Weighted`: every row
        then counts with its weight (in ``n``, ``counts``, ``sum_x`` and
        ``inertia``).
        """
        return self._stats_and_labels(block, params)[0]

    def _stats_and_labels(self, block: np.ndarray, params: KMeansParams) -> tuple[Stats, np.ndarray]:
        """The E-step's statistics and the labels of the block's rows."""
        rows, w = split_weights(block)
        X = _as_rows(rows)
        k, d = params.cluster_centers.shape
        counts = np.zeros(k)
        sum_x = np.zeros((k, d))
        weights = np.empty(0) if w is None else w  # empty: unit weights
        d2 = np.empty(X.shape[0])
        labels = np.empty(X.shape[0], dtype=np.int64)
        inertia, n_invalid = _lloyd_block(X, weights, _centers(params.cluster_centers), counts, sum_x, d2, labels)
        stats = {
            "n": np.array(float(X.shape[0]) if w is None else float(w.sum())),
            "loglik": np.array(-inertia),
            "inertia": np.array(inertia),
            "counts": counts,
            "sum_x": sum_x,
            "farthest": FarthestRows.of_block(X, weights, d2, labels, k - 1),
            "n_invalid": np.array(n_invalid),
        }
        return stats, labels

    def m_step(self, stats: Stats, params: KMeansParams) -> KMeansParams:
        """Move every cluster's center to the mean of its rows, after relocating empty clusters.

        As scikit-learn: the i-th empty cluster takes the i-th row farthest
        from its own center, which leaves that row's cluster.
        """
        counts = np.array(stats["counts"], dtype=np.float64)
        sums = np.array(stats["sum_x"], dtype=np.float64)
        far = stats.get("farthest")
        far = far.item() if isinstance(far, np.ndarray) else far
        if far is not None:
            far.relocate(counts, sums)
        old = params.cluster_centers
        filled = counts > 0
        centers = old.copy()
        centers[filled] = sums[filled] / counts[filled, None]
        shift = float(((centers - old) ** 2).sum())
        return KMeansParams(centers, np.array(shift))

    def describe_invalid(self, n_invalid: int) -> str:
        """The error message for data with NaN or infinite values."""
        return (
            f"the data contains {n_invalid} NaN or infinite values; k-means needs every value "
            "finite. Drop or impute the rows that hold them, or fit the missing-data Gaussian "
            "model (dask_em.models.mvn_missing), which handles NaN as missing"
        )


@dataclasses.dataclass(frozen=True)
class BlockLabels:
    """The labels of consecutive blocks' rows, joined by ``+``.

    The tree of sums adds blocks left to right in block order, so the sum
    over all blocks holds every row's label in order.
    """

    parts: tuple[np.ndarray, ...]

    def __add__(self, other: BlockLabels) -> BlockLabels:
        return BlockLabels(self.parts + other.parts)

    def joined(self) -> np.ndarray:
        """All labels, in row order."""
        return np.concatenate(self.parts)


@dataclasses.dataclass(frozen=True)
class LabelledKMeansModel(KMeansModel):
    """:class:`KMeansModel` whose statistics also hold the rows' labels.

    For the pass under the final centers, whose labels are then the
    fitted ``labels_`` (one pass fewer than searching again).
    """

    def e_step(self, block: np.ndarray, params: KMeansParams) -> Stats:
        """:meth:`KMeansModel.e_step`, plus ``labels``: :class:`BlockLabels`."""
        stats, labels = self._stats_and_labels(block, params)
        return {**stats, "labels": BlockLabels((labels,))}


def kmeans_in_memory(
    X: np.ndarray, n_clusters: int, rng: np.random.Generator, n_iter: int = 10, tol: float = 0.0
) -> np.ndarray:
    """k-means++ seeding and up to ``n_iter`` Lloyd iterations on in-memory rows (a sample), no Dask.

    With ``tol > 0`` the iterations stop, as scikit-learn's do, once the
    squared total shift of the centres is at most ``tol`` times the mean
    variance of the columns.

    Returns
    -------
    ndarray of shape (n_clusters, n_features), float64
    """
    model = KMeansModel(n_clusters)
    params = KMeansParams.from_centers(kmeans_plusplus(X, n_clusters, rng))
    tol_scaled = tol * float(np.var(X, axis=0).mean()) if tol > 0 else -1.0
    for _ in range(n_iter):
        params = model.m_step(model.e_step(X, params), params)
        if float(params.center_shift) <= tol_scaled:
            break
    return params.cluster_centers


# -- per-block work of the distributed initialisations (run on workers: pure numpy) --


def _finite_rows(X: np.ndarray) -> tuple[np.ndarray, int]:
    """The rows without NaN/inf, and how many bad values were dropped."""
    X = np.asarray(X)
    if X.dtype.kind != "f":
        return X.astype(np.float64), 0
    finite = np.isfinite(X)
    if finite.all():
        return X, 0
    good = finite.all(axis=1)
    return X[good], int(X.size - np.count_nonzero(finite))


def _block_rng(seed: int, round_: int, index: int) -> np.random.Generator:
    # Seeded from (seed, round, block) alone: the draws of a block do not
    # depend on which worker runs it or in what order.
    return np.random.default_rng([seed, round_, index])


def _oversample_block(
    block: np.ndarray, candidates: np.ndarray, oversampling: float, seed: int, round_: int, index: int
) -> tuple[float, np.ndarray, np.ndarray, int, int]:
    """One k-means|| round on one block.

    A row is kept with probability ``min(1, l d^2 / phi)``, i.e. when
    ``u / d^2 < l / phi`` for its uniform draw ``u``. ``phi`` (the cost of
    the whole data) is not known yet, but it is at least this block's cost
    ``phi_b``, so the rows with ``u / d^2 < l / phi_b`` are a superset of
    the ones kept: they are returned with their keys ``u / d^2`` and the
    client applies the exact threshold once ``phi`` is summed. Expected
    rows returned per block: at most ``l``.
    """
    X, n_invalid = _finite_rows(block)
    n_rows = int(np.asarray(block).shape[0])
    u = _block_rng(seed, round_, index).uniform(size=n_rows)
    if X.shape[0] != n_rows:
        u = u[np.isfinite(np.asarray(block)).all(axis=1)]
    if X.shape[0] == 0:
        return 0.0, np.empty((0, candidates.shape[1])), np.empty(0), n_invalid, 0
    _, d2 = nearest_center(X, candidates)
    np.maximum(d2, 0.0, out=d2)
    phi_b = float(d2.sum())
    if phi_b <= 0.0:
        return 0.0, np.empty((0, X.shape[1])), np.empty(0), n_invalid, X.shape[0]
    with np.errstate(divide="ignore"):
        keys = np.where(d2 > 0, u / np.where(d2 > 0, d2, 1.0), np.inf)
    keep = keys < oversampling / phi_b
    return phi_b, np.asarray(X[keep], dtype=np.float64), keys[keep], n_invalid, X.shape[0]


def _count_nearest(block: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """How many rows of the block are nearest to each candidate, shape (m,)."""
    X, _ = _finite_rows(block)
    labels, _ = nearest_center(X, candidates)
    return np.bincount(labels, minlength=candidates.shape[0]).astype(np.float64)


def _moments_block(block: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Rows, column means and column sums of squared deviations of a block."""
    X = np.asarray(block, dtype=np.float64)
    n = X.shape[0]
    mean = X.mean(axis=0) if n else np.zeros(X.shape[1])
    dev = X - mean
    return n, mean, np.einsum("ij,ij->j", dev, dev)


# -- per-row outputs of a fitted k-means (``KMeans.predict``, ``transform``, ``score``; run on workers) --


def _finite_block(block: np.ndarray) -> np.ndarray:
    """``block``, refused when it holds NaN or inf (they would get a label and a nan inertia)."""
    n_invalid = int(np.count_nonzero(~np.isfinite(block)))
    if n_invalid:
        from ..errors import InvalidDataError

        raise InvalidDataError(KMeansModel().describe_invalid(n_invalid))
    return block


def _nearest_finite(block: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, d2 = nearest_center(block, centers)
    if not np.isfinite(d2).all():  # a row holds NaN/inf (refused), or its distance overflows
        _finite_block(block)
    return labels, d2


def labels_block(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest center of every row, shape (n_rows,)."""
    return _nearest_finite(block, centers)[0]


def min_sq_dist_block(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance of every row to its nearest center, shape (n_rows,)."""
    return _nearest_finite(block, centers)[1]


def distances_block(block: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Euclidean distance of every row to every center, shape (n_rows, n_centers)."""
    return center_distances(_finite_block(block), centers)
