"""scikit-learn's own GaussianMixture tests, run on ``dask_em.GaussianMixture``."""

from __future__ import annotations

from _adapter import expose, load_suite

PEER = "scikit-learn"

expose(load_suite("sklearn.mixture.tests.test_gaussian_mixture", {"from sklearn.mixture import GaussianMixture": "from dask_em import GaussianMixture"}), globals())
