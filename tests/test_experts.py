"""MixtureOfExperts and MixtureOfLinearRegressions: reference EM, recovery, chunking, out of core, contract."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import zarr

import dask_em
from dask_em.errors import InvalidDataError
from dask_em.models.experts import ExpertsParams, MixtureOfExpertsModel


def piecewise(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = 2x + 1 left of 0, 1 - x right of it, small noise; x uniform on [-3, 3]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (n, 1))
    y = np.where(x < 0, 2 * x + 1, 1 - x) + 0.1 * rng.normal(size=(n, 1))
    return x, y[:, 0]


def two_targets(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) + np.where(rng.random(n) < 0.4, 3.0, -1.0)[:, None]
    side = X[:, 0] > 1
    y = np.stack([np.where(side, X @ [1.0, -1.0] + 2, X @ [0.5, 0.3] - 1),
                  np.where(side, 3 - X[:, 1], X[:, 0])], axis=1)
    return X, y + 0.2 * rng.normal(size=y.shape)


# -- a plain numpy reference EM, uncentred, straight from the formulas ----------------------


def _log_normal_full(X, mean, cov):
    D = X.shape[1]
    diff = X - mean
    sol = np.linalg.solve(cov, diff.T).T
    return -0.5 * (np.einsum("ij,ij->i", diff, sol) + np.linalg.slogdet(cov)[1] + D * np.log(2 * np.pi))


def reference_em(X, y, p: ExpertsParams, n_iter: int, gating: str, reg: float) -> tuple[ExpertsParams, list[float]]:
    weights, means, covs = p.weights.copy(), p.means.copy(), p.covariances.copy()
    coef, intercept, noise = p.coef.copy(), p.intercept.copy(), p.noise_variance.copy()
    K, T, D = coef.shape
    n = len(X)
    Z = np.hstack([np.ones((n, 1)), X])
    history = []
    for _ in range(n_iter):
        logp = np.empty((n, K))
        for k in range(K):
            mu = intercept[k] + X @ coef[k].T
            logp[:, k] = np.log(weights[k]) - 0.5 * (((y - mu) ** 2) / noise[k] + np.log(2 * np.pi * noise[k])).sum(axis=1)
            if gating == "gaussian":
                logp[:, k] += _log_normal_full(X, means[k], covs[k])
        top = logp.max(axis=1, keepdims=True)
        norm = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
        history.append(norm.sum())
        R = np.exp(logp - norm[:, None])
        nk = R.sum(axis=0) + 10 * np.finfo(float).eps
        weights = nk / nk.sum()
        for k in range(K):
            r = R[:, k]
            means[k] = r @ X / nk[k]
            if gating == "gaussian":
                diff = X - means[k]
                covs[k] = (r[:, None] * diff).T @ diff / nk[k] + reg * np.eye(D)
            beta = np.linalg.solve(Z.T @ (r[:, None] * Z), Z.T @ (r[:, None] * y))
            intercept[k], coef[k] = beta[0], beta[1:].T
            noise[k] = (r[:, None] * (y - Z @ beta) ** 2).sum(axis=0) / nk[k] + reg
    return ExpertsParams(weights, means, covs, p.precisions_cholesky, coef, intercept, noise), history


@pytest.mark.parametrize("gating", ["gaussian", "constant"])
def test_matches_numpy_reference_em_after_1_5_20_iterations(client, gating):
    X, y = two_targets(1500)
    model = MixtureOfExpertsModel(3, n_targets=2, gating=gating, reg_covar=1e-6)
    A = np.hstack([X, y])
    start = model.init_params(A, np.random.default_rng(3))
    seen = {}  # parameters after iterations 1, 5 and 20 of one fit
    result = dask_em.fit_em(model, da.from_array(A, chunks=(400, -1)), start, max_iter=20, tol=0.0, client=client,
                            warn_not_converged=False, callbacks=[lambda info: seen.setdefault(info.iteration, info.params)])
    names = ["weights", "means", "coef", "intercept", "noise_variance"]
    names += ["covariances"] if gating == "gaussian" else []
    for n_iter in (1, 5, 20):
        ref, history = reference_em(X, y, start, n_iter, gating, 1e-6)
        for name in names:
            np.testing.assert_allclose(getattr(seen[n_iter], name), getattr(ref, name), rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name} after {n_iter} iterations ({gating})")
    np.testing.assert_allclose(np.array(result.history) * len(A), history, rtol=1e-10)


def test_recovers_piecewise_linear_function(client):
    x, y = piecewise(4000)
    est = dask_em.MixtureOfExperts(2, max_iter=200, tol=1e-8, random_state=0).fit(x, y, client=client)
    order = np.argsort(est.means_[:, 0])  # left expert first
    np.testing.assert_allclose(est.coef_[order, 0, 0], [2.0, -1.0], atol=0.03)
    np.testing.assert_allclose(est.intercept_[order, 0], [1.0, 1.0], atol=0.05)
    np.testing.assert_allclose(est.noise_variance_[:, 0], 0.01, rtol=0.15)
    assert est.coef_.shape == (2, 1, 1) and est.intercept_.shape == (2, 1)
    grid = np.linspace(-2.5, 2.5, 11)[:, None]
    truth = np.where(grid < 0, 2 * grid + 1, 1 - grid)[:, 0]
    prediction = est.predict(grid)
    assert prediction.shape == (11,)
    far = np.abs(grid[:, 0]) > 1.0  # the gates blend the experts near the kink
    np.testing.assert_allclose(prediction[far], truth[far], atol=0.05)
    gates = est.predict_proba(grid)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0)
    assert gates[0, order[0]] > 0.99 and gates[-1, order[1]] > 0.99
    assert np.isfinite(est.score(x, y)) and np.isfinite(est.bic(x, y))


def test_chunking_invariance(client):
    X, y = two_targets(1200)
    model = MixtureOfExpertsModel(3, n_targets=2)
    A = np.hstack([X, y])
    start = model.init_params(A, np.random.default_rng(0))
    results = [dask_em.fit_em(model, da.from_array(A, chunks=(r, -1)), start, max_iter=4, tol=0.0, client=client,
                              warn_not_converged=False) for r in (1200, 97)]
    for name in ("weights", "means", "covariances", "coef", "intercept", "noise_variance"):
        np.testing.assert_allclose(getattr(results[1].params, name), getattr(results[0].params, name),
                                   rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(results[1].history, results[0].history, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")
def test_out_of_core_zarr_group_and_target_columns(client, tmp_path):
    x, y = piecewise(3000)
    path = str(tmp_path / "xy.zarr")
    root = zarr.open_group(path, mode="w")
    root.create_array("X", shape=x.shape, chunks=(500, 1), dtype="f8")[...] = x
    root.create_array("y", shape=y.shape, chunks=(700,), dtype="f8")[...] = y
    kwargs = dict(max_iter=3, tol=0.0, random_state=0)
    from_store = dask_em.MixtureOfExperts(2, **kwargs).fit(path, client=client)
    # the same data in one array whose first column is the target
    joined = str(tmp_path / "joined.zarr")
    zarr.create_array(joined, shape=(3000, 2), chunks=(500, 2), dtype="f8")[...] = np.hstack([y[:, None], x])
    from_columns = dask_em.MixtureOfExperts(2, **kwargs).fit(joined, target_columns=[0], client=client)
    in_memory = dask_em.MixtureOfExperts(2, **kwargs).fit(da.from_array(x, chunks=(500, 1)), y, client=client)
    for other in (from_columns, in_memory):
        np.testing.assert_allclose(other.coef_, from_store.coef_, rtol=1e-10)
        np.testing.assert_allclose(other.lower_bounds_, from_store.lower_bounds_, rtol=1e-12)
    # streamed from the store every iteration (never persisted), from the estimator's own start
    from dask_em.data import array_blocks
    from dask_em.estimators._base import run_rngs
    from dask_em.estimators.experts import xy_array

    joined_xy, n_targets = xy_array(path)
    blocks = array_blocks(joined_xy, client, persist=False)
    assert n_targets == 1 and blocks.array is joined_xy  # not persisted: read from Zarr in every pass
    model, rng = MixtureOfExpertsModel(2, n_targets=1), run_rngs(0, 1)[0]
    streamed = dask_em.fit_em(model, blocks, lambda: model.init_params(blocks.sample(10_000, rng), rng),
                              max_iter=3, tol=0.0, client=client, warn_not_converged=False)
    np.testing.assert_array_equal(streamed.params.coef, from_store.coef_)
    lazy = from_store.predict(da.from_zarr(path, component="X"))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), from_store.predict(x))


def test_latent_class_regression_recovers_crossing_lines(client):
    """Two lines that cross: constant gates, as flexmix's classic example."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 10, 3000)
    which = rng.random(3000) < 0.3
    y = np.where(which, 5 + 2 * x, 20 - x) + rng.normal(size=3000)
    est = dask_em.MixtureOfLinearRegressions(2, max_iter=200, tol=1e-6, n_init=2, random_state=0)
    est.fit(x[:, None], y, client=client)
    order = np.argsort(est.coef_[:, 0, 0])
    np.testing.assert_allclose(est.coef_[order, 0, 0], [-1, 2], atol=0.05)
    np.testing.assert_allclose(est.intercept_[order, 0], [20, 5], atol=0.3)
    np.testing.assert_allclose(est.weights_[order], [0.7, 0.3], atol=0.03)
    np.testing.assert_allclose(est.noise_variance_[:, 0], 1.0, rtol=0.15)
    assert est.covariances_.shape == (0,)
    post = est.predict_proba(x[:, None], y)
    agree = (post[:, order[1]] > 0.5) == which
    assert agree.mean() > 0.9
    np.testing.assert_allclose(est.predict_proba(x[:5, None]), np.tile(est.weights_, (5, 1)))


def test_save_load_round_trip(client, tmp_path):
    x, y = piecewise(1000)
    est = dask_em.MixtureOfExperts(2, covariance_type="diag", max_iter=20, random_state=0).fit(x, y, client=client)
    dask_em.save(est, tmp_path / "moe.zarr")
    back = dask_em.load(tmp_path / "moe.zarr")
    assert type(back) is dask_em.MixtureOfExperts and back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.predict(x), est.predict(x))
    np.testing.assert_array_equal(back.predict_proba(x), est.predict_proba(x))
    lcr = dask_em.MixtureOfLinearRegressions(2, max_iter=5, random_state=0).fit(x, y, client=client)
    dask_em.save(lcr, tmp_path / "lcr.zarr")
    np.testing.assert_array_equal(dask_em.load(tmp_path / "lcr.zarr").predict(x), lcr.predict(x))


def test_bad_input_errors(client):
    x, y = piecewise(200)
    est = dask_em.MixtureOfExperts(2, max_iter=3)
    with pytest.raises(InvalidDataError, match="targets y must be numeric, got dtype <U"):
        est.fit(x, np.array(["a"] * 200), client=client)
    with pytest.raises(InvalidDataError, match="X has 200 rows but y has 199"):
        est.fit(x, y[:199], client=client)
    with pytest.raises(InvalidDataError, match="X has 200 rows but y has 199"):
        est.fit(da.from_array(x, chunks=50), da.from_array(y[:199], chunks=50), client=client)
    with pytest.raises(InvalidDataError, match="no targets"):
        est.fit(x, client=client)
    bad = y.copy()
    bad[[3, 7]] = np.nan
    with pytest.raises(InvalidDataError, match="contain 2 NaN or infinite values"):
        est.fit(x, bad, client=client)
    with pytest.raises(InvalidDataError, match="target column 5 is out of range"):
        est.fit(np.hstack([x, y[:, None]]), target_columns=[5], client=client)
    with pytest.raises(ValueError, match="init_params must be one of"):
        dask_em.MixtureOfExperts(2, init_params="nope").fit(x, y, client=client)


# -- command line and report ------------------------------------------------------------


def call(*args: str) -> tuple[int, str, str]:
    """``dask-em ARGS`` in this process."""
    import contextlib
    import io

    from dask_em.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_fit_targets_report_and_bad_input(client, tmp_path):
    import json

    import pandas as pd

    x, y = piecewise(1500)
    frame = pd.DataFrame({"y": y, "x": x[:, 0], "label": np.where(x[:, 0] < 0, "left", "right")})
    csv = str(tmp_path / "data.csv")
    frame.to_csv(csv, index=False)
    model = str(tmp_path / "moe.zarr")
    code, out, err = call("fit", "experts", csv, "--targets", "y", "-k", "2", "--max-iter", "30",
                          "--random-state", "0", "-o", model, "--json", "--quiet")
    assert code == 0, err
    fitted = json.loads(out)["fitted"]
    assert np.shape(fitted["coef_"]) == (2, 1, 1)
    assert sorted(np.round(np.ravel(fitted["coef_"]), 1)) == [-1.0, 2.0]
    # a Zarr group with arrays X and y needs no --targets; the report reads it the same way
    group = str(tmp_path / "xy.zarr")
    root = zarr.open_group(group, mode="w")
    root.create_array("X", shape=x.shape, chunks=(500, 1), dtype="f8")[...] = x
    root.create_array("y", shape=y.shape, chunks=(500,), dtype="f8")[...] = y
    code, out, err = call("fit", "linear-regressions", group, "-k", "2", "--max-iter", "5",
                          "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["model"] == "MixtureOfLinearRegressions"
    report = str(tmp_path / "report.html")
    code, out, err = call("report", model, "--data", group, "--output", report, "--sample-size", "500",
                          "--json", "--quiet")
    assert code == 0, err
    images = json.loads(out)["images"]
    assert [os.path.basename(p) for p in images] == ["report-convergence.png", "report-experts.png"]
    assert all(os.path.getsize(p) > 1000 for p in images)
    # a checkpointed fit resumes with the targets it recorded
    ckpt = str(tmp_path / "ckpt.zarr")
    code, out, err = call("fit", "experts", csv, "--targets", "y", "-k", "2", "--max-iter", "2", "--tol", "0",
                          "--random-state", "0", "--checkpoint", ckpt, "--quiet")
    assert code == 0, err
    code, out, err = call("resume", ckpt, "--max-iter", "4", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["fitted"]["n_iter_"] == 4
    # bad input: exit 2 with the reason on standard error
    code, _, err = call("fit", "experts", csv, "--targets", "label", "-k", "2", "--quiet")
    assert code == 2 and "not numeric input columns" in err
    code, _, err = call("fit", "experts", csv, "-k", "2", "--quiet")
    assert code == 2 and "no targets" in err
    frame.loc[7, "y"] = np.nan
    frame.to_csv(csv, index=False)
    code, _, err = call("fit", "experts", csv, "--targets", "0", "-k", "2", "--quiet")
    assert code == 2 and "1 NaN or infinite value" in err
    root["y"].resize((1499,))
    code, _, err = call("fit", "experts", group, "-k", "2", "--quiet")
    assert code == 2 and "X has 1500 rows but y has 1499" in err


def test_accelerated_em_round_trip_keeps_valid_parameters():
    """The constraints declared for SQUAREM map parameters to a vector and back unchanged."""
    from dask_em.accelerate import constraints_of, from_vector, to_vector

    x, y = piecewise(500)
    A = np.hstack([x, y[:, None]])
    for gating, cov in (("gaussian", "full"), ("gaussian", "diag"), ("constant", "full")):
        model = MixtureOfExpertsModel(2, gating=gating, covariance_type=cov)
        params = model.init_params(A, np.random.default_rng(0))
        kinds = constraints_of(model, params)
        assert kinds["weights"] == "simplex" and kinds["noise_variance"] == "positive"
        back = from_vector(model, to_vector(model, params), params)
        for name in ("weights", "means", "covariances", "precisions_cholesky", "coef", "intercept", "noise_variance"):
            np.testing.assert_allclose(getattr(back, name), getattr(params, name), rtol=1e-12, atol=1e-14)


def test_per_row_outputs_are_numpy_for_numpy_input(client):
    x, y = piecewise(300)
    est = dask_em.MixtureOfLinearRegressions(2, max_iter=5, random_state=0).fit(x, y, client=client)
    for value in (est.predict(x), est.predict_proba(x), est.predict_proba(x, y), est.score_samples(x, y)):
        assert isinstance(value, np.ndarray)
    lazy = est.score_samples(da.from_array(x, chunks=100), da.from_array(y, chunks=100))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), est.score_samples(x, y))
    # without y: inputs then targets in one table, or a clear error
    np.testing.assert_array_equal(est.score_samples(np.hstack([x, y[:, None]])), est.score_samples(x, y))
    with pytest.raises(InvalidDataError, match="needs the targets: give y, or rows of 1 inputs followed by 1"):
        est.score(x)


# -- scikit-learn's regressor API ------------------------------------------------------------


def test_regressor_score_is_r2_in_memory_and_out_of_core():
    """``score`` is R^2 as scikit-learn's regressors define it, also reduced lazily for Dask input (in this process)."""
    from sklearn.base import is_regressor
    from sklearn.metrics import r2_score

    x, y = piecewise(400)
    est = dask_em.MixtureOfExperts(2, max_iter=10, random_state=0).fit(x, y)
    assert is_regressor(est)
    expected = r2_score(y, est.predict(x))
    assert est.score(x, y) == pytest.approx(expected, rel=1e-12)
    assert est.score(np.hstack([x, y[:, None]])) == pytest.approx(expected, rel=1e-12)  # inputs then targets
    w = np.random.default_rng(1).uniform(size=len(x))
    lazy = est.score(da.from_array(x, chunks=150), da.from_array(y, chunks=150), sample_weight=w)
    assert lazy == pytest.approx(r2_score(y, est.predict(x), sample_weight=w), rel=1e-10)
    X2, Y2 = two_targets(400)
    two = dask_em.MixtureOfLinearRegressions(2, max_iter=5, random_state=0).fit(X2, Y2)
    assert two.predict(X2).shape == (400, 2)
    assert two.score(da.from_array(X2, chunks=150), Y2) == pytest.approx(r2_score(Y2, two.predict(X2)), rel=1e-10)
    with pytest.raises(InvalidDataError, match="requires y to be passed, but the target y is None"):
        dask_em.MixtureOfExperts(2).fit(x, None)


@pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")  # 5 iterations suffice here
def test_per_row_outputs_do_not_depend_on_row_order_or_batches():
    """scikit-learn's sample-order and subset invariance checks, with the targets ``score_samples`` needs.

    The checks themselves call ``score_samples(X)`` without targets (see
    ``tests/peer/peer_skips.py``), so they are repeated here with them.
    """
    x, y = piecewise(300)
    order = np.random.default_rng(0).permutation(len(x))
    batches = np.array_split(np.arange(len(x)), 7)
    for cls in (dask_em.MixtureOfExperts, dask_em.MixtureOfLinearRegressions):
        est = cls(2, max_iter=5, random_state=0).fit(x, y)
        outputs = {
            "predict": lambda a, b: est.predict(a),
            "predict_proba": lambda a, b: est.predict_proba(a),
            "posterior": lambda a, b: est.predict_proba(a, b),
            "score_samples": lambda a, b: est.score_samples(a, b),
        }
        for name, output in outputs.items():
            full = output(x, y)
            np.testing.assert_allclose(output(x[order], y[order]), full[order], rtol=1e-7, atol=1e-9, err_msg=name)
            by_batch = np.concatenate([output(x[rows], y[rows]) for rows in batches])
            np.testing.assert_allclose(by_batch, full, rtol=1e-7, atol=1e-9, err_msg=name)


@pytest.mark.filterwarnings("ignore::dask_em.errors.ConvergenceWarning")
def test_fitted_on_a_dataframe_saves_and_loads_its_column_names(tmp_path):
    """scikit-learn's ``feature_names_in_`` (an object array of str) survives ``save``/``load``."""
    import pandas as pd

    x, y = piecewise(200)
    frame = pd.DataFrame({"x": x[:, 0], "other": np.cos(x[:, 0])})
    est = dask_em.MixtureOfExperts(2, max_iter=5, random_state=0).fit(frame, pd.Series(y, name="y"))
    dask_em.save(est, tmp_path / "moe.zarr")
    back = dask_em.load(tmp_path / "moe.zarr")
    assert back.feature_names_in_.dtype == object and list(back.feature_names_in_) == ["x", "other"]
    np.testing.assert_array_equal(back.predict(frame), est.predict(frame))
