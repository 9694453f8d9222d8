"""Real data sets bundled with scikit-learn: fits to convergence equal scikit-learn's.

Parity tests elsewhere use synthetic data and a fixed number of
iterations; here the data are measurements (iris, wine, breast cancer,
handwritten digits: 4 to 64 features, correlated, on different scales) and
both libraries run to their own convergence test from the same start, so
the iteration counts must agree too.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets
from sklearn.cluster import KMeans as SKKMeans
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from dask_em import GaussianMixture, KMeans

# A regularised M-step (reg_covar) may lower the likelihood slightly: both libraries do the same.
pytestmark = pytest.mark.filterwarnings("ignore::dask_em.errors.LikelihoodDecreaseWarning")

DATASETS = {
    "iris": (datasets.load_iris, 3),
    "wine": (datasets.load_wine, 3),
    "breast_cancer": (datasets.load_breast_cancer, 2),
    "digits": (datasets.load_digits, 10),
}


def initial_values(X: np.ndarray, K: int, covariance_type: str) -> dict[str, np.ndarray]:
    """Equal weights, K data rows as means, the data's variances as covariances."""
    rng = np.random.default_rng(1)
    var = X.var(axis=0) + 1e-3  # digits has constant pixels
    precisions = {
        "full": np.stack([np.diag(1 / var)] * K),
        "tied": np.diag(1 / var),
        "diag": np.stack([1 / var] * K),
        "spherical": np.full(K, 1 / var.mean()),
    }[covariance_type]
    return dict(weights_init=np.full(K, 1 / K), means_init=X[rng.choice(len(X), K, replace=False)],
                precisions_init=precisions)


# every covariance type on iris, two each on the larger sets (the suite's time budget)
CASES = [("iris", ct) for ct in ("full", "tied", "diag", "spherical")] + [
    ("wine", "full"), ("wine", "spherical"), ("breast_cancer", "full"), ("breast_cancer", "diag"),
    ("digits", "tied"), ("digits", "diag"),
]


@pytest.mark.parametrize(("name", "covariance_type"), CASES)
def test_gaussian_mixture_converges_where_scikit_learn_does(client, name, covariance_type):
    loader, K = DATASETS[name]
    X = loader().data.astype(np.float64)
    kwargs = dict(n_components=K, covariance_type=covariance_type, reg_covar=1e-3, max_iter=200, tol=1e-4,
                  **initial_values(X, K, covariance_type))
    ref = SKGaussianMixture(**kwargs).fit(X)
    ours = GaussianMixture(**kwargs).fit(X)
    assert ours.n_iter_ == ref.n_iter_ and ours.converged_ == ref.converged_
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-10)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8, atol=1e-8 * np.abs(ref.means_).max())
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_kmeans_converges_where_scikit_learn_does(client, name):
    loader, K = DATASETS[name]
    X = loader().data.astype(np.float64)
    ref = SKKMeans(K, init=X[:K], n_init=1, algorithm="lloyd", tol=1e-8, max_iter=300).fit(X)
    ours = KMeans(K, init=X[:K], n_init=1, tol=1e-8, max_iter=300).fit(X)
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-10)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-10, atol=1e-10)
