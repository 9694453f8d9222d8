"""HMMs with non-default priors against hmmlearn, from the same starting point."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em import CategoricalHMM, GaussianHMM, PoissonHMM

hmm = pytest.importorskip("hmmlearn.hmm")

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")

K = 3
RTOL = 1e-6
N_ITER = (1, 5)


def _chain(rng, lengths, startprob, transmat):
    cdf = np.cumsum(transmat, axis=1)
    out = []
    for n in lengths:
        s = np.empty(n, dtype=np.int64)
        s[0] = rng.choice(len(startprob), p=startprob)
        u = rng.random(n)
        for t in range(1, n):
            s[t] = min(np.searchsorted(cdf[s[t - 1]], u[t], side="right"), len(startprob) - 1)
        out.append(s)
    return np.concatenate(out)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(11)
    lengths = rng.integers(30, 200, size=12)
    states = _chain(rng, lengths, np.array([0.5, 0.3, 0.2]), np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]]))
    init_sp = rng.dirichlet(np.ones(K))
    init_tm = 0.5 * np.eye(K) + 0.5 * rng.dirichlet(np.ones(K), size=K)
    return lengths, states, init_sp, init_tm


MARKOV_PRIORS = dict(startprob_prior=1.5, transmat_prior=2.0)


def _compare(ours, ref, names, X, lengths):
    for name in names:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=RTOL, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ours.history_[-1], ref.monitor_.history[-1], rtol=RTOL)
    np.testing.assert_allclose(ours.score(X, lengths), ref.score(X, lengths), rtol=RTOL)


def _run(ours, make_ref, set_ref, init_names, X, lengths, client, compare):
    """Continue our fit in steps (the same chain as one run) and compare with hmmlearn after each."""
    done = 0
    for n_iter in N_ITER:
        ours.set_params(max_iter=n_iter - done).fit(X, lengths, client=client)
        ours.set_params(init_params=(), **{name: None for name in init_names})
        done = n_iter
        ref = make_ref(n_iter)
        set_ref(ref)
        ref.fit(X, lengths)
        compare(ours, ref)


@pytest.mark.parametrize("covariance_type", ["diag", "full", "spherical", "tied"])
def test_gaussian_hmm_with_priors_matches_hmmlearn(client, setup, covariance_type):
    lengths, states, sp, tm = setup
    rng = np.random.default_rng(2)
    D = 3  # the sizes of hmmlearn's own tests (tests/peer): their compiled kernels are shared
    true_means = np.array([[1.0, -1.0, 1.0], [3.0, 1.0, -1.5], [-2.0, 4.0, 0.5]])
    X = true_means[states] + rng.normal(size=(len(states), D))
    means = true_means + rng.normal(scale=0.5, size=(K, D))
    if covariance_type == "diag":
        covars = rng.uniform(0.5, 2.0, size=(K, D))
        covars_prior, covars_weight = rng.uniform(0.2, 1.0, size=(K, D)), 3.0
    elif covariance_type == "spherical":
        covars = rng.uniform(0.5, 2.0, size=K)
        covars_prior, covars_weight = rng.uniform(0.2, 1.0, size=(K, D)), 2.5
    elif covariance_type == "full":
        A = rng.normal(size=(K, D, D))
        covars = A @ A.transpose(0, 2, 1) + np.eye(D)
        covars_prior, covars_weight = np.stack([np.diag(rng.uniform(0.2, 1.0, D)) for _ in range(K)]), D + 3.0
    else:
        A = rng.normal(size=(D, D))
        covars = A @ A.T + np.eye(D)
        covars_prior, covars_weight = np.diag([0.5, 0.8, 0.6]), D + 4.0
    priors = dict(
        **MARKOV_PRIORS,
        means_prior=np.array([[0.5, 0.5, 1.0], [2.0, 2.0, -1.0], [-1.0, 3.0, 0.5]]),
        means_weight=2.0,
        covars_prior=covars_prior,
        covars_weight=covars_weight,
    )
    ours = GaussianHMM(
        K, covariance_type=covariance_type, tol=0.0, startprob_init=sp, transmat_init=tm,
        means_init=means, covars_init=covars, n_partitions=4, **priors,
    )

    def make_ref(n_iter):
        return hmm.GaussianHMM(K, covariance_type=covariance_type, init_params="", n_iter=n_iter, tol=-np.inf,
                               implementation="scaling", **priors)

    def set_ref(ref):
        ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = sp, tm, means, covars

    def compare(ours, ref):
        _compare(ours, ref, ("startprob_", "transmat_", "means_"), X, lengths)
        ref_covars = ref._covars_[:, 0] if covariance_type == "spherical" else ref._covars_
        compact = ours._compact_covars(ours.covars_, D)
        np.testing.assert_allclose(compact, ref_covars, rtol=RTOL, atol=1e-12, err_msg="covars")

    _run(ours, make_ref, set_ref, ("startprob_init", "transmat_init", "means_init", "covars_init"), X, lengths,
         client, compare)
    # the priors did something: the ML fit from the same start differs
    ml = hmm.GaussianHMM(K, covariance_type=covariance_type, init_params="", n_iter=N_ITER[-1], tol=-np.inf,
                         implementation="scaling")
    ml.startprob_, ml.transmat_, ml.means_, ml.covars_ = sp, tm, means, covars
    ml.fit(X, lengths)
    assert np.max(np.abs(ml.transmat_ - ours.transmat_)) > 1e-4
    assert np.max(np.abs(ml.means_ - ours.means_)) > 1e-4


def test_categorical_hmm_with_priors_matches_hmmlearn(client, setup):
    lengths, states, sp, tm = setup
    rng = np.random.default_rng(3)
    emission = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.05, 0.05, 0.2, 0.7]])
    X = np.array([rng.choice(4, p=emission[s]) for s in states]).reshape(-1, 1)
    e0 = rng.dirichlet(np.ones(4), size=K)
    priors = dict(startprob_prior=np.array([1.5, 2.0, 3.0]), transmat_prior=2.0,
                  emissionprob_prior=1.0 + rng.uniform(0.5, 4.0, size=(K, 4)))
    ours = CategoricalHMM(K, tol=0.0, startprob_init=sp, transmat_init=tm, emissionprob_init=e0, n_partitions=5,
                          **priors)

    def make_ref(n_iter):
        return hmm.CategoricalHMM(K, init_params="", n_iter=n_iter, tol=-np.inf, implementation="scaling", **priors)

    def set_ref(ref):
        ref.startprob_, ref.transmat_, ref.emissionprob_ = sp, tm, e0

    _run(ours, make_ref, set_ref, ("startprob_init", "transmat_init", "emissionprob_init"), X, lengths, client,
         lambda o, r: _compare(o, r, ("startprob_", "transmat_", "emissionprob_"), X, lengths))


def test_poisson_hmm_with_priors_matches_hmmlearn(client, setup):
    lengths, states, sp, tm = setup
    rng = np.random.default_rng(4)
    rates = np.array([[1.0, 5.0, 2.0], [4.0, 0.5, 2.0], [9.0, 9.0, 6.0]])
    X = rng.poisson(rates[states])
    lam0 = rng.uniform(0.5, 8.0, size=(K, 3))
    priors = dict(**MARKOV_PRIORS, lambdas_prior=np.array([[2.0, 3.0, 1.0], [1.0, 1.0, 2.0], [5.0, 4.0, 3.0]]),
                  lambdas_weight=0.5)
    ours = PoissonHMM(K, tol=0.0, startprob_init=sp, transmat_init=tm, lambdas_init=lam0, n_partitions=3, **priors)

    def make_ref(n_iter):
        return hmm.PoissonHMM(K, init_params="", n_iter=n_iter, tol=-np.inf, implementation="scaling", **priors)

    def set_ref(ref):
        ref.startprob_, ref.transmat_, ref.lambdas_ = sp, tm, lam0

    _run(ours, make_ref, set_ref, ("startprob_init", "transmat_init", "lambdas_init"), X, lengths, client,
         lambda o, r: _compare(o, r, ("startprob_", "transmat_", "lambdas_"), X, lengths))
