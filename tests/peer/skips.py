"""Every peer test not run against dask-em, with the reason (one place for all peers).

Keys are ``fnmatch`` patterns on the test's file stem and name,
``"<peer test file>::<test name or name[parameters]>"``; matching tests are
deselected at collection (``conftest.py``), so they are neither run nor
counted as applicable.
"""

from __future__ import annotations

#: pattern -> why the test does not apply to dask-em
SKIPS: dict[str, str] = {
    # scikit-learn: sklearn/mixture/tests/test_gaussian_mixture.py
    "test_gaussian_mixture::test_suffstat_sk_*": "tests scikit-learn's private _estimate_gaussian_covariances_* only",
    "test_gaussian_mixture::test_gaussian_suffstat_sk_spherical*": "tests scikit-learn's private functions only",
    "test_gaussian_mixture::test_compute_log_det_cholesky*": "tests scikit-learn's private _compute_log_det_cholesky",
    "test_gaussian_mixture::test_gaussian_mixture_log_probabilities": "tests scikit-learn's private _estimate_log_gaussian_prob",
    "test_gaussian_mixture::test_gaussian_mixture_precisions_init_diag*": (
        "calls scikit-learn's private _estimate_gaussian_parameters and GaussianMixture._set_parameters"
    ),
    "test_gaussian_mixture::test_gaussian_mixture_precisions_init[*": "calls the private GaussianMixture._initialize",
    "test_gaussian_mixture::test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        "mocks scikit-learn's private _estimate_gaussian_parameters"
    ),
    "test_gaussian_mixture::test_gaussian_mixture_array_api_compliance*": (
        "array API dispatch (torch, cupy, ...): dask-em computes in numpy on Dask blocks"
    ),
    "test_gaussian_mixture::test_gaussian_mixture_raises_where_array_api_not_implemented*": (
        "array API dispatch: dask-em computes in numpy on Dask blocks"
    ),
    # scikit-learn: sklearn/cluster/tests/test_k_means.py (dask-em's KMeans is Lloyd on dense blocks)
    "test_k_means::*MiniBatchKMeans*": "MiniBatchKMeans stays scikit-learn's: only KMeans is swapped",
    "test_k_means::test_minibatch_*": "MiniBatchKMeans stays scikit-learn's: only KMeans is swapped",
    "test_k_means::*sparse*": "sparse input: dask-em reads dense blocks",
    "test_k_means::*X_csr*": "sparse input: dask-em reads dense blocks",
    "test_k_means::test_predict_does_not_change_cluster_centers[csr_*": "sparse input: dask-em reads dense blocks",
    "test_k_means::test_relocate_empty_clusters*": "calls scikit-learn's private _relocate_empty_clusters_dense",
    "test_k_means::test_euclidean_distance*": "tests scikit-learn's private _euclidean_dense_dense_wrapper",
    "test_k_means::test_inertia*": "tests scikit-learn's private _inertia_dense/_inertia_sparse",
    "test_k_means::test_is_same_clustering": "tests scikit-learn's private _is_same_clustering",
    "test_k_means::test_sample_weight_init*": "calls the private KMeans._init_centroids",
    "test_k_means::test_sample_weight_zero*": "calls the private KMeans._init_centroids",
    "test_k_means::test_k_means_function": "tests scikit-learn's k_means function, which is not swapped",
    "test_k_means::test_kmeans_plusplus_*": "tests scikit-learn's kmeans_plusplus function, which is not swapped",
}
SKIPS.update(
    {
        # scikit-learn's check_estimator (tests/peer/test_check_estimator.py)
        "test_check_estimator::*check_array_api_input*": (
            "array API dispatch (torch, cupy, ...): dask-em computes in numpy on Dask blocks"
        ),
    }
)
