"""GaussianMixture with conjugate priors: the MAP-EM of Fraley & Raftery (2007)."""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import pytest
import scipy.stats

from dask_em import GaussianMixture
from dask_em.errors import ConvergenceWarning
from dask_em.models._gaussian import (
    COVARIANCE_TYPES,
    IllConditionedCovarianceError,
    precisions_cholesky_from_covariances,
)
from dask_em.models.gmm import GaussianMixtureModel, GMMParams

pytestmark = [
    pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

K, D = 3, 2


def blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [6.0, 1.0], [-3.0, 5.0]]) + 10.0
    z = rng.choice(K, n)
    return centers[z] + rng.normal(size=(n, D)) * rng.uniform(0.5, 1.5, size=(K, D))[z]


def prior_values(covariance_type, d=D):
    scale = {
        "full": np.array([[0.8, 0.2], [0.2, 0.5]]),
        "tied": np.array([[0.8, 0.2], [0.2, 0.5]]),
        "diag": np.array([0.8, 0.5]),
        "spherical": 0.6,
    }[covariance_type]
    return dict(
        weight_concentration_prior=2.5,
        mean_precision_prior=0.3,
        mean_prior=np.array([10.5, 11.0]),
        degrees_of_freedom_prior=d + 1.5,
        covariance_prior=scale,
    )


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    return float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-300)))


# --------------------------------------------------------------------------- the M-step, formula by formula


def fraley_raftery_map(X, resp, covariance_type, alpha, kappa, m0, nu, psi):
    """Table 2 of Fraley & Raftery (2007), written out per component from the rows."""
    n, d = X.shape
    k_count = resp.shape[1]
    nk = resp.sum(axis=0)
    weights = np.maximum(nk + alpha - 1, 0)
    weights = weights / weights.sum()
    means, scatters = [], []
    for k in range(k_count):
        r = resp[:, k]
        xbar = (r @ X) / nk[k] if nk[k] > 0 else np.zeros(d)
        W = (r[:, None] * (X - xbar)).T @ (X - xbar)
        shrink = kappa * nk[k] / (kappa + nk[k])
        means.append((nk[k] * xbar + kappa * m0) / (nk[k] + kappa))
        scatters.append(W + shrink * np.outer(xbar - m0, xbar - m0))
    means = np.array(means)
    if covariance_type == "full":
        cov = np.array([(psi + B) / (nu + nk[k] + d + 2) for k, B in enumerate(scatters)])
    elif covariance_type == "tied":
        cov = (psi + sum(scatters)) / (nu + n + d + k_count + 1)
    elif covariance_type == "diag":
        cov = np.array([(psi + np.diag(B)) / (nu + nk[k] + 3) for k, B in enumerate(scatters)])
    else:
        cov = np.array([(psi + np.trace(B)) / (nu + (nk[k] + 1) * d + 2) for k, B in enumerate(scatters)])
    return weights, means, cov


def stats_about(X, resp, center, covariance_type):
    """The sums the E-step would return, about ``center``, computed directly."""
    Y = X - center
    stats = {"sum_resp": resp.sum(axis=0), "sum_x": resp.T @ Y}
    if covariance_type == "full":
        stats["sum_xxT"] = np.einsum("nk,ni,nj->kij", resp, Y, Y)
    elif covariance_type == "tied":
        stats["sum_xxT"] = Y.T @ Y
    else:
        stats["sum_xx"] = resp.T @ (Y * Y)
    stats["n"] = np.array(float(len(X)))
    stats["loglik"] = np.array(0.0)
    return stats


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_map_m_step_matches_fraley_raftery(covariance_type):
    rng = np.random.default_rng(3)
    X = blobs(200, seed=4)
    resp = rng.dirichlet(np.ones(4), size=len(X))
    resp[:, 3] = 0.0  # an empty component
    resp[0] = [0.0, 0.0, 0.0, 1.0]  # ... holding a single point
    resp[1:, 3] = 0.0
    resp /= resp.sum(axis=1, keepdims=True)
    prior = prior_values(covariance_type)
    model = GaussianMixtureModel(4, covariance_type, reg_covar=0.0, **prior)
    # parameters entering the step only fix the reference point of the sums
    params = model.init_params(X, np.random.default_rng(0))
    from dask_em.models.gmm import reference_point

    new = model.m_step(stats_about(X, resp, reference_point(params), covariance_type), params)
    expected = fraley_raftery_map(
        X, resp, covariance_type, prior["weight_concentration_prior"], prior["mean_precision_prior"],
        prior["mean_prior"], prior["degrees_of_freedom_prior"], np.asarray(prior["covariance_prior"]),
    )
    for name, got, want in zip(("weights", "means", "covariances"), (new.weights, new.means, new.covariances), expected):
        assert rel_err(got, want) < 1e-10, f"{covariance_type} {name}: {rel_err(got, want):.3g}"
    assert np.isfinite(new.precisions_cholesky).all()


def test_weights_with_concentration_below_one_drop_small_components():
    model = GaussianMixtureModel(3, "diag", 0.0, weight_concentration_prior=0.5, mean_prior=(0.0,), covariance_prior=(1.0,))
    X = np.concatenate([np.zeros(10), np.ones(10)])[:, None]
    resp = np.zeros((20, 3))
    resp[:10, 0] = 1.0
    resp[10:, 1] = 0.8
    resp[10:, 2] = 0.2  # n_2 = 2 > 1 - alpha: kept
    resp[10:12, 2] = 0.0
    resp[10:12, 1] = 1.0
    resp[12:, 2] = 0.05  # n_2 = 0.4 < 1 - alpha: dropped
    resp[12:, 1] = 0.95
    params = model.init_params(X, np.random.default_rng(0))
    from dask_em.models.gmm import reference_point

    new = model.m_step(stats_about(X, resp, reference_point(params), "diag"), params)
    nk = resp.sum(axis=0)
    assert new.weights[2] == 0.0
    expected = (nk[:2] - 0.5) / (nk[:2] - 0.5).sum()
    assert rel_err(new.weights[:2], expected) < 1e-12
    assert np.isfinite(new.covariances).all() and (new.covariances > 0).all()


# --------------------------------------------------------------------------- the log prior and the objective


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prior_is_the_normal_inverse_wishart_density(covariance_type):
    rng = np.random.default_rng(5)
    prior = prior_values(covariance_type)
    model = GaussianMixtureModel(K, covariance_type, 0.0, **prior)
    params = model.init_params(blobs(300), rng)
    m0, kappa, nu = prior["mean_prior"], prior["mean_precision_prior"], prior["degrees_of_freedom_prior"]
    psi = np.asarray(prior["covariance_prior"])
    expected = scipy.stats.dirichlet.logpdf(params.weights, [prior["weight_concentration_prior"]] * K)
    cov = params.covariances
    for k in range(K):
        if covariance_type in ("full", "tied"):
            S = cov[k] if covariance_type == "full" else cov
            expected += scipy.stats.multivariate_normal.logpdf(params.means[k], m0, S / kappa)
            if covariance_type == "full":
                expected += scipy.stats.invwishart.logpdf(S, df=nu, scale=psi)
        elif covariance_type == "diag":
            for j in range(D):
                expected += scipy.stats.invgamma.logpdf(cov[k, j], nu / 2, scale=psi[j] / 2)
                expected += scipy.stats.norm.logpdf(params.means[k, j], m0[j], math.sqrt(cov[k, j] / kappa))
        else:
            expected += scipy.stats.invgamma.logpdf(cov[k], nu / 2, scale=float(psi) / 2)
            expected += scipy.stats.multivariate_normal.logpdf(params.means[k], m0, cov[k] * np.eye(D) / kappa)
    if covariance_type == "tied":
        expected += scipy.stats.invwishart.logpdf(cov, df=nu, scale=psi)
    assert model.log_prior(params) == pytest.approx(expected, rel=1e-12)


def test_lower_bounds_are_the_log_posterior_and_never_decrease(client):
    X = blobs(900)
    means_init = X[[0, 1, 2]] + 0.5
    gm = GaussianMixture(
        K, covariance_type="full", reg_covar=0.0, max_iter=25, tol=0.0, weights_init=np.full(K, 1 / K),
        means_init=means_init, precisions_init=np.repeat(np.eye(D)[None], K, axis=0),
        weight_concentration_prior=3.0, mean_precision_prior=0.5,
    )
    gm.fit(da.from_array(X, chunks=(300, -1)), client=client)
    lb = np.asarray(gm.lower_bounds_)
    assert len(lb) == 25
    assert np.all(np.diff(lb) >= -1e-12 * np.abs(lb[1:])), np.diff(lb)
    assert lb[-1] - lb[0] > 0.1
    # first value: (log-likelihood + log prior) of the initial parameters, per sample
    model = GaussianMixtureModel(
        K, "full", 0.0, weight_concentration_prior=3.0, mean_precision_prior=0.5,
        mean_prior=gm.mean_prior_, covariance_prior=gm.covariance_prior_, degrees_of_freedom_prior=gm.degrees_of_freedom_prior_,
    )
    loglik = scipy.special.logsumexp(
        np.stack([np.log(1 / K) + scipy.stats.multivariate_normal.logpdf(X, m, np.eye(D)) for m in means_init], 1), axis=1
    ).sum()
    cov0 = np.repeat(np.eye(D)[None], K, axis=0)
    init = GMMParams(np.full(K, 1 / K), means_init, cov0, precisions_cholesky_from_covariances(cov0, "full"))
    assert lb[0] == pytest.approx((loglik + model.log_prior(init)) / len(X), rel=1e-12)
    # the defaults: mclust's, from the data (the sample drawn when all inits are given)
    assert gm.degrees_of_freedom_prior_ == D + 2
    assert gm.weight_concentration_prior_ == 3.0
    assert rel_err(gm.mean_prior_, X.mean(axis=0)) < 0.05
    assert rel_err(np.diag(gm.covariance_prior_), X.var(axis=0, ddof=1) / K ** (2 / D)) < 0.1
    assert gm.log_prior_ == pytest.approx(model.log_prior(gm._fitted_params), rel=1e-12)


@pytest.mark.parametrize("init_params", ["kmeans", "random", "k-means++"])
def test_defaults_come_from_the_initialisation_pass(client, init_params):
    X = blobs(600)
    for covariance_type in ("full", "spherical"):
        gm = GaussianMixture(K, covariance_type=covariance_type, init_params=init_params, max_iter=3,
                             random_state=0, mean_precision_prior=0.01).fit(X, client=client)
        assert gm.mean_precision_prior_ == 0.01 and gm.weight_concentration_prior_ == 1.0
        # "kmeans" and "random" see every row: exact moments
        rtol = 1e-12 if init_params != "k-means++" else 0.0
        if rtol:
            assert rel_err(gm.mean_prior_, X.mean(axis=0)) < rtol
            cov = np.cov(X, rowvar=False) / K ** (2 / D)
            want = cov if covariance_type == "full" else np.diag(cov).mean()
            assert rel_err(gm.covariance_prior_, want) < 1e-10
        else:  # the sample is all 600 rows here
            assert rel_err(gm.mean_prior_, X.mean(axis=0)) < 1e-12


# --------------------------------------------------------------------------- limits and degenerate data


def vanishing_prior(covariance_type, d, k):
    eps = 1e-12
    offset = {"full": d + 2, "tied": d + k + 1, "diag": 3, "spherical": d + 2}[covariance_type]
    scale = {"full": eps * np.eye(d), "tied": eps * np.eye(d), "diag": np.full(d, eps), "spherical": eps}[covariance_type]
    return dict(
        weight_concentration_prior=1.0, mean_precision_prior=eps, mean_prior=np.zeros(d),
        degrees_of_freedom_prior=-offset + eps, covariance_prior=scale,
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_vanishing_prior_gives_the_maximum_likelihood_fit(client, covariance_type):
    X = blobs(600)
    var = X.var(axis=0)
    inits = dict(
        weights_init=np.array([0.5, 0.3, 0.2]), means_init=X[[3, 4, 5]] + 0.1,
        precisions_init={
            "full": np.stack([np.diag(1 / var)] * K), "tied": np.diag(1 / var),
            "diag": np.stack([1 / var] * K), "spherical": np.full(K, 1 / var.mean()),
        }[covariance_type],
    )
    common = dict(covariance_type=covariance_type, max_iter=10, tol=0.0, reg_covar=1e-6, **inits)
    ml = GaussianMixture(K, **common).fit(X, client=client)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no decrease warning either
        warnings.simplefilter("ignore", ConvergenceWarning)
        mp = GaussianMixture(K, **common, **vanishing_prior(covariance_type, D, K)).fit(X, client=client)
    for name in ("weights_", "means_", "covariances_"):
        err = rel_err(getattr(mp, name), getattr(ml, name))
        assert err < 1e-8, f"{covariance_type} {name}: {err:.3g}"


def degenerate_data():
    rng = np.random.default_rng(1)
    cloud = rng.normal(size=(200, D))
    repeated = np.tile([[8.0, 8.0]], (15, 1))  # one point, 15 times
    single = np.array([[-9.0, 7.0]])
    return np.vstack([cloud, repeated, single])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_duplicated_and_single_points_stay_well_defined(client, covariance_type):
    X = degenerate_data()
    inits = dict(weights_init=np.array([0.9, 0.07, 0.03]), means_init=np.array([[0.0, 0.0], [8.0, 8.0], [-9.0, 7.0]]))
    common = dict(covariance_type=covariance_type, reg_covar=0.0, max_iter=15, tol=0.0, **inits)
    if covariance_type != "tied":  # a tied covariance pools the cloud, so ML copes
        with pytest.raises(IllConditionedCovarianceError):
            GaussianMixture(K, **common).fit(X, client=client)
    gm = GaussianMixture(K, **common, mean_precision_prior=0.01).fit(X, client=client)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.isfinite(getattr(gm, name)).all(), name
    cov = gm.covariances_
    if covariance_type in ("full", "tied"):
        assert np.all(np.linalg.eigvalsh(cov) > 0)
    else:
        assert np.all(cov > 0)
    assert rel_err(gm.means_[1], [8.0, 8.0]) < 0.01  # the repeated point keeps its component
    assert np.all(np.diff(gm.lower_bounds_) >= -1e-12 * np.abs(gm.lower_bounds_[1:]))
    labels = np.asarray(gm.predict(X))
    assert (labels[200:215] == 1).all() and labels[215] == 2


def test_a_component_without_points_takes_the_prior_mode():
    X = blobs(300)
    m0, psi = np.array([1.0, 2.0]), np.array([[0.5, 0.1], [0.1, 0.4]])
    model = GaussianMixtureModel(K, "full", 0.0, mean_prior=m0, covariance_prior=psi)
    params = model.init_params(X, np.random.default_rng(0))
    stats = model.e_step(X, params)
    stats = {k: np.array(v, copy=True) for k, v in stats.items()}
    stats["sum_resp"][2] = 0.0
    stats["sum_x"][2] = 0.0
    stats["sum_xxT"][2] = 0.0
    new = model.m_step(stats, params)
    assert rel_err(new.means[2], m0) < 1e-12
    assert rel_err(new.covariances[2], psi / (D + 2 + D + 2)) < 1e-12


# --------------------------------------------------------------------------- contract, chunking, resume


def test_chunking_invariance_of_the_estimator(client):
    X = blobs(900)
    # the same starting point whatever the chunks (k-means|| seeding draws per chunk)
    inits = dict(weights_init=np.full(K, 1 / K), means_init=X[[0, 1, 2]], precisions_init=np.eye(D))
    fits = [
        GaussianMixture(K, covariance_type="tied", max_iter=6, tol=0.0, **inits, **prior_values("tied"))
        .fit(da.from_array(X, chunks=(rows, -1)), client=client)
        for rows in (900, 250, 97)
    ]
    for other in fits[1:]:
        for name in ("weights_", "means_", "covariances_"):
            assert rel_err(getattr(other, name), getattr(fits[0], name)) < 1e-10, name
        assert rel_err(other.lower_bounds_, fits[0].lower_bounds_) < 1e-12


def test_resume_takes_the_recorded_prior(client, tmp_path):
    X = blobs(600)
    path = tmp_path / "fit.zarr"
    kwargs = dict(covariance_type="diag", tol=0.0, random_state=2, weight_concentration_prior=1.5)
    once = GaussianMixture(K, max_iter=6, **kwargs).fit(X, client=client)
    GaussianMixture(K, max_iter=3, **kwargs).fit(X, client=client, checkpoint=str(path))
    # the resume skips the initialisation pass: the prior is the one recorded in the checkpoint
    resumed = GaussianMixture(K, max_iter=6, **kwargs).fit(X, client=client, checkpoint=str(path))
    assert resumed.n_iter_ == 6
    for name in ("weights_", "means_", "covariances_", "mean_prior_", "covariance_prior_"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(once, name))
    assert resumed.lower_bounds_ == once.lower_bounds_


def test_bad_prior_values_say_what_to_do(client):
    X = blobs(100)
    with pytest.raises(ValueError, match="mean_precision_prior must be a positive number"):
        GaussianMixture(K, mean_precision_prior=0.0).fit(X, client=client)
    with pytest.raises(ValueError, match="covariance_prior must be a symmetric positive-definite"):
        GaussianMixture(K, covariance_prior=[[1.0, 2.0], [0.0, 1.0]]).fit(X, client=client)
    with pytest.raises(ValueError, match="mean_prior must have n_features = 2"):
        GaussianMixture(K, mean_prior=[1.0, 2.0, 3.0]).fit(X, client=client)
    with pytest.raises(ValueError, match="degrees_of_freedom_prior must exceed -4"):
        GaussianMixture(K, degrees_of_freedom_prior=-5.0).fit(X, client=client)
    with pytest.raises(ValueError, match="not supported with missing='em'"):
        GaussianMixture(K, missing="em", weight_concentration_prior=2.0).fit(X, client=client)


def test_without_prior_nothing_changes(client):
    X = blobs(300)
    a = GaussianMixture(K, max_iter=5, random_state=0).fit(X, client=client)
    assert not hasattr(a, "mean_prior_") and not hasattr(a, "log_prior_")
    assert GaussianMixtureModel(K).finish_stats({"loglik": np.array(1.0)}, None) == {"loglik": np.array(1.0)}
