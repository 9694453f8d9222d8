"""Peer tests that do not apply to dask-em, each with its reason (the only tests skipped).

Keys are ``"Class::test"``, ``"test"`` or either with its parameter
(``"test[scaling]"``), under the peer's name.
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
}
