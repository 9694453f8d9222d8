"""scikit-learn's own GaussianMixture tests, run on ``dask_em.GaussianMixture``."""

from _adapter import peer_tests

globals().update(
    peer_tests(
        "sklearn.mixture.tests.test_gaussian_mixture",
        {"from sklearn.mixture import GaussianMixture": "from dask_em import GaussianMixture"},
    )
)
