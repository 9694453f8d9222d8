"""The engine on a tiny model with a known answer (Dempster, Laird & Rubin 1977)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dask_em import fit_em
from dask_em.errors import InvalidDataError
from dask_em.stats import add_stats, tree_reduce


@dataclasses.dataclass(frozen=True)
class LinkageParams:
    theta: np.ndarray


@dataclasses.dataclass(frozen=True)
class Linkage:
    """Rows are multinomial counts of the four phenotypes."""

    def init_params(self, sample, rng):
        return LinkageParams(np.array(0.5))

    def e_step(self, block, params):
        t = float(params.theta)
        y = block.sum(axis=0)
        p = np.array([0.5 + t / 4, (1 - t) / 4, (1 - t) / 4, t / 4])
        return {
            "n": np.array(y.sum()),
            "loglik": np.array(y @ np.log(p)),
            "n_invalid": np.array((block < 0).sum()),
            "counts": np.array([y[0] * (t / 4) / (0.5 + t / 4) + y[3], y[1] + y[2]]),
        }

    def m_step(self, stats, params):
        return LinkageParams(np.array(stats["counts"][0] / stats["counts"].sum()))


def test_linkage_converges_to_published_mle(client):
    data = np.array([[125, 18, 20, 34]] * 4, float) / 4
    history = []
    result = fit_em(
        Linkage(), data, max_iter=100, tol=1e-12, tol_on="total", client=client,
        callbacks=[lambda info: history.append(info.loglik)],
    )
    assert result.converged
    assert round(float(result.params.theta), 4) == 0.6268
    assert np.all(np.diff(history) >= -1e-12)


def test_invalid_values_are_counted_across_blocks(client):
    data = np.array([[125, 18, 20, 34]] * 6, float)
    data[1, 0] = -1
    data[4, 2] = -3
    with pytest.raises(InvalidDataError, match="2 values"):
        fit_em(Linkage(), data, max_iter=3, client=client)


def test_tree_reduce_equals_sequential_sum():
    rng = np.random.default_rng(0)
    parts = [{"a": rng.normal(size=3), "n": np.array(1.0)} for _ in range(11)]
    total = tree_reduce(parts, split_every=3)
    np.testing.assert_allclose(total["a"], sum(p["a"] for p in parts), rtol=1e-14)
    assert total["n"] == 11
    with pytest.raises(ValueError, match="different keys"):
        add_stats({"a": 1}, {"b": 2})


@dataclasses.dataclass(frozen=True)
class LockedLinkage(Linkage):
    """A model holding something that cannot travel to a worker."""

    lock: object = dataclasses.field(default_factory=__import__("threading").Lock)


def test_unpicklable_model_is_reported_before_any_pass(client):
    data = np.array([[125, 18, 20, 34]] * 4, float)
    with pytest.raises(TypeError, match="model .LockedLinkage. cannot be pickled.*_thread.lock"):
        fit_em(LockedLinkage(), data, max_iter=3, client=client)
