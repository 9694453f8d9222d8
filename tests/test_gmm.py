"""GaussianMixture against scikit-learn, and the properties EM must have."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SKGaussianMixture

from dask_em import GaussianMixture
from dask_em.errors import ConvergenceWarning, InvalidDataError, LikelihoodDecreaseWarning
from dask_em.models._gaussian import (
    COVARIANCE_TYPES,
    IllConditionedCovarianceError,
    precisions_cholesky_from_covariances,
)
from dask_em.models.gmm import GaussianMixtureModel, GMMParams
from dask_em.stats import add_stats

K = 3

# Short fits on purpose: parity is checked after a fixed number of iterations.
pytestmark = [
    pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def make_data(n=1200, d=3, seed=0, offset=5.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(K, d)) + offset
    labels = rng.integers(K, size=n)
    scales = rng.uniform(0.5, 1.5, size=(K, d))
    return centers[labels] + rng.normal(size=(n, d)) * scales[labels]


def initial_values(X, covariance_type, seed=1):
    """Deliberately rough starting values shared by both implementations."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    means = X[rng.choice(len(X), K, replace=False)] + 0.1
    var = X.var(axis=0)
    precisions = {
        "full": np.stack([np.diag(1.0 / (var * s)) for s in (1.0, 1.5, 2.0)]),
        "tied": np.diag(1.0 / var),
        "diag": np.stack([1.0 / (var * s) for s in (1.0, 1.5, 2.0)]),
        "spherical": 1.0 / (var.mean() * np.array([1.0, 1.5, 2.0])),
    }[covariance_type]
    return dict(weights_init=weights, means_init=means, precisions_init=precisions)


def assert_rel(actual, expected, rtol, name):
    actual, expected = np.asarray(actual), np.asarray(expected)
    err = np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-300))
    assert err <= rtol, f"{name}: max relative error {err:.3g} > {rtol}"


@pytest.fixture(scope="module")
def X():
    return make_data()


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_parity_with_scikit_learn(client, X, covariance_type):
    inits = initial_values(X, covariance_type)
    Xd = da.from_array(X, chunks=(300, -1))  # 4 blocks: two levels of tree with split_every=2
    for n_iter in (1, 5, 50):
        common = dict(n_components=K, covariance_type=covariance_type, max_iter=n_iter, tol=0.0, **inits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ours = GaussianMixture(**common, split_every=2).fit(Xd, client=client)
            ref = SKGaussianMixture(**common).fit(X)
        assert ours.n_iter_ == ref.n_iter_ == n_iter
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
            assert_rel(getattr(ours, name), getattr(ref, name), 1e-6, f"{covariance_type} {n_iter} {name}")
        assert_rel(ours.lower_bound_, ref.lower_bound_, 1e-6, "lower_bound_")
        assert_rel(ours.lower_bounds_, ref.lower_bounds_, 1e-6, "lower_bounds_")
    # and the per-row outputs of the last fit
    assert_rel(ours.score_samples(X), ref.score_samples(X), 1e-6, "score_samples")
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-6)
    assert ours.bic(X) == pytest.approx(ref.bic(X), rel=1e-6)
    assert ours.aic(X) == pytest.approx(ref.aic(X), rel=1e-6)


def fitted_params(X, covariance_type):
    ref = SKGaussianMixture(K, covariance_type=covariance_type, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref.fit(X)
    return GMMParams(ref.weights_, ref.means_, ref.covariances_, ref.precisions_cholesky_)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_are_additive(X, covariance_type):
    model = GaussianMixtureModel(K, covariance_type)
    params = fitted_params(X, covariance_type)
    whole = model.e_step(X, params)
    halves = add_stats(model.e_step(X[:517], params), model.e_step(X[517:], params))
    assert set(whole) == set(halves)
    for key in whole:
        np.testing.assert_allclose(halves[key], whole[key], rtol=1e-12, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_chunking_does_not_change_the_fit(client, X, covariance_type):
    inits = initial_values(X, covariance_type)
    fits = [
        GaussianMixture(K, covariance_type=covariance_type, max_iter=10, tol=0, **inits).fit(
            da.from_array(X, chunks=(rows, -1)), client=client
        )
        for rows in (1200, 173)
    ]
    for other in fits[1:]:
        for name in ("weights_", "means_", "covariances_"):
            assert_rel(getattr(other, name), getattr(fits[0], name), 1e-10, name)
        assert_rel(other.lower_bound_, fits[0].lower_bound_, 1e-10, "lower_bound_")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(client, covariance_type):
    X = make_data(n=800, d=2, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LikelihoodDecreaseWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(K, covariance_type=covariance_type, max_iter=25, tol=0, init_params="random",
                             random_state=0).fit(da.from_array(X, chunks=(200, -1)), client=client)
    history = np.array(gm.lower_bounds_)
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


def test_same_seed_is_bit_identical_on_one_and_two_workers(client):
    from distributed import Client, LocalCluster

    X = da.from_array(make_data(n=1000, d=3, seed=5), chunks=(125, -1))
    kwargs = dict(n_components=K, max_iter=5, tol=0, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        two = GaussianMixture(**kwargs).fit(X, client=client)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=":0") as cluster, Client(cluster, set_as_default=False) as one_client:
            one = GaussianMixture(**kwargs).fit(X, client=one_client)
    for name in ("weights_", "means_", "covariances_", "lower_bounds_"):
        np.testing.assert_array_equal(np.asarray(getattr(one, name)), np.asarray(getattr(two, name)), err_msg=name)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_init_fits_separated_clusters(client, init_params):
    rng = np.random.default_rng(11)
    X = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])[rng.integers(K, size=900)] + rng.normal(size=(900, 2))
    gm = GaussianMixture(K, init_params=init_params, random_state=0, max_iter=100, tol=1e-4,
                         n_init=1 if init_params in ("kmeans", "random") else 2)
    labels = gm.fit_predict(da.from_array(X, chunks=(300, -1)), client=client)
    assert isinstance(labels, da.Array)
    assert gm.converged_
    ref = SKGaussianMixture(K, init_params="kmeans", random_state=0, tol=1e-6, max_iter=200).fit(X)
    # the global optimum on well separated clusters: same log-likelihood
    assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-3)
    assert np.all(np.isfinite(gm.covariances_))


def test_kmeans_start_on_many_rows_clusters_a_sample_in_two_passes():
    # Above KMEANS_START_ROWS rows the "kmeans" start clusters a uniform sample in
    # memory: two passes (the sampled rows, the assignments), not one per Lloyd iteration.
    from dask_em.init import KMEANS_START_ROWS

    rng = np.random.default_rng(5)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    n = KMEANS_START_ROWS + 10_000
    X = centers[np.argsort(rng.random(n)) % 4] + rng.normal(size=(n, 2))  # rows in no cluster order
    one = GaussianMixture(4, max_iter=1, tol=0.0, random_state=0).fit(X)
    assert one.n_passes_ <= 3, one.n_passes_  # 2 for the start, 1 EM iteration
    found = sorted(map(tuple, np.round(one.means_)))
    assert found == sorted(map(tuple, centers)), one.means_
    np.testing.assert_allclose(np.sort(one.means_, axis=0), np.sort(centers, axis=0), atol=0.1)
    full = GaussianMixture(4, tol=1e-8, random_state=0).fit(X)
    ref = SKGaussianMixture(4, tol=1e-8, random_state=0).fit(X)
    assert full.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-7)


def test_float32_input(client, X):
    inits = initial_values(X, "full")
    X32 = X.astype(np.float32)
    ours = GaussianMixture(K, max_iter=10, tol=0, **inits).fit(da.from_array(X32, chunks=(300, -1)), client=client)
    ref = GaussianMixture(K, max_iter=10, tol=0, **inits).fit(X32.astype(np.float64), client=client)
    # computed in float64 from the float32 values, given back in float32 as scikit-learn does
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6)
    assert ours.means_.dtype == ours.covariances_.dtype == ours.precisions_cholesky_.dtype == np.float32
    assert ours.predict(X32).dtype == np.int64


def test_predict_is_lazy_on_dask_input(client, X):
    gm = GaussianMixture(K, max_iter=5, tol=0, **initial_values(X, "diag"), covariance_type="diag")
    gm.fit(X, client=client)
    Xd = da.from_array(X, chunks=(250, -1))
    proba, labels, scores = gm.predict_proba(Xd), gm.predict(Xd), gm.score_samples(Xd)
    for lazy in (proba, labels, scores):
        assert isinstance(lazy, da.Array)
    assert proba.shape == (len(X), K) and labels.shape == (len(X),) and scores.shape == (len(X),)
    computed = client.compute([proba, labels, scores], sync=True)
    np.testing.assert_allclose(computed[0], gm.predict_proba(X), rtol=1e-12)
    np.testing.assert_array_equal(computed[1], gm.predict(X))
    np.testing.assert_allclose(computed[2], gm.score_samples(X), rtol=1e-12)
    assert isinstance(gm.predict(X), np.ndarray)


def test_sample_and_fitted_attributes(client, X):
    gm = GaussianMixture(K, max_iter=3, tol=0, random_state=0, **initial_values(X, "tied"),
                         covariance_type="tied").fit(X, client=client)
    samples, labels = gm.sample(500)
    assert samples.shape == (500, X.shape[1]) and labels.shape == (500,)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_", "converged_",
                 "n_iter_", "lower_bound_", "lower_bounds_", "n_features_in_"):
        assert hasattr(gm, name), name


def test_clone_and_pipeline(client, X):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    gm = GaussianMixture(K, covariance_type="diag", random_state=3, max_iter=50)
    copy = clone(gm)
    assert copy.get_params() == gm.get_params() and copy is not gm
    pipe = make_pipeline(StandardScaler(), GaussianMixture(K, random_state=0, init_params="k-means++"))
    labels = pipe.fit(X, gaussianmixture__client=client).predict(X)
    assert labels.shape == (len(X),) and set(np.unique(labels)) <= set(range(K))
    assert np.isfinite(pipe.score(X))


def test_warm_start_continues(client, X):
    inits = initial_values(X, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        once = GaussianMixture(K, max_iter=6, tol=0, **inits).fit(X, client=client)
        twice = GaussianMixture(K, max_iter=3, tol=0, warm_start=True, **inits).fit(X, client=client)
        twice.fit(X, client=client)
    assert_rel(twice.means_, once.means_, 1e-10, "means_")


# -- bad input --------------------------------------------------------------


def test_nan_and_inf_are_counted_in_the_first_pass(client, X):
    bad = X.copy()
    bad[3, 1] = np.nan
    bad[700, 0] = np.inf
    bad[701, :] = np.nan
    Xd = da.from_array(bad, chunks=(200, -1))
    for init_params in ("kmeans", "random"):
        with pytest.raises(InvalidDataError, match=r"5 NaN or infinite values.*MultivariateNormal"):
            GaussianMixture(K, init_params=init_params).fit(Xd, client=client)
    with pytest.raises(InvalidDataError, match="5 NaN"):
        GaussianMixture(K, **initial_values(X, "full")).fit(Xd, client=client)


@pytest.mark.parametrize(
    "data, match",
    [
        (np.zeros(10), "Expected 2D array"),
        (np.zeros((4, 3, 2)), "dim 3"),
        (np.array([["a", "b"], ["c", "d"]]), "could not convert string to float"),
        (np.zeros((2, 2)), "n_samples >= n_components"),
    ],
)
def test_bad_shapes_and_dtypes(client, data, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(K).fit(data, client=client)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_components=0), "n_components"),
        (dict(covariance_type="banana"), "covariance_type"),
        (dict(init_params="kmeans||"), "init_params"),
        (dict(reg_covar=-1.0), "reg_covar"),
        (dict(n_init=0), "n_init"),
        (dict(means_init=np.zeros((K, 2))), r"'means' should have the shape of \(3, 3\)"),
        (dict(weights_init=np.array([0.5, 0.6, 0.1])), "should be normalized"),
        (dict(precisions_init=np.stack([np.eye(3), -np.eye(3), np.eye(3)])), "not positive definite"),
        (dict(precisions_init=np.eye(3)), "should have the shape of"),
    ],
)
def test_bad_parameters(client, X, params, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{"n_components": K, **params}).fit(X, client=client)


def test_constant_data_is_regularised(client):
    X = np.ones((300, 2))
    gm = GaussianMixture(2, random_state=0).fit(X, client=client)
    assert np.all(np.isfinite(gm.means_)) and np.all(np.isfinite(gm.covariances_))
    np.testing.assert_allclose(gm.covariances_[0], np.eye(2) * 1e-6, rtol=1e-6)


def test_singular_covariance_error_says_what_to_try():
    with pytest.raises(IllConditionedCovarianceError, match="increase reg_covar"):
        precisions_cholesky_from_covariances(np.zeros((1, 2, 2)), "full")
    with pytest.raises(ValueError, match="decrease the number of components"):
        precisions_cholesky_from_covariances(np.zeros(2), "spherical")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_empty_component_keeps_its_parameters(client, covariance_type):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 8])
    means = np.array([[0.0, 0.0], [8.0, 8.0], [1e4, 1e4]])  # the third is far from every row
    precisions = {
        "full": np.stack([np.eye(2)] * 3), "tied": np.eye(2), "diag": np.ones((3, 2)), "spherical": np.ones(3)
    }[covariance_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(3, covariance_type=covariance_type, max_iter=5, tol=0, weights_init=[0.4, 0.4, 0.2],
                             means_init=means, precisions_init=precisions).fit(X, client=client)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    assert gm.weights_[2] < 1e-15
    np.testing.assert_array_equal(gm.means_[2], means[2])
    assert np.all(np.isfinite(gm.score_samples(X)))
    assert np.all(gm.predict(X) != 2)


def test_checkpoint_resume_skips_initialisation(client, X, tmp_path, monkeypatch):
    path = str(tmp_path / "fit.zarr")
    kwargs = dict(n_components=K, max_iter=4, tol=0, random_state=0, n_init=2, init_params="random_from_data")
    first = GaussianMixture(**kwargs).fit(X, client=client, checkpoint=path)

    def no_init(*args, **kw):
        raise AssertionError("a resumed fit must not initialise again")

    monkeypatch.setattr(GaussianMixture, "_gmm_start", no_init)
    again = GaussianMixture(**kwargs).fit(X, client=client, checkpoint=path)
    np.testing.assert_array_equal(again.means_, first.means_)
    assert again.lower_bounds_ == first.lower_bounds_


def test_missing_em_equals_plain_fit_without_nan_and_fits_with_nan(client):
    rng = np.random.default_rng(7)
    X = np.vstack([rng.normal(0, 1, (300, 3)), rng.normal(5, 1, (300, 3))])
    init = dict(weights_init=[0.5, 0.5], means_init=[[0.5] * 3, [4.5] * 3])
    plain = GaussianMixture(2, max_iter=5, tol=0, **init).fit(X, client=client)
    em = GaussianMixture(2, max_iter=5, tol=0, missing="em", **init).fit(X, client=client)
    np.testing.assert_allclose(em.means_, plain.means_, rtol=1e-10)
    np.testing.assert_allclose(em.covariances_, plain.covariances_, rtol=1e-10)
    assert em.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-10)

    Xm = X.copy()
    Xm[rng.random(X.shape) < 0.1] = np.nan
    with pytest.raises(InvalidDataError, match="NaN"):
        GaussianMixture(2, max_iter=3).fit(Xm, client=client)
    fitted = GaussianMixture(2, missing="em", random_state=0).fit(Xm, client=client)
    assert np.all(np.diff(fitted.lower_bounds_) > -1e-9)
    assert np.isfinite(fitted.means_).all()
    assert sorted(fitted.means_[:, 0].round()) == [0.0, 5.0]
    assert np.isfinite(fitted.predict_proba(Xm)).all()
    with pytest.raises(ValueError, match="missing must be"):
        GaussianMixture(2, missing="drop").fit(X, client=client)


def test_normalisation_exp_matches_numpy():
    from dask_em.models._gaussian import exp_minus_top

    x = np.concatenate([
        np.linspace(-745.0, 0.0, 200_001),
        np.nextafter(-700.0, [0.0, -np.inf]),  # either side of the cut-off
        [-700.0, -699.9999999, -708.0, -708.5, -744.5, -1e300, -0.0, -1e-300, -np.inf, np.nan],
    ])
    got = exp_minus_top(x, np.zeros_like(x))
    with np.errstate(invalid="ignore"):
        keep = x > -700.0
    assert (got[~keep] == 0.0).all()  # at or below the cut-off, -inf and NaN: exactly 0
    want = np.exp(x[keep])
    np.testing.assert_array_less(np.abs(got[keep] - want), 1e-15 * want)
    assert got[keep].min() > 1e-305  # no subnormals above the cut-off
    # the difference is what is cut: exp(x - top)
    got = exp_minus_top(np.array([0.0, -5.0, np.inf]), np.array([750.0, -4.0, np.inf]))
    assert got[0] == 0.0 and abs(got[1] - np.exp(-1.0)) < 1e-15 * np.exp(-1.0) and got[2] == 0.0


def _reference_e_step(X, params, covariance_type):
    """The E-step in plain numpy, row by row layout (n, K)."""
    model = GaussianMixtureModel(len(params.weights), covariance_type)
    Xf = X[np.isfinite(X).all(axis=1)]
    log_prob = model.weighted_log_prob(Xf, params)
    top = log_prob.max(axis=1, keepdims=True)
    diff = log_prob - top
    e = np.where(diff > -700.0, np.exp(diff), 0.0)
    total = e.sum(axis=1, keepdims=True)
    resp = e / total
    Y = Xf - (params.weights @ params.means)
    stats = {"sum_resp": resp.sum(axis=0), "sum_x": resp.T @ Y}
    if covariance_type == "full":
        stats["sum_xxT"] = np.einsum("ik,ij,il->kjl", resp, Y, Y)
    elif covariance_type == "tied":
        stats["sum_xxT"] = Y.T @ Y
    else:
        stats["sum_xx"] = resp.T @ (Y * Y)
    stats["loglik"] = float((np.log(total[:, 0]) + top[:, 0]).sum())
    stats["n"] = float(len(Xf))
    return stats


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_e_step_matches_numpy_reference_with_bad_rows(covariance_type):
    rng = np.random.default_rng(3)
    X = make_data(n=9_000, d=4)
    X[[5, 4100, 8999], 1] = np.nan  # in the first, a middle and the last sub-block
    X[77, 0] = np.inf
    X[78, :2] = -np.inf
    params = GMMParams(**_params_kwargs(X, covariance_type, rng))
    model = GaussianMixtureModel(K, covariance_type)
    stats = model.e_step(X, params)
    want = _reference_e_step(X, params, covariance_type)
    assert int(stats["n_invalid"]) == 6
    assert float(stats["n"]) == want["n"]
    np.testing.assert_allclose(float(stats["loglik"]), want["loglik"], rtol=1e-13)
    for key in want:
        if key not in ("loglik", "n"):
            np.testing.assert_allclose(stats[key], want[key], rtol=1e-12, atol=1e-9)
    # finite rows whose densities overflow: loglik -inf, the rest as before
    X[200] = 1e200
    stats = model.e_step(X, params)
    assert float(stats["loglik"]) == -np.inf and int(stats["n_invalid"]) == 6


def _params_kwargs(X, covariance_type, rng):
    Xf = X[np.isfinite(X).all(axis=1)]
    D = X.shape[1]
    means = Xf[rng.choice(len(Xf), K, replace=False)]
    var = Xf.var(axis=0)
    cov = {
        "full": np.repeat(np.diag(var)[None], K, axis=0) * rng.uniform(0.5, 1.5, size=(K, 1, 1)),
        "tied": np.diag(var),
        "diag": np.repeat(var[None], K, axis=0) * rng.uniform(0.5, 1.5, size=(K, D)),
        "spherical": np.full(K, var.mean()) * rng.uniform(0.5, 1.5, size=K),
    }[covariance_type]
    weights = rng.uniform(0.5, 1.5, size=K)
    return {
        "weights": weights / weights.sum(),
        "means": means,
        "covariances": cov,
        "precisions_cholesky": precisions_cholesky_from_covariances(cov, covariance_type),
    }


@pytest.mark.parametrize("d", [5, 7])
@pytest.mark.parametrize("triangle", ["upper", "lower"])
def test_full_e_step_kernels_match_numpy_reference(d, triangle):
    """Dense covariances, D not a multiple of the kernels' unrolling (4), factors of either
    triangle (upper from covariances, lower from ``precisions_init``), float32 input."""
    rng = np.random.default_rng(d)
    X = make_data(n=3_000, d=d)
    X[[3, 2999], 2] = np.nan
    A = rng.normal(size=(K, d, d)) * 0.4 + np.eye(d) * 2.0
    cov = A @ A.transpose(0, 2, 1)
    if triangle == "upper":
        prec_chol = precisions_cholesky_from_covariances(cov, "full")
    else:
        prec_chol = np.linalg.cholesky(np.linalg.inv(cov))
    means = X[rng.choice(np.arange(10, 2900), K, replace=False)]
    params = GMMParams(np.full(K, 1.0 / K), means, cov, prec_chol)
    model = GaussianMixtureModel(K, "full")
    want = _reference_e_step(X, params, "full")
    for data in (X, X.astype(np.float32)):
        ref = want if data.dtype == np.float64 else _reference_e_step(data.astype(np.float64), params, "full")
        stats = model.e_step(data, params)
        assert int(stats["n_invalid"]) == 2 and float(stats["n"]) == ref["n"]
        np.testing.assert_allclose(float(stats["loglik"]), ref["loglik"], rtol=1e-13)
        for key in ("sum_resp", "sum_x", "sum_xxT"):
            np.testing.assert_allclose(stats[key], ref[key], rtol=1e-12, atol=1e-9)
    good = np.isfinite(X).all(axis=1)
    Xg = X[good]
    log_prob = model.weighted_log_prob(Xg, params)
    diff = Xg[:, None, :] - means[None]
    maha = np.einsum("nki,kij->nkj", diff, prec_chol)
    expected = (np.log(np.full(K, 1.0 / K)) + np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
                - 0.5 * d * np.log(2 * np.pi) - 0.5 * (maha**2).sum(axis=2))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-12, atol=1e-10)
