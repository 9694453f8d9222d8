"""GaussianHMM numerics: data far from the origin, hmmlearn's stopping rule, singular covariances."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em import GaussianHMM
from dask_em.errors import InvalidDataError
from dask_em.models.hmm import GaussianHMMModel, GaussianHMMParams
from dask_em.monitor import ConvergenceMonitor

hmm = pytest.importorskip("hmmlearn.hmm")


def _two_state_data(rng: np.random.Generator, n: int = 600, D: int = 3) -> tuple[np.ndarray, np.ndarray]:
    # three features, as hmmlearn's own tests (tests/peer): their compiled kernels are shared
    states = (np.arange(n) // 50) % 2
    means = np.array([[0.0] * D, [3.0] * D])
    return means[states] + rng.normal(scale=[1.0, 0.5, 0.75][: D] if D <= 3 else 1.0, size=(n, D)), states


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "full", "tied"])
def test_variances_do_not_depend_on_an_offset(covariance_type):
    """The same data shifted by 0, 1e6 and 3e7 gives the same variances (raw moments lost 2% at 1e6)."""
    X, _ = _two_state_data(np.random.default_rng(0))
    lengths = np.array([300, 300])
    K, D = 2, X.shape[1]
    model = GaussianHMMModel(n_components=K, covariance_type=covariance_type)
    covars0 = {"diag": np.ones((K, D)), "spherical": np.ones(K), "full": np.tile(np.eye(D), (K, 1, 1)),
               "tied": np.eye(D)}[covariance_type]
    fitted = []
    for offset in (0.0, 1e6, 3e7):
        params = GaussianHMMParams(np.full(K, 0.5), np.full((K, K), 0.5), np.array([[-0.5] * D, [3.5] * D]) + offset,
                                   covars0)
        for _ in range(5):
            params = model.m_step(model.e_step((X + offset, lengths), params), params)
        fitted.append(params)
    for params in fitted[1:]:
        np.testing.assert_allclose(params.covars, fitted[0].covars, rtol=1e-6)
        np.testing.assert_allclose(params.means - (params.means[0, 0] - fitted[0].means[0, 0]), fitted[0].means,
                                   rtol=1e-6, atol=1e-6)
    # the three-pass path (posteriors, then statistics) is centred as well
    from dask_em.models.hmm.base import _HMMBase

    stats = _HMMBase.e_step(model, (X + 3e7, lengths), fitted[2])
    np.testing.assert_allclose(model.m_step(stats, fitted[2]).covars,
                               model.m_step(model.e_step((X, lengths), fitted[0]), fitted[0]).covars, rtol=1e-6)


def test_far_from_origin_fit_matches_centred_fit(client):
    X, _ = _two_state_data(np.random.default_rng(1), n=400, D=2)
    kw = dict(covariance_type="full", startprob_init=[0.5, 0.5], transmat_init=[[0.9, 0.1], [0.1, 0.9]],
              covars_init=np.tile(np.eye(2), (2, 1, 1)), max_iter=8, tol=0.0, n_partitions=2)
    near = GaussianHMM(2, means_init=[[-0.5, -0.5], [3.5, 3.5]], **kw).fit(X, [200, 200], client=client)
    far = GaussianHMM(2, means_init=np.array([[-0.5, -0.5], [3.5, 3.5]]) + 3e7, **kw).fit(
        X + 3e7, [200, 200], client=client)
    np.testing.assert_allclose(far.covars_, near.covars_, rtol=1e-6)


def test_signed_change_stops_on_a_decrease():
    abs_rule, signed = ConvergenceMonitor(tol=0.01, max_iter=10), ConvergenceMonitor(tol=0.01, max_iter=10, signed=True)
    for monitor in (abs_rule, signed):
        monitor.history = [-100.0, -150.0]
    assert signed.converged and not abs_rule.converged


def test_stops_at_the_same_iteration_as_hmmlearn(client):
    """A strong means prior lowers the log-likelihood at the second iteration: hmmlearn stops there."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (200, 1)), rng.normal(4, 1, (200, 1))])
    start = dict(startprob=np.array([0.5, 0.5]), transmat=np.array([[0.9, 0.1], [0.1, 0.9]]),
                 means=np.array([[0.0], [4.0]]), covars=np.array([[1.0], [1.0]]))
    for weight in (1.0, 10.0):
        ref = hmm.GaussianHMM(2, init_params="", means_prior=10.0, means_weight=weight, n_iter=100)
        ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = (start[k] for k in ("startprob", "transmat", "means", "covars"))
        ref.fit(X)
        ours = GaussianHMM(2, means_prior=10.0, means_weight=weight, **{f"{k}_init": v for k, v in start.items()})
        ours.fit(X, client=client)
        assert ours.n_iter_ == ref.monitor_.iter
        np.testing.assert_allclose(ours.history_, list(ref.monitor_.history), rtol=1e-8)


@pytest.mark.parametrize("constant_feature", [False, True])
def test_full_covariances_on_twelve_steps(client, constant_feature):
    """hmmlearn fits every seed of this 12 x 3 example; so must we (a singular state covariance is regularised)."""
    n_fitted = 0
    for seed in range(20):
        X = np.random.default_rng(seed).normal(size=(12, 3))
        if constant_feature:
            X[:, 2] = 1.0
        model = GaussianHMM(3, covariance_type="full", random_state=seed, max_iter=4, n_init=1)
        model.fit(X, client=client)
        n_fitted += bool(np.all(np.isfinite(model.covars_)))
    assert n_fitted == 20


def test_covariance_that_cannot_be_factorised_is_a_clear_error(client):
    X = np.random.default_rng(0).normal(size=(40, 2))
    model = GaussianHMM(2, covariance_type="full", covars_init=np.array([[[1.0, 0.0], [0.0, -1.0]]] * 2),
                        max_iter=3)
    with pytest.raises(InvalidDataError, match="state 0 is not positive definite.*Try fewer n_components"):
        model.fit(X, client=client)
