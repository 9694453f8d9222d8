"""GMMHMM (Gaussian-mixture emissions): hmmlearn parity, the contract, resume, segments."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em import GMMHMM
from dask_em.models.hmm import GMMHMMModel, GMMHMMParams
from dask_em.models.hmm.base import _HMMBase
from dask_em.data.sequences import sequence_blocks
from dask_em.testing import check_model

hmm = pytest.importorskip("hmmlearn.hmm")

pytestmark = pytest.mark.filterwarnings(
    "ignore::dask_em.errors.ConvergenceWarning",
    # hmmlearn's GMMHMM runs its k-means initialisation even with init_params=""
    "ignore::RuntimeWarning", "ignore::UserWarning", "ignore::FutureWarning",
)

K, M, D = 2, 2, 2
COVARIANCE_TYPES = ["diag", "spherical", "full", "tied"]


def _data(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Two regimes, each a mixture of two blobs."""
    states = np.concatenate([(np.arange(n) // 25) % 2 for n in lengths])
    centres = np.array([[[0.0, 0.0], [2.0, 2.0]], [[5.0, 0.0], [5.0, 3.0]]])
    mix = rng.integers(0, M, size=len(states))
    return centres[states, mix] + rng.normal(scale=0.7, size=(len(states), D))


def _start(rng: np.random.Generator, covariance_type: str) -> dict[str, np.ndarray]:
    covars = {
        "diag": rng.uniform(0.5, 2.0, size=(K, M, D)),
        "spherical": rng.uniform(0.5, 2.0, size=(K, M)),
        "full": np.tile(np.array([[1.2, 0.3], [0.3, 0.9]]), (K, M, 1, 1)),
        "tied": np.tile(np.array([[1.1, -0.2], [-0.2, 1.4]]), (K, 1, 1)),
    }[covariance_type]
    return dict(
        startprob=np.array([0.6, 0.4]),
        transmat=np.array([[0.85, 0.15], [0.2, 0.8]]),
        weights=np.array([[0.5, 0.5], [0.4, 0.6]]),
        means=np.array([[[0.5, -0.5], [1.5, 2.5]], [[4.5, 0.5], [5.5, 2.5]]]),
        covars=covars,
    )


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(8)
    lengths = rng.integers(40, 120, size=9)
    return _data(rng, lengths), lengths


def _reference(covariance_type: str, start: dict[str, np.ndarray], n_iter: int) -> object:
    """hmmlearn's GMMHMM from ``start``, recording its parameters after every M-step and every
    iteration's log-likelihood (one fit for all the iterations compared)."""
    ref = hmm.GMMHMM(K, n_mix=M, covariance_type=covariance_type, init_params="", n_iter=n_iter, tol=-np.inf,
                     implementation="scaling", random_state=0)
    for name, value in start.items():
        setattr(ref, f"{name}_", value)
    ref.seen, ref.logliks = [], []
    do_mstep = ref._do_mstep

    def recording(stats):  # type: ignore[no-untyped-def]
        do_mstep(stats)
        ref.seen.append({f"{name}_": np.array(getattr(ref, f"{name}_"), copy=True) for name in start})

    ref._do_mstep = recording
    ref.monitor_.report = ref.logliks.append
    return ref


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_with_hmmlearn(sequences, covariance_type):
    """Iterations 1, 5 and 20 from the same start, sequences over three partitions (in this process; the
    resume and segment tests below run on the cluster): hmmlearn's parameters and log-likelihood to 1e-6."""
    X, lengths = sequences
    start = _start(np.random.default_rng(1), covariance_type)
    ref = _reference(covariance_type, start, 20)
    ref.fit(X, lengths)
    assert len(ref.seen) == len(ref.logliks) == 20
    ours = GMMHMM(K, n_mix=M, covariance_type=covariance_type, tol=0.0, n_partitions=3,
                  **{f"{name}_init": value for name, value in start.items()})
    done = 0
    for n_iter in (1, 5, 20):
        # EM continued from the fitted attributes is the same chain as one longer run
        ours.set_params(max_iter=n_iter - done).fit(X, lengths)
        ours.set_params(init_params=(), **{f"{name}_init": None for name in start})
        done = n_iter
        for name, expected in ref.seen[n_iter - 1].items():
            np.testing.assert_allclose(getattr(ours, name), expected, rtol=1e-6, atol=1e-12,
                                       err_msg=f"{name} after {n_iter} iterations")
        np.testing.assert_allclose(ours.history_[-1], ref.logliks[n_iter - 1], rtol=1e-6)
    np.testing.assert_allclose(ours.score(X, lengths), ref.score(X, lengths), rtol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X, lengths), ref.predict_proba(X, lengths), atol=1e-6)
    np.testing.assert_array_equal(ours.predict(X, lengths), ref.predict(X, lengths))
    logp, states = ours.decode(X, lengths)
    ref_logp, ref_states = ref.decode(X, lengths)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-6)
    np.testing.assert_array_equal(states, ref_states)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_fused_e_step_matches_three_pass_path(covariance_type):
    """The fused kernel (mixture pieces over the Gaussian ones) against log-sum-exp + forward-backward + sums,
    with a non-finite step counted and left out of the statistics."""
    rng = np.random.default_rng(3)
    lengths = np.array([1, 60, 139])
    X = _data(rng, lengths)
    X[70, 1] = np.nan
    model = GMMHMMModel(n_components=K, n_mix=M, covariance_type=covariance_type)
    params = GMMHMMParams(**_start(np.random.default_rng(2), covariance_type))
    fused = model.e_step((X, lengths), params)
    ref = _HMMBase.e_step(model, (X, lengths), params)
    assert fused["n_invalid"] == ref["n_invalid"] == 1
    assert set(fused) == set(ref)
    for key in ref:
        np.testing.assert_allclose(fused[key], ref[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_contract():
    """dask_em.testing.check_model on the model, sequences in 3 partitions (and 2 for chunking invariance)."""
    rng = np.random.default_rng(4)
    lengths = np.array([40, 25, 35, 30, 45, 25])
    X = _data(rng, lengths)
    model = GMMHMMModel(n_components=K, n_mix=M, covariance_type="full")
    params = GMMHMMParams(**_start(np.random.default_rng(5), "full"))
    blocks, other = (sequence_blocks(X, lengths, n_partitions=n) for n in (3, 2))
    check_model(model, blocks, params, client=None, n_iter=4, chunkings=[other], rtol=1e-9)


def test_checkpoint_resume_is_bit_identical(client, sequences, tmp_path):
    X, lengths = sequences
    kw = dict(n_mix=M, covariance_type="diag", tol=0.0, random_state=0, n_init=2, n_init_iter=2, n_partitions=3)
    full = GMMHMM(K, max_iter=6, **kw).fit(X, lengths, client=client)
    path = str(tmp_path / "ckpt.zarr")
    GMMHMM(K, max_iter=3, **kw).fit(X, lengths, client=client, checkpoint=path)
    resumed = GMMHMM(K, max_iter=6, **kw).fit(X, lengths, client=client, checkpoint=path, force=True)
    for name in ("startprob_", "transmat_", "weights_", "means_", "covars_"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name), err_msg=name)
    assert resumed.history_ == full.history_


def test_one_long_sequence_in_segments(client):
    """A single sequence cut into four segments: the fit of the whole sequence (hmmlearn's)."""
    rng = np.random.default_rng(6)
    X = _data(rng, np.array([2000]))
    start = _start(np.random.default_rng(7), "tied")
    ours = GMMHMM(K, n_mix=M, covariance_type="tied", tol=0.0, max_iter=5, segment_length=500,
                  **{f"{name}_init": value for name, value in start.items()}).fit(X, client=client)
    ref = _reference("tied", start, 5)
    ref.fit(X)
    for name in ("startprob_", "transmat_", "weights_", "means_", "covars_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-6, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ours.history_, ref.logliks, rtol=1e-6)


def test_fit_from_scratch_sample_and_errors(client, sequences):
    """Initialisation without given values, sampling, hmmlearn's letters, and shapes named in errors."""
    X, lengths = sequences
    model = GMMHMM(K, n_mix=M, covariance_type="spherical", max_iter=5, random_state=0, n_init=2,
                   params="stmcw", init_params="stmcw").fit(X, lengths, client=client)
    assert model.means_.shape == (K, M, D) and model.covars_.shape == (K, M) and model.weights_.shape == (K, M)
    np.testing.assert_allclose(model.weights_.sum(axis=1), 1.0)
    assert np.all(np.diff(model.history_) > -1e-8)
    sample, states = model.sample(200, random_state=1)
    assert sample.shape == (200, D) and set(np.unique(states)) <= {0, 1}
    assert np.isfinite(model.bic(X, lengths))
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 2, 2\)"):
        GMMHMM(K, n_mix=M, means_init=np.zeros((K, D))).fit(X, lengths)
    with pytest.raises(ValueError, match="n_mix must be an integer >= 1"):
        GMMHMM(K, n_mix=0).fit(X, lengths)
    bad = X.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="1 time steps contain NaN or infinite values"):
        GMMHMM(K, n_mix=M, max_iter=2, random_state=0).fit(bad, lengths)
