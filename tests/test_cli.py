"""The ``dask-em`` command, end to end through real subprocesses.

Fits run on the session's LocalCluster (``--scheduler``), so no subprocess
starts a cluster of its own except the one ``demo`` without it would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from dask_em.datasets import make_blobs, make_blobs_zarr

SUBCOMMANDS = ["demo", "fit", "resume", "predict", "score", "info", "select", "report"]
needs_io = pytest.mark.skipif(importlib.util.find_spec("dask_em.storage.io") is None, reason="dask_em.storage.io not available")


def run(*args: str, check: int | None = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m dask_em.cli ARGS``; assert the exit code when ``check`` is not None."""
    proc = subprocess.run(
        [sys.executable, "-m", "dask_em.cli", *args],
        capture_output=True, text=True, timeout=240, env={**os.environ, **(env or {})},
    )
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """A small 3-component dataset in Zarr (several chunks) and as .npy and CSV."""
    root = tmp_path_factory.mktemp("cli")
    path = str(root / "blobs.zarr")
    truth = make_blobs_zarr(path, 6_000, 2, 3, chunk_rows=1_500, random_state=0, separation=5.0)
    X, _, _ = make_blobs(6_000, 2, 3, chunk_rows=1_500, random_state=0, separation=5.0)
    np.save(root / "blobs.npy", X)
    np.savetxt(root / "blobs.csv", X, delimiter=",", header="a,b", comments="", fmt="%.17g")
    return {"root": root, "zarr": path, "npy": str(root / "blobs.npy"), "csv": str(root / "blobs.csv"),
            "truth": truth, "X": X}


def call(*args: str) -> tuple[int, str, str]:
    """Run ``main(ARGS)`` in this process (for checks that need no subprocess of their own)."""
    import contextlib
    import io

    from dask_em.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own exits (usage errors, --help)
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


HELP_SCRIPT = """
import contextlib, io, json, sys
from dask_em.cli import main
result = {}
for command in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([command, "--help"])
        except SystemExit as exc:
            result[command] = [exc.code, out.getvalue()]
print(json.dumps(result))
"""


def test_help_shows_an_example():
    proc = run("--help")
    assert "usage: dask-em" in proc.stdout and "examples:" in proc.stdout and "exit codes" in proc.stdout
    # Every subcommand's help, from one more process.
    helper = subprocess.run([sys.executable, "-c", HELP_SCRIPT, *SUBCOMMANDS], capture_output=True, text=True,
                            timeout=120, check=True)
    for command, (code, text) in json.loads(helper.stdout).items():
        assert code == 0 and text.startswith(f"usage: dask-em {command}")
        assert f"dask-em {command}" in text.split("example:", 1)[1], command


def test_bad_arguments_exit_2_with_a_clear_message():
    proc = run("fit", "gmm", "x.zarr", "--covariance-type", "banana", check=2)
    assert "invalid choice: 'banana'" in proc.stderr and "Traceback" not in proc.stderr
    for args, message in [
        ([], "required: COMMAND"),
        (["fit"], "required: model, input"),
        (["fit", "gmm", "x.zarr", "--max-iter", "ten"], "invalid int value: 'ten'"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["predict", "model.zarr", "x.zarr"], "required: -o/--output"),
    ]:
        code, _, err = call(*args)
        assert code == 2 and message in err, (args, err)


def test_missing_input_file_exits_2(tmp_path):
    missing = str(tmp_path / "nowhere.zarr")
    proc = run("fit", "gmm", missing, "-k", "2", check=2)
    assert proc.stderr == f"dask-em fit: error: input {missing!r} does not exist\n"
    for args in (["score", missing, missing], ["info", missing], ["select", missing],
                 ["fit", "kmeans", str(tmp_path / "x*.csv"), "-k", "2"]):
        code, _, err = call(*args)
        assert code == 2 and ("does not exist" in err or "no file matches" in err), err
        assert err.count("\n") == 1


def test_usage_errors_found_before_any_fit(blobs):
    proc = run("fit", "gmm", blobs["zarr"], check=2)
    assert "needs --n-components" in proc.stderr
    for args, message in [
        (["fit", "kmeans", blobs["zarr"], "-k", "2", "--covariance-type", "diag"],
         "KMeans does not take --covariance-type"),
        (["fit", "gmm", blobs["zarr"], "-k", "2", "--param", "colour=3"], "has no parameter 'colour'"),
        (["fit", "banana", blobs["zarr"], "-k", "2"], "unknown model 'banana'"),
        (["select", blobs["zarr"], "-k", "0-3"], "positive integers"),
    ]:
        code, _, err = call(*args)
        assert code == 2 and message in err, (args, err)


def test_bad_data_exits_2(blobs, cluster, tmp_path):
    bad = blobs["X"][:200].copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    proc = run("fit", "gmm", str(tmp_path / "nan.npy"), "-k", "2", "--scheduler", cluster.scheduler_address,
               "--quiet", check=2)
    assert "1 NaN or infinite value" in proc.stderr and "Traceback" not in proc.stderr
    np.save(tmp_path / "flat.npy", np.zeros(10))
    code, _, err = call("fit", "gmm", str(tmp_path / "flat.npy"), "-k", "2")
    assert code == 2 and "expected (n_samples, n_features)" in err
    code, out, _ = call("info", str(tmp_path / "flat.npy"), "--json")
    assert code == 0 and json.loads(out)["shape"] == [10]


def test_fit_gmm_from_zarr_npy_and_csv_json(blobs, cluster):
    common = ["-k", "3", "--random-state", "0", "--tol", "1e-6", "--scheduler", cluster.scheduler_address, "--json"]
    proc = run("fit", "gmm", blobs["zarr"], *common)
    assert "dashboard" in proc.stderr and "iter" in proc.stderr  # progress lines on stderr
    results = {"zarr": json.loads(proc.stdout)}
    for kind in ("npy", "csv"):
        code, out, _ = call("fit", "gmm", blobs[kind], *common, "--quiet")
        assert code == 0
        results[kind] = json.loads(out)
    fitted = results["zarr"]["fitted"]
    assert results["zarr"]["model"] == "GaussianMixture" and fitted["converged_"]
    means = np.array(fitted["means_"])
    truth = blobs["truth"]["means"]
    assert np.abs(np.sort(means, axis=0) - np.sort(truth, axis=0)).max() < 0.2
    for kind in ("npy", "csv"):
        np.testing.assert_allclose(np.sort(np.array(results[kind]["fitted"]["means_"]), axis=0),
                                   np.sort(means, axis=0), rtol=1e-6)


def test_fit_kmeans_text_output(blobs, cluster):
    code, out, _ = call("fit", "kmeans", blobs["npy"], "-k", "3", "--random-state", "1",
                        "--scheduler", cluster.scheduler_address, "--quiet")
    assert code == 0 and out.startswith("KMeans:") and "cluster_centers_" in out and "inertia_" in out


@needs_io
def test_fit_save_info_predict_score(blobs, cluster, tmp_path):
    model = str(tmp_path / "model.zarr")
    addr = ["--scheduler", cluster.scheduler_address]
    run("fit", "gmm", blobs["zarr"], "-k", "3", "--random-state", "0", "--output", model, "--quiet", *addr)
    code, _, err = call("fit", "gmm", blobs["zarr"], "-k", "3", "--output", model, *addr)
    assert code == 2 and "already exists" in err
    code, out, _ = call("info", model, "--json")
    assert code == 0 and "GaussianMixture" in out
    labels = str(tmp_path / "labels.zarr")
    out = json.loads(run("predict", model, blobs["zarr"], "--output", labels, "--json", *addr).stdout)
    stored = zarr.open_array(labels, mode="r")
    assert out["shape"] == [6_000] and stored.shape == (6_000,)
    true_labels = zarr.open_group(blobs["zarr"], mode="r")["labels"][...]
    # The same partition as the truth up to a renaming of the components.
    table = np.zeros((3, 3))
    np.add.at(table, (stored[...], true_labels), 1)
    assert table.max(axis=1).sum() / table.sum() > 0.97
    code, out, _ = call("score", model, blobs["npy"], "--json", *addr)
    score = json.loads(out)["score"]
    assert code == 0 and np.isfinite(score) and score < 0


@needs_io
def test_fit_with_checkpoint_then_resume(blobs, cluster, tmp_path):
    ckpt = str(tmp_path / "ckpt.zarr")
    addr = ["--scheduler", cluster.scheduler_address]
    first = json.loads(run("fit", "gmm", blobs["zarr"], "-k", "3", "--random-state", "0", "--max-iter", "2",
                           "--tol", "0", "--checkpoint", ckpt, "--json", "--quiet", *addr).stdout)
    assert first["fitted"]["n_iter_"] == 2
    # The checkpoint records the input of 'dask-em fit', so resume needs only the checkpoint.
    second = json.loads(run("resume", ckpt, "--max-iter", "4", "--json", "--quiet", *addr).stdout)
    assert second["fitted"]["n_iter_"] == 4
    third = json.loads(run("resume", ckpt, blobs["zarr"], "--max-iter", "5", "--json", "--quiet", *addr).stdout)
    assert third["fitted"]["n_iter_"] == 5
    code, _, err = call("resume", blobs["zarr"], blobs["zarr"])
    assert code == 2 and "is not a dask-em checkpoint" in err


def test_select_picks_the_true_mixture(blobs, cluster):
    proc = run("select", blobs["zarr"], "-k", "1-4", "--covariance-type", "full,spherical", "--random-state", "0",
               "--scheduler", cluster.scheduler_address, "--json", "--quiet")
    result = json.loads(proc.stdout)
    assert result["best"]["n_components"] == 3 and result["best"]["covariance_type"] == "full"
    assert len(result["table"]) == 8
    code, out, _ = call("select", blobs["zarr"], "-k", "2,3", "--covariance-type", "full", "--random-state", "0",
                        "--scheduler", cluster.scheduler_address, "--quiet")
    assert code == 0 and "BIC" in out and "top models" in out


def test_demo_small_on_the_session_cluster(cluster, tmp_path):
    proc = run("demo", "--n-samples", "20000", "--n-features", "3", "--n-components", "3",
               "--chunk-rows", "5000", "--scheduler", cluster.scheduler_address, "--json")
    result = json.loads(proc.stdout)
    assert result["n_samples"] == 20_000 and result["converged"]
    assert result["max_mean_error"] < 0.2 and result["max_weight_error"] < 0.02
    assert "wrote 20,000 x 3" in proc.stderr and "dashboard" in proc.stderr
    code, out, err = call("demo", "--n-samples", "20000", "--n-features", "3", "--n-components", "3", "--quiet",
                          "--scheduler", cluster.scheduler_address)
    assert code == 0 and "component" in out and "true" in out and err == ""


def test_predict_hmm_states_of_a_sequence_store(client, cluster, tmp_path):
    import dask_em

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(150, 3)) + (i % 2) * 4 for i in range(8)])
    store, model_path = str(tmp_path / "seq.zarr"), str(tmp_path / "hmm.zarr")
    dask_em.to_zarr_sequences(X, store, lengths=[150] * 8)
    hmm = dask_em.GaussianHMM(2, covariance_type="diag", random_state=0, max_iter=5).fit(store, client=client)
    dask_em.save(hmm, model_path)
    out = str(tmp_path / "states.zarr")
    result = json.loads(run("predict", model_path, store, "--output", out, "--json",
                            "--scheduler", cluster.scheduler_address).stdout)
    assert result["shape"] == [1200]
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], hmm.predict(X, [150] * 8))
