"""scikit-learn's estimator checks (``check_estimator``) on dask-em's estimators.

The checks apply to estimators that take one 2-D array of real values:
the Gaussian mixtures, k-means, factor analysis, probabilistic PCA and the
multivariate normal with missing values (these three treat NaN as missing,
so they carry scikit-learn's ``allow_nan`` tag and the checks expect NaN
accepted and infinity refused), and the regressors that take real inputs
and targets, the mixtures of linear experts (their few checks of a
convention they depart from on purpose are strict expected failures, each
with its reason in ``peer_skips.EXPECTED_FAILED_CHECKS``). HMMs take
sequences, the discrete mixtures take counts or binary data, random
effects take groups: the checks' random real data is outside what they model.
"""

from __future__ import annotations

from peer_skips import EXPECTED_FAILED_CHECKS
from sklearn.utils.estimator_checks import parametrize_with_checks

import dask_em

PEER = "scikit-learn"


@parametrize_with_checks(
    [
        dask_em.GaussianMixture(),
        dask_em.KMeans(),
        dask_em.BayesianGaussianMixture(),
        dask_em.FactorAnalysis(),
        dask_em.PPCA(),
        dask_em.MultivariateNormal(),
        dask_em.MixtureOfExperts(),
        dask_em.MixtureOfLinearRegressions(),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {}),
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
