"""One long sequence cut into segments: exact Baum-Welch and Viterbi against hmmlearn on the whole sequence."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from numba import njit

from dask_em import GaussianHMM, PoissonHMM
from dask_em.engine import fit_em
from dask_em.models.hmm import (
    CategoricalHMMModel,
    CategoricalHMMParams,
    GaussianHMMModel,
    GaussianHMMParams,
    PoissonHMMModel,
    PoissonHMMParams,
)
from dask_em.models.hmm.segments import SegmentedHMM, SegmentPart
from dask_em.data.sequences import plan_blocks, sequence_blocks
from dask_em.stats import add_stats

hmm = pytest.importorskip("hmmlearn.hmm")

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")

K, D = 3, 3  # the sizes of hmmlearn's own tests (tests/peer): their compiled kernels are shared
T = 300_000
SEGMENT = 30_000  # ten segments
STARTPROB = np.array([0.5, 0.3, 0.2])
TRANSMAT = np.array([[0.95, 0.03, 0.02], [0.04, 0.9, 0.06], [0.05, 0.05, 0.9]])


@njit(cache=True)
def _walk(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    s = np.zeros(len(u), dtype=np.int64)
    for t in range(1, len(u)):
        row = cdf[s[t - 1]]
        k = 0
        while k < len(row) - 1 and row[k] <= u[t]:
            k += 1
        s[t] = k
    return s


def _states(rng: np.random.Generator, n: int) -> np.ndarray:
    return _walk(np.cumsum(TRANSMAT, axis=1), rng.random(n))


@pytest.fixture(scope="module")
def chain() -> np.ndarray:
    return _states(np.random.default_rng(5), T)


def _case(emission: str, states: np.ndarray) -> tuple[np.ndarray, object, object, object]:
    """Data, our model, initial parameters and a hmmlearn estimator set to them."""
    rng = np.random.default_rng(11)
    sp = np.array([0.4, 0.35, 0.25])
    tm = 0.7 * np.eye(K) + 0.3 * rng.dirichlet(np.ones(K), size=K)
    if emission == "categorical":
        probs = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.05, 0.05, 0.2, 0.7]])
        cdf = np.cumsum(probs, axis=1)
        X = np.minimum((cdf[states] <= rng.random(len(states))[:, None]).sum(axis=1), 3).reshape(-1, 1)
        e0 = rng.dirichlet(np.ones(4), size=K)
        ref = hmm.CategoricalHMM(K, init_params="", n_iter=20, tol=-np.inf, implementation="scaling")
        ref.emissionprob_ = e0
        params = CategoricalHMMParams(sp, tm, e0)
        model = CategoricalHMMModel(n_components=K, n_features=4, params=("startprob", "transmat", "emissionprob"))
    elif emission == "poisson":
        rates = np.array([[1.0, 5.0, 2.0], [4.0, 0.5, 2.0], [9.0, 9.0, 6.0]])
        X = rng.poisson(rates[states]).astype(np.float64)
        lam0 = rng.uniform(0.5, 8.0, size=(K, D))
        ref = hmm.PoissonHMM(K, init_params="", n_iter=20, tol=-np.inf, implementation="scaling")
        ref.lambdas_ = lam0
        params = PoissonHMMParams(sp, tm, lam0)
        model = PoissonHMMModel(n_components=K)
    else:
        ct = emission
        true_means = np.array([[1.0, -1.0, 1.0], [3.0, 1.0, -1.5], [-2.0, 4.0, 0.5]])
        X = true_means[states] + rng.normal(size=(len(states), D))
        means = true_means + rng.normal(scale=0.5, size=(K, D))
        covars = {
            "diag": rng.uniform(0.5, 2.0, size=(K, D)),
            "spherical": rng.uniform(0.5, 2.0, size=K),
            "full": np.array([a @ a.T + np.eye(D) for a in rng.normal(size=(K, D, D))]),
            "tied": (lambda a: a @ a.T + np.eye(D))(rng.normal(size=(D, D))),
        }[ct]
        ref = hmm.GaussianHMM(K, covariance_type=ct, init_params="", n_iter=20, tol=-np.inf, implementation="scaling")
        ref.means_, ref.covars_ = means, covars
        params = GaussianHMMParams(sp, tm, means, covars)
        model = GaussianHMMModel(n_components=K, covariance_type=ct)
    ref.startprob_, ref.transmat_ = sp, tm
    return X, model, params, ref


def _record_msteps(ref: object) -> list[dict[str, np.ndarray]]:
    """Make hmmlearn keep its parameters after every M-step (one run gives iterations 1, 5 and 20)."""
    seen: list[dict[str, np.ndarray]] = []
    do_mstep = ref._do_mstep

    def recording(stats):  # type: ignore[no-untyped-def]
        do_mstep(stats)
        seen.append({k: np.array(v, copy=True) for k, v in vars(ref).items() if k.endswith("_") and isinstance(v, np.ndarray)})

    ref._do_mstep = recording
    return seen


def _ours_as_ref(params: object) -> dict[str, np.ndarray]:
    names = {"emissionprob": "emissionprob_", "lambdas": "lambdas_", "means": "means_", "covars": "_covars_"}
    out = {"startprob_": params.startprob, "transmat_": params.transmat}
    for field, attr in names.items():
        if hasattr(params, field):
            out[attr] = getattr(params, field)
    return out


def _in_process(blocks: object) -> tuple[list, object]:
    """The blocks' parts in memory, and a pass over them in this process (the engine's sum, unsplit)."""
    parts = list(blocks.compute(*blocks.parts))

    def run_pass(pass_model, pass_params):
        return add_stats(*[pass_model.e_step(p, pass_params) for p in parts])

    return parts, run_pass


def _params_from(ref_params: dict[str, np.ndarray], like: object, emission: str) -> object:
    """hmmlearn's recorded attributes as our parameter dataclass."""
    values = {"startprob": ref_params["startprob_"], "transmat": ref_params["transmat_"]}
    if emission == "categorical":
        values["emissionprob"] = ref_params["emissionprob_"]
    elif emission == "poisson":
        values["lambdas"] = ref_params["lambdas_"]
    else:
        values["means"] = ref_params["means_"]
        covars = ref_params["_covars_"]
        values["covars"] = covars[:, 0] if emission == "spherical" else covars
    return type(like)(**values)


@pytest.mark.parametrize("emission", ["diag", "spherical", "full", "tied", "categorical", "poisson"])
def test_ten_segments_match_hmmlearn_on_the_whole_sequence(chain, emission):
    """Iterations 1, 5 and 20 of hmmlearn on the whole sequence, each reproduced from ten segments.

    hmmlearn runs 20 iterations once, keeping its parameters after every
    M-step; at iterations 1, 5 and 20 our two segmented passes (transfer
    operators, then statistics) and M-step, from hmmlearn's parameters
    entering that iteration, must give its parameters and log-likelihood.
    (The estimator test below runs a whole chain of iterations on a
    cluster.)
    """
    X, model, params, ref = _case(emission, chain)
    blocks = sequence_blocks(X, segment_length=SEGMENT)
    assert len(blocks.parts) == 10 and blocks.segments is not None and len(blocks.segments) == 10
    parts, run_pass = _in_process(blocks)
    seg = SegmentedHMM(model, blocks.segments)
    seen = _record_msteps(ref)
    ref.fit(X)
    assert len(seen) == 20
    for it in (1, 5, 20):
        entering = params if it == 1 else _params_from(seen[it - 2], params, emission)
        e_params = seg.prepare_e_step(entering, run_pass)
        stats = run_pass(seg, e_params)
        np.testing.assert_allclose(stats["loglik"], ref.monitor_.history[it - 1], rtol=1e-12)
        new = seg.m_step(stats, e_params)
        for name, value in _ours_as_ref(new).items():
            expected = seen[it - 1][name]
            if emission == "spherical" and name == "_covars_":
                expected = expected[:, 0]  # hmmlearn tiles spherical variances to (K, D)
            np.testing.assert_allclose(value, expected, rtol=1e-8, atol=1e-12, err_msg=f"{name} at iteration {it}")
    # Viterbi over the segments (max-plus operators, then a traceback per segment) under the final parameters
    final = _params_from(seen[-1], params, emission)
    decoded = seg.prepare_decode(final, run_pass)
    logp, states = zip(*[seg.decode(p, decoded) for p in parts])
    ref_logp, ref_states = ref.decode(X, algorithm="viterbi")
    np.testing.assert_array_equal(np.concatenate(states), ref_states)
    assert abs(sum(logp) - ref_logp) <= 1e-10 * abs(ref_logp)


def _mixed(rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """One long sequence between short ones (mixed input)."""
    lengths = [700, 400, 20_000, 650, 900, 300, 1_050]
    states = _states(rng, sum(lengths))
    means = np.array([[1.0, -1.0, 1.0], [3.0, 1.0, -1.5], [-2.0, 4.0, 0.5]])
    return means[states] + rng.normal(size=(len(states), D)), lengths


def _given(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return dict(startprob_init=np.array([0.4, 0.35, 0.25]), transmat_init=0.7 * np.eye(K) + 0.1,
                means_init=np.array([[0.5, 0.0, 0.5], [2.5, 1.5, -0.5], [-1.5, 3.5, 0.0]]), covars_init=np.ones((K, D)))


def test_mixed_input_segments_are_balanced_and_exact(client):
    """Short sequences and segments of a long one in blocks of similar size; same fit as whole sequences."""
    X, lengths = _mixed(np.random.default_rng(3))
    plan = plan_blocks(np.array(lengths), 8, np.arange(1000, len(X), 1000), segment_length=4000)
    sizes = [b - a if kind == "segment" else sum(lengths[a:b]) for kind, a, b, _ in plan]
    assert [kind for kind, *_ in plan].count("segment") >= 5
    assert max(sizes) <= 4000 and sum(sizes) == len(X)
    for kind, a, b, _ in plan:  # segments start and end on chunk boundaries (a chunk is read by one block)
        if kind == "segment":
            assert (a == 1100 or a % 1000 == 0) and (b == 21_100 or b % 1000 == 0)
    kw = dict(covariance_type="diag", max_iter=4, tol=0.0, n_partitions=8, **_given(np.random.default_rng(0)))
    cut = GaussianHMM(K, segment_length=4000, **kw).fit(X, lengths, client=client)
    whole = GaussianHMM(K, segment_length=0, **kw).fit(X, lengths, client=client)
    assert (cut.n_passes_, whole.n_passes_) == (8, 4)
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        np.testing.assert_allclose(getattr(cut, name), getattr(whole, name), rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(cut.history_, whole.history_, rtol=1e-12)


def test_restarts_checkpoint_and_resume_with_segments(client, tmp_path):
    """Stacked restarts over segments; a resumed segmented fit is bit-identical."""
    X, lengths = _mixed(np.random.default_rng(4))
    kw = dict(tol=0.0, random_state=0, n_init=2, n_init_iter=2, n_partitions=6, segment_length=5000)
    full = PoissonHMM(2, max_iter=4, **kw).fit(np.abs(np.round(X)), lengths, client=client)
    assert full.n_passes_ == 2 * 2 + 2 * 4
    path = str(tmp_path / "ckpt.zarr")
    PoissonHMM(2, max_iter=2, **kw).fit(np.abs(np.round(X)), lengths, client=client, checkpoint=path)
    resumed = PoissonHMM(2, max_iter=4, **kw).fit(np.abs(np.round(X)), lengths, client=client, checkpoint=path,
                                                  force=True)
    np.testing.assert_array_equal(resumed.lambdas_, full.lambdas_)
    np.testing.assert_array_equal(resumed.transmat_, full.transmat_)
    assert resumed.history_ == full.history_


def test_lazy_outputs_of_one_long_sequence(client, tmp_path):
    """predict, predict_proba and score of a long lazy sequence, segment by segment, out of core via the CLI."""
    import json

    import zarr

    from dask_em import save, to_zarr_sequences

    rng = np.random.default_rng(6)
    X = _mixed(rng)[0][:24_000]
    est = GaussianHMM(K, covariance_type="full", max_iter=3, tol=0.0, n_init=1, segment_length=2500,
                      random_state=0).fit(X, client=client)
    states, proba, score = est.predict(X), est.predict_proba(X), est.score(X)  # in memory: one whole sequence
    lazy = da.from_array(X, chunks=2000)
    with client.as_current():
        np.testing.assert_array_equal(est.predict(lazy).compute(), states)
        np.testing.assert_allclose(est.predict_proba(lazy).compute(), proba, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(est.score(lazy), score, rtol=1e-12)
    store, model_path, out = (str(tmp_path / n) for n in ("seq.zarr", "hmm.zarr", "states.zarr"))
    to_zarr_sequences(X, store, chunk_rows=2000)
    save(est, model_path)
    from test_cli import call

    code, stdout, _ = call("predict", model_path, store, "--output", out, "--json",
                           "--scheduler", client.scheduler.address)
    assert code == 0 and json.loads(stdout)["shape"] == [24_000]
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], states)


def test_a_million_steps_in_segments_equal_the_serial_loglik():
    """Numerics: ten segments of 100,000 steps give the serial log-likelihood to 1e-9 (relative)."""
    rng = np.random.default_rng(8)
    states = _states(rng, 1_000_000)
    X, model, params, _ = _case("diag", states)
    serial = model.e_step((X, np.array([len(X)])), params)
    blocks = sequence_blocks(X, segment_length=100_000)
    parts, run_pass = _in_process(blocks)
    seg = SegmentedHMM(model, blocks.segments)
    stats = run_pass(seg, seg.prepare_e_step(params, run_pass))
    assert np.isfinite(stats["loglik"])
    assert abs(stats["loglik"] - serial["loglik"]) <= 1e-9 * abs(serial["loglik"])
    for key in ("sum_trans", "sum_post", "sum_start"):
        np.testing.assert_allclose(stats[key], serial[key], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("accelerate", ["squarem", "anderson"])
def test_accelerated_em_over_segments(accelerate):
    """SQUAREM and Anderson over a few segments: the plain-EM optimum, monotone, two passes per evaluation.

    Every evaluated point (extrapolated or not) costs a transfer-operator
    pass and a statistics pass, and the log-likelihood that accepts or
    refuses an extrapolation comes from the first; so the segmented fit
    makes the same decisions as the accelerated fit of the whole sequence
    at twice its passes.
    """
    rng = np.random.default_rng(7)
    X = np.array([[0.0], [1.0], [2.0]])[_states(rng, 6000)] + rng.normal(size=(6000, 1))  # overlapping: slow EM
    kw = dict(covariance_type="diag", tol=1e-9, max_iter=500, startprob_init=np.array([0.4, 0.35, 0.25]),
              transmat_init=0.7 * np.eye(K) + 0.1, means_init=np.array([[-0.5], [0.8], [2.5]]),
              covars_init=np.ones((K, 1)))
    assert len(sequence_blocks(X, segment_length=2000).segments) >= 3
    plain = GaussianHMM(K, segment_length=2000, **kw).fit(X)
    cut = GaussianHMM(K, segment_length=2000, accelerate=accelerate, **kw).fit(X)
    whole = GaussianHMM(K, segment_length=0, accelerate=accelerate, **kw).fit(X)
    assert cut.converged_ and plain.converged_
    assert plain.n_passes_ == 2 * plain.n_iter_
    assert cut.n_passes_ == 2 * whole.n_passes_ and cut.n_iter_ == whole.n_iter_
    np.testing.assert_allclose(cut.history_, whole.history_, rtol=1e-10)
    assert np.all(np.diff(cut.history_) >= 0)  # the monotone safeguard sees the segments' log-likelihood
    np.testing.assert_allclose(cut.history_[-1], plain.history_[-1], rtol=1e-10)
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        np.testing.assert_allclose(getattr(cut, name), getattr(plain, name), rtol=1e-4, atol=1e-5, err_msg=name)


class _Stop(Exception):
    pass


def test_accelerated_fit_over_segments_resumes_bit_identically(tmp_path):
    """A SQUAREM fit over segments stopped mid-cycle and resumed from its checkpoint: bit-identical."""
    rng = np.random.default_rng(7)
    X = np.array([[0.0], [1.0], [2.0]])[_states(rng, 6000)] + rng.normal(size=(6000, 1))
    blocks = sequence_blocks(X, segment_length=2000)
    model = SegmentedHMM(GaussianHMMModel(n_components=K, covariance_type="diag"), blocks.segments)
    start = GaussianHMMParams(np.array([0.4, 0.35, 0.25]), 0.7 * np.eye(K) + 0.1, np.array([[-0.5], [0.8], [2.5]]),
                              np.ones((K, 1)))
    kw = dict(tol=0.0, max_iter=9, accelerate="squarem", warn_not_converged=False)
    reference = fit_em(model, blocks, start, **kw)

    def stop_after(info):  # type: ignore[no-untyped-def]
        if info.iteration == 5:  # inside a SQUAREM cycle (its extrapolated point's pass)
            raise _Stop

    path = str(tmp_path / "ckpt.zarr")
    with pytest.raises(_Stop):
        fit_em(model, blocks, start, checkpoint=path, callbacks=[stop_after], **kw)
    resumed = fit_em(model, blocks, start, checkpoint=path, resume=True, **kw)
    assert resumed.resumed_from > 0 and resumed.n_passes % 2 == 0
    for name in ("startprob", "transmat", "means", "covars"):
        assert np.array_equal(getattr(resumed.params, name), getattr(reference.params, name)), name
    assert resumed.history == reference.history
