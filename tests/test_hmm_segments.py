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
from dask_em.models.hmm_segments import SegmentedHMM, SegmentPart
from dask_em.sequences import plan_blocks, sequence_blocks
from dask_em.stats import add_stats

hmm = pytest.importorskip("hmmlearn.hmm")

pytestmark = pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")

K, D = 3, 2
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
        rates = np.array([[1.0, 5.0], [4.0, 0.5], [9.0, 9.0]])
        X = rng.poisson(rates[states]).astype(np.float64)
        lam0 = rng.uniform(0.5, 8.0, size=(K, D))
        ref = hmm.PoissonHMM(K, init_params="", n_iter=20, tol=-np.inf, implementation="scaling")
        ref.lambdas_ = lam0
        params = PoissonHMMParams(sp, tm, lam0)
        model = PoissonHMMModel(n_components=K)
    else:
        ct = emission
        true_means = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 4.0]])
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
