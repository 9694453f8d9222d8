"""scikit-learn's own KMeans tests (Lloyd, dense input), run on ``dask_em.KMeans``."""

from __future__ import annotations

from _adapter import expose, load_suite

PEER = "scikit-learn"

SWAP = {
    "from sklearn.cluster import KMeans, MiniBatchKMeans, k_means, kmeans_plusplus": (
        "from sklearn.cluster import MiniBatchKMeans, k_means, kmeans_plusplus; from dask_em import KMeans"
    )
}

expose(load_suite("sklearn.cluster.tests.test_k_means", SWAP), globals())
