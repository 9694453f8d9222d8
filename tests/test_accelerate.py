"""SQUAREM's pieces on their own: the unconstrained map and the safeguard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dask_em.accelerate import Squarem, from_vector, to_vector


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
