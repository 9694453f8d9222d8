"""The contract suite of dask_em.testing, on models that keep and break the contract."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _toy_models import MixParams, Mixture1D, make_mixture, mixture_data

from dask_em.testing import (
    assert_resume_bit_identical,
    check_additivity,
    check_model,
    check_pickling,
    check_purity,
)


@pytest.fixture(scope="module")
def X():
    return mixture_data(2000)


def test_a_correct_model_passes_the_whole_suite(client, X):
    check_model(Mixture1D(3), X, client=client)


@dataclasses.dataclass(frozen=True)
class MeanStats(Mixture1D):
    """Breaks additivity: returns a mean instead of a sum."""

    def e_step(self, block, params):
        stats = super().e_step(block, params)
        stats["sum_x"] = stats["sum_x"] / len(block)
        return stats


@dataclasses.dataclass(frozen=True)
class Mutating(Mixture1D):
    """Breaks purity: updates the means in place."""

    def m_step(self, stats, params):
        new = super().m_step(stats, params)
        params.means[...] = new.means
        return new


@dataclasses.dataclass(frozen=True)
class Unpicklable(Mixture1D):
    hook: object = None


def _params():
    return MixParams(np.array([0.5, 0.5]), np.array([-1.0, 1.0]), np.array([1.0, 1.0]))


def test_additivity_catches_means(X):
    with pytest.raises(AssertionError, match="sum_x"):
        check_additivity(MeanStats(2), X[:500], _params())


def test_purity_catches_in_place_updates(X):
    with pytest.raises(AssertionError, match="m_step mutated"):
        check_purity(Mutating(2), X[:500], _params())


def test_pickling_catches_unpicklable_models(X):
    with pytest.raises(Exception):
        check_pickling(Unpicklable(2, hook=lambda: None), _params(), X[:10])


def test_kill_and_resume_of_a_plug_in_model(client, X, tmp_path):
    report = assert_resume_bit_identical(
        make_mixture, X, client=client, tmp_path=tmp_path, fit_kwargs={"max_iter": 12, "random_state": 5}, seed=1
    )
    assert len({r["kill_after"] for r in report}) == 3
    assert all(r["killed_at"] >= r["kill_after"] for r in report)
