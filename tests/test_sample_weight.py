"""``fit(X, sample_weight=...)``: an integer weight is the same as repeating the row.

The weights travel with the data's blocks, so the tests use uneven row
chunks that the weights do not share, and compare with the repeated rows
(a different number of rows and blocks) to 1e-10.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import dask_em

RNG = np.random.RandomState(0)
X = np.vstack([RNG.randn(70, 2), RNG.randn(50, 2) + 4.0])
W = RNG.randint(0, 4, size=len(X))  # zeros included: a zero weight drops the row
X_REPEATED = np.repeat(X, W, axis=0)
COUNTS = RNG.poisson([1.0, 3.0, 6.0], size=(120, 3)).astype(float)
BINARY = (RNG.uniform(size=(120, 4)) < [0.2, 0.4, 0.6, 0.8]).astype(float)


def _chunked(X: np.ndarray, w: np.ndarray) -> tuple[da.Array, da.Array]:
    return da.from_array(X, chunks=((37, 50, len(X) - 87), -1)), da.from_array(w, chunks=25)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_gaussian_mixture_weights_equal_repeated_rows(client, covariance_type):
    precisions = {"full": np.stack([np.eye(2)] * 2), "tied": np.eye(2), "diag": np.ones((2, 2)), "spherical": np.ones(2)}
    kwargs = dict(
        covariance_type=covariance_type,
        weights_init=[0.5, 0.5],
        means_init=[[0.0, 0.0], [4.0, 4.0]],
        precisions_init=precisions[covariance_type],
        max_iter=15,
        tol=0.0,
    )
    Xd, wd = _chunked(X, W)
    weighted = dask_em.GaussianMixture(2, **kwargs).fit(Xd, sample_weight=wd, client=client)
    repeated = dask_em.GaussianMixture(2, **kwargs).fit(X_REPEATED, client=client)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=0, atol=1e-10)
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=0, atol=1e-10)


def test_kmeans_weights_equal_repeated_rows(client):
    init = np.array([[0.0, 0.0], [4.0, 4.0], [2.0, 2.0]])
    Xd, wd = _chunked(X, W)
    weighted = dask_em.KMeans(3, init=init, tol=0.0).fit(Xd, sample_weight=wd, client=client)
    repeated = dask_em.KMeans(3, init=init, tol=0.0).fit(X_REPEATED, client=client)
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(weighted.inertia_, repeated.inertia_, rtol=1e-12)
    assert weighted.n_iter_ == repeated.n_iter_
    np.testing.assert_array_equal(np.repeat(np.asarray(weighted.labels_), W), repeated.labels_)


@pytest.mark.parametrize(
    "cls, data, init",
    [
        (dask_em.PoissonMixture, COUNTS, {"lambdas_init": [[0.5, 2.0, 5.0], [1.5, 4.0, 7.0]]}),
        (dask_em.BernoulliMixture, BINARY, {"probabilities_init": [[0.1, 0.3, 0.5, 0.7], [0.3, 0.5, 0.7, 0.9]]}),
        (dask_em.CategoricalMixture, COUNTS, {"probabilities_init": [[0.1, 0.3, 0.6], [0.2, 0.3, 0.5]]}),
    ],
)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_discrete_mixtures_weights_equal_repeated_rows(client, cls, data, init):
    kwargs = dict(weights_init=[0.5, 0.5], max_iter=10, tol=0.0, **init)
    Xd, wd = _chunked(data, W)
    weighted = cls(2, **kwargs).fit(Xd, sample_weight=wd, client=client)
    repeated = cls(2, **kwargs).fit(np.repeat(data, W, axis=0), client=client)
    component = "lambdas_" if cls is dask_em.PoissonMixture else "probabilities_"
    np.testing.assert_allclose(weighted.weights_, repeated.weights_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(getattr(weighted, component), getattr(repeated, component), rtol=0, atol=1e-10)
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_unit_weights_change_nothing(client):
    plain = dask_em.GaussianMixture(2, means_init=[[0.0, 0.0], [4.0, 4.0]], max_iter=5, tol=0, random_state=0).fit(X, client=client)
    ones = dask_em.GaussianMixture(2, means_init=[[0.0, 0.0], [4.0, 4.0]], max_iter=5, tol=0, random_state=0).fit(
        X, sample_weight=np.ones(len(X)), client=client
    )
    np.testing.assert_allclose(plain.means_, ones.means_, rtol=1e-12)
    np.testing.assert_allclose(plain.lower_bounds_, ones.lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(5), r"sample_weight.shape == \(5,\), expected \(120,\)"),
        (-np.ones(120), "finite and non-negative"),
        (np.zeros(120), "zero for every row"),
    ],
)
def test_bad_weights_are_refused(client, weights, match):
    with pytest.raises(ValueError, match=match):
        dask_em.KMeans(2, init=X[:2]).fit(X, sample_weight=weights, client=client)
