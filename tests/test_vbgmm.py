"""BayesianGaussianMixture: parity with scikit-learn, the model contract, I/O, CLI and report."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
from sklearn.mixture import BayesianGaussianMixture as SkBGM

import dask_em
from dask_em.engine import fit_em
from dask_em.errors import InvalidDataError, InvalidParameterError
from dask_em.models.gmm import GaussianMixtureModel, _Workspace
from dask_em.models.vbgmm import BayesianGaussianMixtureModel, VBGMMParams
from dask_em.stats import add_stats

TYPES = ["full", "tied", "diag", "spherical"]
PRIORS = ["dirichlet_process", "dirichlet_distribution"]
K = 4


def _blobs(n=900, seed=0, offset=10.0, separation=4.0):
    """Three Gaussian clusters in 3-D, away from the origin."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.2, 1.2]]) * separation
    return np.vstack([rng.normal(size=(n // 3, 3)) @ np.diag([1.0, 0.7, 1.3]) + c for c in centers]) + offset


X = _blobs()
RESP0 = np.random.default_rng(1).dirichlet(np.ones(K), size=len(X))


class _FromResponsibilities(SkBGM):
    """scikit-learn's estimator started from given responsibilities (the reference, not a mock)."""

    resp0 = RESP0

    def _initialize_parameters(self, X, random_state, xp=None):
        self._initialize(X, self.resp0)


def _sklearn(ct, pt, max_iter, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _FromResponsibilities(n_components=K, covariance_type=ct, weight_concentration_prior_type=pt,
                                     max_iter=max_iter, tol=0.0, **kw).fit(X)


def _model_and_start(ct, pt, resp=RESP0, data=X):
    """Our model with scikit-learn's default prior for ``data``, and the update from ``resp``."""
    cov = np.cov(data.T) if ct in ("full", "tied") else np.var(data, axis=0, ddof=1)
    model = BayesianGaussianMixtureModel(K, ct, 1e-6, pt).with_prior_defaults(data.shape[1], data.mean(0), cov)
    center = data.mean(axis=0)
    gmm = GaussianMixtureModel(K, ct)
    stats = gmm._zero_stats(data.shape[1])
    gmm._accumulate(stats, data - center, resp, _Workspace(len(data), K, data.shape[1], ct))
    return model, model.params_from_stats(stats, center)


def _rel(ours, theirs):
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    assert ours.shape == theirs.shape
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _assert_same_as_sklearn(model, params, sk, bounds, tol=1e-8):
    pairs = {
        "means": (params.means, sk.means_),
        "covariances": (params.covariances, sk.covariances_),
        "precisions_cholesky": (params.precisions_cholesky, sk.precisions_cholesky_),
        "weight_concentration": (params.weight_concentration, np.asarray(sk.weight_concentration_)),
        "mean_precision": (params.mean_precision, sk.mean_precision_),
        "degrees_of_freedom": (params.degrees_of_freedom, sk.degrees_of_freedom_),
        "lower_bounds": (bounds, np.ravel(sk.lower_bounds_)),
    }
    gaps = {name: _rel(a, b) for name, (a, b) in pairs.items()}
    assert max(gaps.values()) < tol, gaps
    assert _rel(model.expected_weights(params), sk.weights_) < tol


@pytest.mark.parametrize("pt", PRIORS)
@pytest.mark.parametrize("ct", TYPES)
def test_iterations_match_sklearn_from_the_same_responsibilities(ct, pt):
    """After 1, 5 and 20 iterations: parameters and lower bounds equal scikit-learn's to 1e-8 (relative)."""
    model, params = _model_and_start(ct, pt)
    bounds = []
    for iteration in range(1, 21):
        # two blocks: the sums of the halves, as the engine combines them
        stats = add_stats(model.e_step(X[:400], params), model.e_step(X[400:], params))
        stats.pop("n_invalid")
        stats = model.finish_stats(stats, params)
        bounds.append(float(stats["loglik"]))
        params = model.m_step(stats, params)
        if iteration in (1, 5, 20):
            _assert_same_as_sklearn(model, params, _sklearn(ct, pt, iteration), bounds)


def test_engine_fit_matches_sklearn(client):
    """The same through fit_em on the cluster (full, Dirichlet process, four blocks), 5 iterations."""
    model, start = _model_and_start("full", "dirichlet_process")
    result = fit_em(model, dask_em.data.as_dask_array(X, chunk_rows=250), start, max_iter=5, tol=0.0,
                    tol_on="total", client=client, warn_not_converged=False)
    _assert_same_as_sklearn(model, result.params, _sklearn("full", "dirichlet_process", 5), result.history)


def test_predictions_match_sklearn():
    """score_samples, predict_proba and predict from the same variational parameters."""
    for ct, pt in (("full", "dirichlet_process"), ("diag", "dirichlet_distribution")):
        sk = _sklearn(ct, pt, 5)
        ours = dask_em.BayesianGaussianMixture(K, covariance_type=ct, weight_concentration_prior_type=pt)
        ours._set_variational(VBGMMParams(np.asarray(sk.weight_concentration_), sk.mean_precision_, sk.means_,
                                     np.asarray(sk.degrees_of_freedom_), sk.covariances_, sk.precisions_cholesky_),
                         _model_and_start(ct, pt)[0])
        ours.n_features_in_ = 3
        np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), rtol=1e-12)
        np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), rtol=1e-9, atol=1e-14)
        np.testing.assert_array_equal(ours.predict(X), sk.predict(X))
        np.testing.assert_allclose(ours.weights_, sk.weights_, rtol=1e-14)


def test_converged_fit_equals_sklearn_on_well_separated_data(client):
    """Separate initialisations (our k-means||, scikit-learn's KMeans): the same fit at convergence."""
    data = _blobs(n=1500, seed=3, separation=8.0)
    kw = dict(covariance_type="full", weight_concentration_prior_type="dirichlet_distribution", tol=1e-8,
              max_iter=500, random_state=0)
    ours = dask_em.BayesianGaussianMixture(3, **kw).fit(data, client=client)
    sk = SkBGM(n_components=3, **kw).fit(data)
    assert ours.converged_ and sk.converged_
    order = [int(np.argmin(np.abs(sk.means_ - m).sum(axis=1))) for m in ours.means_]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(ours.means_, sk.means_[order], rtol=1e-6)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_[order], rtol=1e-5)
    np.testing.assert_allclose(ours.weights_, sk.weights_[order], rtol=1e-6)
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(ours.mean_prior_, sk.mean_prior_, rtol=1e-12)
    np.testing.assert_allclose(ours.covariance_prior_, sk.covariance_prior_, rtol=1e-10)
    assert np.all(np.diff(ours.lower_bounds_) > -1e-9 * abs(ours.lower_bound_))


def test_converged_dirichlet_process_from_the_same_start_equals_sklearn(client):
    """The Dirichlet process is not symmetric in the components: the same start, the same fit."""
    data = _blobs(n=1500, seed=3, separation=8.0)
    labels = np.argmin(((data[:, None] - data[[0, 600, 1200, 1]][None]) ** 2).sum(-1), axis=1)
    resp = np.eye(K)[labels]
    model, start = _model_and_start("full", "dirichlet_process", resp, data)
    result = fit_em(model, data, start, max_iter=500, tol=1e-8, tol_on="total", client=client)

    class Start(_FromResponsibilities):
        resp0 = resp

    sk = Start(n_components=K, weight_concentration_prior_type="dirichlet_process", max_iter=500, tol=1e-8).fit(data)
    assert result.converged and sk.converged_ and result.n_iter == sk.n_iter_
    np.testing.assert_allclose(result.params.means, sk.means_, rtol=1e-8)
    np.testing.assert_allclose(result.history[-1], sk.lower_bound_, rtol=1e-10)
    assert (model.expected_weights(result.params) > 1e-3).sum() == 3


def test_initialisations_reach_the_clusters(client):
    """GaussianMixture's four initialisations; the prior defaults are the data's exact moments."""
    data = _blobs(n=600, seed=2, separation=8.0)
    for init in ("kmeans", "k-means++", "random", "random_from_data"):
        est = dask_em.BayesianGaussianMixture(4, init_params=init, random_state=0, max_iter=40, tol=1e-2,
                                              covariance_type="diag", weight_concentration_prior=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(data, client=client)
        assert (est.weights_ > 0.05).sum() == 3, (init, est.weights_)
        np.testing.assert_allclose(est.mean_prior_, data.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(est.covariance_prior_, data.var(axis=0, ddof=1), rtol=1e-10)


def test_save_load_round_trip_and_warm_start(client, tmp_path):
    est = dask_em.BayesianGaussianMixture(K, max_iter=15, tol=1e-6, random_state=0, init_params="random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, client=client)
    assert isinstance(est.weight_concentration_, tuple) and len(est.weight_concentration_) == 2
    path = str(tmp_path / "vbgmm.zarr")
    dask_em.save(est, path)
    loaded = dask_em.load(path)
    assert type(loaded) is dask_em.BayesianGaussianMixture and loaded.get_params() == est.get_params()
    assert isinstance(loaded.weight_concentration_, tuple)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "mean_precision_",
                 "degrees_of_freedom_", "mean_prior_", "covariance_prior_", "lower_bounds_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(est, name))
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    # a warm start continues from the fitted variational parameters and the same prior
    before = est.lower_bound_
    est.set_params(warm_start=True, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, client=client)
    assert est.lower_bounds_[0] >= before - 1e-9 * abs(before)
    np.testing.assert_array_equal(est.mean_prior_, loaded.mean_prior_)


def test_bad_input_is_refused_clearly(client):
    bad = X.copy()
    bad[5, 1] = np.nan
    with pytest.raises(InvalidDataError, match="1 NaN or infinite value"):
        dask_em.BayesianGaussianMixture(2, init_params="random", random_state=0).fit(bad, client=client)
    cases = [
        (dict(degrees_of_freedom_prior=1.5), "greater than n_features - 1 = 2"),
        (dict(weight_concentration_prior_type="beta"), "weight_concentration_prior_type must be one of"),
        (dict(weight_concentration_prior=-1.0), "weight_concentration_prior must be a positive number"),
        (dict(mean_prior=[0.0, 1.0]), "mean_prior must have n_features = 3"),
        (dict(covariance_prior=np.diag([1.0, -1.0, 1.0])), "not positive definite"),
        (dict(covariance_type="diag", covariance_prior=[1.0, 2.0, 3.0, 4.0]), "shape (3,)"),
        (dict(covariance_type="banana"), "covariance_type must be one of"),
        (dict(init_params="kmeans--"), "init_params must be one of"),
    ]
    for params, message in cases:
        with pytest.raises(InvalidParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
            dask_em.BayesianGaussianMixture(2, **params).fit(X, client=client)
    with pytest.raises(InvalidDataError, match="n_samples >= n_components"):
        dask_em.BayesianGaussianMixture(5).fit(X[:3], client=client)


def _cli(*args):
    from dask_em.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_fit_report_and_errors(cluster, tmp_path):
    pytest.importorskip("matplotlib")
    data = str(tmp_path / "x.npy")
    np.save(data, _blobs(n=600, seed=2, separation=8.0))
    model = str(tmp_path / "m.zarr")
    addr = ["--scheduler", cluster.scheduler_address, "--quiet"]
    code, out, err = _cli("fit", "vbgmm", data, "-k", "5", "--random-state", "0", "--covariance-type", "diag",
                          "--init-params", "k-means++",
                          "--param", "weight_concentration_prior=0.01", "--output", model, *addr)
    assert code == 0, err
    assert out.startswith("BayesianGaussianMixture:") and "weights_" in out
    code, out, err = _cli("report", model, "--data", data, "--output", str(tmp_path / "r.html"), *addr)
    assert code == 0 and "r-components.png" in out, err
    assert "3 of 5 components active" in _active_title(dask_em.load(model))
    code, _, err = _cli("fit", "vbgmm", data, "-k", "2", "--param", "degrees_of_freedom_prior=0.5", *addr)
    assert code == 2 and "degrees_of_freedom_prior must be greater than" in err
    bad = np.load(data)
    bad[0, 0] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    code, _, err = _cli("fit", "vbgmm", str(tmp_path / "bad.npy"), "-k", "2", "--init-params", "random", *addr)
    assert code == 2 and "1 NaN or infinite value" in err


def _active_title(est):
    from dask_em.report import plot_active_components

    return plot_active_components(est).axes[0].get_title()
