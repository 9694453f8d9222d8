"""The accelerators' pieces on their own (the unconstrained map, the safeguards) and through the engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dask_em.accelerate import Anderson, Squarem, from_vector, to_vector


@dataclasses.dataclass(frozen=True)
class _Params:
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    covariances: np.ndarray
    probabilities: np.ndarray
    count: np.ndarray

    constraints = {"weights": "simplex", "variances": "positive", "covariances": "spd", "probabilities": "unit"}


def _params(rng: np.random.Generator) -> _Params:
    a = rng.normal(size=(3, 4, 4))
    return _Params(
        weights=rng.dirichlet(np.ones(3)),
        means=rng.normal(size=(3, 4)),
        variances=rng.gamma(2.0, size=(3, 4)),
        covariances=a @ np.swapaxes(a, -1, -2) + np.eye(4),
        probabilities=rng.uniform(0.01, 0.99, size=(3, 4)),
        count=np.array(7),
    )


def test_the_map_round_trips_and_leaves_integers_alone():
    p = _params(np.random.default_rng(0))
    back = from_vector(None, to_vector(None, p), p)
    for f in dataclasses.fields(p):
        np.testing.assert_allclose(getattr(back, f.name), getattr(p, f.name), rtol=1e-12, atol=1e-14)
    assert back.count.dtype == p.count.dtype and int(back.count) == 7
    # 3 - 1 free weights are stored as 3 logs; 4 x 5 / 2 Cholesky entries per matrix
    assert to_vector(None, p).size == 3 + 12 + 12 + 3 * 10 + 12


def test_any_vector_maps_to_valid_parameters():
    rng = np.random.default_rng(1)
    like = _params(rng)
    for _ in range(50):
        p = from_vector(None, rng.normal(scale=1.0, size=to_vector(None, like).size), like)
        assert np.all(p.weights >= 0) and np.isclose(p.weights.sum(), 1.0)
        assert np.all(p.variances > 0)
        assert np.all((p.probabilities > 0) & (p.probabilities < 1))
        assert np.all(np.linalg.eigvalsh(p.covariances) > 0)


def _point(x: float) -> _Params:
    p = _params(np.random.default_rng(2))
    return dataclasses.replace(p, means=np.full_like(p.means, x))


def test_an_overshooting_step_is_replaced_by_the_em_point():
    acc = Squarem(None, step_max=4.0)  # as after a first cycle (the first is plain EM)
    p0, p1, p2 = _point(0.0), _point(1.0), _point(1.5)  # slowing steps: alpha = 2
    nxt, ok = acc.step(p0, -10.0, p1)
    assert ok and nxt is p1
    extrapolated, ok = acc.step(p1, -5.0, p2)
    assert ok and acc.stage == 2
    np.testing.assert_allclose(extrapolated.means, 2.0)  # p0 + 2 a r + a^2 v with a = 2
    # the extrapolated point's own pass finds a lower log-likelihood than p1's
    nxt, ok = acc.step(extrapolated, -6.0, _point(9.0))
    assert not ok and nxt is p2 and acc.n_rejected == 1 and acc.stage == 0
    assert acc.step_max == 4.0  # alpha was below the largest step: it stays


def test_the_first_cycle_is_plain_em_then_steps_grow():
    acc = Squarem(None)
    acc.step(_point(0.0), -10.0, _point(1.0))
    nxt, ok = acc.step(_point(1.0), -5.0, _point(1.5))
    assert ok and acc.stage == 0 and float(nxt.means.flat[0]) == 1.5 and acc.step_max == 4.0
    acc.step(nxt, -4.0, _point(1.75))
    extrapolated, _ = acc.step(_point(1.75), -3.5, _point(1.95))  # alpha 5, clipped to 4
    image = _point(2.1)
    nxt, ok = acc.step(extrapolated, -3.0, image)
    assert ok and nxt is image and acc.n_rejected == 0 and acc.step_max == 16.0


def test_a_failed_m_step_or_nan_is_a_rejection():
    for loglik, image in ((np.nan, _point(3.0)), (-1.0, None)):
        acc = Squarem(None, step_max=4.0)
        acc.step(_point(0.0), -10.0, _point(1.0))
        p2 = _point(1.5)
        extrapolated, _ = acc.step(_point(1.0), -5.0, p2)
        nxt, ok = acc.step(extrapolated, loglik, image)
        assert not ok and nxt is p2


@pytest.mark.parametrize("stage", [1, 2])
def test_state_restores_the_same_continuation(stage):
    def run(acc, start, steps):
        out = []
        x = start
        for i in range(steps):
            nxt, ok = acc.step(x, -10.0 / (i + 1), _point(float(np.asarray(x.means).flat[0]) * 0.5 + 1.0))
            out.append((np.asarray(nxt.means).copy(), ok))
            x = nxt
        return out, x

    a = Squarem(None)
    _, x = run(a, _point(0.0), stage)
    state = a.state()
    b = Squarem(None)
    b.restore(state, x)
    assert run(a, x, 6)[0].__repr__() == run(b, x, 6)[0].__repr__()


def test_anderson_solves_a_linear_fixed_point_in_few_steps_and_refuses_a_decrease():
    # F(x) = A x + b with a contraction A: plain iteration crawls (rate 0.95),
    # Anderson with memory >= the dimension lands on the fixed point exactly.
    A = np.diag([0.95, 0.5, 0.2])
    b = np.array([1.0, -2.0, 0.5])
    fixed = np.linalg.solve(np.eye(3) - A, b)

    @dataclasses.dataclass(frozen=True)
    class P:
        x: np.ndarray

    acc = Anderson(None, memory=5)
    p, value = P(np.zeros(3)), -100.0
    for i in range(6):
        image = P(A @ p.x + b)
        p, ok = acc.step(p, value + i, image)
        assert ok
    np.testing.assert_allclose(p.x, fixed, rtol=1e-9)
    assert acc.extrapolating
    # a proposal whose log-likelihood is lower than the last accepted point's is refused
    last_image = acc._image
    nxt, ok = acc.step(p, value - 1.0, P(fixed))
    assert not ok and nxt is last_image and acc.n_rejected == 1 and not acc.extrapolating


def test_anderson_state_restores_the_same_continuation():
    def run(acc, start, steps):
        out, x = [], start
        for i in range(steps):
            nxt, ok = acc.step(x, -10.0 / (i + 1), _point(float(np.asarray(x.means).flat[0]) * 0.5 + 1.0))
            out.append((np.asarray(nxt.means).copy(), ok))
            x = nxt
        return out, x

    a = Anderson(None, memory=3)
    _, x = run(a, _point(0.0), 4)
    b = Anderson(None, memory=3)
    b.restore(a.state(), x)
    assert repr(run(a, x, 6)[0]) == repr(run(b, x, 6)[0])
    bad = {**a.state(), "x": np.full((2, 3), np.nan)}
    with pytest.raises(ValueError, match="finite"):
        Anderson(None, memory=3).restore(bad, x)


# -- through the engine --------------------------------------------------------

from dask_em.engine import fit_em  # noqa: E402
from dask_em.models.gmm import GaussianMixtureModel  # noqa: E402


def _overlapping(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [1.2, 0.5, 0.0], [0.4, 1.4, 0.8]])
    return centers[rng.integers(3, size=n)] + rng.normal(size=(n, 3))


class _Stop(Exception):
    pass


def _stop_after(passes: int):
    seen = []

    def callback(info):
        seen.append(info)
        if len(seen) == passes:
            raise _Stop

    return callback


@pytest.mark.parametrize("covariance_type,accelerate", [("full", "squarem"), ("diag", "squarem"), ("full", "anderson")])
def test_acceleration_needs_fewer_passes_and_never_decreases(covariance_type, accelerate):
    import dask.array as da

    X = da.from_array(_overlapping(), chunks=(700, -1))
    model = GaussianMixtureModel(3, covariance_type=covariance_type)
    # in this process (the default): plain EM's hundreds of passes cost a round trip each on a cluster
    kwargs = dict(tol=1e-8, max_iter=2000, random_state=3, warn_not_converged=False)
    plain = fit_em(model, X, **kwargs)
    points = []
    fast = fit_em(model, X, accelerate=accelerate, callbacks=[lambda info: points.append(info.params)], **kwargs)
    assert plain.converged and fast.converged
    assert fast.n_passes <= plain.n_passes / 3, (fast.n_passes, plain.n_passes)
    assert np.all(np.diff(fast.history) >= -1e-12)
    assert fast.history[-1] >= plain.history[-1] - 1e-7
    for p in points:  # every point handed out is a valid mixture
        assert np.isclose(p.weights.sum(), 1.0) and np.all(p.weights > 0)
        if covariance_type == "full":
            assert np.all(np.linalg.eigvalsh(p.covariances) > 0)
        else:
            assert np.all(p.covariances > 0)


@pytest.mark.parametrize("accelerate", ["squarem", "anderson"])
def test_acceleration_resumes_bit_identically_from_any_stage(tmp_path, accelerate):
    import dask.array as da

    X = da.from_array(_overlapping(800, seed=1), chunks=(200, -1))
    model = GaussianMixtureModel(3, covariance_type="full")
    # in this process: the same engine and snapshots as on a cluster (tests/test_contract.py resumes there)
    kwargs = dict(tol=0.0, max_iter=14, random_state=5, accelerate=accelerate, warn_not_converged=False)
    reference = fit_em(model, X, **kwargs)
    assert reference.extra["n_refused"] >= 0
    for stop in (4, 5, 6):  # the three stages of a SQUAREM cycle; Anderson with 3, 4, 5 points in memory
        path = str(tmp_path / f"c{stop}.zarr")
        with pytest.raises(_Stop):
            fit_em(model, X, checkpoint=path, callbacks=[_stop_after(stop)], **kwargs)
        resumed = fit_em(model, X, checkpoint=path, resume=True, **kwargs)
        assert resumed.resumed_from > 0
        for f in dataclasses.fields(reference.params):
            assert np.array_equal(getattr(reference.params, f.name), getattr(resumed.params, f.name)), (stop, f.name)
        assert reference.history == resumed.history, stop
