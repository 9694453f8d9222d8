"""Files a fit did not write: crafted and damaged checkpoints and saved models, concurrent writers.

Each test crafts the file an attacker or an accident would leave, and
checks the three readers: ``fit(..., checkpoint=...)``, ``dask_em.load``
and the command line (``dask-em resume``, ``dask-em info``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import zarr

import dask_em
from dask_em import GaussianMixture
from dask_em.storage import format as storage_format
from dask_em.storage.lease import LEASE_TIMEOUT
from dask_em.errors import CheckpointError
from dask_em.storage.format import checksum, resolve_class
from dask_em.storage.snapshots import read_checkpoint
from dask_em.errors import ConvergenceWarning
from dask_em.testing import assert_resume_bit_identical, write_data

K = 2


def blobs(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [6.0, 6.0]])
    return centres[rng.integers(0, K, n)] + rng.normal(size=(n, 2))


def gmm(max_iter: int) -> GaussianMixture:
    return GaussianMixture(K, covariance_type="diag", max_iter=max_iter, tol=0.0, random_state=0)


def fit(X, client, path, max_iter, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gmm(max_iter).fit(X, client=client, checkpoint=str(path), **kwargs)


def cli(*args: str) -> tuple[int, str]:
    """``dask-em ARGS`` in this process: exit code and standard error."""
    from dask_em.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def edit_json(file: pathlib.Path, edit) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def pointer(path: pathlib.Path) -> dict:
    return json.loads((path / "latest.json").read_text())


def rewrite_array(group_path: pathlib.Path, name: str, entries: dict, value: np.ndarray) -> None:
    """Replace an array and its recorded checksum: a crafted file, not a damaged one."""
    zarr.open_array(str(group_path / name), mode="r+")[...] = value
    entries["checksum"] = checksum(value.astype(np.dtype(entries["dtype"])).reshape(entries["shape"]))


@pytest.fixture(scope="module")
def finished(client, tmp_path_factory):
    """A checkpoint of 3 iterations (keeping 2 snapshots) of data in a 4-block Zarr array."""
    root = tmp_path_factory.mktemp("trust")
    X = blobs()
    write_data(X, root / "data.zarr", chunk_rows=100)
    np.save(root / "data.npy", X)
    fit(str(root / "data.zarr"), client, root / "fit.zarr", 3)
    return root


@pytest.fixture(scope="module")
def X(finished):
    """The data of ``finished``, as the Zarr path every fit here reads."""
    return str(finished / "data.zarr")


def copy(finished, tmp_path) -> pathlib.Path:
    path = tmp_path / "fit.zarr"
    shutil.copytree(finished / "fit.zarr", path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return path


# --------------------------------------------------------------------------- item 1: what a file may rebuild


def test_resume_refuses_a_checkpoint_naming_a_callable(finished, tmp_path, cluster):
    path = copy(finished, tmp_path)
    snapshot = path / pointer(path)["latest"]

    def name(estimator, config):
        def edit(d):
            d["attributes"]["dask_em"]["meta"].update(estimator=estimator, config=config)
            d["attributes"]["dask_em"]["meta"]["source"] = {"input": str(finished / "data.npy")}
        edit_json(snapshot / "zarr.json", edit)

    # today: dask_em.cli._save(path=victim, overwrite=True) deleted the directory
    name("dask_em.cli._save", {"estimator": None, "path": str(tmp_path / "victim"), "overwrite": True})
    code, err = cli("resume", str(path), "--scheduler", cluster.scheduler_address)
    assert code == 2 and "not one dask-em may rebuild" in err, err
    assert (tmp_path / "victim" / "precious.txt").exists()
    # a registered class with a key that is not its parameter, and a value a fit refuses
    name("dask_em.estimators.gmm.GaussianMixture", {"n_components": 2, "path": "x"})
    code, err = cli("resume", str(path), "--scheduler", cluster.scheduler_address)
    assert code == 2 and "does not take" in err and "'path'" in err, err
    name("dask_em.estimators.gmm.GaussianMixture", {"n_components": "3; rm -rf"})
    code, err = cli("resume", str(path), "--scheduler", cluster.scheduler_address)
    assert code == 2 and "n_components must be an integer" in err, err


def test_resolve_class_accepts_only_registered_or_own_parameter_classes():
    for name in ({"module": "subprocess", "qualname": "Popen"}, {"module": "collections", "qualname": "OrderedDict"},
                 {"module": "dask_em.cli", "qualname": "_save"}, {"module": "dask_em.testing", "qualname": "_load_factory"}):
        with pytest.raises(CheckpointError, match="not one dask-em may rebuild"):
            resolve_class(name, what="estimator class")
        with pytest.raises(CheckpointError, match="not one dask-em may rebuild|does not exist"):
            resolve_class(name, what="parameter class")
    # estimators register themselves; private bases and plain dask-em functions do not
    assert resolve_class({"module": "dask_em.estimators.gmm", "qualname": "GaussianMixture"}) is GaussianMixture
    with pytest.raises(CheckpointError, match="not one dask-em may rebuild"):
        resolve_class({"module": "dask_em.estimators.hmm", "qualname": "_BaseHMM"}, what="estimator class")

    class Mine(dask_em.estimators.EMEstimator):  # a user's estimator: only once registered
        def __init__(self, n_components: int = 1) -> None:
            self.n_components = n_components

    record = storage_format.class_name(Mine)
    with pytest.raises(CheckpointError, match="register"):
        storage_format.estimator_from_record(record, {"n_components": 2}, where="test")
    storage_format.register_class(Mine)
    try:
        assert storage_format.estimator_from_record(record, {"n_components": 2}, where="test").n_components == 2
        with pytest.raises(CheckpointError, match="n_components must be an integer >= 1"):
            storage_format.estimator_from_record(record, {"n_components": 0}, where="test")
    finally:
        storage_format._REGISTRY.pop(storage_format.dotted(record))


# --------------------------------------------------------------------------- item 3: values are data


def saved(X, client, tmp_path) -> pathlib.Path:
    path = tmp_path / "model.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dask_em.save(gmm(3).fit(np.asarray(zarr.open_array(X, mode="r")), client=client), str(path))
    return path


def test_load_validates_configuration_and_fitted_values(X, client, tmp_path):
    good = saved(X, client, tmp_path / "good")
    path = tmp_path / "model.zarr"

    def craft(edit):
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(good, path)
        edit_json(path / "zarr.json", lambda d: edit(d["attributes"]["dask_em"]))

    craft(lambda info: info["config"].update(n_components="3; rm -rf"))
    with pytest.raises(CheckpointError, match="n_components must be an integer"):
        dask_em.load(str(path))
    craft(lambda info: info["config"].update(n_components=1.5))
    with pytest.raises(CheckpointError, match="n_components must be an integer"):
        dask_em.load(str(path))
    craft(lambda info: info["config"].update(covariance_type="../../etc"))
    with pytest.raises(CheckpointError, match="covariance_type must be one of"):
        dask_em.load(str(path))
    craft(lambda info: info.update(estimator={"module": "dask_em.cli", "qualname": "_save"}))
    with pytest.raises(CheckpointError, match="not one dask-em may rebuild"):
        dask_em.load(str(path))
    code, err = cli("predict", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.zarr"))
    assert code != 0 and not (tmp_path / "out.zarr").exists()

    # fitted values: a NaN model and weights off the simplex, with valid checksums
    for name, value in (("means_", np.full((K, 2), np.nan)), ("weights_", np.array([0.9, 0.9]))):
        def poison(info, name=name, value=value):
            rewrite_array(path / "fitted", name, info["fitted"][name], value)
        craft(poison)
        with pytest.raises(CheckpointError, match=f"{name} holds NaN|{name} is not a probability"):
            dask_em.load(str(path))
    # text where numbers belong, or column names that are not text: refused, not loaded
    for name, entry in (("means_", {"kind": "strings", "values": ["0", "1"]}),
                        ("feature_names_in_", {"kind": "strings", "values": [1, "b"]})):
        craft(lambda info, name=name, entry=entry: info["fitted"].update({name: entry}))
        with pytest.raises(CheckpointError, match=f"fitted attribute '{name}' is damaged"):
            dask_em.load(str(path))
    assert dask_em.load(str(good)).means_.shape == (K, 2)


def nan_snapshot(path: pathlib.Path, prefix: str) -> None:
    """Make one snapshot's means NaN with a matching checksum."""
    snapshot = path / prefix

    def edit(d):
        fields = d["attributes"]["dask_em"]["params"]["fields"]
        entry = fields["means"]
        rewrite_array(snapshot / "params", "means", entry, np.full(entry["shape"], np.nan))
    edit_json(snapshot / "zarr.json", edit)


def test_a_nan_checkpoint_is_refused_by_fit_and_read(X, client, finished, tmp_path):
    path = copy(finished, tmp_path)
    for prefix in pointer(path)["snapshots"]:
        nan_snapshot(path, prefix)
    with pytest.raises(CheckpointError, match="means holds NaN"):
        fit(X, client, path, 5)
    with pytest.raises(CheckpointError, match="means holds NaN"):
        read_checkpoint(str(path))


# --------------------------------------------------------------------------- item 2: pointer confined


@pytest.mark.parametrize("entry", ["../victim", "snapshots/000001-abcdef01/../../../victim", "snapshots/000001-abcdef01\n"])
def test_pointer_names_only_snapshots(X, client, finished, tmp_path, entry, cluster):
    path = copy(finished, tmp_path)
    edit_json(path / "latest.json", lambda d: d["snapshots"].insert(0, entry))
    with pytest.raises(CheckpointError, match="not a snapshot of this checkpoint"):
        fit(X, client, path, 5)
    code, err = cli("info", str(path))
    assert code == 2 and "not a snapshot of this checkpoint" in err, err
    # starting over never reads the pointer's list, and pruning stays inside snapshots/
    fit(X, client, path, 4, resume=False)
    assert (tmp_path / "victim" / "precious.txt").exists()
    assert pointer(path)["iteration"] == 4


# --------------------------------------------------------------------------- item 4: one writer


def test_a_second_writer_is_refused_naming_the_holder(finished, tmp_path, cluster, client):
    path = tmp_path / "fit.zarr"
    ready = tmp_path / "ready"
    script = (
        "import sys, numpy as np\n"
        "from distributed import Client\n"
        "from dask_em import GaussianMixture\n"
        "from dask_em.testing import _block_after_snapshot\n"
        "path, ready, data, address = sys.argv[1:]\n"
        "_block_after_snapshot(path, 1, ready)\n"
        "with Client(address) as c:\n"
        "    GaussianMixture(2, max_iter=50, tol=0, random_state=0).fit(np.load(data), client=c, checkpoint=path)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(path), str(ready), str(finished / "data.npy"),
                               cluster.scheduler_address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None, holder.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first writer did not write its first snapshot in 120 s"
            time.sleep(0.05)
        code, err = cli("fit", "gmm", str(finished / "data.npy"), "-k", "3", "--checkpoint", str(path),
                        "--scheduler", cluster.scheduler_address, "--quiet")
        assert code == 2, err
        assert "being written by another fit" in err and f"pid {holder.pid} on host" in err, err
        assert pointer(path)["iteration"] == 1  # the second writer wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the holder is gone: its lease is stale at once on this host, and a new fit takes it over
    with pytest.warns(UserWarning, match="taking over the lease.*no longer runs"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            GaussianMixture(2, max_iter=2, tol=0, random_state=0).fit(np.load(finished / "data.npy"),
                                                                       client=client, checkpoint=str(path))
    assert not (path / "lease.json").exists()  # released when the fit closed its checkpoint


def test_a_lease_from_another_host_is_live_until_its_heartbeat_is_stale(X, client, finished, tmp_path):
    path = copy(finished, tmp_path)
    lease = {"owner": "0123abcd", "host": socket.gethostname() + "-elsewhere", "pid": 1, "heartbeat": time.time()}
    (path / "lease.json").write_text(json.dumps(lease))
    with pytest.raises(CheckpointError, match="being written by another fit: owner '0123abcd'"):
        fit(X, client, path, 5)
    lease["heartbeat"] = time.time() - 10 * LEASE_TIMEOUT
    (path / "lease.json").write_text(json.dumps(lease))
    with pytest.warns(UserWarning, match="taking over the lease of owner '0123abcd'.*heartbeat is"):
        assert fit(X, client, path, 5).n_iter_ == 5
    assert not (path / "lease.json").exists()


# --------------------------------------------------------------------------- item 7: every block


def test_replaced_middle_block_is_refused_on_resume(X, client, finished, tmp_path):
    path = copy(finished, tmp_path)
    data = tmp_path / "data.zarr"
    shutil.copytree(X, data)
    state = read_checkpoint(str(path))
    assert len(state.info["blocks"]) == 4  # one hash per block, in every snapshot
    other = blobs(400, seed=1)
    zarr.open_array(str(data), mode="r+")[200:300] = other[200:300]  # block 2 of 4: same shape, other rows
    with pytest.raises(CheckpointError, match=r"block 2 \(of 4\) holds other data"):
        fit(str(data), client, path, 5)
    assert pointer(path)["iteration"] == 3  # refused before the M-step: nothing was written
    with pytest.warns(UserWarning, match="block 2"):
        assert fit(str(data), client, path, 4, force=True).n_iter_ == 4


# --------------------------------------------------------------------------- item 8: damage and recovery


def test_damaged_latest_snapshot_falls_back_to_the_previous(X, client, finished, tmp_path):
    path = copy(finished, tmp_path)
    latest = pointer(path)["latest"]
    chunk = next(p for p in (path / latest / "params" / "means" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"\x00\x01\x02")
    with pytest.warns(UserWarning, match=r"using the newest valid snapshot snapshots/000002-.*damaged"):
        gm = fit(X, client, path, 4)
    assert gm.n_iter_ == 4 and pointer(path)["iteration"] == 4
    code, err = cli("info", str(path))
    assert code == 0, err


def test_deleted_pointer_resumes_from_the_newest_valid_snapshot(X, client, finished, tmp_path):
    path = copy(finished, tmp_path)
    before = sorted(p.name for p in (path / "snapshots").iterdir())
    (path / "latest.json").unlink()
    with pytest.warns(UserWarning, match="no latest.json.*iteration 3"):
        state = read_checkpoint(str(path))
    assert state.iteration == 3 and sorted(p.name for p in (path / "snapshots").iterdir()) == before
    reference = fit(X, client, tmp_path / "ref.zarr", 4)
    with pytest.warns(UserWarning, match="no latest.json"):
        gm = fit(X, client, path, 4)
    # resumed (not started over): the same bits as an uninterrupted fit
    assert gm.n_iter_ == 4 and np.array_equal(gm.means_, reference.means_)
    assert any(name in before for name in (p.name for p in (path / "snapshots").iterdir()))


def test_snapshot_files_are_synced_before_the_pointer_moves(X, client, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "fit.zarr"
    fit(X, client, path, 1)
    monkeypatch.undo()
    moved = [i for i, (kind, target) in enumerate(events) if kind == "replace" and target.endswith("latest.json")]
    assert moved
    synced = {target for kind, target in events[: moved[0]] if kind == "fsync"}
    snapshot = path / pointer(path)["latest"]
    files = [str(p) for p in snapshot.rglob("*") if p.is_file()]
    assert files and not set(files) - synced, sorted(set(files) - synced)


# --------------------------------------------------------------------------- item 17: a harness that cannot flake


def test_kill_harness_stops_the_child_exactly_at_its_kill_point(client, tmp_path):
    # the child stops itself right after the snapshot of its kill point (7 of 8 iterations): never
    # later, and never finished before the kill (the race of a timer-based kill)
    report = assert_resume_bit_identical("_toy_models:make_gmm_diag", blobs(300), client=client, tmp_path=tmp_path,
                                         kill_after=[7])
    assert report == [{"kill_after": k, "killed_at": k} for k in (7,)]
