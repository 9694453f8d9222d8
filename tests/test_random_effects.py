"""RandomEffects (linear mixed model by EM) against statsmodels MixedLM, and grouped blocks."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from dask_em.errors import InvalidDataError
from dask_em.estimators.random_effects import RandomEffects
from dask_em.data.groups import GroupedBlock, group_starts, grouped_blocks, partition_groups
from dask_em.models.random_effects import RandomEffectsModel

sm = pytest.importorskip("statsmodels.api")


def _mixed_data(m=300, seed=0, sizes=(3, 12)):
    rng = np.random.default_rng(seed)
    ni = rng.integers(sizes[0], sizes[1], m)
    g = np.repeat(np.arange(m), ni)
    n = len(g)
    t = rng.normal(size=n)
    X = np.column_stack([np.ones(n), t, rng.normal(size=n)])
    Z = X[:, :2]
    G = np.array([[1.0, 0.3], [0.3, 0.5]])
    u = rng.multivariate_normal([0, 0], G, m)
    y = X @ np.array([1.0, 2.0, -0.5]) + (Z * u[g]).sum(axis=1) + rng.normal(size=n) * 0.8
    perm = rng.permutation(n)  # groups need not be adjacent
    return X[perm], y[perm], g[perm], Z[perm]


@pytest.fixture(scope="module")
def data():
    return _mixed_data()


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_matches_statsmodels_mixedlm(client, data, method):
    X, y, g, Z = data
    ours = RandomEffects(method, tol=1e-12).fit(X, y, g, Z, client=client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.MixedLM(y, X, g, exog_re=Z).fit(reml=method == "reml", method="bfgs", gtol=1e-12)
    rel = lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b)))  # noqa: E731
    assert ours.converged_
    assert rel(ours.fe_params_, ref.fe_params) < 1e-4
    assert rel(ours.cov_re_, ref.cov_re) < 1e-4
    assert rel(ours.scale_, ref.scale) < 1e-4
    assert rel(ours.llf_, ref.llf) < 1e-4
    assert ours.llf_ >= ref.llf - 1e-6  # EM reaches the optimum at least as well
    assert rel(ours.bse_fe_, ref.bse_fe) < 1e-3
    assert np.all(np.diff(ours.lower_bounds_) > -1e-12)
    blups = ours.random_effects_.sort_index()
    ref_blups = np.array([ref.random_effects[k].to_numpy() for k in sorted(ref.random_effects)])
    np.testing.assert_allclose(blups.to_numpy(), ref_blups, rtol=1e-3, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Sending large graph")
def test_recovers_parameters_from_100k_groups(client):
    rng = np.random.default_rng(5)
    m = 100_000
    ni = rng.integers(3, 6, m)
    g = np.repeat(np.arange(m), ni)
    n = len(g)
    t = rng.normal(size=n)
    X = np.column_stack([np.ones(n), t])
    G = np.array([[1.0, 0.2], [0.2, 0.4]])
    u = rng.multivariate_normal([0, 0], G, m)
    y = X @ np.array([3.0, -1.0]) + (X * u[g]).sum(axis=1) + rng.normal(size=n) * 0.7
    chunks = 100_000
    model = RandomEffects("ml", tol=1e-7, max_iter=60).fit(
        da.from_array(X, chunks=(chunks, -1)), da.from_array(y, chunks=chunks), g, da.from_array(X, chunks=(chunks, -1)),
        client=client, n_partitions=8,
    )
    assert model.n_groups_ == m
    np.testing.assert_allclose(model.fe_params_, [3.0, -1.0], atol=0.02)
    np.testing.assert_allclose(model.cov_re_, G, atol=0.03)
    assert abs(model.scale_ - 0.49) < 0.02
    # Per-group outputs stay lazy on Dask input.
    assert isinstance(model.random_effects_, dask.dataframe.DataFrame)
    first = model.random_effects_.partitions[0].compute()
    assert first.shape[1] == 2 and np.isfinite(first.to_numpy()).all()


def test_dataframe_and_zarr_inputs_agree_with_arrays(client, data, tmp_path):
    import dask.dataframe as dd
    import zarr

    X, y, g, Z = data
    ref = RandomEffects("reml", tol=1e-10).fit(X, y, g, Z, client=client)
    frame = pd.DataFrame({"const": X[:, 0], "t": X[:, 1], "w": X[:, 2], "y": y, "subject": g})
    frame["one"] = 1.0
    frame = frame[["const", "t", "w", "y", "subject"]]
    on_pandas = RandomEffects("reml", tol=1e-10).fit(frame, "y", "subject", ["const", "t"], client=client)
    on_dask = RandomEffects("reml", tol=1e-10).fit(
        dd.from_pandas(frame, npartitions=3), "y", "subject", ["const", "t"], client=client
    )
    path = str(tmp_path / "mixed.zarr")
    root = zarr.open_group(path, mode="w")
    for name, value in {"X": X, "y": y, "groups": g, "Z": Z}.items():
        root.create_array(name, data=value, chunks=(500,) + value.shape[1:])
    on_zarr = RandomEffects("reml", tol=1e-10).fit(path, client=client)
    for other in (on_pandas, on_dask, on_zarr):
        np.testing.assert_allclose(other.fe_params_, ref.fe_params_, rtol=1e-5)
        np.testing.assert_allclose(other.cov_re_, ref.cov_re_, rtol=1e-4)
        np.testing.assert_allclose(other.llf_, ref.llf_, rtol=1e-8)
    assert on_pandas.fixed_names_ == ["const", "t", "w"]
    assert list(on_dask.random_effects_.columns) == ["const", "t"]
    blups = on_dask.random_effects_.compute().sort_index()
    np.testing.assert_allclose(blups.to_numpy(), ref.random_effects_.sort_index().to_numpy(), rtol=1e-3, atol=1e-5)


def test_random_intercept_default(client):
    X, y, g, _ = _mixed_data(m=120, seed=3)
    ours = RandomEffects("ml", tol=1e-12).fit(X, y, g, client=client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.MixedLM(y, X, g).fit(reml=False, method="bfgs", gtol=1e-12)
    assert ours.cov_re_.shape == (1, 1)
    np.testing.assert_allclose(ours.cov_re_, np.asarray(ref.cov_re), rtol=1e-4)
    np.testing.assert_allclose(ours.llf_, ref.llf, rtol=1e-8)
    assert list(ours.random_effects_.columns) == ["Intercept"]


def test_groups_are_never_split():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 50, 1000)
    order, starts, labels = group_starts(g)
    assert order is not None and len(labels) == 50
    ranges = partition_groups(starts, 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    blocks = grouped_blocks(rng.normal(size=(1000, 2)), rng.normal(size=1000), g, n_partitions=7)
    seen = np.concatenate([b.labels for b in dask.compute(*blocks.parts)])
    assert sorted(seen.tolist()) == sorted(set(g.tolist())) and len(seen) == 50
    for block in dask.compute(*blocks.parts):
        assert block.starts[-1] == len(block.y)


def test_invalid_rows_are_reported(client, data):
    X, y, g, Z = data
    y = y.copy()
    y[[4, 9]] = np.nan
    with pytest.raises(InvalidDataError, match="2 rows"):
        RandomEffects(max_iter=3).fit(X, y, g, Z, client=client)


def test_grouped_block_slices_whole_groups():
    block = GroupedBlock(np.ones((6, 1)), np.arange(6.0), None, np.array([0, 2, 5, 6]), np.array([7, 8, 9]))
    half = block[1:]
    assert len(half) == 2 and half.starts.tolist() == [0, 3, 4] and half.y.tolist() == [2.0, 3.0, 4.0, 5.0]


def test_contract_purity_and_partition_invariance(client, data):
    """Grouped blocks keep the contract: pure steps, and the fit does not depend on the partitioning."""
    from dask_em.engine import fit_em
    from dask_em.testing import check_purity

    X, y, g, Z = data
    for method in ("ml", "reml"):
        model = RandomEffectsModel(method)
        fits = []
        for n_partitions in (1, 3, 8):
            blocks = grouped_blocks(X, y, g, Z, client=client, n_partitions=n_partitions)
            block = blocks.compute(blocks.parts[0])[0]
            whole = grouped_blocks(X, y, g, Z, n_partitions=1)
            params = model.init_params(whole.compute(whole.parts[0])[0], np.random.default_rng(0))
            check_purity(model, block, params)
            fits.append(fit_em(model, blocks, params, client=client, max_iter=6, tol=0.0, warn_not_converged=False))
        for other in fits[1:]:
            np.testing.assert_allclose(other.history, fits[0].history, rtol=1e-10)
            for name in ("fe_params", "cov_re", "scale"):
                np.testing.assert_allclose(getattr(other.params, name), getattr(fits[0].params, name), rtol=1e-9)
