"""DiscreteBayesianNetwork: parity with pgmpy's EM, exact inference with missing values, contract, I/O."""

from __future__ import annotations

import itertools
import logging
import warnings

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from dask_em import DiscreteBayesianNetwork
from dask_em.errors import InvalidDataError
from dask_em.models.bayesnet import BayesianNetworkModel

# L is latent; A..D are observed (C has two parents, one observed).
EDGES = [("L", "A"), ("L", "B"), ("A", "C"), ("L", "C"), ("L", "D")]
CARDS = {"L": 2, "A": 3, "B": 2, "C": 2, "D": 2}
OBSERVED = ["A", "B", "C", "D"]


def _model(**kw) -> BayesianNetworkModel:
    est = DiscreteBayesianNetwork(EDGES, latent={"L": 2}, cardinality={k: CARDS[k] for k in OBSERVED}, **kw)
    return est._model(OBSERVED)


def _simulate(n, seed=0, truth_seed=5, missing=0.0):
    model = _model()
    truth = model.init_params(None, np.random.default_rng(truth_seed))
    rng = np.random.default_rng(seed)
    codes = model.sample(n, truth, rng)[:, 1:].astype(float)
    codes[rng.random(codes.shape) < missing] = np.nan
    return model, truth, pd.DataFrame(codes, columns=OBSERVED)


def _init_cpds(model, seed=1):
    params = model.init_params(None, np.random.default_rng(seed))
    return {name: t.reshape(t.shape[0], -1) for name, t in zip(model.variables, model.split(params.values))}


def _pgmpy_em(df, init_cpds, max_iter, latent_card):
    """pgmpy's EM from the same initial CPDs; returns {variable: (values, variables of its axes)}."""
    import pgmpy
    from pgmpy.estimators import ExpectationMaximization
    from pgmpy.factors.discrete import TabularCPD
    from pgmpy.models import DiscreteBayesianNetwork as PgmpyNetwork

    pgmpy.config.SHOW_PROGRESS = False
    logging.getLogger("pgmpy").setLevel(logging.ERROR)
    network = PgmpyNetwork(EDGES, latents=set(latent_card))
    parents = {v: [p for p, c in EDGES if c == v] for v in CARDS}
    cpds = {
        v: TabularCPD(v, CARDS[v], init_cpds[v], evidence=parents[v] or None,
                      evidence_card=[CARDS[p] for p in parents[v]] or None)
        for v in CARDS
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # atol=-1: never stop early, so that exactly max_iter iterations run
        result = ExpectationMaximization(network, df).get_parameters(
            latent_card=latent_card, max_iter=max_iter, init_cpds=cpds, atol=-1.0, show_progress=False)
    return {c.variable: (c.values, list(c.variables)) for c in result}


def _max_difference(ours, theirs):
    worst = 0.0
    for name, (values, axes) in theirs.items():
        order = [name, *ours.parents_[name]]
        table = np.transpose(values, [axes.index(v) for v in order])
        worst = max(worst, float(np.abs(table.reshape(table.shape[0], -1) - ours.cpds_[name]).max()))
    return worst


def _layout(theirs, parents):
    """pgmpy's CPDs as tables in our layout (parents in the order of ``parents``)."""
    out = {}
    for name, (values, axes) in theirs.items():
        table = np.transpose(values, [axes.index(v) for v in [name, *parents[name]]])
        out[name] = table.reshape(table.shape[0], -1)
    return out


def test_parity_with_pgmpy_after_1_5_20_iterations(client):
    model, _, df = _simulate(300)
    init = _init_cpds(model)
    parents = {v: [p for p, c in EDGES if c == v] for v in CARDS}
    start, done = init, 0
    for n_iter in (1, 5, 20):
        # pgmpy continued from its own last CPDs: 20 of its (slow) iterations in all, not 26
        theirs = _pgmpy_em(df, start, n_iter - done, {"L": 2})
        start, done = _layout(theirs, parents), n_iter
        ours = DiscreteBayesianNetwork(EDGES, latent={"L": 2}, cpds_init=init, max_iter=n_iter, tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours.fit(df, client=client)
        assert ours.n_iter_ == n_iter
        assert _max_difference(ours, theirs) < 1e-8


def test_missing_values_parity_with_pgmpy(client):
    """pgmpy drops rows with a missing value and treats an all-missing column as latent: compare both."""
    model, _, df = _simulate(300, missing=0.1)
    df["D"] = np.nan  # all missing: latent for pgmpy, missing in every row for us
    init = _init_cpds(model)
    theirs = _pgmpy_em(df, init, 5, {"L": 2, "D": 2})
    complete = df.dropna(subset=["A", "B", "C"])
    ours = DiscreteBayesianNetwork(EDGES, latent={"L": 2}, cardinality={"D": 2}, cpds_init=init, max_iter=5, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(complete, client=client)
    assert _max_difference(ours, theirs) < 1e-8


def _enumeration_em_step(model, tables, X):
    """One EM step by brute force over the full joint table (an independent reference)."""
    n_vars = len(model.variables)
    joint = np.ones(model.cardinalities)
    for v, table in enumerate(tables):
        axes = [v, *model.parents[v]]
        shape = [model.cardinalities[i] if i in axes else 1 for i in range(n_vars)]
        joint = joint * np.transpose(table, np.argsort(axes)).reshape(shape)
    counts = [np.zeros_like(t) for t in tables]
    loglik = 0.0
    for row in X:
        mask = np.ones_like(joint)
        for c, v in enumerate(model.columns):
            if not np.isnan(row[c]):
                keep = np.zeros(model.cardinalities[v])
                keep[int(row[c])] = 1.0
                shape = [model.cardinalities[v] if i == v else 1 for i in range(n_vars)]
                mask = mask * keep.reshape(shape)
        posterior = joint * mask
        loglik += np.log(posterior.sum())
        posterior /= posterior.sum()
        for v in range(n_vars):
            axes = [v, *model.parents[v]]
            others = tuple(i for i in range(n_vars) if i not in axes)
            marginal = posterior.sum(axis=others)  # axes in increasing order
            counts[v] += np.transpose(marginal, np.argsort(np.argsort(axes)))
    new = [c / c.sum(axis=0, keepdims=True) for c in counts]
    return new, loglik


def test_missing_values_match_joint_enumeration():
    model, _, df = _simulate(200, missing=0.3)
    params = model.init_params(None, np.random.default_rng(3))
    X = df.to_numpy()
    stats = model.e_step(X, params)
    expected, loglik = _enumeration_em_step(model, model.split(params.values), X)
    new = model.split(model.m_step(stats, params).values)
    for a, b in zip(new, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert float(stats["loglik"]) == pytest.approx(loglik, rel=1e-12)


def test_recovers_a_simulated_network():
    """EM from random CPDs finds the simulating ones (the model's own loop: 100+ iterations, no cluster)."""
    model, truth, df = _simulate(40_000, seed=2, missing=0.05)
    X = df.to_numpy()
    params = model.init_params(None, np.random.default_rng(0))
    previous = -np.inf
    for _ in range(500):
        stats = model.e_step(X, params)
        params = model.m_step(stats, params)
        assert float(stats["loglik"]) >= previous - 1e-9 * abs(previous)
        if float(stats["loglik"]) - previous < 1e-9 * len(X):
            break
        previous = float(stats["loglik"])
    fitted = {name: t.reshape(t.shape[0], -1) for name, t in zip(model.variables, model.split(params.values))}
    true = {name: t.reshape(t.shape[0], -1) for name, t in zip(model.variables, model.split(truth.values))}
    # the latent labels may come out swapped: compare under the better of the two labellings
    errors = []
    for perm in ([0, 1], [1, 0]):
        err = abs(fitted["L"][perm, 0] - true["L"][:, 0]).max()
        for name in ("A", "B", "D"):
            err = max(err, abs(fitted[name][:, perm] - true[name]).max())
        fitted_c = fitted["C"].reshape(2, 3, 2)[:, :, perm].reshape(2, 6)
        errors.append(max(err, abs(fitted_c - true["C"]).max()))
    assert min(errors) < 0.03, errors


def test_outputs_zarr_missing_code_and_save_load(client, tmp_path):
    import zarr

    import dask_em

    model, _, df = _simulate(3000, missing=0.1)
    X = df.to_numpy()
    coded = np.where(np.isnan(X), -1, X).astype(np.int16)
    store = str(tmp_path / "codes.zarr")
    zarr.create_array(store, shape=coded.shape, chunks=(1000, 4), dtype=coded.dtype)[...] = coded
    init = _init_cpds(model)
    kwargs = dict(latent={"L": 2}, cpds_init=init, max_iter=10, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = DiscreteBayesianNetwork(EDGES, **kwargs).fit(df, client=client)
        b = DiscreteBayesianNetwork(EDGES, missing_code=-1, **kwargs).fit(store, columns=OBSERVED, client=client)
    for name in CARDS:
        np.testing.assert_allclose(a.cpds_[name], b.cpds_[name], rtol=1e-12)
    assert b.parents_["C"] == ["A", "L"] and b.cpds_["C"].shape == (2, 6)

    proba = b.predict_proba(store, "L")
    assert isinstance(proba, da.Array)  # lazy
    proba = proba.compute()
    np.testing.assert_allclose(proba, a.predict_proba(df, "L"), rtol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # an observed variable: one-hot where observed
    pa = a.predict_proba(df, "A")
    seen = ~np.isnan(X[:, 0])
    assert np.array_equal(pa[seen].argmax(axis=1), X[seen, 0].astype(int))
    assert a.score(df) == pytest.approx(a.lower_bounds_[-1], abs=0.05)
    assert a.bic(df) == pytest.approx(-2 * a.score_samples(df).sum() + 15 * np.log(3000))
    sample = a.sample(500, random_state=0)
    assert list(sample.columns) == list(CARDS) and sample["A"].max() <= 2

    path = str(tmp_path / "model.zarr")
    dask_em.save(a, path)
    loaded = dask_em.load(path)
    assert loaded.parents_ == a.parents_
    for name in CARDS:
        assert np.array_equal(loaded.cpds_[name], a.cpds_[name])
    np.testing.assert_array_equal(loaded.score_samples(df), a.score_samples(df))


def test_bad_input_is_a_clear_error(client):
    _, _, df = _simulate(200)
    with pytest.raises(ValueError, match="cycle A -> C -> A"):
        DiscreteBayesianNetwork([("A", "C"), ("C", "A")]).fit(df[["A", "C"]], client=client)
    with pytest.raises(InvalidDataError, match=r"latent variables \['L'\] are present"):
        DiscreteBayesianNetwork(EDGES, latent={"L": 2}).fit(df.assign(L=0), client=client)
    with pytest.raises(InvalidDataError, match="not states of their variable"):
        DiscreteBayesianNetwork(EDGES, latent={"L": 2}, cardinality={"A": 2}).fit(df, client=client)
    with pytest.raises(InvalidDataError, match="not states of their variable"):
        DiscreteBayesianNetwork(EDGES, latent={"L": 2}).fit(df.replace({1.0: 0.5}), client=client)
    with pytest.raises(InvalidDataError, match="neither in the data"):
        DiscreteBayesianNetwork(EDGES, latent={"L": 2}).fit(df[["A", "B", "C"]], client=client)


def test_command_line_fit_report_and_bad_input(client, tmp_path):
    from tests.test_cli import call

    _, _, df = _simulate(2000, missing=0.05)
    csv = str(tmp_path / "net.csv")
    df[["D", "C", "B", "A"]].to_csv(csv, index=False)
    edges = '[["L","A"],["L","B"],["A","C"],["L","C"],["L","D"]]'
    scheduler = client.scheduler.address
    out = str(tmp_path / "net.zarr")
    code, stdout, stderr = call("fit", "bayesnet", csv, "--columns", "A,B,C,D", "--param", f"edges={edges}",
                                "--param", 'latent={"L": 2}', "--max-iter", "5", "--random-state", "0",
                                "--scheduler", scheduler, "-o", out, "-q")
    assert code == 0, stderr
    # a checkpointed fit resumes from the command line with the recorded input and columns
    checkpoint = str(tmp_path / "net-ck.zarr")
    code, _, stderr = call("fit", "bayesnet", csv, "--columns", "A,B,C,D", "--param", f"edges={edges}",
                           "--param", 'latent={"L": 2}', "--max-iter", "2", "--random-state", "0",
                           "--checkpoint", checkpoint, "--scheduler", scheduler, "-q")
    assert code == 0, stderr
    code, _, stderr = call("resume", checkpoint, "--max-iter", "4", "--scheduler", scheduler, "-q", "--json")
    assert code == 0, stderr
    code, _, stderr = call("report", out, "-o", str(tmp_path / "report.html"))
    assert code == 0, stderr
    page = (tmp_path / "report.html").read_text()
    assert "Conditional probability tables" in page and "P(C | A, L)" in page and "A=2, L=1" in page

    cycle = '[["A","B"],["B","C"],["C","A"]]'
    for args in (
        ["--param", f"edges={cycle}"],  # a cycle
        ["--param", f"edges={edges}", "--param", 'latent={"L": 2, "D": 2}'],  # a latent variable in the data
        ["--param", f"edges={edges}", "--param", 'latent={"L": 2}', "--param", 'cardinality={"A": 2}'],  # range
    ):
        code, _, stderr = call("fit", "bayesnet", csv, "--columns", "A,B,C,D", *args, "--scheduler", scheduler, "-q")
        assert code == 2, stderr
        assert "error:" in stderr


def test_enumerated_patterns_cover_every_row():
    model = _model()
    rows = np.array(list(itertools.product(range(3), range(2), range(2), range(3))), dtype=float)
    patterns, counts, inverse = model._patterns(model._codes(rows)[0], inverse=True)
    assert counts.sum() == len(rows) and np.array_equal(patterns[inverse], rows.astype(int))
