"""MultivariateNormal and the Gaussian mixture with missing values."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from dask_em import fit_em
from dask_em.errors import InvalidDataError
from dask_em.estimators.missing import MultivariateNormal
from dask_em.models.mvn_missing import MVNMissingModel, MVNParams


def _observed_loglik(X, mean, cov):
    """Sum over rows of the marginal normal log-density of the observed entries."""
    seen = ~np.isnan(X)
    total = 0.0
    for pattern in np.unique(seen, axis=0):
        if pattern.any():
            rows = X[(seen == pattern).all(axis=1)][:, pattern]
            total += multivariate_normal(mean[pattern], cov[np.ix_(pattern, pattern)]).logpdf(rows).sum()
    return total


def _mar_data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.6, 0.3], [0.6, 2.0, -0.4], [0.3, -0.4, 1.5]])
    X = rng.multivariate_normal([1.0, -2.0, 0.5], cov, size=n)
    # missing at random: whether columns 1 and 2 are seen depends on column 0
    X[(X[:, 0] > 1.3) & (rng.random(n) < 0.7), 1] = np.nan
    X[(X[:, 0] < 0.5) & (rng.random(n) < 0.5), 2] = np.nan
    X[rng.random(n) < 0.1, 0] = np.nan
    return X


def test_estimator_agrees_with_direct_maximisation(client):
    X = _mar_data()
    D = X.shape[1]
    tril = np.tril_indices(D)

    def unpack(theta):
        L = np.zeros((D, D))
        L[tril] = theta[D:]
        L[np.diag_indices(D)] = np.exp(np.diag(L))
        return theta[:D], L @ L.T

    def objective(theta):
        mean, cov = unpack(theta)
        return -_observed_loglik(X, mean, cov)

    start = np.concatenate([np.nanmean(X, axis=0), np.eye(D)[tril] * 0])
    best = minimize(objective, start, method="BFGS", options={"gtol": 1e-9, "maxiter": 2000})
    mean_opt, cov_opt = unpack(best.x)

    est = MultivariateNormal(tol=1e-12, max_iter=2000).fit(da.from_array(X, chunks=(40, 3)), client=client)
    assert est.converged_
    np.testing.assert_allclose(est.mean_, mean_opt, atol=1e-5)
    np.testing.assert_allclose(est.covariance_, cov_opt, atol=1e-5)
    total = _observed_loglik(X, est.mean_, est.covariance_)
    assert total >= -best.fun - 1e-8
    np.testing.assert_allclose(est.lower_bound_ * len(X), total, rtol=1e-9)
    assert np.all(np.diff(est.lower_bounds_) >= -1e-12)


def test_complete_data_gives_sample_mean_and_mle_covariance(client):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4)) + 100.0
    est = MultivariateNormal(max_iter=5).fit(da.from_array(X, chunks=(128, 4)), client=client)
    np.testing.assert_allclose(est.mean_, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(est.covariance_, np.cov(X.T, bias=True), rtol=1e-10)
    assert est.converged_


def test_e_step_is_chunking_invariant_and_matches_brute_force():
    X = _mar_data(n=80, seed=3)
    X[5] = np.nan
    model = MVNMissingModel()
    params = MVNParams(np.array([0.5, -1.0, 0.0]), np.array([[2.0, 0.5, 0.1], [0.5, 1.5, 0.2], [0.1, 0.2, 1.0]]))
    whole = model.e_step(X, params)
    parts = [model.e_step(X[i : i + 13], params) for i in range(0, len(X), 13)]
    for key in whole:
        np.testing.assert_allclose(sum(p[key] for p in parts), whole[key], rtol=1e-12, atol=1e-12)
    assert whole["n"] == 79 and whole["n_all_missing"] == 1
    np.testing.assert_allclose(whole["loglik"], _observed_loglik(X, params.mean, params.covariance), rtol=1e-12)


def test_many_patterns_and_wide_rows():
    # more than 64 features: the pattern keys span several machine words
    rng = np.random.default_rng(4)
    D = 70
    A = rng.normal(size=(D, D)) / np.sqrt(D)
    cov = A @ A.T + np.eye(D)
    X = rng.multivariate_normal(np.zeros(D), cov, size=60)
    X[rng.random(X.shape) < 0.3] = np.nan
    X[:10, :40] = np.nan  # one repeated pattern block
    X[:10, 40:] = X[0, 40:]
    stats = MVNMissingModel().e_step(X, MVNParams(np.zeros(D), cov))
    np.testing.assert_allclose(stats["loglik"], _observed_loglik(X, np.zeros(D), cov), rtol=1e-10)


def test_impute_and_score_samples(client):
    rng = np.random.default_rng(2)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    X = rng.multivariate_normal([0, 0], cov, size=2000)
    X[rng.random(2000) < 0.3, 1] = np.nan
    est = MultivariateNormal(tol=1e-10, max_iter=500).fit(X, client=client)
    np.testing.assert_allclose(est.covariance_, cov, atol=0.1)
    query = np.array([[1.0, np.nan], [np.nan, np.nan], [0.5, 0.2]])
    filled = est.impute(query)
    m, S = est.mean_, est.covariance_
    np.testing.assert_allclose(filled[0, 1], m[1] + S[1, 0] / S[0, 0] * (1.0 - m[0]), rtol=1e-12)
    np.testing.assert_allclose(filled[1], m)
    np.testing.assert_array_equal(filled[2], query[2])
    lazy = est.impute(da.from_array(query, chunks=(2, 2)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(scheduler="sync"), filled)
    scores = est.score_samples(query)
    np.testing.assert_allclose(scores[0], multivariate_normal(m[0], S[0, 0]).logpdf(1.0))
    assert scores[1] == 0.0
    np.testing.assert_allclose(scores[2], multivariate_normal(m, S).logpdf(query[2]))


def test_all_missing_rows_are_counted_and_ignored_with_warning(client):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 3))
    X[[3, 50, 77]] = np.nan
    with pytest.warns(UserWarning, match="3 row"):
        est = MultivariateNormal(max_iter=5).fit(X, client=client)
    assert est.n_all_missing_ == 3
    np.testing.assert_allclose(est.mean_, np.nanmean(X, axis=0), rtol=1e-12)


def test_all_nan_column_is_an_error(client):
    X = np.random.default_rng(6).normal(size=(50, 3))
    X[:, 1] = np.nan
    with pytest.raises(InvalidDataError, match=r"column\(s\) \[1\] have no observed value"):
        MultivariateNormal().fit(X, client=client)


def test_infinite_values_are_an_error(client):
    X = np.random.default_rng(7).normal(size=(50, 3))
    X[4, 2] = np.inf
    X[9, 0] = -np.inf
    with pytest.raises(InvalidDataError, match="2 values are infinite"):
        MultivariateNormal().fit(X, client=client)


def test_model_through_fit_em_is_monotone(client):
    X = _mar_data(n=300, seed=8)
    history = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_em(MVNMissingModel(), X, max_iter=30, tol=0, client=client, warn_not_converged=False,
               callbacks=[lambda info: history.append(info.loglik)])
    assert np.all(np.diff(history) >= -1e-9)


@pytest.mark.parametrize("structured", [False, True])
def test_grouped_and_per_row_e_steps_agree(structured, monkeypatch):
    # per-entry missingness takes the per-row kernel, column-block missingness the grouped one
    import dask_em.models.mvn_missing as mvn

    rng = np.random.default_rng(9)
    D = 16
    A = rng.normal(size=(D, D))
    cov = A @ A.T / D + np.eye(D)
    X = rng.multivariate_normal(np.zeros(D), cov, size=3000)
    if structured:
        group = rng.integers(0, 3, size=len(X))
        X[group == 1, :3] = np.nan
        X[group == 2, 5:] = np.nan
    else:
        X[rng.random(X.shape) < 0.3] = np.nan
    X[7] = np.nan
    params = MVNParams(np.full(D, 0.1), cov)
    assert mvn.patterns_mostly_unique(np.isnan(X)) is (not structured)
    monkeypatch.setattr(mvn, "SUB_BLOCK_ROWS", 512)
    got = MVNMissingModel().e_step(X, params)
    monkeypatch.setattr(mvn, "patterns_mostly_unique", lambda miss: False)
    other = MVNMissingModel().e_step(X, params)  # always grouped
    for key in got:
        np.testing.assert_allclose(got[key], other[key], rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(got["loglik"], _observed_loglik(X, params.mean, params.covariance), rtol=1e-11)
