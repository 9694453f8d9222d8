"""scikit-learn's own KMeans tests (Lloyd, dense input), run on ``dask_em.KMeans``."""

from _adapter import peer_tests

globals().update(
    peer_tests(
        "sklearn.cluster.tests.test_k_means",
        {
            "from sklearn.cluster import KMeans, MiniBatchKMeans, k_means, kmeans_plusplus": (
                "from sklearn.cluster import MiniBatchKMeans, k_means, kmeans_plusplus; from dask_em import KMeans"
            )
        },
    )
)
