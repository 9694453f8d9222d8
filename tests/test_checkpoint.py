"""Checkpoints: exact resume, refusal of foreign fits, crashes, corruption, object storage, saved models."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from _toy_models import MixParams, Mixture1D, blobs, mixture_data

import dask_em
import dask_em.storage.format as storage_format
from dask_em import fit_em
from dask_em.errors import CheckpointError
from dask_em.storage.snapshots import checkpoint_iteration, read_checkpoint

FIELDS = ("weights", "means", "variances")


@pytest.fixture(scope="module")
def X():
    return mixture_data(1500)


def fit(X, client, path=None, **kwargs):
    kwargs.setdefault("max_iter", 8)
    kwargs.setdefault("random_state", 1)
    return fit_em(Mixture1D(3), X, tol=0.0, client=client, checkpoint=path, warn_not_converged=False, **kwargs)


def same(a, b):
    return all(np.asarray(getattr(a.params, f)).tobytes() == np.asarray(getattr(b.params, f)).tobytes() for f in FIELDS) and (
        np.array(a.history).tobytes() == np.array(b.history).tobytes()
    )


@pytest.fixture(scope="module")
def reference(X, client):
    return fit(X, client)


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("scheme", ["local", "file", "memory"])
def test_stop_and_resume_is_bit_identical(X, client, reference, tmp_path, scheme, capsys):
    path = {"local": str(tmp_path / "fit.zarr"), "file": f"file://{tmp_path}/fit.zarr",
            "memory": f"memory://ckpt-{uuid.uuid4().hex}/fit.zarr"}[scheme]
    fit(X, client, path, max_iter=3)
    assert checkpoint_iteration(path) == 3
    resumed = fit(X, client, path, random_state=99, verbose=True)  # the seed is not used again
    assert resumed.resumed_from == 3 and resumed.n_iter == 8
    assert same(resumed, reference)
    assert "resumed from" in capsys.readouterr().err
    state = read_checkpoint(path, rebuild=True)
    assert state.iteration == 8 and isinstance(state.params, MixParams)
    again = fit(X, client, path)  # a finished fit resumes to its end without iterating
    assert again.resumed_from == 8 and same(again, reference)


def test_keeps_the_last_two_snapshots(X, client, tmp_path):
    path = tmp_path / "fit.zarr"
    fit(X, client, str(path), max_iter=5)
    names = sorted(os.listdir(path / "snapshots"))
    names = [n for n in names if n != "zarr.json"]
    assert [n[:6] for n in names] == ["000004", "000005"]
    pointer = json.loads((path / "latest.json").read_text())
    assert pointer["latest"] == f"snapshots/{names[-1]}" and pointer["iteration"] == 5


def test_checkpoint_every_and_final_snapshot(X, client, tmp_path):
    path = str(tmp_path / "fit.zarr")
    seen = []
    fit(X, client, path, max_iter=7, checkpoint_every=3, callbacks=[lambda i: seen.append(checkpoint_iteration(path))])
    assert checkpoint_iteration(path) == 7


def test_resume_true_needs_a_checkpoint(X, client, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        fit(X, client, str(tmp_path / "none.zarr"), resume=True)


def test_resume_false_starts_over_and_replaces_old_snapshots(X, client, reference, tmp_path):
    path = tmp_path / "fit.zarr"
    fit(X, client, str(path), max_iter=5, random_state=4)
    old = set(os.listdir(path / "snapshots"))
    fresh = fit(X, client, str(path), resume=False)
    assert fresh.resumed_from == 0 and same(fresh, reference)
    assert not (old - {"zarr.json"}) & set(os.listdir(path / "snapshots"))


def test_different_data_model_or_settings_are_refused(X, client, tmp_path):
    path = str(tmp_path / "fit.zarr")
    fit(X, client, path, max_iter=3)
    other = X.copy()
    other[-1, 0] += 1.0  # same shape, dtype and chunks: only the content hash differs
    with pytest.raises(CheckpointError, match="content hash") as info:
        fit(other, client, path)
    assert "force=True" in str(info.value)
    with pytest.raises(CheckpointError, match="shape"):
        fit(X[:1000], client, path)
    with pytest.raises(CheckpointError, match="n_components: 3 in the checkpoint, 2 now"):
        fit_em(Mixture1D(2), X, client=client, checkpoint=path, max_iter=8)
    with pytest.raises(CheckpointError, match="split_every"):
        fit(X, client, path, split_every=3)
    with pytest.raises(CheckpointError, match="estimator config: absent in the checkpoint"):
        fit(X, client, path, checkpoint_meta={"estimator": "x.Y", "config": {"n_init": 2, "max_iter": 5}})
    with pytest.warns(UserWarning, match="despite differences"):
        forced = fit(other, client, path, force=True)
    assert forced.resumed_from == 3


def test_estimator_settings_that_only_decide_when_to_stop_may_change(X, client, tmp_path):
    path = str(tmp_path / "fit.zarr")
    fit(X, client, path, max_iter=3, checkpoint_meta={"estimator": "x.Y", "config": {"max_iter": 3, "tol": 1.0}})
    result = fit(X, client, path, checkpoint_meta={"estimator": "x.Y", "config": {"max_iter": 8, "tol": 0.0}})
    assert result.resumed_from == 3


def test_a_path_holding_other_data_is_not_overwritten(X, client, tmp_path):
    import zarr

    zarr.create_array(str(tmp_path / "data.zarr"), shape=(3,), dtype="f8")
    with pytest.raises(CheckpointError, match="not a dask-em checkpoint"):
        fit(X, client, str(tmp_path / "data.zarr"))


# --------------------------------------------------------------------------- crashes and damage


def test_a_crash_while_writing_leaves_the_previous_snapshot(X, client, reference, tmp_path, monkeypatch):
    path = tmp_path / "fit.zarr"
    original = storage_format._write_array
    calls = {"n": 0}

    def failing(group, name, array):
        calls["n"] += 1
        # 4 arrays a snapshot (3 params, history): fail inside the 4th snapshot, after 2 arrays
        if calls["n"] == 3 * 4 + 3:
            raise OSError("disk full (injected)")
        return original(group, name, array)

    monkeypatch.setattr(storage_format, "_write_array", failing)
    with pytest.raises(CheckpointError, match="disk full") as info:
        fit(X, client, str(path))
    assert "previous snapshot is intact" in str(info.value)
    monkeypatch.setattr(storage_format, "_write_array", original)
    assert checkpoint_iteration(str(path)) == 3
    partial = [n for n in os.listdir(path / "snapshots") if n.startswith("000004")]
    assert partial  # the half-written snapshot is there but not pointed to
    resumed = fit(X, client, str(path))
    assert resumed.resumed_from == 3 and same(resumed, reference)
    assert not [n for n in os.listdir(path / "snapshots") if n in partial]  # cleaned up


def _latest(path):
    pointer = json.loads((path / "latest.json").read_text())
    return path / pointer["latest"]


def _edit_json(file, edit):
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def _damage_truncate(snap):
    chunk = snap / "params" / "means" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])


def _damage_flip(snap):
    chunk = snap / "params" / "means" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x40
    chunk.write_bytes(bytes(data))


def _damage_missing_array(snap):
    shutil.rmtree(snap / "params" / "variances")


def _damage_missing_key(snap):
    _edit_json(snap / "zarr.json", lambda d: d["attributes"]["dask_em"].pop("history"))


def _damage_foreign_class(snap):
    def edit(d):
        d["attributes"]["dask_em"]["params"]["class"] = {"module": "evil_plugin", "qualname": "Payload"}
    _edit_json(snap / "zarr.json", edit)


def _damage_imported_non_dataclass(snap):
    def edit(d):
        d["attributes"]["dask_em"]["params"]["class"] = {"module": "subprocess", "qualname": "Popen"}
    _edit_json(snap / "zarr.json", edit)


def _damage_wrong_class(snap):
    def edit(d):
        d["attributes"]["dask_em"]["params"]["class"] = {"module": "dask_em.engine", "qualname": "EMResult"}
    _edit_json(snap / "zarr.json", edit)


def _damage_not_a_class(snap):
    def edit(d):
        d["attributes"]["dask_em"]["params"]["class"] = {"module": "os", "qualname": "system"}
    _edit_json(snap / "zarr.json", edit)


def _damage_newer_snapshot(snap):
    _edit_json(snap / "zarr.json", lambda d: d["attributes"]["dask_em"].update(format_version=99))


def _damage_newer_pointer(snap):
    _edit_json(snap.parent.parent / "latest.json", lambda d: d.update(format_version=99))


def _damage_pointer_garbage(snap):
    (snap.parent.parent / "latest.json").write_text('{"latest": "snapsh')


def _damage_dangling_pointer(snap):
    shutil.rmtree(snap)


DAMAGE = {
    "truncated array": (_damage_truncate, "cannot be read|damaged"),
    "flipped bits": (_damage_flip, "damaged"),
    "missing array": (_damage_missing_array, "'params/variances' is missing"),
    "missing key": (_damage_missing_key, "lacks the key 'history'"),
    "foreign class": (_damage_foreign_class, "not one dask-em may rebuild"),
    "imported class that is no dataclass": (_damage_imported_non_dataclass, "not one dask-em may rebuild"),
    "wrong class": (_damage_wrong_class, "has fields"),
    "not a class": (_damage_not_a_class, "not one dask-em may rebuild"),
    "newer snapshot format": (_damage_newer_snapshot, "format version 99.*Upgrade"),
    "newer pointer format": (_damage_newer_pointer, "format version 99.*Upgrade"),
    "garbage pointer": (_damage_pointer_garbage, "not valid JSON"),
    "dangling pointer": (_damage_dangling_pointer, "missing or is not a dask-em snapshot"),
}


@pytest.fixture(scope="module")
def good_checkpoint(X, client, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "fit.zarr"
    fit(X, client, str(path), max_iter=3)
    return path


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_or_foreign_checkpoints_give_a_clear_error(X, client, good_checkpoint, tmp_path, damage):
    path = tmp_path / "fit.zarr"
    shutil.copytree(good_checkpoint, path)
    edit, message = DAMAGE[damage]
    pointer = json.loads((path / "latest.json").read_text())
    for snapshot in pointer["snapshots"]:  # every kept snapshot: no valid one to fall back to
        edit(path / snapshot)
    with pytest.raises(CheckpointError, match=message) as info:
        fit(X, client, str(path))
    # the error is ours, raised without a chain into zarr internals
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, CheckpointError)
    with pytest.raises(CheckpointError):
        read_checkpoint(str(path), rebuild=True)


def test_classes_defined_in_functions_need_registering(X, client, tmp_path):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class LocalParams:
        weights: np.ndarray
        means: np.ndarray
        variances: np.ndarray

    class LocalModel(Mixture1D):
        def m_step(self, stats, params):
            return LocalParams(*dataclasses.astuple(super().m_step(stats, params)))

    path = str(tmp_path / "fit.zarr")
    fit_em(LocalModel(3), X, client=client, checkpoint=path, max_iter=2, warn_not_converged=False)
    with pytest.raises(CheckpointError, match="register"):
        read_checkpoint(path, rebuild=True)
    dask_em.register_class(LocalParams)
    assert isinstance(read_checkpoint(path, rebuild=True).params, LocalParams)


def test_no_pickle_in_the_format():
    storage = pathlib.Path(storage_format.__file__).parent  # every layer of the storage package
    source = "".join(path.read_text() for path in sorted(storage.glob("*.py")))
    assert "pickle" not in source.replace("Nothing is pickled", "").replace("Nothing is ever unpickled", "")


# --------------------------------------------------------------------------- saved models


def test_save_load_predicts_and_describes(client, tmp_path):
    from dask_em import GaussianMixture

    X = blobs(600)
    gm = GaussianMixture(3, covariance_type="diag", random_state=0, means_init=None).fit(X, client=client)
    path = str(tmp_path / "model.zarr")
    dask_em.save(gm, path)
    loaded = dask_em.load(path)
    assert type(loaded) is GaussianMixture and loaded.get_params() == gm.get_params()
    for name, value in gm.fitted_state().items():
        assert np.asarray(getattr(loaded, name)).tobytes() == np.asarray(value).tobytes(), name
    np.testing.assert_array_equal(loaded.predict(X), gm.predict(X))
    info = dask_em.describe(path)
    assert info["kind"] == "model" and info["model"].endswith("GaussianMixture")
    assert info["iteration"] == gm.n_iter_ and info["loglik"] == gm.lower_bound_ and info["converged"] is True
    json.dumps(info)
    with pytest.raises(CheckpointError, match="overwrite=True"):
        dask_em.save(gm, path)
    dask_em.save(gm, path, overwrite=True)
    with pytest.raises(dask_em.errors.NotFittedError):
        dask_em.save(GaussianMixture(2), str(tmp_path / "unfitted.zarr"))


def _fitted_examples():
    """A small fitted estimator of every kind a user saves, with the data to score it on."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    counts = rng.poisson(3.0, size=(200, 3))
    codes = rng.integers(0, 3, size=(200, 1))
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.1, size=200)
    fits = [
        (dask_em.GaussianMixture(2, max_iter=2), (X,)),
        (dask_em.BayesianGaussianMixture(n_components=2, max_iter=2), (X,)),
        (dask_em.KMeans(2, max_iter=2, n_init=1), (X,)),
        (dask_em.FactorAnalysis(1, max_iter=2), (X,)),
        (dask_em.PPCA(1, max_iter=2), (X,)),
        (dask_em.MultivariateNormal(max_iter=2), (X,)),
        (dask_em.PoissonMixture(2, max_iter=2), (counts,)),
        (dask_em.BernoulliMixture(2, max_iter=2), ((counts > 3).astype(float),)),
        (dask_em.CategoricalMixture(2, max_iter=2), (codes,)),
        (dask_em.GaussianHMM(2, n_iter=2), (X,)),
        (dask_em.CategoricalHMM(2, n_iter=2), (codes,)),
        (dask_em.PoissonHMM(2, n_iter=2), (counts,)),
        (dask_em.MixtureOfExperts(2, max_iter=2), (X, y)),
    ]
    return [(est.fit(*data), data) for est, data in fits]


def test_every_estimator_scores_the_same_after_save_and_load(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        examples = _fitted_examples()
    for i, (est, data) in enumerate(examples):
        path = str(tmp_path / f"m{i}.zarr")
        dask_em.save(est, path)
        loaded = dask_em.load(path)
        assert type(loaded) is type(est)
        assert loaded.score(*data) == pytest.approx(est.score(*data), rel=1e-12), type(est).__name__


def test_save_keeps_array_hyper_parameters(client, tmp_path):
    from dask_em import GaussianMixture

    X = blobs(600)
    means = np.array([[0.0, 0.0], [3.0, 3.0], [-3.0, 2.0]])
    gm = GaussianMixture(3, means_init=means, random_state=0, max_iter=5, tol=1e-2).fit(X, client=client)
    dask_em.save(gm, str(tmp_path / "m.zarr"))
    loaded = dask_em.load(str(tmp_path / "m.zarr"))
    assert loaded.means_init.tobytes() == means.tobytes()


def test_describe_checkpoints_and_restarts(X, client, tmp_path):
    from dask_em import GaussianMixture

    path = str(tmp_path / "fit.zarr")
    fit(X, client, path, max_iter=4)
    info = dask_em.describe(path)
    assert info["kind"] == "checkpoint" and info["iteration"] == 4 and info["converged"] is False
    assert info["model"].endswith("Mixture1D") and info["fingerprint"]["shape"] == [1500, 1]
    json.dumps(info)
    runs = str(tmp_path / "runs.zarr")
    GaussianMixture(2, n_init=2, max_iter=3, random_state=0).fit(blobs(300), client=client, checkpoint=runs)
    info = dask_em.describe(runs)
    # restarts share passes: one fit, one checkpoint (no per-run sub-groups)
    assert info["kind"] == "checkpoint" and info["estimator"].endswith("GaussianMixture")
    with pytest.raises(CheckpointError, match="neither"):
        dask_em.describe(str(tmp_path))
    with pytest.raises(CheckpointError, match="holds a checkpoint"):
        dask_em.load(path)


def test_load_refuses_foreign_classes(client, tmp_path):
    from dask_em import GaussianMixture

    gm = GaussianMixture(2, max_iter=3, random_state=0).fit(blobs(300), client=client)
    path = tmp_path / "m.zarr"
    dask_em.save(gm, str(path))
    _edit_json(path / "zarr.json", lambda d: d["attributes"]["dask_em"].update(
        estimator={"module": "shutil", "qualname": "rmtree"}))
    with pytest.raises(CheckpointError, match="not one dask-em may rebuild"):
        dask_em.load(str(path))
    _edit_json(path / "zarr.json", lambda d: d["attributes"]["dask_em"].update(
        estimator={"module": "dask_em.engine", "qualname": "EMResult"}))
    with pytest.raises(CheckpointError, match="not one dask-em may rebuild"):
        dask_em.load(str(path))


# --------------------------------------------------------------------------- kill and resume


# --------------------------------------------------------------------------- object storage


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install dask-em[s3])")
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", f"from moto.server import ThreadedMotoServer as S; import time; "
         f"s = S(ip_address='127.0.0.1', port={port}); s.start(); time.sleep(3600)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the moto S3 server did not start within 30 s")
                time.sleep(0.1)
        yield endpoint
    finally:
        process.kill()
        process.wait(timeout=10)


def test_checkpoint_and_model_on_s3(X, client, reference, s3_server, monkeypatch):
    import fsspec
    import s3fs

    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    monkeypatch.setitem(fsspec.config.conf, "s3", options)
    s3fs.S3FileSystem.clear_instance_cache()
    import boto3  # a dependency of moto

    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="ckpt-bucket")
    fs = fsspec.filesystem("s3")
    path = "s3://ckpt-bucket/fits/fit.zarr"
    fit(X, client, path, max_iter=3)
    assert checkpoint_iteration(path) == 3
    resumed = fit(X, client, path)
    assert resumed.resumed_from == 3 and same(resumed, reference)
    assert len([p for p in fs.ls("ckpt-bucket/fits/fit.zarr/snapshots") if not p.endswith("zarr.json")]) == 2
    assert dask_em.describe(path)["iteration"] == 8

    from dask_em import GaussianMixture

    gm = GaussianMixture(2, max_iter=5, random_state=0).fit(blobs(300), client=client)
    dask_em.save(gm, "s3://ckpt-bucket/models/gm.zarr")
    loaded = dask_em.load("s3://ckpt-bucket/models/gm.zarr")
    np.testing.assert_array_equal(loaded.predict(blobs(300)), gm.predict(blobs(300)))
