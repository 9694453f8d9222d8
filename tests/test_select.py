"""Model selection: a grid fitted in shared passes, ranked by BIC."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.datasets import make_blobs, make_blobs_zarr
from dask_em.engine import fit_em
from dask_em.models.gmm import GaussianMixtureModel
from dask_em.models.gmm_grid import StackedModel, member_stats
from dask_em.select import n_parameters, select

GRID = tuple((k, t) for k in (1, 2, 4) for t in ("full", "tied", "diag", "spherical"))


def _assert_close(actual, expected, rtol):
    """Equal to ``rtol`` relative to the largest entry (sums of centred moments
    have entries near zero whose rounding is relative to the rest)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    assert np.all(np.abs(actual - expected) <= rtol * scale), (actual, expected)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_select_picks_true_components_and_covariance_type(client, covariance_type):
    X, _, _ = make_blobs(12_000, 3, 3, covariance_type=covariance_type, random_state=1, separation=4.0)
    result = select(X, n_components=[2, 3, 4], client=client, random_state=0)
    best = result.best
    assert (best["n_components"], best["covariance_type"]) == (3, covariance_type), result.summary()
    assert len(result.table) == 12 and [r["rank"] for r in result.table] == list(range(1, 13))
    bics = [r["bic"] for r in result.table]
    assert bics == sorted(bics)


def test_one_pass_per_iteration_for_the_whole_grid(client, tmp_path):
    path = str(tmp_path / "blobs.zarr")
    make_blobs_zarr(path, 8_000, 2, 2, chunk_rows=2_000, random_state=3, client=client)
    result = select(path, n_components=[1, 2, 3], covariance_types=["full", "diag"], n_init=2,
                    max_iter=30, client=client, random_state=0)
    longest = max(len(h) for h in result.history.values())
    assert result.n_passes == longest + 1  # iterations of the slowest member, then one scoring pass
    assert len(result.history) == 12  # 3 x 2 cells x 2 restarts
    assert result.best["n_components"] == 2
    text = result.summary()
    assert "BIC" in text and "full" in text and "*" in text
    est = result.best_estimator_
    if est is not None:  # the estimator class exists: it is fitted and usable
        labels = est.predict(make_blobs(100, 2, 2, random_state=3)[0])
        assert labels.shape == (100,)


def test_bic_matches_scikit_learn_formula(client):
    sklearn = pytest.importorskip("sklearn.mixture")
    X, _, _ = make_blobs(3_000, 2, 2, random_state=4)
    result = select(X, n_components=[2], covariance_types=["diag"], tol=1e-8, max_iter=300, client=client,
                    random_state=0)
    row = result.best
    ref = sklearn.GaussianMixture(2, covariance_type="diag", tol=1e-8, max_iter=300, random_state=0).fit(X)
    assert row["n_parameters"] == ref._n_parameters() == n_parameters(2, 2, "diag")
    np.testing.assert_allclose(row["bic"], ref.bic(X), rtol=1e-6)


def test_stacked_members_equal_separate_fits(client):
    X, _, _ = make_blobs(4_000, 2, 3, random_state=5, chunk_rows=1_000)
    members = (GaussianMixtureModel(2, "full"), GaussianMixtureModel(3, "diag"))
    rng = np.random.default_rng(0)
    params = tuple(m.init_params(X[:1000], rng) for m in members)
    stacked = StackedModel(members)
    stats = stacked.e_step(X, params)
    for i, (m, p) in enumerate(zip(members, params)):
        own = stacked.own_stats(stats, params, i)
        alone = m.e_step(X, p)
        alone.pop("n_invalid")
        assert own.keys() == alone.keys()
        for key in own:
            _assert_close(own[key], alone[key], 1e-10)
    # Three iterations of the stack equal three separate fits.
    joint = fit_em(stacked, X, params, max_iter=3, tol=0, client=client, warn_not_converged=False).params
    for m, p, q in zip(members, params, joint):
        alone = fit_em(m, X, p, max_iter=3, tol=0, client=client, warn_not_converged=False).params
        np.testing.assert_allclose(q.means, alone.means, rtol=1e-10)


def test_bad_grid_arguments(client):
    X, _, _ = make_blobs(500, 2, 2)
    with pytest.raises(ValueError, match="covariance_types"):
        select(X, covariance_types=["banana"], client=client)
    with pytest.raises(ValueError, match="n_components"):
        select(X, n_components=[0, 1], client=client)
    with pytest.raises(ValueError, match="more than the 500 samples"):
        select(X, n_components=[600], client=client)


def _grid_params(X, rng):
    members = tuple(GaussianMixtureModel(k, t) for k, t in GRID)
    return members, tuple(m.init_params(X[:1500], rng) for m in members)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_shared_e_step_equals_every_members_own(offset):
    """All four covariance types in one stack, sub-blocks that do not divide
    the block, data far from the origin: each member's statistics, moved to
    its own reference point, equal its own E-step."""
    X, _, _ = make_blobs(5_003, 3, 3, random_state=6)
    X = X + offset
    members, params = _grid_params(X, np.random.default_rng(1))
    # perturb the weights so every member has its own reference point
    params = tuple(type(p)(p.weights[::-1].copy(), p.means, p.covariances, p.precisions_cholesky) for p in params)
    stacked = StackedModel(members)
    stats = stacked.e_step(X, params)
    assert any(key.startswith("shared/") for key in stats)
    assert int(stats["n_invalid"]) == 0 and float(stats["n"]) == X.shape[0]
    for i, (m, p) in enumerate(zip(members, params)):
        own = stacked.own_stats(stats, params, i)
        alone = m.e_step(X, p)
        alone.pop("n_invalid")
        assert own.keys() == alone.keys(), (m, own.keys())
        for key in own:
            _assert_close(own[key], alone[key], 1e-10)
    scoring = StackedModel(members, loglik_only=True)
    scored = scoring.e_step(X, params)
    for i, m in enumerate(members):
        assert float(scoring.own_stats(scored, params, i)["loglik"]) == pytest.approx(
            float(stacked.own_stats(stats, params, i)["loglik"]), rel=1e-12)


def test_shared_e_step_skips_inactive_members_and_counts_invalid_values():
    X, _, _ = make_blobs(3_000, 3, 2, random_state=7)
    X[5, 1] = np.nan
    X[2_500] = np.inf
    X[2_600, 0] = -np.inf
    members, params = _grid_params(X[10:], np.random.default_rng(2))
    params = tuple(None if i % 3 == 0 else p for i, p in enumerate(params))  # the first member sits out
    stacked = StackedModel(members)
    stats = stacked.e_step(X, params)
    expected_invalid = None
    for i, (m, p) in enumerate(zip(members, params)):
        if p is None:
            assert stacked.own_stats(stats, params, i) == {}
            continue
        own = stacked.own_stats(stats, params, i)
        alone = m.e_step(X, p)
        expected_invalid = int(alone.pop("n_invalid"))
        for key in own:
            _assert_close(own[key], alone[key], 1e-10)
    assert expected_invalid == int(stats["n_invalid"]) == 5
    assert float(stats["n"]) == X.shape[0] - 3


def test_shared_e_step_overflowing_rows_make_the_loglik_minus_inf():
    X, _, _ = make_blobs(500, 2, 2, random_state=8)
    members = (GaussianMixtureModel(2, "full"), GaussianMixtureModel(2, "diag"))
    params = tuple(m.init_params(X, np.random.default_rng(3)) for m in members)
    X[7] = 1e200  # finite, but no density survives it
    stacked = StackedModel(members)
    stats = stacked.e_step(X, params)
    assert int(stats["n_invalid"]) == 0
    for i, (m, p) in enumerate(zip(members, params)):
        own = stacked.own_stats(stats, params, i)
        alone = m.e_step(X, p)
        assert float(own["loglik"]) == float(alone["loglik"]) == -np.inf
        assert float(own["n"]) == float(alone["n"]) == 499
        for key in ("sum_resp", "sum_x"):
            _assert_close(own[key], alone[key], 1e-10)


def test_select_mixed_grid_equals_separate_fits(client):
    """Every member of a select grid (all four types) ends where its own fit
    from the same start ends."""
    X, _, _ = make_blobs(6_000, 2, 3, random_state=9, chunk_rows=1_500)
    members, params = _grid_params(X, np.random.default_rng(4))
    joint = fit_em(StackedModel(members), X, params, max_iter=4, tol=0, client=client,
                   warn_not_converged=False).params
    for m, p, q in zip(members, params, joint):
        alone = fit_em(m, X, p, max_iter=4, tol=0, client=client, warn_not_converged=False).params
        np.testing.assert_allclose(q.means, alone.means, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(q.covariances, alone.covariances, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(q.weights, alone.weights, rtol=1e-9)
