"""FactorAnalysis and PPCA against closed forms and scikit-learn."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import FactorAnalysis as SkFactorAnalysis

from dask_em import fit_em
from dask_em.errors import InvalidDataError
from dask_em.estimators.factor import PPCA, FactorAnalysis
from dask_em.models.factor import FactorModel
from dask_em.stats import add_stats


def _data(n=30_000, d=12, q=3, seed=0, diagonal=False):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, q)) * np.array([3.0, 2.0, 1.5])[:q]
    noise = rng.uniform(0.5, 2.0, d) if diagonal else np.ones(d)
    return rng.normal(size=(n, q)) @ W.T + rng.normal(size=(n, d)) * np.sqrt(noise) + 5.0


def test_ppca_matches_closed_form_ml(client):
    q = 3
    X = _data()
    model = PPCA(q, tol=1e-13, max_iter=300, init_sample=3000, random_state=0).fit(
        da.from_array(X, chunks=(4000, -1)), client=client
    )
    S = np.cov(X.T, bias=True)
    eigval, eigvec = np.linalg.eigh(S)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    sigma2 = eigval[q:].mean()
    U = eigvec[:, :q]
    P = model.components_.T @ model.components_
    assert np.abs(P - U @ U.T).max() < 1e-6
    assert abs(model.noise_variance_ - sigma2) / sigma2 < 1e-6
    np.testing.assert_allclose(model.explained_variance_, eigval[:q], rtol=1e-6)
    np.testing.assert_allclose(model.mean_, X.mean(axis=0), rtol=1e-10)
    assert np.all(np.diff(model.lower_bounds_) > -1e-9)
    # The closed-form log-likelihood (Tipping & Bishop eq. 4).
    d = X.shape[1]
    C = U * (eigval[:q] - sigma2) @ U.T + sigma2 * np.eye(d)
    _, logdet = np.linalg.slogdet(C)
    closed = -0.5 * (d * np.log(2 * np.pi) + logdet + np.trace(np.linalg.solve(C, S)))
    assert abs(model.score(X) - closed) < 1e-9 * abs(closed)


def test_factor_analysis_matches_sklearn_loglik():
    X = _data(n=4_000, diagonal=True, seed=1)
    # in this process: 127 iterations of tiny passes, where a cluster adds only its round trips
    ours = FactorAnalysis(3, tol=1e-9, max_iter=300, random_state=0).fit(X)
    assert ours.converged_, ours.n_iter_
    ref = SkFactorAnalysis(3, tol=1e-8, max_iter=5000).fit(X)
    assert abs(ours.score(X) - ref.score(X)) < 1e-4 * abs(ref.score(X))
    np.testing.assert_allclose(ours.get_covariance(), ref.get_covariance(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-2)  # both stop at a tolerance
    Z = ours.transform(X[:100])
    assert Z.shape == (100, 3)
    assert ours.components_.shape == (3, X.shape[1])


def test_ppca_with_missing_values_monotone_and_close(client):
    rng = np.random.default_rng(2)
    X = _data(n=8000, seed=2)
    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.15] = np.nan
    Xm[5] = np.nan  # a row with nothing observed is ignored
    full = PPCA(3, tol=1e-10, random_state=0).fit(X, client=client)
    model = PPCA(3, tol=1e-10, max_iter=500, random_state=0).fit(da.from_array(Xm, chunks=(1000, -1)), client=client)
    assert np.all(np.diff(model.lower_bounds_) > -1e-9)
    assert model.converged_
    # The subspace is close to the one of the complete data.
    P = model.components_.T @ model.components_
    Pf = full.components_.T @ full.components_
    assert np.abs(P - Pf).max() < 0.05
    assert abs(model.noise_variance_ - full.noise_variance_) < 0.05
    # score_samples agrees with the E-step's log-likelihood (only observed entries count).
    scores = model.score_samples(da.from_array(Xm, chunks=(1000, -1)))
    assert isinstance(scores, da.Array)
    values = scores.compute()
    assert values[5] == 0.0 and np.isfinite(values).all()
    z = model.transform(Xm)
    assert z.shape == (len(Xm), 3) and np.isfinite(z).all()


def test_fit_em_on_pure_model_and_additivity(client):
    X = _data(n=3000, d=6, q=2, seed=3)
    X[rng_idx := (np.arange(0, 3000, 7), np.arange(0, 3000, 7) % 6)] = np.nan
    model = FactorModel(2, "isotropic")
    params = model.init_params(X, np.random.default_rng(0))
    whole = model.e_step(X, params)
    parts = add_stats(model.e_step(X[:1234], params), model.e_step(X[1234:], params))
    for key in whole:
        np.testing.assert_allclose(parts[key], whole[key], rtol=1e-10, atol=1e-8)
    result = fit_em(model, X, params=lambda: params, max_iter=50, tol=1e-9, client=client)
    assert result.history[-1] >= result.history[0]


def test_infinite_values_are_reported(client):
    X = _data(n=2000, d=5, q=2, seed=4)
    X[3, 1] = np.inf
    X[7, 2] = -np.inf
    with pytest.raises(InvalidDataError, match="2 infinite values"):
        FactorAnalysis(2, max_iter=3).fit(X, client=client)


def test_n_components_too_large(client):
    with pytest.raises(ValueError, match="n_components=7"):
        PPCA(7).fit(np.ones((50, 4)), client=client)
