"""Model selection: a grid fitted in shared passes, ranked by BIC."""

from __future__ import annotations

import numpy as np
import pytest

from dask_em.datasets import make_blobs, make_blobs_zarr
from dask_em.engine import fit_em
from dask_em.models.gmm import GaussianMixtureModel
from dask_em.select import StackedModel, member_stats, n_parameters, select


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
        own = member_stats(stats, i)
        alone = m.e_step(X, p)
        alone.pop("n_invalid")
        assert own.keys() == alone.keys()
        for key in own:
            np.testing.assert_allclose(own[key], alone[key], rtol=1e-12)
    # Three iterations of the stack equal three separate fits.
    joint = fit_em(stacked, X, params, max_iter=3, tol=0, client=client, warn_not_converged=False).params
    for m, p, q in zip(members, params, joint):
        alone = fit_em(m, X, p, max_iter=3, tol=0, client=client, warn_not_converged=False).params
        np.testing.assert_allclose(q.means, alone.means, rtol=1e-12)


def test_bad_grid_arguments(client):
    X, _, _ = make_blobs(500, 2, 2)
    with pytest.raises(ValueError, match="covariance_types"):
        select(X, covariance_types=["banana"], client=client)
    with pytest.raises(ValueError, match="n_components"):
        select(X, n_components=[0, 1], client=client)
    with pytest.raises(ValueError, match="more than the 500 samples"):
        select(X, n_components=[600], client=client)
