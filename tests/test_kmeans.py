"""KMeans: parity with scikit-learn's Lloyd, k-means|| seeding, determinism, bad input."""

from __future__ import annotations


import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.base import clone
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs

from dask_em import KMeans
from dask_em.data import array_blocks, as_dask_array
from dask_em.errors import InvalidDataError
from dask_em.init import kmeans_centers, kmeans_parallel_init
from dask_em.models.kmeans import KMeansModel, KMeansParams, kmeans_plusplus, nearest_center
from dask_em.stats import add_stats


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(3000, 5)) + rng.integers(0, 3, size=(3000, 1)) * 2.0
    return X, X[rng.choice(len(X), 6, replace=False)].copy()


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(4000, n_features=4, centers=7, cluster_std=0.5, center_box=(-20, 20), random_state=3)
    return X


def sklearn_lloyd(X, centers, max_iter, tol=0.0):
    return SKKMeans(
        n_clusters=len(centers), init=centers, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd"
    ).fit(X)


@pytest.mark.parametrize("max_iter", [1, 5, 20])
@pytest.mark.parametrize("chunk_rows", [600, 1100])
def test_parity_with_sklearn_lloyd(client, data, max_iter, chunk_rows):
    X, C0 = data
    ours = KMeans(6, init=C0, max_iter=max_iter, tol=0, split_every=2).fit(
        da.from_array(X, chunks=(chunk_rows, -1)), client=client
    )
    ref = sklearn_lloyd(X, C0, max_iter)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-6)
    np.testing.assert_array_equal(ours.labels_.compute(), ref.labels_)
    assert ours.n_iter_ == ref.n_iter_


def test_tolerance_stops_where_sklearn_does(client, data):
    X, C0 = data
    ours = KMeans(6, init=C0, max_iter=300, tol=1e-3, split_every=2).fit(
        da.from_array(X, chunks=(700, -1)), client=client
    )
    ref = sklearn_lloyd(X, C0, 300, tol=1e-3)
    assert ours.converged_
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-6)


def test_numpy_input_float32_and_chunking(client, data):
    X, C0 = data
    a = KMeans(6, init=C0, max_iter=8, tol=0).fit(X, client=client)
    b = KMeans(6, init=C0, max_iter=8, tol=0, split_every=3).fit(da.from_array(X, chunks=(333, -1)), client=client)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10)
    assert isinstance(a.labels_, np.ndarray)
    c = KMeans(6, init=C0, max_iter=8, tol=0).fit(X.astype(np.float32), client=client)
    np.testing.assert_allclose(c.cluster_centers_, a.cluster_centers_, rtol=1e-5, atol=1e-6)
    assert c.cluster_centers_.dtype == np.float32  # as scikit-learn; the sums are float64


def test_e_step_statistics_are_additive(data):
    X, C0 = data
    model, params = KMeansModel(6), KMeansParams.from_centers(C0)
    whole = model.e_step(X, params)
    halves = add_stats(model.e_step(X[:1234], params), model.e_step(X[1234:], params))
    far, far_halves = whole.pop("farthest"), halves.pop("farthest")
    for key in whole:
        np.testing.assert_allclose(whole[key], halves[key], rtol=1e-12)
    for field in ("sq_dist", "rows", "weights", "labels"):  # the 5 farthest rows, whichever half held them
        np.testing.assert_array_equal(getattr(far, field), getattr(far_halves, field))
    assert len(far.sq_dist) == 5 and np.all(np.diff(far.sq_dist) <= 0)
    assert whole["loglik"] == -whole["inertia"]
    new = model.m_step(whole, params)
    assert new is not params and float(new.center_shift) > 0
    np.testing.assert_array_equal(params.cluster_centers, C0)  # m_step is pure


def test_kmeans_parallel_finds_separated_blobs(client, blobs):
    ref = SKKMeans(7, n_init=10, random_state=0).fit(blobs)
    ours = KMeans(7, random_state=0).fit(da.from_array(blobs, chunks=(500, -1)), client=client)
    assert ours.inertia_ <= 1.05 * ref.inertia_
    # Seeding alone already lands one center in every blob.
    blocks = array_blocks(as_dask_array(blobs, chunk_rows=500), client)
    seeds = kmeans_parallel_init(blocks, 7, np.random.default_rng(1), client=client)
    labels, _ = nearest_center(ref.cluster_centers_, seeds)
    assert len(set(labels.tolist())) == 7


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_inits_and_kmeans_centers(client, blobs, init):
    blocks = array_blocks(as_dask_array(blobs, chunk_rows=600), client)
    centers = kmeans_centers(blocks, 7, init=init, rng=np.random.default_rng(0), client=client)
    assert centers.shape == (7, 4)
    assert np.isfinite(centers).all()
    again = kmeans_centers(blocks, 7, init=init, rng=np.random.default_rng(0), client=client)
    np.testing.assert_array_equal(centers, again)


def test_same_seed_bit_identical_on_one_and_two_workers(client, blobs):
    X = da.from_array(blobs, chunks=(1000, -1))
    two = KMeans(7, random_state=5, n_init=2, max_iter=10).fit(X, client=client)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, Client(cluster, set_as_default=False) as one_client:
        one = KMeans(7, random_state=5, n_init=2, max_iter=10).fit(X, client=one_client)
    assert np.array_equal(one.cluster_centers_, two.cluster_centers_)
    assert one.inertia_ == two.inertia_
    assert one.n_iter_ == two.n_iter_


@pytest.mark.parametrize("init", ["k-means||", "array"])
def test_nan_and_inf_are_reported(client, data, init):
    X, C0 = data
    X = X.copy()
    X[10, 2] = np.nan
    X[2500, 0] = np.inf
    X[2500, 1] = -np.inf
    est = KMeans(6, init=C0 if init == "array" else init, random_state=0)
    with pytest.raises(InvalidDataError, match="3 NaN or infinite values.*missing-data"):
        est.fit(da.from_array(X, chunks=(500, -1)), client=client)


def test_empty_cluster_is_relocated_as_scikit_learn(client, data):
    X, C0 = data
    C = C0.copy()
    C[2] = 1e6  # nobody is ever nearest to this one: it takes the farthest row instead
    Xd = da.from_array(X, chunks=(700, -1))  # the farthest rows travel through the tree of sums
    est = KMeans(6, init=C, max_iter=10, tol=0).fit(Xd, client=client)
    ref = SKKMeans(6, init=C, n_init=1, max_iter=10, tol=0, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(est.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    assert 2 in set(est.labels_.compute().tolist())


def test_lazy_outputs_for_dask_input(client, data):
    X, C0 = data
    Xd = da.from_array(X, chunks=(400, -1))
    est = KMeans(6, init=C0, max_iter=3, tol=0).fit(Xd, client=client)
    assert isinstance(est.labels_, da.Array) and est.labels_.shape == (3000,)
    assert isinstance(est.predict(Xd), da.Array)
    dist = est.transform(Xd)
    assert isinstance(dist, da.Array) and dist.shape == (3000, 6)
    labels = est.predict(X)
    assert isinstance(labels, np.ndarray) and labels.shape == (3000,)
    np.testing.assert_array_equal(est.labels_.compute(), labels)
    np.testing.assert_array_equal(est.transform(X).argmin(axis=1), labels)
    np.testing.assert_allclose(est.score(X), -est.inertia_, rtol=1e-10)
    np.testing.assert_allclose(est.score(Xd), -est.inertia_, rtol=1e-10)
    np.testing.assert_allclose(est.transform(X), dist.compute(), rtol=1e-12)


def test_clone_get_params_and_n_init(client, blobs):
    est = KMeans(7, init="random", n_init=3, random_state=1, max_iter=50)
    params = est.get_params()
    assert params["n_clusters"] == 7 and params["init"] == "random"
    copy = clone(est)
    assert copy.get_params() == params and not hasattr(copy, "cluster_centers_")
    est.fit(blobs, client=client)
    assert est.cluster_centers_.shape == (7, 4) and est.n_features_in_ == 4
    assert "n_clusters=7" in repr(est)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_clusters": 0}, "n_clusters must be an integer >= 1"),
        ({"n_clusters": 5000}, "n_samples=3000 should be >= n_clusters=5000"),
        ({"init": "kmeans"}, "init must be one of"),
        ({"init": np.zeros((6, 4))}, r"The shape of the initial centers \(6, 4\) does not match"),
        ({"tol": -1.0}, "tol must be a non-negative"),
    ],
)
def test_bad_parameters(client, data, kwargs, match):
    X, _ = data
    kwargs = {"n_clusters": 6, **kwargs}
    with pytest.raises(ValueError, match=match):
        KMeans(**kwargs).fit(X, client=client)


def test_kmeans_plusplus_weighted():
    rng = np.random.default_rng(0)
    X = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.1, 0.0]])
    centers = kmeans_plusplus(X, 3, rng, sample_weight=np.array([5.0, 1.0, 1.0, 0.0]))
    # The zero-weight row is never chosen; the three distinct points are.
    assert sorted(map(tuple, centers)) == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0)]


def test_resume_from_checkpoint_is_bit_identical(client, data, tmp_path):
    pytest.importorskip("dask_em.storage.checkpoint")
    X, C0 = data
    path = str(tmp_path / "km.zarr")
    KMeans(6, init=C0, max_iter=3, tol=0).fit(X, client=client, checkpoint=path)
    resumed = KMeans(6, init=C0, max_iter=7, tol=0).fit(X, client=client, checkpoint=path)
    straight = KMeans(6, init=C0, max_iter=7, tol=0).fit(X, client=client)
    assert resumed.n_iter_ == 7
    assert np.array_equal(resumed.cluster_centers_, straight.cluster_centers_)
    assert resumed.inertia_ == straight.inertia_


def test_fit_predict_and_verbose_progress(client, data, capsys):
    X, C0 = data
    est = KMeans(6, init=C0, max_iter=50, tol=1e-3, verbose=True)
    labels = est.fit_predict(X, client=client)
    assert labels.shape == (3000,) and labels.dtype == np.int64
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kmeans  iter")]
    assert len(lines) == est.n_iter_ and "inertia" in err


def test_one_cluster_is_the_weighted_mean(client, data):
    X, _ = data
    w = np.arange(len(X)) % 3
    est = KMeans(1, init=X[:1]).fit(X, sample_weight=w, client=client)  # no row can be relocated: none is
    np.testing.assert_allclose(est.cluster_centers_[0], np.average(X, axis=0, weights=w), rtol=1e-10)


def test_what_workers_run_imports_no_scikit_learn():
    """The per-block starts and per-row outputs the estimators send to workers import neither scikit-learn nor pandas."""
    import os
    import subprocess
    import sys

    from dask_em.init import RandomResponsibilities
    from dask_em.models.kmeans import distances_block, labels_block, min_sq_dist_block
    from dask_em.models.random_effects import blup_frame

    sent = (RandomResponsibilities, labels_block, min_sq_dist_block, distances_block, blup_frame)
    modules = sorted({f.__module__ for f in sent})
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in ('sklearn', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ))
    assert out.stdout.strip() == "[]", (modules, out.stdout)


# the three searches: rows in SIMD lanes (up to 32 features, any number of
# centers), row by row (more features, few centers), BLAS products
@pytest.mark.parametrize("k, d", [(4, 5), (20, 5), (3, 32), (4, 40), (20, 40)])
@pytest.mark.parametrize("n", [1003, 6, 1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lloyd_kernel_against_numpy(n, k, d, dtype):
    from dask_em.models.kmeans import DIRECT_MAX_CLUSTERS, LANE_MAX_FEATURES, _lloyd_block, nearest_center

    lanes = d <= LANE_MAX_FEATURES
    assert lanes == (d <= 32) and (lanes or k <= DIRECT_MAX_CLUSTERS) == (k == 4 or d <= 32)
    rng = np.random.default_rng(n + k + d)
    X = (rng.normal(size=(n, d)) * 3).astype(dtype)
    if n > 100:
        X[5, 3], X[77, 0] = np.nan, np.inf  # skipped rows
        if dtype == np.float64:
            X[78] = 1e200  # a finite row whose distance overflows
    w = rng.uniform(0.5, 2.0, size=n)
    C = rng.normal(size=(k, d))
    counts, sums, d2, labels = np.zeros(k), np.zeros((k, d)), np.empty(n), np.empty(n, dtype=np.int64)
    inertia, n_invalid = _lloyd_block(X, w, C, counts, sums, d2, labels)

    X64 = X.astype(np.float64)
    valid = np.isfinite(X64).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        exact = ((X64[:, None, :] - C[None]) ** 2).sum(axis=2)
    ref_labels = np.argmin(exact[valid], axis=1)
    assert n_invalid == (~np.isfinite(X64)).sum()
    np.testing.assert_array_equal(d2[~valid], -1.0)
    overflow = ~np.isfinite(exact[valid].min(axis=1))  # the 1e200 row: every center is at inf, any label is right
    ref_labels[overflow] = labels[valid][overflow]
    np.testing.assert_array_equal(labels[valid], ref_labels)
    np.testing.assert_allclose(d2[valid], exact[valid, ref_labels], rtol=1e-13)
    np.testing.assert_allclose(counts, np.bincount(ref_labels, w[valid], minlength=k), rtol=1e-13)
    ref_sums = np.zeros((k, d))
    np.add.at(ref_sums, ref_labels, w[valid, None] * X64[valid])
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(inertia, (w[valid] * exact[valid, ref_labels]).sum(), rtol=1e-12)
    # labels_ and predict take the same search as the fit's passes
    np.testing.assert_array_equal(nearest_center(X[valid], C)[0], labels[valid])
    # an empty weight array stands for unit weights, bit for bit
    unit = [np.zeros(k), np.zeros((k, d)), np.empty(n), np.empty(n, dtype=np.int64)]
    ones = [np.zeros(k), np.zeros((k, d)), np.empty(n), np.empty(n, dtype=np.int64)]
    assert _lloyd_block(X, np.empty(0), C, *unit) == _lloyd_block(X, np.ones(n), C, *ones)
    for a, b in zip(unit, ones):
        np.testing.assert_array_equal(a, b)


# the three searches; labels_ of in-memory rows come from the pass under the final centers
@pytest.mark.parametrize("k, d", [(5, 3), (4, 40), (20, 40)])
def test_labels_from_the_final_pass_equal_predict(client, k, d, monkeypatch):
    from dask_em.data import arrays

    monkeypatch.setattr(arrays, "TARGET_BLOCK_BYTES", 1024 * d * 8)  # blocks of 1024 rows: 3 blocks
    rng = np.random.default_rng(k + d)
    X = rng.normal(size=(2100, d)) + rng.integers(0, 4, size=(2100, 1)) * 3.0
    w = rng.integers(0, 3, size=2100).astype(float)
    for est, Xf, kw in (
        (KMeans(k, n_init=3, random_state=0, max_iter=5), X, {}),  # the best run's labels
        (KMeans(k, random_state=1, max_iter=5), X.astype(np.float32), {"sample_weight": w}),
        (KMeans(k, random_state=2, max_iter=5), X, {"client": client}),  # from the workers
    ):
        est.fit(Xf, **kw)
        assert isinstance(est.labels_, np.ndarray) and est.labels_.shape == (2100,) and est.labels_.dtype == np.int64
        np.testing.assert_array_equal(est.labels_, est.predict(Xf))
