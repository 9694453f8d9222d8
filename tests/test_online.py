"""Restarts sharing passes (models/stacked.py) and online (stepwise) EM (dask_em/online.py).

Tests of many small passes run in this process (the executor's default);
a few run on the session's cluster.
"""

from __future__ import annotations

import numpy as np
import pytest

from dask_em import fit_em
from dask_em.estimators.gmm import GaussianMixture
from dask_em.estimators.hmm import GaussianHMM
from dask_em.estimators.kmeans import KMeans
from dask_em.estimators.missing import MultivariateNormal
from dask_em.estimators.mixtures import BernoulliMixture, CategoricalMixture, PoissonMixture
from dask_em.models.gmm import GaussianMixtureModel, GMMParams, precisions_cholesky_from_covariances
from dask_em.models.mixtures import PoissonMixtureModel
from dask_em.models.stacked import Stacked, StackedParams
from dask_em.online import OnlineEM, check_alpha, step_size


def _overlapping(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal([0.0, 0.0], 1.0, (n // 2, 2)), rng.normal([1.5, 1.0], 1.0, (n - n // 2, 2))])
    return X[rng.permutation(n)]


def _two_poissons(seed: int, n: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.poisson(3, (n, 1)), rng.poisson(15, (n, 1))]).astype(np.float64)


# -- restarts sharing passes ----------------------------------------------------


def test_stacked_members_equal_separate_fits():
    """Each member of a stacked fit follows its own separate fit bit for bit."""
    X = _two_poissons(0)
    model = PoissonMixtureModel(3, init="random")
    starts = [model.init_params(X[::7], np.random.default_rng(s)) for s in range(3)]
    stacked = fit_em(Stacked(model), X, StackedParams(tuple(starts)), max_iter=4, tol=0.0,
                     warn_not_converged=False)
    for r, start in enumerate(starts):
        alone = fit_em(model, X, start, max_iter=4, tol=0.0, warn_not_converged=False)
        np.testing.assert_array_equal(stacked.params.members[r].lambdas, alone.params.lambdas)
        np.testing.assert_array_equal(stacked.params.members[r].weights, alone.params.weights)
        assert stacked.params.loglik[r] == pytest.approx(alone.history[-1] * len(X), rel=1e-13)


def test_stacked_gmm_members_with_prior_equal_separate_fits():
    X = _overlapping(600)
    model = GaussianMixtureModel(2, "full", weight_concentration_prior=2.0, mean_precision_prior=0.1,
                                 mean_prior=np.zeros(2), degrees_of_freedom_prior=4.0, covariance_prior=np.eye(2))
    starts = [model.init_params(X, np.random.default_rng(s)) for s in (1, 2)]
    stacked = fit_em(Stacked(model), X, StackedParams(tuple(starts)), max_iter=3, tol=0.0,
                     warn_not_converged=False)
    for r, start in enumerate(starts):
        alone = fit_em(model, X, start, max_iter=3, tol=0.0, warn_not_converged=False)
        np.testing.assert_array_equal(stacked.params.members[r].means, alone.params.means)
        assert stacked.params.loglik[r] == pytest.approx(alone.history[-1] * len(X), rel=1e-13)  # the log posterior, prior included


def test_mixture_restarts_share_passes_and_equal_separate_fits():
    X = _two_poissons(1, 400)
    est = PoissonMixture(2, n_init=4, n_init_iter=3, init_params="random", random_state=0, tol=1e-6).fit(X)
    # the same starting points fitted one by one for n_init_iter iterations
    from dask_em.engine import prepare_blocks
    from dask_em.estimators._base import run_rngs

    model = est._model()
    blocks = prepare_blocks(X, None)
    logliks = []
    for rng in run_rngs(0, 4):
        alone = fit_em(model, blocks, est._initial_params(model, blocks, rng, None), max_iter=3, tol=0.0, warn_not_converged=False)
        logliks.append(alone.history[-1] * len(X))
    np.testing.assert_array_equal(est._init_logliks, logliks)
    np.testing.assert_allclose(np.sort(est.lambdas_[:, 0]), [3, 15], atol=0.6)


def test_restart_passes_at_most_one_and_a_half_times_one_start():
    X = _two_poissons(2, 500)
    one = PoissonMixture(2, random_state=0, tol=1e-8, max_iter=500).fit(X)
    ten = PoissonMixture(2, n_init=10, random_state=0, tol=1e-8, max_iter=500).fit(X)
    assert ten.n_passes_ == ten.n_init_iter + ten.n_iter_  # restarts start from samples: no pass
    assert ten.n_passes_ <= 1.5 * one.n_passes_, (one.n_passes_, ten.n_passes_)
    assert ten.lower_bound_ >= one.lower_bound_ - 1e-6


def test_gmm_restarts_share_passes_and_equal_separate_fits(client):
    from dask_em.engine import prepare_blocks
    from dask_em.estimators._base import run_rngs

    X = _overlapping(1000)
    est = GaussianMixture(2, n_init=3, n_init_iter=2, init_params="k-means++", random_state=0, tol=1e-6)
    est.fit(X, client=client)
    model, blocks, inits = est._model(), prepare_blocks(X, client), est._checked_inits(2)
    rngs = run_rngs(0, 3)
    starts = [est._gmm_start(model, blocks, inits, rngs[0], client)[0]]
    starts += [est._sample_start(model, blocks, inits, rng) for rng in rngs[1:]]
    for r, start in enumerate(starts):
        alone = fit_em(model, blocks, start, max_iter=2, tol=0.0, client=client, warn_not_converged=False)
        assert est._init_logliks[r] == pytest.approx(alone.history[-1] * len(X), rel=1e-13)


def test_gmm_ten_restarts_cost_at_most_one_and_a_half_times_one():
    X = _overlapping(2000, seed=3)
    one = GaussianMixture(3, tol=1e-5, max_iter=300, random_state=0).fit(X)
    ten = GaussianMixture(3, n_init=10, tol=1e-5, max_iter=300, random_state=0).fit(X)
    # the same initialisation passes (k-means over the data, for the first start only)
    assert ten.n_passes_ - ten.n_init_iter - ten.n_iter_ == one.n_passes_ - one.n_iter_
    assert ten.n_passes_ <= 1.5 * one.n_passes_, (one.n_passes_, ten.n_passes_)
    assert ten.lower_bound_ >= one.lower_bound_ - 1e-4


@pytest.mark.parametrize("seed", range(40))
def test_default_start_finds_two_poisson_rates(seed):
    """The default k-means++ start; random responsibilities stopped at 6.76 and 7.28 here."""
    X = _two_poissons(seed)
    model = PoissonMixtureModel(2)
    params = model.init_params(X, np.random.default_rng(seed))
    previous = -np.inf
    for _ in range(100):  # the estimator's defaults: tol 1e-3 per row, 100 iterations
        stats = model.e_step(X, params)
        value = float(stats["loglik"]) / len(X)
        if abs(value - previous) < 1e-3:
            break
        previous, params = value, model.m_step(stats, params)
    np.testing.assert_allclose(np.sort(params.lambdas[:, 0]), [3, 15], atol=0.6)


def test_default_start_of_the_estimator():
    est = PoissonMixture(2, random_state=3).fit(_two_poissons(3))
    np.testing.assert_allclose(np.sort(est.lambdas_[:, 0]), [3, 15], atol=0.6)


# -- online EM ---------------------------------------------------------------------


def _reference_stepwise_em(batches, weights, means, variances, alpha, reg):
    """Stepwise EM for a 1-D Gaussian mixture on raw moments, written out (Cappé & Moulines 2009)."""
    s = None
    for t, x in enumerate(batches):
        logp = -0.5 * (np.log(2 * np.pi * variances) + (x[:, None] - means) ** 2 / variances) + np.log(weights)
        resp = np.exp(logp - logp.max(axis=1, keepdims=True))
        resp /= resp.sum(axis=1, keepdims=True)
        batch = np.stack([resp.sum(0), resp.T @ x, resp.T @ x**2]) / len(x)
        g = 1.0 if t == 0 else (t + 1.0) ** -alpha  # t - 1 updates after the first batch: (t - 1 + 2) ** -alpha
        s = batch if s is None else (1 - g) * s + g * batch
        weights, means = s[0] / s[0].sum(), s[1] / s[0]
        variances = s[2] / s[0] - means**2 + reg
    return weights, means, variances


def test_online_em_matches_reference_stepwise_em():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, 900), rng.normal(2.5, 0.7, 600)])[rng.permutation(1500)]
    batches = np.array_split(X, 15)
    w0, m0, v0 = np.array([0.5, 0.5]), np.array([-1.0, 1.0]), np.array([1.0, 1.0])
    ref = _reference_stepwise_em(batches, w0, m0, v0, alpha=0.7, reg=1e-6)
    model = GaussianMixtureModel(2, "diag", reg_covar=1e-6)
    cov = v0[:, None]
    params = GMMParams(w0, m0[:, None], cov, precisions_cholesky_from_covariances(cov, "diag"))
    state = OnlineEM(model, params, alpha=0.7)
    for batch in batches:
        stats = model.e_step(batch[:, None], state.params)
        stats.pop("n_invalid")
        state = state.update(stats)
    np.testing.assert_allclose(state.params.weights, ref[0], rtol=1e-9)
    np.testing.assert_allclose(state.params.means[:, 0], ref[1], rtol=1e-9)
    np.testing.assert_allclose(state.params.covariances[:, 0], ref[2], rtol=1e-8)
    assert state.n_updates == 15 and state.n_seen == 1500


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_recentred_statistics_are_the_sums_about_the_new_point(covariance_type):
    from dask_em.models.gmm import reference_point

    X = _overlapping(500) + 40.0  # far from the origin: the reference point matters
    model = GaussianMixtureModel(2, covariance_type)
    p = model.init_params(X, np.random.default_rng(0))
    stats = model.e_step(X, p)
    stats.pop("n_invalid")
    q = model.m_step(stats, p)
    moved = model.recenter_stats(stats, p, q)
    log_prob = model.weighted_log_prob(X, p)
    resp = np.exp(log_prob - log_prob.max(axis=1, keepdims=True))
    resp /= resp.sum(axis=1, keepdims=True)
    Y = X - reference_point(q)
    np.testing.assert_allclose(moved["sum_x"], resp.T @ Y, rtol=1e-9, atol=1e-9)
    if covariance_type in ("full", "tied"):
        outer = np.einsum("nk,ni,nj->kij", resp, Y, Y)
        expected = outer if covariance_type == "full" else outer.sum(axis=0)
        np.testing.assert_allclose(moved["sum_xxT"], expected, rtol=1e-9)
    else:
        np.testing.assert_allclose(moved["sum_xx"], resp.T @ Y**2, rtol=1e-9)


def test_recentred_mvn_statistics_are_the_sums_about_the_new_mean():
    from dask_em.models.mvn_missing import MVNMissingModel

    X = _overlapping(400) + 25.0  # complete rows: no conditional covariance term
    model = MVNMissingModel()
    p = model.init_params(X, np.random.default_rng(0))
    stats = model.e_step(X, p)
    q = model.m_step(stats, p)
    Y = X - q.mean
    np.testing.assert_allclose(model.recenter_stats(stats, p, q)["sum_ddT"], Y.T @ Y, rtol=1e-10)


def test_step_sizes_and_alpha_range():
    assert step_size(0, 1.0) == 0.5 and step_size(1, 1.0) == pytest.approx(1 / 3)
    for bad in (0.5, 1.2, 0, "x", True):
        with pytest.raises(ValueError, match=r"alpha must be in \(0.5, 1\]"):
            check_alpha(bad)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_partial_fit_twice_over_20_batches_reaches_the_batch_fit(covariance_type):
    X = _overlapping(4000)
    batch = GaussianMixture(2, covariance_type=covariance_type, tol=1e-6, max_iter=500, random_state=0)
    best = batch.fit(X).score(X)
    online = GaussianMixture(2, covariance_type=covariance_type, init_params="k-means++", random_state=0)
    for _ in range(2):
        for part in np.array_split(X, 20):
            online.partial_fit(part)
    assert online.n_iter_ == 40
    assert best - online.score(X) < 0.02


def _stream(est, X, n_batches=8, **kwargs):
    for part in np.array_split(X, n_batches):
        est.partial_fit(part, **kwargs)
    return est


def test_partial_fit_of_every_mixture_estimator_approaches_its_fit():
    rng = np.random.default_rng(4)
    counts = _two_poissons(4, 800)[rng.permutation(1600)]
    binary = (rng.random((1600, 6)) < np.where(rng.random(1600)[:, None] < 0.5, 0.8, 0.2)).astype(float)
    docs = np.concatenate([rng.multinomial(30, [0.6, 0.2, 0.1, 0.1], 800), rng.multinomial(30, [0.1, 0.1, 0.2, 0.6], 800)])
    docs = docs[rng.permutation(1600)].astype(float)
    for cls, X in ((PoissonMixture, counts), (BernoulliMixture, binary), (CategoricalMixture, docs)):
        best = cls(2, random_state=0, tol=1e-6).fit(X).score(X)
        online = _stream(cls(2, random_state=0), X)
        assert best - online.score(X) < 0.02, cls.__name__
    inertia = -KMeans(2, random_state=0).fit(binary).score(binary)
    online_inertia = -_stream(KMeans(2, random_state=0), binary).score(binary)
    assert online_inertia < 1.01 * inertia


def test_partial_fit_multivariate_normal_with_missing_values():
    rng = np.random.default_rng(5)
    X = rng.multivariate_normal([1.0, -2.0, 0.5], [[2, 0.8, 0.3], [0.8, 1, 0.2], [0.3, 0.2, 0.5]], 3000)
    X[:, :2][rng.random((3000, 2)) < 0.2] = np.nan  # the last column is always observed
    best = MultivariateNormal(tol=1e-6).fit(X)
    online = _stream(MultivariateNormal(random_state=0), X, n_batches=8)
    online = _stream(online, X, n_batches=8)
    assert best.score(X) - online.score(X) < 0.01
    np.testing.assert_allclose(online.mean_, best.mean_, atol=0.05)


def test_partial_fit_hmm_batches_of_sequences():
    truth = GaussianHMM(2, covariance_type="diag", random_state=0)
    truth.startprob_ = np.array([0.5, 0.5])
    truth.transmat_ = np.array([[0.9, 0.1], [0.2, 0.8]])
    truth.means_ = np.array([[0.0], [3.0]])
    truth.covars_ = np.array([[1.0], [1.0]])
    truth.n_features = 1
    X, _ = truth.sample(2000, random_state=1)
    lengths = np.full(20, 100)
    best = GaussianHMM(2, covariance_type="diag", random_state=0, tol=1e-3, n_init=1).fit(X, lengths)
    online = GaussianHMM(2, covariance_type="diag", random_state=0, n_init=1)
    for _ in range(2):
        for part in np.split(np.arange(20), 5):
            rows = np.concatenate([np.arange(100 * i, 100 * i + 100) for i in part])
            online.partial_fit(X[rows], lengths[part])
    assert online.n_iter_ == 10
    assert (best.score(X, lengths) - online.score(X, lengths)) / len(X) < 0.02
    np.testing.assert_allclose(np.sort(online.means_[:, 0]), np.sort(best.means_[:, 0]), atol=0.15)


def test_a_new_fit_starts_a_new_stream():
    X = _two_poissons(6, 300)
    est = PoissonMixture(2, random_state=0)
    est.partial_fit(X[:200]).partial_fit(X[200:])
    assert est.n_iter_ == 2
    est.fit(X)
    est.partial_fit(X)
    assert est.n_iter_ == 1
    with pytest.raises(ValueError, match="differs from the alpha"):
        est.partial_fit(X, alpha=0.9)


def test_fit_with_online_passes_then_batch_em():
    import dask.array as da

    X = _overlapping(4000, seed=1)
    data = da.from_array(X, chunks=(200, 2))
    plain = GaussianMixture(2, init_params="random_from_data", tol=1e-6, max_iter=500, random_state=2)
    plain.fit(data)
    warm = GaussianMixture(2, init_params="random_from_data", tol=1e-6, max_iter=500, random_state=2)
    warm.fit(data, online_passes=1)
    assert warm.lower_bound_ >= plain.lower_bound_ - 1e-4
    assert warm.n_iter_ + 1 < plain.n_iter_
    assert warm.n_passes_ == warm.n_iter_ + 1  # the online pass reads the data once
