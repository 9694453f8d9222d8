"""What careless or unlucky input must not do (issue 13): silent zeros, Python internals, slow failures.

Missing Zarr chunks, relative paths seen from workers in another
directory, bad command-line values and bad hyper-parameters must each end
in one clear line (exit code 2 on the command line) before any pass.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from dask_em.errors import CheckpointError, InvalidDataError

sys.path.insert(0, str(Path(__file__).parent))
from _cluster_utils import start_cluster  # noqa: E402


def call(*args: str) -> tuple[int, str]:
    """``dask-em ARGS`` in this process: (exit code, standard error)."""
    from dask_em.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def _blobs(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2)) + 5.0 * rng.integers(0, 2, size=(n, 1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    X = _blobs()
    np.save(root / "x.npy", X)
    np.save(root / "one.npy", X[:1])
    np.save(root / "empty.npy", np.empty((0, 2)))
    (root / "bad.csv").write_text("a,b\n1,2\n3,x\n5,6\n7,8\n")
    (root / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n5,6\n")
    (root / "good.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (root / "afile").write_text("")
    zarr.create_array(str(root / "x.zarr"), shape=X.shape, chunks=(100, 2), dtype="f8")[...] = X
    return root


# -- item 14: every bad command-line value exits 2 with one line, before the fit ------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "gmm", "@x.npy", "-k", "0"], "-k/--n-components must be an integer >= 1, got 0"),
        (["fit", "gmm", "@x.npy", "-k", "-1"], "got -1"),
        (["fit", "gmm", "@x.npy", "-k", "500"], "-k 500 is more than the 400 rows"),
        (["fit", "gmm", "@x.zarr", "-k", "500"], "-k 500 is more than the 400 rows"),
        (["fit", "gmm", "@one.npy", "-k", "1"], "1 row(s)"),
        (["fit", "gmm", "@x.npy", "-k", "2", "--tol", "-1"], "--tol must be a number >= 0, got -1.0"),
        (["fit", "gmm", "@x.npy", "-k", "2", "--max-iter", "-5"], "--max-iter must be an integer >= 0, got -5"),
        (["fit", "gmm", "@x.npy", "-k", "2", "--n-init", "0"], "--n-init must be an integer >= 1, got 0"),
        (["fit", "gmm", "@x.npy", "-k", "2", "--init-params", "foo"], "init_params must be one of"),
        (["fit", "gmm", "@x.npy", "-k", "2", "--param", "reg_covar=-1"], "reg_covar must be a non-negative"),
        (["fit", "kmeans", "@x.npy", "-k", "2", "--param", "max_iter=0"], "max_iter must be an integer >= 1"),
        (["fit", "hmm", "@x.npy", "-k", "2", "--tol", "-1"], "--tol must be a number >= 0"),
        (["fit", "gmm", "@x.npy", "-k", "2", "--checkpoint", "@ck.zarr", "--checkpoint-every", "0"],
         "--checkpoint-every must be an integer >= 1, got 0"),
        (["select", "@x.npy", "--covariance-type", "foo"], "--covariance-type takes full, tied, diag or spherical"),
        (["demo", "--n-samples", "0"], "--n-samples must be an integer >= 1, got 0"),
        (["fit", "gmm", "@empty.npy", "-k", "2"], "empty array of shape (0, 2)"),
        (["fit", "gmm", "@bad.csv", "-k", "1"], "column 'b' holds 'x' in data row 2"),
        (["fit", "gmm", "@ragged.csv", "-k", "1"], "Expected 2 fields in line 3"),
        (["fit", "gmm", "@good.csv", "-k", "1", "--columns", "a,nosuch"], "has no column 'nosuch'"),
        # item 10
        (["fit", "gmm", "@x.npy", "-k", "2", "--scheduler", "notanaddress"], "is not a scheduler address"),
        (["fit", "gmm", "@x.npy", "-k", "2", "-o", "@afile/model.zarr"], "is not an existing directory"),
        (["predict", "@x.npy", "@x.npy", "-o", "@nowhere/labels.zarr"], "is not an existing directory"),
    ],
)
def test_bad_command_line_values_exit_2_with_one_line_before_the_fit(files, args, message):
    args = [str(files / a[1:]) if a.startswith("@") else a for a in args]  # "@name": a file of the fixture
    code, err = call(*args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1, err
    assert not (files / "ck.zarr").exists()


def test_scheduler_address_refused_at_once_without_client_del_traceback(files):
    proc = subprocess.run(
        [sys.executable, "-m", "dask_em.cli", "fit", "gmm", str(files / "x.npy"), "-k", "2",
         "--scheduler", "notanaddress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


# -- item 16: nothing advertised that does not exist ------------------------------------------


def test_every_advertised_model_exists():
    import dask_em
    from dask_em.cli.models import MODELS
    from dask_em.cli.models import estimator_class as _estimator_class
    from dask_em.estimators import EMEstimator

    assert {"gmm", "kmeans", "hmm", "poisson-mixture", "categorical-hmm"} <= set(MODELS)
    for name, (class_name, _) in MODELS.items():
        cls, _size = _estimator_class(name)
        assert cls is getattr(dask_em, class_name) and issubclass(cls, EMEstimator), name
    assert not {"exponential-mixture", "student-t-mixture"} & set(MODELS)


# -- item 15: clear messages instead of Python internals ----------------------------------------


def test_hmm_refuses_bad_hyperparameters_and_names_nan(client):
    from dask_em import GaussianHMM

    X = _blobs()
    with pytest.raises(ValueError, match="n_components must be an integer >= 1, got 0"):
        GaussianHMM(0).fit(X, client=client)
    with pytest.raises(ValueError, match="tol must be a non-negative number, got -1"):
        GaussianHMM(2, tol=-1).fit(X, client=client)
    X[5, 0] = np.nan
    with pytest.raises(InvalidDataError, match="1 time steps contain NaN") as info:
        GaussianHMM(2, max_iter=2, random_state=0).fit(X, client=client)
    assert "k-means" not in str(info.value)


def test_kmeans_predict_and_score_refuse_nan_and_inf(client):
    from dask_em import KMeans

    X = _blobs()
    km = KMeans(2, random_state=0).fit(X, client=client)
    for bad in (np.nan, np.inf):
        Y = X.copy()
        Y[3, 1] = bad
        for method in (km.predict, km.score, km.transform):
            # scikit-learn's own validation message, as for GaussianMixture
            with pytest.raises(InvalidDataError, match="NaN|infinity"):
                method(Y)


def test_checkpoint_every_zero_and_forced_resume_of_another_shape(client, tmp_path):
    from dask_em import GaussianMixture

    X = _blobs()
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1.*got 0"):
        GaussianMixture(2).fit(X, client=client, checkpoint=str(tmp_path / "c0.zarr"), checkpoint_every=0)
    GaussianMixture(2, max_iter=2, random_state=0).fit(X, client=client, checkpoint=str(tmp_path / "c.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="cannot use .*number of components"):
            GaussianMixture(3, max_iter=4).fit(X, client=client, checkpoint=str(tmp_path / "c.zarr"), force=True)


# -- item 6: missing chunks are never zeros; paths are absolute before graphs leave -----------


def test_missing_chunk_is_refused_naming_it(client, tmp_path):
    from dask_em import GaussianMixture, GaussianHMM, to_zarr_sequences

    X = _blobs()
    path = tmp_path / "x.zarr"
    zarr.create_array(str(path), shape=X.shape, chunks=(100, 2), dtype="f8")[...] = X
    (path / "c" / "1" / "0").unlink()
    with pytest.raises(InvalidDataError, match=r"chunk 'c/1/0' is missing .*3 of 4 chunks"):
        GaussianMixture(2).fit(str(path), client=client)
    with pytest.raises(InvalidDataError, match="'c/1/0' is missing"):
        GaussianMixture(2).fit(zarr.open_array(str(path), mode="r"), client=client)
    code, err = call("fit", "gmm", str(path), "-k", "2", "--scheduler", client.scheduler.address, "-q")
    assert code == 2 and "'c/1/0' is missing" in err and err.count("\n") == 1, err
    sequences = to_zarr_sequences(X, str(tmp_path / "seq.zarr"), lengths=[200, 200], chunk_rows=100)
    (Path(sequences) / "values" / "c" / "2" / "0").unlink()
    with pytest.raises(InvalidDataError, match="values/c/2/0' is missing"):
        GaussianHMM(2).fit(sequences, client=client)


@pytest.fixture(scope="module")
def elsewhere_cluster(tmp_path_factory):
    """A scheduler and a worker whose working directory is not the test's."""
    with start_cluster(tmp_path_factory.mktemp("elsewhere"), n_workers=1, nanny=False) as cluster:
        yield cluster


def test_relative_paths_with_workers_in_another_directory(elsewhere_cluster, client, tmp_path, monkeypatch):
    from dask_em import GaussianMixture, save

    X = _blobs(4000)
    data = tmp_path / "data"
    data.mkdir()
    zarr.create_array(str(data / "x.zarr"), shape=X.shape, chunks=(1000, 2), dtype="f8")[...] = X
    params = dict(n_components=2, max_iter=5, tol=0.0, random_state=0)
    reference = GaussianMixture(**params).fit(str(data / "x.zarr"), client=client)
    monkeypatch.chdir(data)
    with elsewhere_cluster.client() as remote:
        fitted = GaussianMixture(**params).fit("x.zarr", client=remote)
    assert np.array_equal(fitted.means_, reference.means_)
    save(fitted, "model.zarr")
    # `dask-em predict` with relative input and output, run from the data's directory.
    env = {k: v for k, v in os.environ.items() if k != "DASK_EM_SCHEDULER"}
    done = subprocess.run([sys.executable, "-m", "dask_em.cli", "predict", "model.zarr", "x.zarr", "-o", "labels.zarr",
                           "--scheduler", elsewhere_cluster.address, "-q"],
                          cwd=data, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr
    labels = zarr.open_array(str(data / "labels.zarr"), mode="r")[...]
    assert np.array_equal(labels, reference.predict(X))
    assert not (elsewhere_cluster.directory / "labels.zarr").exists()


def test_workers_that_cannot_see_a_path_are_named(elsewhere_cluster, tmp_path, monkeypatch):
    from dask_em import GaussianMixture

    zarr.create_array(str(tmp_path / "x.zarr"), shape=(400, 2), chunks=(100, 2), dtype="f8")[...] = _blobs()
    monkeypatch.chdir(tmp_path)
    # The same absolute path names this process's directory here and the
    # worker's own directory on the worker: a store only the client sees.
    only_here = "/proc/self/cwd/x.zarr"
    with elsewhere_cluster.client() as remote:
        with pytest.raises(InvalidDataError, match=r"workers tcp://127.0.0.1:\d+ cannot see '/proc/self/cwd/x.zarr'"):
            GaussianMixture(2).fit(only_here, client=remote)


def test_initialisation_reads_survive_lost_in_memory_blocks(tmp_path):
    """Sampling and per-block maps (initialisation) scatter in-memory data again when it was lost."""
    from distributed import Client, LocalCluster

    from dask_em.engine import map_parts, prepare_blocks

    X = np.random.default_rng(0).normal(size=(4000, 3))
    with LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as c:
        blocks = prepare_blocks(X, c, persist=True)
        c.restart()  # the worker and the blocks scattered to it are gone
        sample = blocks.sample(500, np.random.default_rng(1))
        assert sample.shape == (500, 3) and np.isin(sample[:, 0], X[:, 0]).all()
        c.restart()
        sums = map_parts(lambda block: block.sum(axis=0), blocks, c)
        np.testing.assert_allclose(np.sum(sums, axis=0), X.sum(axis=0))
