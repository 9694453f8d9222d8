"""Hidden Markov models: hmmlearn parity, the dishonest casino, numerics, bad input."""

from __future__ import annotations

import dask.array as da
import dask.bag as db
import numpy as np
import pytest

from dask_em import CategoricalHMM, GaussianHMM, PoissonHMM, to_zarr_sequences
from dask_em.errors import InvalidDataError
from dask_em.data.sequences import plan_partitions, sequence_blocks

hmm = pytest.importorskip("hmmlearn.hmm")

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")

K = 3


def _chain(rng, lengths, startprob, transmat):
    states = []
    for n in lengths:
        s = np.empty(n, dtype=np.int64)
        s[0] = rng.choice(len(startprob), p=startprob)
        u = rng.random(n)
        cdf = np.cumsum(transmat, axis=1)
        for t in range(1, n):
            s[t] = min(np.searchsorted(cdf[s[t - 1]], u[t], side="right"), len(startprob) - 1)
        states.append(s)
    return np.concatenate(states)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(42)
    lengths = rng.integers(40, 260, size=17)
    startprob = np.array([0.5, 0.3, 0.2])
    transmat = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]])
    states = _chain(rng, lengths, startprob, transmat)
    init_sp = rng.dirichlet(np.ones(K))
    init_tm = 0.5 * np.eye(K) + 0.5 * rng.dirichlet(np.ones(K), size=K)
    return rng, lengths, states, init_sp, init_tm


def _gaussian_case(rng, states, covariance_type):
    D = 3  # the sizes of hmmlearn's own tests (tests/peer): their compiled kernels are shared
    true_means = np.array([[1.0, -1.0, 1.0], [3.0, 1.0, -1.5], [-2.0, 4.0, 0.5]])
    X = true_means[states] + rng.normal(size=(len(states), D))
    means = true_means + rng.normal(scale=0.5, size=(K, D))
    if covariance_type == "diag":
        covars = rng.uniform(0.5, 2.0, size=(K, D))
    elif covariance_type == "spherical":
        covars = rng.uniform(0.5, 2.0, size=K)
    elif covariance_type == "full":
        A = rng.normal(size=(K, D, D))
        covars = A @ A.transpose(0, 2, 1) + np.eye(D)
    else:
        A = rng.normal(size=(D, D))
        covars = A @ A.T + np.eye(D)
    return X, means, covars


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "full", "tied"])
def test_gaussian_parity_with_hmmlearn(client, setup, covariance_type):
    rng, lengths, states, sp, tm = setup
    X, means, covars = _gaussian_case(np.random.default_rng(1), states, covariance_type)
    ours = GaussianHMM(
        K, covariance_type=covariance_type, tol=0.0, startprob_init=sp,
        transmat_init=tm, means_init=means, covars_init=covars, n_partitions=4,
    )
    done = 0
    for n_iter in (1, 5, 20):
        # EM continued from the fitted attributes is the same chain as one longer run
        ours.set_params(max_iter=n_iter - done).fit(X, lengths, client=client)
        ours.set_params(init_params=(), startprob_init=None, transmat_init=None, means_init=None, covars_init=None)
        done = n_iter
        ref = hmm.GaussianHMM(K, covariance_type=covariance_type, init_params="", n_iter=n_iter, tol=-np.inf,
                              implementation="scaling")
        ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = sp, tm, means, covars
        ref.fit(X, lengths)
        for name in ("startprob_", "transmat_", "means_"):
            np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6, atol=1e-12, err_msg=name)
        # hmmlearn keeps spherical variances tiled to (K, D) after an M-step
        ref_covars = ref._covars_[:, 0] if covariance_type == "spherical" else ref._covars_
        compact = ours._compact_covars(ours.covars_, X.shape[1])
        np.testing.assert_allclose(compact, ref_covars, rtol=1e-6, atol=1e-12, err_msg="covars")
        np.testing.assert_allclose(ours.history_[-1], ref.monitor_.history[-1], rtol=1e-6)
        np.testing.assert_allclose(ours.score(X, lengths), ref.score(X, lengths), rtol=1e-6)


def test_categorical_parity_with_hmmlearn(client, setup):
    rng, lengths, states, sp, tm = setup
    r = np.random.default_rng(2)
    emission = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.05, 0.05, 0.2, 0.7]])
    X = np.array([r.choice(4, p=emission[s]) for s in states]).reshape(-1, 1)
    e0 = r.dirichlet(np.ones(4), size=K)
    ours = CategoricalHMM(K, tol=0.0, startprob_init=sp, transmat_init=tm, emissionprob_init=e0, n_partitions=5)
    done = 0
    for n_iter in (1, 5, 20):
        ours.set_params(max_iter=n_iter - done).fit(X, lengths, client=client)
        ours.set_params(init_params=(), startprob_init=None, transmat_init=None, emissionprob_init=None)
        done = n_iter
        ref = hmm.CategoricalHMM(K, init_params="", n_iter=n_iter, tol=-np.inf, implementation="scaling")
        ref.startprob_, ref.transmat_, ref.emissionprob_ = sp, tm, e0
        ref.fit(X, lengths)
        for name in ("startprob_", "transmat_", "emissionprob_"):
            np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(ours.history_[-1], ref.monitor_.history[-1], rtol=1e-6)
    np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))


def test_poisson_parity_with_hmmlearn(client, setup):
    rng, lengths, states, sp, tm = setup
    r = np.random.default_rng(3)
    rates = np.array([[1.0, 5.0, 2.0], [4.0, 0.5, 2.0], [9.0, 9.0, 6.0]])
    X = r.poisson(rates[states])
    lam0 = r.uniform(0.5, 8.0, size=(K, 3))
    ours = PoissonHMM(K, tol=0.0, startprob_init=sp, transmat_init=tm, lambdas_init=lam0, n_partitions=3)
    done = 0
    for n_iter in (1, 5, 20):
        ours.set_params(max_iter=n_iter - done).fit(X, lengths, client=client)
        ours.set_params(init_params=(), startprob_init=None, transmat_init=None, lambdas_init=None)
        done = n_iter
        ref = hmm.PoissonHMM(K, init_params="", n_iter=n_iter, tol=-np.inf, implementation="scaling")
        ref.startprob_, ref.transmat_, ref.lambdas_ = sp, tm, lam0
        ref.fit(X, lengths)
        for name in ("startprob_", "transmat_", "lambdas_"):
            np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(ours.history_[-1], ref.monitor_.history[-1], rtol=1e-6)


def _casino(n_seq=200, n_rolls=500, seed=7):
    rng = np.random.default_rng(seed)
    transmat = np.array([[0.95, 0.05], [0.1, 0.9]])
    emission = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])
    states = _chain(rng, [n_rolls] * n_seq, np.array([1.0, 0.0]), transmat)
    cdf = np.cumsum(emission, axis=1)
    rolls = (cdf[states] <= rng.random(len(states))[:, None]).sum(axis=1)
    return rolls.reshape(-1, 1), np.full(n_seq, n_rolls), transmat, emission


def test_dishonest_casino_is_recovered(client):
    X, lengths, transmat, emission = _casino()
    model = CategoricalHMM(2, random_state=0).fit(X, lengths, client=client)
    loaded = int(np.argmax(model.emissionprob_[:, 5]))
    order = [1 - loaded, loaded]
    np.testing.assert_allclose(model.transmat_[np.ix_(order, order)], transmat, atol=0.03)
    np.testing.assert_allclose(model.emissionprob_[order], emission, atol=0.03)
    assert model.converged_


def test_one_million_steps_without_underflow(client):
    rng = np.random.default_rng(5)
    states = _chain(rng, [1_000_000], np.array([0.5, 0.5]), np.array([[0.99, 0.01], [0.02, 0.98]]))
    X = np.array([[-1.0], [1.0]])[states] + rng.normal(scale=0.8, size=(len(states), 1))
    model = GaussianHMM(2, max_iter=3, tol=0.0, startprob_init=[0.5, 0.5], transmat_init=[[0.9, 0.1], [0.1, 0.9]],
                        means_init=[[-0.5], [0.5]], covars_init=[[1.0], [1.0]], n_partitions=2)
    model.fit(X, client=client)
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert np.all(np.isfinite(getattr(model, name))), name
    assert all(np.isfinite(model.history_)) and model.history_[-1] > model.history_[0]
    np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0)
    proba = model.predict_proba(X)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_never_visited_state_keeps_a_valid_row(client):
    X = np.array([0, 1, 1, 0, 1, 0, 0, 1] * 20).reshape(-1, 1)
    # state 2 only emits symbol 2, which never occurs: it is never visited
    emission = np.array([[0.7, 0.3, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0]])
    transmat = np.array([[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5]])
    model = CategoricalHMM(3, max_iter=5, tol=0.0, startprob_init=[0.5, 0.4, 0.1], transmat_init=transmat,
                           emissionprob_init=emission, n_partitions=2).fit(X, [40] * 4, client=client)
    assert np.all(np.isfinite(model.transmat_)) and np.all(np.isfinite(model.emissionprob_))
    np.testing.assert_allclose(model.transmat_[2], transmat[2])  # the previous row is kept
    np.testing.assert_allclose(model.emissionprob_[2], emission[2])
    np.testing.assert_allclose(model.transmat_.sum(axis=1), 1.0)
    assert model.startprob_[2] == 0.0 and model.transmat_[0, 2] == 0.0


def test_inputs_agree_and_lazy_outputs(client, setup, tmp_path):
    rng, lengths, states, sp, tm = setup
    X, means, covars = _gaussian_case(np.random.default_rng(4), states, "diag")
    kw = dict(max_iter=3, tol=0.0, startprob_init=sp, transmat_init=tm, means_init=means, covars_init=covars,
              n_partitions=3)
    ref = GaussianHMM(K, **kw).fit(X, lengths, client=client)
    seqs = np.split(X, np.cumsum(lengths)[:-1])
    path = to_zarr_sequences(seqs, str(tmp_path / "seqs.zarr"), chunk_rows=500)
    bag = db.from_sequence(seqs, npartitions=4)
    for data in (seqs, bag, path):
        other = GaussianHMM(K, **kw).fit(data, client=client)
        np.testing.assert_allclose(other.means_, ref.means_, rtol=1e-10)
        np.testing.assert_allclose(other.transmat_, ref.transmat_, rtol=1e-10)
    states_np = ref.predict(X, lengths)
    lazy = ref.predict(path)
    assert hasattr(lazy, "dask")
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), states_np)
    per_seq = ref.predict(bag).compute(scheduler="sync")
    np.testing.assert_array_equal(np.concatenate(per_seq), states_np)
    proba = ref.predict_proba(path).compute(scheduler="sync")
    np.testing.assert_allclose(proba, ref.predict_proba(X, lengths), rtol=1e-10)
    np.testing.assert_allclose(ref.score(path), ref.score(X, lengths), rtol=1e-10)
    logp, path_states = ref.decode(X, lengths, algorithm="viterbi")
    sample, sample_states = ref.sample(50, random_state=0)
    assert sample.shape == (50, 3) and sample_states.shape == (50,)


@pytest.mark.parametrize("n_components, n_features", [(3, 3), (17, 2)])
def test_fused_diag_kernel_matches_three_pass_path(n_components, n_features):
    """The fused diagonal E-step (sizes as constants, and the generic build
    used above 16 states) agrees with emission densities + forward-backward
    + statistics, including one-step sequences and a non-finite step."""
    from dask_em.models.hmm import GaussianHMMModel, GaussianHMMParams
    from dask_em.models.hmm.base import _HMMBase

    rng = np.random.default_rng(3)
    Kc, D = n_components, n_features
    lengths = np.array([60, 1, 139])
    X = rng.normal(scale=2.0, size=(lengths.sum(), D))
    X[70, 1] = np.nan
    model = GaussianHMMModel(n_components=Kc, covariance_type="diag")
    params = GaussianHMMParams(
        rng.dirichlet(np.ones(Kc)), rng.dirichlet(np.ones(Kc), size=Kc), rng.normal(size=(Kc, D)),
        rng.uniform(0.5, 2.0, size=(Kc, D)),
    )
    fused = model.e_step((X, lengths), params)
    ref = _HMMBase.e_step(model, (X, lengths), params)
    assert fused["n_invalid"] == ref["n_invalid"] == 1
    # both paths leave the NaN step out of the emission sums
    assert set(fused) == set(ref)
    for key in ref:
        np.testing.assert_allclose(fused[key], ref[key], rtol=1e-12, atol=1e-14, err_msg=key)


def test_partitions_are_balanced_and_keep_sequences_whole():
    lengths = np.array([5, 100, 3, 3, 50, 50, 7, 90, 1, 1, 60])
    plan = plan_partitions(lengths, 4)
    assert plan[0][0] == 0 and plan[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    sizes = [lengths[lo:hi].sum() for lo, hi in plan]
    assert max(sizes) <= 2 * lengths.sum() / 4
    blocks = sequence_blocks(np.zeros((lengths.sum(), 2)), lengths, n_partitions=4)
    assert blocks.n_samples == lengths.sum() and len(blocks.parts) == 4
    np.testing.assert_array_equal(blocks.lengths, lengths)


def test_bad_input_is_reported(client):
    X = np.random.default_rng(0).normal(size=(30, 3))
    model = GaussianHMM(2, max_iter=2, random_state=0, n_init=1)
    with pytest.raises(InvalidDataError, match="sum to 29"):
        model.fit(X, [10, 19], client=client)
    with pytest.raises(InvalidDataError, match="positive"):
        model.fit(X, [10, 0, 20], client=client)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        model.fit(bad, [15, 15], client=client)
    given = GaussianHMM(2, max_iter=2, means_init=np.zeros((2, 3)), covars_init=np.ones((2, 3)),
                        startprob_init=[0.5, 0.5], transmat_init=np.full((2, 2), 0.5))
    with pytest.raises(InvalidDataError, match="1 time steps contain NaN"):
        given.fit(bad, [15, 15], client=client)
    with pytest.raises(InvalidDataError, match="X has 3 features but means_init"):
        GaussianHMM(2, means_init=np.zeros((2, 2)), max_iter=1).fit(X, client=client)
    fitted = GaussianHMM(2, max_iter=2, random_state=0, n_init=1).fit(X, client=client)
    with pytest.raises(InvalidDataError, match="2 features"):
        fitted.predict(np.zeros((5, 2)))
    symbols = np.array([0, 1, 2, 1, 0, 2, 1, 1]).reshape(-1, 1)
    cat = CategoricalHMM(2, n_features=3, max_iter=2, random_state=0, n_init=1)
    with pytest.raises(InvalidDataError, match="1 symbols are not integers in 0..2"):
        cat.fit(np.r_[symbols, [[5]]], client=client)
    with pytest.raises(InvalidDataError, match="1 symbols are not integers"):
        cat.fit(np.r_[symbols.astype(float), [[1.5]]], client=client)
    with pytest.raises(InvalidDataError, match="one column"):
        cat.fit(np.zeros((8, 2), dtype=int), client=client)
    counts = np.array([[0, 1, 2], [3, 2, 0], [1, 1, 1], [4, 0, 2]])
    pois = PoissonHMM(2, max_iter=2, random_state=0, n_init=1)
    with pytest.raises(InvalidDataError, match="1 time steps contain counts"):
        pois.fit(np.r_[counts, [[-1, 2, 0]]], client=client)
    with pytest.raises(InvalidDataError, match="2 time steps contain counts"):
        pois.fit(np.r_[counts, [[0.5, 2, 0], [1, 2.5, 0]]], client=client)
    with pytest.raises(ValueError, match="unknown params"):
        GaussianHMM(2, params=("s", "t")).fit(X, client=client)
    from sklearn.exceptions import NotFittedError

    for method in ("predict", "predict_proba", "decode", "score", "score_samples"):  # not an AttributeError
        with pytest.raises(NotFittedError):
            getattr(GaussianHMM(2), method)(X)


def test_checkpoint_resume_is_bit_identical(client, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    X[1500:] += 3
    lengths = [1000, 1000, 1000]
    kw = dict(tol=0.0, random_state=0, n_init=2, n_init_iter=2, n_partitions=3)
    full = GaussianHMM(2, max_iter=6, **kw).fit(X, lengths, client=client)
    path = str(tmp_path / "ckpt.zarr")
    GaussianHMM(2, max_iter=3, **kw).fit(X, lengths, client=client, checkpoint=path)
    resumed = GaussianHMM(2, max_iter=6, **kw).fit(X, lengths, client=client, checkpoint=path, force=True)
    np.testing.assert_array_equal(resumed.means_, full.means_)
    np.testing.assert_array_equal(resumed.transmat_, full.transmat_)
    assert resumed.history_ == full.history_


def test_partitions_follow_storage_chunks():
    # 100 sequences of 1000 rows stored in chunks of 3000 rows: every cut lands on a chunk end
    lengths = np.full(100, 1000)
    chunk_ends = np.arange(3000, 100_000, 3000)
    plan = plan_partitions(lengths, 7, chunk_ends)
    assert len(plan) == 7 and plan[0][0] == 0 and plan[-1][1] == 100
    assert all(hi * 1000 % 3000 == 0 for _lo, hi in plan[:-1])
    # sequences that straddle chunk ends: cuts fall on the nearest sequence boundary, none empty
    uneven = np.array([5, 100, 3, 3, 50, 50, 7, 90, 1, 1, 60])
    plan = plan_partitions(uneven, 4, [100, 200, 300])
    assert all(hi > lo for lo, hi in plan) and plan[-1][1] == len(uneven)
    blocks = sequence_blocks(da.zeros((100_000, 2), chunks=(3000, 2)), lengths, n_partitions=7)
    assert [int(p.sum()) for p in blocks.part_lengths][0] % 3000 == 0


def _fused_case(emission, n_components, rng):
    """Model, parameters, and data with one-step, NaN/invalid and 100,000-step sequences."""
    from dask_em.models.hmm import (
        CategoricalHMMModel, CategoricalHMMParams, GaussianHMMModel, GaussianHMMParams, PoissonHMMModel,
        PoissonHMMParams,
    )

    Kc, D = n_components, 3
    lengths = np.array([60, 1, 139, 100_000])
    T = int(lengths.sum())
    sp = rng.dirichlet(np.ones(Kc))
    tm = 0.6 * np.eye(Kc) + 0.4 * rng.dirichlet(np.ones(Kc), size=Kc)
    if emission == "categorical":
        M = 5
        X = rng.integers(0, M, size=T).reshape(-1, 1).astype(float)
        X[70, 0], X[5, 0], X[300, 0] = np.nan, 1.5, M  # NaN, fractional, out of range
        return CategoricalHMMModel(n_components=Kc, n_features=M), \
            CategoricalHMMParams(sp, tm, rng.dirichlet(np.ones(M), size=Kc)), X, lengths, 3
    if emission == "poisson":
        lam = rng.uniform(0.5, 9.0, size=(Kc, D))
        X = rng.poisson(lam[rng.integers(0, Kc, T)]).astype(float)
        X[70, 1], X[8, 0] = np.nan, -1.0
        X[9, 1] = 2000.0  # beyond the kernel's log-factorial table
        return PoissonHMMModel(n_components=Kc), PoissonHMMParams(sp, tm, lam), X, lengths, 2
    means = rng.normal(scale=2.0, size=(Kc, D))
    A = rng.normal(size=(Kc, D, D))
    covars = A @ A.transpose(0, 2, 1) + np.eye(D)
    if emission == "tied":
        covars = covars[0]
    X = means[rng.integers(0, Kc, T)] + rng.normal(size=(T, D))
    X[70, 1] = np.nan
    X[200, :] = np.inf
    return GaussianHMMModel(n_components=Kc, covariance_type=emission), \
        GaussianHMMParams(sp, tm, means, covars), X, lengths, 2


@pytest.mark.parametrize("emission", ["categorical", "poisson", "full", "tied"])
@pytest.mark.parametrize("n_components", [3, 17])
def test_fused_kernels_match_three_pass_path(emission, n_components):
    """The fused E-steps of categorical, Poisson and full/tied Gaussian HMMs
    (sizes as constants, and the generic build above 16 states) agree with
    emission log-probabilities + forward-backward + statistics to 1e-12,
    with one-step sequences, invalid steps and a 100,000-step sequence."""
    from dask_em.models.hmm.base import _HMMBase

    model, params, X, lengths, n_bad = _fused_case(emission, n_components, np.random.default_rng(11))
    fused = model.e_step((X, lengths), params)
    ref = _HMMBase.e_step(model, (X, lengths), params)
    assert fused["n_invalid"] == ref["n_invalid"] == n_bad
    assert np.isfinite(fused["loglik"])
    assert set(fused) == set(ref)
    for key in ref:
        np.testing.assert_allclose(fused[key], ref[key], rtol=1e-12, atol=1e-14, err_msg=key)


def test_fused_kernels_report_impossible_sequences():
    """A symbol no state can emit, or a count a zero rate cannot produce:
    -inf, as in the three-pass path."""
    from dask_em.models.hmm import (
        CategoricalHMMModel, CategoricalHMMParams, PoissonHMMModel, PoissonHMMParams,
    )
    from dask_em.models.hmm.base import _HMMBase

    sp, tm = np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.2, 0.8]])
    x = np.array([[0], [1], [2], [1]])
    model = CategoricalHMMModel(n_components=2, n_features=3)
    params = CategoricalHMMParams(sp, tm, np.array([[0.5, 0.5, 0.0], [0.3, 0.7, 0.0]]))
    lengths = np.array([2, 2])
    assert model.e_step((x, lengths), params)["loglik"] == _HMMBase.e_step(model, (x, lengths), params)["loglik"]
    assert model.e_step((x, lengths), params)["loglik"] == -np.inf
    model = PoissonHMMModel(n_components=2)
    params = PoissonHMMParams(sp, tm, np.array([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]]))
    counts = np.array([[0, 1, 2], [0, 3, 1], [1, 0, 0]], dtype=float)
    fused = model.e_step((counts, np.array([3])), params)
    with np.errstate(invalid="ignore"):  # the three-pass path's posteriors of an impossible sequence
        ref = _HMMBase.e_step(model, (counts, np.array([3])), params)
    assert fused["loglik"] == -np.inf == ref["loglik"]
    # zero counts under a zero rate are fine
    fused = model.e_step((counts[:2], np.array([2])), params)
    ref = _HMMBase.e_step(model, (counts[:2], np.array([2])), params)
    for key in ref:
        np.testing.assert_allclose(fused[key], ref[key], rtol=1e-12, atol=1e-14, err_msg=key)
