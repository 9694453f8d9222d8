"""Peer tests that do not apply to dask-em, each with its reason (the only tests skipped).

Keys are ``"Class::test"``, ``"test"`` or either with its parameter
(``"test[scaling]"``), under the peer's name; a key with ``*`` is a pattern
on the test's name with its parameters.

``EXPECTED_FAILED_CHECKS`` lists, per estimator, scikit-learn's estimator
checks that test a convention the estimator departs from on purpose; they
run as strict expected failures (``parametrize_with_checks``'s
``expected_failed_checks``), so one that starts passing fails the suite.
"""

from __future__ import annotations

SKIPS: dict[str, dict[str, str]] = {
    "hmmlearn": {
        # private functions and attributes of hmmlearn
        "test_covar_is_writeable": "reads hmmlearn's private _covars_ attribute",
        "test_fit_too_little_data": "expects the log record of hmmlearn's private _init() check of its own size",
        "test_fit_with_priors": "compares hmmlearn's private _covars_ attribute",
        "test__check_and_set_categorical_n_features": "calls hmmlearn's private _check_and_set_n_features()",
        # a limitation of hmmlearn's scaling recursion that dask-em does not share
        "test_underflow_from_scaling[scaling]": (
            "expects hmmlearn's scaling forward pass to underflow (ValueError) on an outlier; dask-em shifts "
            "the emission log-probabilities by their per-step maximum, so the same fit succeeds (the [log] "
            "case, which expects success, runs)"
        ),
    },
    "scikit-learn": {
        # sklearn/mixture/tests/test_gaussian_mixture.py
        "test_suffstat_sk_full": "tests scikit-learn's private _estimate_gaussian_covariances_full only",
        "test_suffstat_sk_tied": "tests scikit-learn's private _estimate_gaussian_covariances_tied only",
        "test_suffstat_sk_diag": "tests scikit-learn's private _estimate_gaussian_covariances_diag only",
        "test_gaussian_suffstat_sk_spherical": "tests scikit-learn's private _estimate_gaussian_covariances_spherical",
        "test_compute_log_det_cholesky": "tests scikit-learn's private _compute_log_det_cholesky",
        "test_gaussian_mixture_log_probabilities": "tests scikit-learn's private _estimate_log_gaussian_prob",
        "test_gaussian_mixture_precisions_init_diag": (
            "calls scikit-learn's private _estimate_gaussian_parameters and GaussianMixture._set_parameters"
        ),
        "test_gaussian_mixture_precisions_init": "calls the private GaussianMixture._initialize",
        "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
            "mocks scikit-learn's private _estimate_gaussian_parameters"
        ),
        "test_gaussian_mixture_array_api_compliance": (
            "array API dispatch (torch, cupy, ...): dask-em computes in numpy on Dask blocks"
        ),
        "test_gaussian_mixture_raises_where_array_api_not_implemented": (
            "array API dispatch: dask-em computes in numpy on Dask blocks"
        ),
        # sklearn/cluster/tests/test_k_means.py: dask-em's KMeans is Lloyd on dense blocks
        "*MiniBatchKMeans*": "MiniBatchKMeans stays scikit-learn's: only KMeans is swapped",
        "test_minibatch_*": "MiniBatchKMeans stays scikit-learn's: only KMeans is swapped",
        "*-sparse_*": "sparse input: dask-em reads dense blocks",
        "*[sparse_*": "sparse input: dask-em reads dense blocks",
        "*X_csr*": "sparse input: dask-em reads dense blocks",
        "test_predict_does_not_change_cluster_centers[csr_*": "sparse input: dask-em reads dense blocks",
        "test_relocate_empty_clusters": "calls scikit-learn's private _relocate_empty_clusters_dense",
        "test_euclidean_distance": "tests scikit-learn's private _euclidean_dense_dense_wrapper",
        "test_inertia": "tests scikit-learn's private _inertia_dense and _inertia_sparse",
        "test_is_same_clustering": "tests scikit-learn's private _is_same_clustering",
        "test_sample_weight_init": "calls the private KMeans._init_centroids",
        "test_sample_weight_zero": "calls the private KMeans._init_centroids",
        "test_k_means_function": "tests scikit-learn's k_means function, which is not swapped",
        "test_kmeans_plusplus_*": "tests scikit-learn's kmeans_plusplus function, which is not swapped",
        # scikit-learn's check_estimator (test_check_estimator.py)
        "*check_array_api_input*": "array API dispatch (torch, cupy, ...): dask-em computes in numpy on Dask blocks",
    },
}


_REGRESSOR_PROBA = (
    "predict_proba gives each expert's probability (the gates g_k(x); with y, the posterior), the model's "
    "latent classes as GaussianMixture.predict_proba gives its components'; the check forbids the method on "
    "any regressor. scikit-learn itself dispatches on the regressor tag (is_regressor, _get_response_values), "
    "and score, scorers and cross-validation use predict"
)
_REGRESSOR_SCORE_SAMPLES = (
    "calls score_samples(X) with the inputs only; a mixture of experts' score_samples is the log-likelihood "
    "of (x, y) and needs the targets (it says so). tests/test_experts.py checks the same invariances of "
    "predict, predict_proba and score_samples(X, y)"
)
_REGRESSOR_CHECKS = {
    "check_regressors_no_decision_function": _REGRESSOR_PROBA,
    "check_methods_sample_order_invariance": _REGRESSOR_SCORE_SAMPLES,
    "check_methods_subset_invariance": _REGRESSOR_SCORE_SAMPLES,
}

EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    "MixtureOfExperts": _REGRESSOR_CHECKS,
    "MixtureOfLinearRegressions": _REGRESSOR_CHECKS,
}
