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


# --- Gaussian mixture with missing values ------------------------------------

from dask_em.models.gmm import GaussianMixtureModel  # noqa: E402
from dask_em.models.gmm_missing import GaussianMixtureMissingModel  # noqa: E402


def _two_clusters(seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(200, 3)) @ np.diag([2.0, 1.0, 0.5]) + 3.0])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_missing_without_nan_equals_complete_model_and_sklearn(covariance_type, client):
    from sklearn.mixture import GaussianMixture as SkGMM

    X = _two_clusters()
    start = GaussianMixtureModel(2, covariance_type).init_params(X, np.random.default_rng(1))
    ours = fit_em(GaussianMixtureMissingModel(2, covariance_type), da.from_array(X, chunks=(128, 3)), start,
                  max_iter=8, tol=0, client=client, warn_not_converged=False).params
    plain = fit_em(GaussianMixtureModel(2, covariance_type), da.from_array(X, chunks=(128, 3)), start,
                   max_iter=8, tol=0, client=client, warn_not_converged=False).params
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(getattr(ours, name), getattr(plain, name), rtol=1e-10)
    prec = start.precisions_cholesky
    if covariance_type == "full":
        prec = np.einsum("kij,klj->kil", prec, prec)
    elif covariance_type == "tied":
        prec = prec @ prec.T
    else:
        prec = prec**2
    sk = SkGMM(2, covariance_type=covariance_type, max_iter=8, tol=0, weights_init=start.weights,
               means_init=start.means, precisions_init=prec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    np.testing.assert_allclose(ours.weights, sk.weights_, rtol=1e-10)
    np.testing.assert_allclose(ours.means, sk.means_, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances, sk.covariances_, rtol=1e-10)


def _brute_gmm_stats(X, params, covs):
    from scipy.special import logsumexp

    K, D = params.means.shape
    c = params.weights @ params.means
    ll, sx, sxx = 0.0, np.zeros((K, D)), np.zeros((K, D, D))
    for x in X:
        o = ~np.isnan(x)
        m = ~o
        if not o.any():
            continue
        lp = np.array([np.log(params.weights[k]) + multivariate_normal(params.means[k][o], covs[k][np.ix_(o, o)]).logpdf(x[o])
                       for k in range(K)])
        total = logsumexp(lp)
        ll += total
        r = np.exp(lp - total)
        for k in range(K):
            S, xh, C = covs[k], x.copy(), np.zeros((D, D))
            if m.any():
                gain = S[np.ix_(m, o)] @ np.linalg.inv(S[np.ix_(o, o)])
                xh[m] = params.means[k][m] + gain @ (x[o] - params.means[k][o])
                C[np.ix_(m, m)] = S[np.ix_(m, m)] - gain @ S[np.ix_(o, m)]
            y = xh - c
            sx[k] += r[k] * y
            sxx[k] += r[k] * (np.outer(y, y) + C)
    return ll, sx, sxx


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gmm_missing_e_step_matches_brute_force(covariance_type):
    X = _two_clusters(1)[:120]
    rng = np.random.default_rng(2)
    params = GaussianMixtureModel(2, covariance_type).init_params(X, rng)
    X[rng.random(X.shape) < 0.3] = np.nan
    X[4] = np.nan
    K, D = params.means.shape
    covs = {"full": lambda c: c, "tied": lambda c: np.broadcast_to(c, (K, D, D)),
            "diag": lambda c: np.stack([np.diag(v) for v in c]),
            "spherical": lambda c: np.stack([np.eye(D) * v for v in c])}[covariance_type](params.covariances)
    stats = GaussianMixtureMissingModel(2, covariance_type).e_step(X, params)
    ll, sx, sxx = _brute_gmm_stats(X, params, covs)
    np.testing.assert_allclose(stats["loglik"], ll, rtol=1e-12)
    np.testing.assert_allclose(stats["sum_x"], sx, rtol=1e-10, atol=1e-10)
    expected = {"full": sxx, "tied": sxx.sum(axis=0), "diag": np.diagonal(sxx, axis1=1, axis2=2),
                "spherical": np.diagonal(sxx, axis1=1, axis2=2)}[covariance_type]
    np.testing.assert_allclose(stats["sum_xxT" if covariance_type in ("full", "tied") else "sum_xx"], expected,
                               rtol=1e-10, atol=1e-10)
    n_empty = int(np.isnan(X).all(axis=1).sum())
    assert n_empty >= 1 and stats["n_all_missing"] == n_empty and stats["n"] == len(X) - n_empty


def test_gmm_missing_is_monotone_and_checks_columns(client):
    X = _two_clusters(3)
    rng = np.random.default_rng(4)
    X[rng.random(X.shape) < 0.25] = np.nan
    X[10] = np.nan
    history = []
    n_empty = int(np.isnan(X).all(axis=1).sum())
    with pytest.warns(UserWarning, match=f"{n_empty} row"):
        result = fit_em(GaussianMixtureMissingModel(2, "full"), X, max_iter=25, tol=0, client=client,
                        random_state=0, warn_not_converged=False, callbacks=[lambda info: history.append(info.loglik)])
    assert np.all(np.diff(history) >= -1e-9)
    assert int(result.params.n_all_missing) == n_empty
    X[:, 2] = np.nan
    with pytest.raises(InvalidDataError, match=r"column\(s\) \[2\]"):
        fit_em(GaussianMixtureMissingModel(2, "diag"), X, max_iter=2, client=client, random_state=0)
