"""Poisson, Bernoulli and categorical mixtures."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.special import gammaln, logsumexp
from scipy.stats import binom, poisson

from dask_em import BernoulliMixture, CategoricalMixture, PoissonMixture
from dask_em.errors import InvalidDataError
from dask_em.models.mixtures import BernoulliMixtureModel, CategoricalMixtureModel, PoissonMixtureModel

EPS = 10 * np.finfo(float).eps


def _reference_em(X, weights, comp, family, alpha, n_iter, concentration=1.0):
    """Plain numpy EM, written out per family, independent of the library code.

    ``concentration`` is a symmetric Dirichlet prior on the weights (MAP).
    """
    for _ in range(n_iter):
        if family == "poisson":
            logp = np.stack([poisson.logpmf(X, c).sum(axis=1) for c in comp], axis=1)
        elif family == "bernoulli":
            logp = np.stack([np.where(X == 1, np.log(c), np.log1p(-c)).sum(axis=1) for c in comp], axis=1)
        else:
            n = X.sum(axis=1)
            logp = np.stack([gammaln(n + 1) - gammaln(X + 1).sum(1) + (X * np.log(c)).sum(1) for c in comp], axis=1)
        joint = logp + np.log(weights)
        resp = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))
        nk = resp.sum(axis=0) + EPS
        counts = nk if concentration == 1.0 else np.maximum(nk + concentration - 1, 0) + EPS
        weights = counts / counts.sum()
        if family == "poisson":
            comp = (resp.T @ X + alpha) / (nk[:, None] + alpha)
        elif family == "bernoulli":
            comp = (resp.T @ X + alpha) / (nk[:, None] + 2 * alpha)
        else:
            counts = resp.T @ X + alpha
            comp = counts / counts.sum(axis=1, keepdims=True)
    return weights, comp


def _poisson_data(rng, n=3000):
    lam = np.array([[1.0, 8.0, 0.5], [6.0, 1.0, 3.0]])
    z = rng.random(n) < 0.3
    return rng.poisson(lam[z.astype(int)]).astype(float), lam, np.array([0.7, 0.3])


def _bernoulli_data(rng, n=3000):
    p = np.array([[0.9, 0.1, 0.8, 0.2, 0.7], [0.1, 0.9, 0.3, 0.8, 0.2]])
    z = (rng.random(n) < 0.4).astype(int)
    return (rng.random((n, 5)) < p[z]).astype(float), p, np.array([0.6, 0.4])


def _categorical_data(rng, n=2000):
    p = np.array([[0.5, 0.3, 0.1, 0.05, 0.05], [0.05, 0.05, 0.2, 0.3, 0.4]])
    z = (rng.random(n) < 0.5).astype(int)
    X = np.stack([rng.multinomial(rng.integers(20, 40), p[k]) for k in z]).astype(float)
    return X, p, np.array([0.5, 0.5])


CASES = {
    "poisson": (PoissonMixture, "lambdas", _poisson_data),
    "bernoulli": (BernoulliMixture, "probabilities", _bernoulli_data),
    "categorical": (CategoricalMixture, "probabilities", _categorical_data),
}


@pytest.mark.parametrize("family", list(CASES))
def test_matches_numpy_reference_from_same_start(family, client):
    cls, comp_name, make = CASES[family]
    rng = np.random.default_rng(0)
    X, _, _ = make(rng, n=500)
    w0 = np.array([0.5, 0.5])
    c0 = {"poisson": [[2.0, 3.0, 1.0], [3.0, 2.0, 2.0]],
          "bernoulli": [[0.6, 0.4, 0.5, 0.5, 0.5], [0.4, 0.6, 0.5, 0.5, 0.5]],
          "categorical": [[0.3, 0.3, 0.2, 0.1, 0.1], [0.1, 0.1, 0.2, 0.3, 0.3]]}[family]
    c0 = np.array(c0)
    alpha = 0.5
    est = cls(2, alpha=alpha, max_iter=7, tol=0.0, weights_init=w0, **{f"{comp_name}_init": c0})
    with pytest.warns(UserWarning, match="did not converge"):
        est.fit(da.from_array(X, chunks=(128, -1)), client=client)
    weights, comp = _reference_em(X, w0, c0, family, alpha, 7)
    np.testing.assert_allclose(est.weights_, weights, rtol=1e-10)
    np.testing.assert_allclose(getattr(est, comp_name + "_"), comp, rtol=1e-10)
    assert np.all(np.diff(est.lower_bounds_) >= -1e-12)


@pytest.mark.parametrize("family", list(CASES))
def test_dirichlet_prior_on_weights_is_map_em(family, client):
    """weight_concentration_prior: the reference MAP-EM, and a log posterior that never decreases."""
    cls, comp_name, make = CASES[family]
    X, _, _ = make(np.random.default_rng(1), n=400)
    K, D = 3, X.shape[1]
    w0 = np.array([0.6, 0.3, 0.1])
    c0 = np.random.default_rng(2).uniform(0.2, 0.8, size=(K, D))
    if family == "poisson":
        c0 = c0 * 5
    elif family == "categorical":
        c0 = c0 / c0.sum(axis=1, keepdims=True)
    est = cls(K, alpha=0.5, weight_concentration_prior=40.0, max_iter=8, tol=0.0, weights_init=w0,
              **{f"{comp_name}_init": c0})
    with pytest.warns(UserWarning, match="did not converge"):
        est.fit(X, client=client)
    weights, comp = _reference_em(X, w0, c0, family, 0.5, 8, concentration=40.0)
    np.testing.assert_allclose(est.weights_, weights, rtol=1e-10)
    np.testing.assert_allclose(getattr(est, comp_name + "_"), comp, rtol=1e-10)
    assert weights.min() > 39 / (len(X) + 3 * 39)  # the prior's pseudo-counts hold every weight up
    assert np.all(np.diff(est.lower_bounds_) >= -1e-12)
    # the objective is the log posterior: log-likelihood plus the log prior, per row
    model = est._model()
    params = model.params_class(weights=est.weights_, **{model.component_name: getattr(est, comp_name + "_")})
    stats = model.finish_stats(model.e_step(X, params), params)
    c = getattr(est, comp_name + "_")
    component_prior = {"poisson": lambda: np.log(c) - c, "bernoulli": lambda: np.log(c) + np.log1p(-c),
                       "categorical": lambda: np.log(c)}[family]()
    log_prior = 39.0 * np.log(est.weights_).sum() + 0.5 * component_prior.sum()
    np.testing.assert_allclose(stats["loglik"] - stats["loglik_data"], log_prior, rtol=1e-10)
    np.testing.assert_allclose(est.lower_bound_ * len(X), stats["loglik"], rtol=1e-3)  # one iteration apart
    np.testing.assert_allclose(est.score(X) * len(X), stats["loglik_data"], rtol=1e-10)
    with pytest.raises(ValueError, match="weight_concentration_prior"):
        cls(2, weight_concentration_prior=0.0).fit(X, client=client)


@pytest.mark.parametrize("family", list(CASES))
def test_recovers_known_parameters(family, client):
    cls, comp_name, make = CASES[family]
    X, comp_true, w_true = make(np.random.default_rng(1))
    est = cls(2, n_init=2, tol=1e-6, max_iter=300, random_state=0).fit(X, client=client)
    order = np.argsort(getattr(est, comp_name + "_")[:, 0])[::-1]
    true_order = np.argsort(comp_true[:, 0])[::-1]
    np.testing.assert_allclose(getattr(est, comp_name + "_")[order], comp_true[true_order], rtol=0.1, atol=0.04)
    np.testing.assert_allclose(est.weights_[order], w_true[true_order], atol=0.05)
    assert est.converged_

    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    labels = est.predict(X)
    assert set(np.unique(labels)) == {0, 1}
    lazy = est.predict(da.from_array(X, chunks=(700, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), labels)
    scores = est.score_samples(X)
    assert scores.shape == (len(X),)
    np.testing.assert_allclose(est.score(X), scores.mean())
    n_params = est._n_parameters()
    np.testing.assert_allclose(est.bic(X), -2 * scores.sum() + n_params * np.log(len(X)))
    np.testing.assert_allclose(est.aic(X), -2 * scores.sum() + 2 * n_params)

    sample, sample_labels = est.sample(400, random_state=3)
    assert sample.shape == (400, X.shape[1]) and sample_labels.shape == (400,)
    assert np.all(sample >= 0) and np.all(sample == np.round(sample))


def test_score_samples_are_proper_log_pmfs():
    poisson_model = PoissonMixtureModel(n_components=1)
    params = poisson_model.m_step({"sum_resp": np.array([1.0]), "sum_x": np.array([[2.5, 0.5]])}, None)
    x = np.array([[3.0, 1.0]])
    np.testing.assert_allclose(poisson_model.score_samples_block(x, params),
                               poisson.logpmf(3, params.lambdas[0, 0]) + poisson.logpmf(1, params.lambdas[0, 1]))
    cat = CategoricalMixtureModel(n_components=1)
    p = cat.m_step({"n": np.array(1.0), "sum_resp": np.array([1.0]), "sum_x": np.array([[3.0, 1.0]])}, None)
    np.testing.assert_allclose(cat.score_samples_block(x, p), binom.logpmf(3, 4, 0.75))


@pytest.mark.parametrize(
    "cls, bad, match",
    [
        (PoissonMixture, -1.0, "2 values are outside the support of the Poisson mixture"),
        (PoissonMixture, 1.5, "non-negative integers"),
        (PoissonMixture, np.nan, "Poisson"),
        (CategoricalMixture, -2.0, "categorical"),
        (CategoricalMixture, 0.25, "non-negative integers"),
        (BernoulliMixture, 2.0, "must be 0 or 1"),
        (BernoulliMixture, 0.5, "Bernoulli"),
    ],
)
def test_values_outside_support_are_errors(cls, bad, match, client):
    X = np.ones((60, 3))
    X[::2, 1] = 0
    X[5, 0] = bad
    X[44, 2] = bad
    with pytest.raises(InvalidDataError, match=match):
        cls(2, random_state=0).fit(da.from_array(X, chunks=(20, 3)), client=client)


def test_predict_rejects_bad_rows(client):
    X = (np.random.default_rng(2).random((100, 4)) < 0.5).astype(float)
    est = BernoulliMixture(2, random_state=0).fit(X, client=client)
    with pytest.raises(InvalidDataError, match="1 values"):
        est.predict(np.array([[0.0, 1.0, 3.0, 0.0]]))


def test_alpha_keeps_unseen_counts_finite():
    model = BernoulliMixtureModel(n_components=1, alpha=1.0)
    params = model.m_step({"sum_resp": np.array([10.0]), "sum_x": np.array([[0.0, 10.0]])}, None)
    np.testing.assert_allclose(params.probabilities, [[1 / 12, 11 / 12]])
    assert np.isfinite(model.score_samples_block(np.array([[1.0, 0.0]]), params)).all()


def test_get_set_params():
    est = PoissonMixture(3, alpha=0.1)
    assert est.get_params()["n_components"] == 3
    assert est.set_params(max_iter=5).max_iter == 5
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(bogus=1)
