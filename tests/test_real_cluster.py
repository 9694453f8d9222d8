"""Fits on real ``dask scheduler`` / ``dask worker`` processes, with failures.

Schedulers and workers are ``dask scheduler`` / ``dask worker`` processes
on 127.0.0.1 with random ports (see ``_cluster_utils``): one tcp cluster
with nannies shared by this module, and their own for TLS, workers without
nannies and a scheduler that dies. Every fit is compared with the same fit
on the session's LocalCluster: the results must be equal bit for bit, also
after a worker was killed with SIGKILL in the middle of an iteration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from _cluster_utils import (
    SlowMixture,
    kill_first_marked,
    kill_worker_in_iteration,
    make_tls_files,
    start_cluster,
    wait_for_pass,
)

from distributed import Client

from dask_em import fit_em
from dask_em.errors import DaskEMError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: 8 blocks of 1000 rows: slow E-steps (``delay``) make one iteration last
#: long enough (~0.4 s on two workers) to kill a process inside it.
N_ROWS, CHUNK, DELAY, MAX_ITER = 8000, 1000, 0.1, 5


def _data() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(-2.0, 1.0, N_ROWS // 2), rng.normal(3.0, 0.5, N_ROWS // 2)])
    return x[rng.permutation(N_ROWS)][:, None]


def _fit(client, model=None, data=None, **kwargs):
    data = da.from_array(_data(), chunks=(CHUNK, -1)) if data is None else data
    return fit_em(model or SlowMixture(), data, max_iter=MAX_ITER, tol=0.0, random_state=0,
                  client=client, warn_not_converged=False, **kwargs)


def _assert_same(result, reference) -> None:
    assert result.history == reference.history
    for name in ("weights", "means", "variances", "iteration"):
        assert np.array_equal(getattr(result.params, name), getattr(reference.params, name)), name


@pytest.fixture(scope="module")
def reference(client):
    """The undisturbed fit on the session's LocalCluster."""
    return _fit(client)


@pytest.fixture(scope="module")
def tcp_cluster(tmp_path_factory):
    """A scheduler and two nanny workers, shared by the tcp tests of this module."""
    with start_cluster(tmp_path_factory.mktemp("tcp-cluster")) as cluster:
        yield cluster


def _kill_in_background(marker_dir: Path, kill=None) -> threading.Thread:
    marker_dir.mkdir()
    target = (lambda: kill_first_marked(marker_dir)) if kill is None else kill
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_tcp_cluster_equals_local_cluster(tcp_cluster, reference):
    assert tcp_cluster.address.startswith("tcp://127.0.0.1:")
    result = fit_em(SlowMixture(), da.from_array(_data(), chunks=(CHUNK, -1)), max_iter=MAX_ITER,
                    tol=0.0, random_state=0, scheduler=tcp_cluster.address, warn_not_converged=False)
    _assert_same(result, reference)


def test_tls_cluster_equals_local_cluster(tmp_path, reference, gmm_data, gmm_reference, monkeypatch):
    from dask_em import load

    tls = make_tls_files(tmp_path / "certs")
    out = tmp_path / "model.zarr"
    with start_cluster(tmp_path / "cluster", tls=tls) as cluster:
        assert cluster.address.startswith("tls://127.0.0.1:")
        # From Python, with a Security object built from the files.
        with cluster.client() as client:
            result = _fit(client)
        # Without a certificate the scheduler refuses the command.
        refused = _run_cli(["fit", "gmm", gmm_data, *GMM_CLI, "--scheduler", cluster.address, "-q"],
                           {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}, timeout=120)
        # With the files given as options (the same as dask scheduler's and dask worker's).
        done = _run_cli(["fit", "gmm", gmm_data, *GMM_CLI, "--scheduler", cluster.address, *tls.cli_args(),
                         "-o", str(out), "-q"])
        # From Python, with the files named in the environment.
        monkeypatch.setenv("DASK_EM_TLS_CA_FILE", tls.ca_file)
        monkeypatch.setenv("DASK_EM_TLS_CERT", tls.cert)
        monkeypatch.setenv("DASK_EM_TLS_KEY", tls.key)
        from_env = fit_em(SlowMixture(), da.from_array(_data(), chunks=(CHUNK, -1)), max_iter=MAX_ITER,
                          tol=0.0, random_state=0, scheduler=cluster.address, warn_not_converged=False)
    _assert_same(result, reference)
    _assert_same(from_env, reference)
    assert refused.returncode != 0
    assert done.returncode == 0, done.stderr
    _assert_same_gmm(load(str(out)), gmm_reference)


def test_local_cluster_listens_on_loopback_only():
    from dask_em.cluster import local_cluster

    with local_cluster(n_workers=1) as cluster:
        addresses = [cluster.scheduler_address, *(w.worker_address for w in cluster.workers.values())]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        assert cluster.scheduler.http_server is None or cluster.dashboard_link.startswith("http://127.0.0.1:")


def test_security_from_files_names_a_missing_file(tmp_path, monkeypatch):
    from dask_em.cluster import resolve_security, security_from_files

    with pytest.raises(FileNotFoundError, match="ca_file .*nope.pem"):
        security_from_files(tmp_path / "nope.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    monkeypatch.setenv("DASK_EM_TLS_CA_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.delenv("DASK_EM_TLS_CERT", raising=False)
    with pytest.raises(ValueError, match="DASK_EM_TLS_CERT"):
        resolve_security()


def _fit_killing_a_worker(cluster, tmp_path, data=None):
    """Fit on ``cluster`` while one worker is SIGKILLed inside an E-step; return (result, pid)."""
    with cluster.client() as client:
        pids = set(cluster.worker_pids().values())
        markers = tmp_path / "markers"
        killed: list[int] = []
        thread = _kill_in_background(markers, lambda: killed.append(kill_first_marked(markers)))
        result = _fit(client, SlowMixture(delay=DELAY, marker_dir=str(markers), mark_at=2), data=data)
        thread.join(timeout=5)
    assert killed and killed[0] in pids, "no worker was killed inside an E-step"
    return result, killed[0]


def test_worker_killed_mid_iteration_nanny_restarts_it(tcp_cluster, tmp_path, reference):
    result, pid = _fit_killing_a_worker(tcp_cluster, tmp_path)
    _assert_same(result, reference)
    tcp_cluster.wait_for_workers(2)
    assert pid not in tcp_cluster.worker_pids().values()


def test_worker_killed_mid_iteration_without_nanny_stays_dead(tmp_path, reference):
    with start_cluster(tmp_path / "cluster", nanny=False) as cluster:
        result, _ = _fit_killing_a_worker(cluster, tmp_path)
        assert len(cluster.worker_pids()) == 1
    _assert_same(result, reference)


def test_in_memory_data_survives_a_killed_worker(tcp_cluster, tmp_path, client):
    # numpy input is scattered (no recipe to recompute it): the engine scatters it again.
    tcp_cluster.wait_for_workers(2)
    result, _ = _fit_killing_a_worker(tcp_cluster, tmp_path, data=_data())
    _assert_same(result, _fit(client, data=_data()))


# -- the estimators and the dask-em command ------------------------------------------
GMM = dict(n_components=3, max_iter=8, tol=0.0, random_state=0, init_params="random_from_data")
#: The same fit on the command line.
GMM_CLI = ["-k", "3", "--max-iter", "8", "--tol", "0", "--random-state", "0", "--init-params", "random_from_data"]


def dask_em_command() -> list[str]:
    """The installed ``dask-em`` script beside this Python, else ``python -m dask_em.cli``."""
    script = Path(sys.executable).with_name("dask-em")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dask_em.cli"]


@pytest.fixture(scope="module")
def gmm_data(tmp_path_factory) -> str:
    """Three Gaussian clusters in 4-D, 40,000 rows in 8 Zarr chunks."""
    import zarr

    rng = np.random.default_rng(3)
    centers = rng.normal(scale=4.0, size=(3, 4))
    X = centers[rng.integers(0, 3, 40_000)] + rng.normal(size=(40_000, 4))
    path = str(tmp_path_factory.mktemp("data") / "gmm.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(5000, 4), dtype="f8")[...] = X
    return path


@pytest.fixture(scope="module")
def gmm_reference(client, gmm_data):
    """GaussianMixture fitted on the session's LocalCluster."""
    from dask_em import GaussianMixture

    return GaussianMixture(**GMM).fit(gmm_data, client=client)


def _assert_same_gmm(model, reference) -> None:
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(model, name), getattr(reference, name)), name
    assert model.lower_bound_ == reference.lower_bound_
    assert model.n_iter_ == reference.n_iter_


def _run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DASK_EM_SCHEDULER"}
    full_env.update(env or {})
    return subprocess.run([*dask_em_command(), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def test_cli_fit_on_tcp_cluster_equals_local_cluster(tcp_cluster, gmm_data, gmm_reference, tmp_path):
    from dask_em import load

    out = tmp_path / "model.zarr"
    done = _run_cli(["fit", "gmm", gmm_data, *GMM_CLI, "--scheduler", tcp_cluster.address, "-o", str(out), "-q"])
    assert done.returncode == 0, done.stderr
    _assert_same_gmm(load(str(out)), gmm_reference)


def _fit_in_thread(fit) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fit())
        except BaseException as exc:  # reported by the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_gaussian_mixture_survives_a_killed_worker(tcp_cluster, gmm_data, gmm_reference):
    from dask_em import GaussianMixture

    tcp_cluster.wait_for_workers(2)
    with tcp_cluster.client() as client:
        thread, outcome = _fit_in_thread(lambda: GaussianMixture(**GMM).fit(gmm_data, client=client))
        pid = kill_worker_in_iteration(client, iteration=3)
        thread.join(timeout=300)
    assert pid > 0 and outcome, "the fit did not finish"
    assert not isinstance(outcome[0], BaseException), outcome[0]
    _assert_same_gmm(outcome[0], gmm_reference)


def test_hmm_survives_a_killed_worker(tcp_cluster, client):
    from dask_em import GaussianHMM

    rng = np.random.default_rng(5)
    lengths = np.full(64, 400)
    states = np.cumsum(rng.random(lengths.sum()) < 0.05) % 3
    X = np.array([[-3.0, 0.0, 1.0], [0.0, 2.0, -1.0], [3.0, -1.0, 0.0]])[states] + rng.normal(size=(lengths.sum(), 3))
    # Given starting parameters: every pass over the data is a Baum-Welch iteration.
    params = dict(n_components=3, n_init=1, max_iter=8, tol=0.0, random_state=0, n_partitions=8,
                  startprob_init=np.full(3, 1 / 3), transmat_init=np.full((3, 3), 0.05) + 0.85 * np.eye(3),
                  means_init=np.array([[-2.0, 0.0, 1.0], [0.0, 1.0, -1.0], [2.0, -1.0, 0.0]]), covars_init=np.ones((3, 3)))
    reference = GaussianHMM(**params).fit(X, lengths, client=client)
    tcp_cluster.wait_for_workers(2)
    with tcp_cluster.client() as cluster_client:
        thread, outcome = _fit_in_thread(lambda: GaussianHMM(**params).fit(X, lengths, client=cluster_client))
        kill_worker_in_iteration(cluster_client, iteration=3)
        thread.join(timeout=300)
    assert outcome and not isinstance(outcome[0], BaseException), outcome
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        assert np.array_equal(getattr(outcome[0], name), getattr(reference, name)), name


def test_cli_exits_when_the_scheduler_dies_and_resumes_on_a_new_one(tmp_path, gmm_data, gmm_reference):
    from dask_em import load

    checkpoint, out = tmp_path / "fit.zarr", tmp_path / "model.zarr"
    args = ["fit", "gmm", gmm_data, *GMM_CLI, "--checkpoint", str(checkpoint), "-o", str(out), "-q"]
    with start_cluster(tmp_path / "first", n_workers=1, nanny=False) as cluster:
        proc = subprocess.Popen([*dask_em_command(), *args, "--scheduler", cluster.address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            with cluster.client() as client:
                wait_for_pass(client, iteration=4)
                cluster.kill_scheduler()  # in the middle of the 4th pass over the data
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, stderr
    assert "lost the connection to the Dask scheduler" in stderr and "dask-em resume" in stderr
    assert not out.exists()
    with start_cluster(tmp_path / "second", n_workers=2, nanny=False) as cluster:
        done = _run_cli(["resume", str(checkpoint), gmm_data, "--scheduler", cluster.address, "-o", str(out)])
    assert done.returncode == 0, done.stderr
    assert "resum" in done.stderr
    _assert_same_gmm(load(str(out)), gmm_reference)


USER_MODULE = '''
import dataclasses
import numpy as np


@dataclasses.dataclass(frozen=True)
class Theta:
    theta: np.ndarray


@dataclasses.dataclass(frozen=True)
class Linkage:
    def init_params(self, sample, rng):
        return Theta(np.array(0.5))

    def e_step(self, block, params):
        t, y = float(params.theta), np.asarray(block).sum(axis=0)
        p = np.array([0.5 + t / 4, (1 - t) / 4, (1 - t) / 4, t / 4])
        return {"n": np.array(y.sum()), "loglik": np.array(y @ np.log(p)),
                "counts": np.array([y[0] * (t / 4) / (0.5 + t / 4) + y[3], y[1] + y[2]])}

    def m_step(self, stats, params):
        return Theta(np.array(stats["counts"][0] / stats["counts"].sum()))
'''


def test_model_module_missing_on_the_cluster_is_named(tcp_cluster, tmp_path, monkeypatch):
    """A plug-in model the cluster cannot import: the error names its module and the remedy."""
    (tmp_path / "user_linkage_model.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_linkage_model

    data = np.array([[125, 18, 20, 34]] * 4, float)
    with Client(tcp_cluster.address) as client:
        with pytest.raises(DaskEMError, match=r"module 'user_linkage_model'.*upload_file"):
            fit_em(user_linkage_model.Linkage(), data, max_iter=5, client=client)
        client.upload_file(str(tmp_path / "user_linkage_model.py"))
        result = fit_em(user_linkage_model.Linkage(), data, max_iter=50, tol=1e-10, client=client)
    assert round(float(result.params.theta), 4) == 0.6268


@pytest.mark.parametrize("name", ["GaussianMixture", "KMeans"])
def test_estimators_on_numpy_survive_a_killed_worker(tcp_cluster, client, name):
    """In-memory blocks lost with a SIGKILLed worker are scattered again (issue 13, item 9)."""
    import dask_em

    rng = np.random.default_rng(11)
    X = rng.normal(size=(40_000, 4)) + 6.0 * rng.integers(0, 3, size=(40_000, 1))
    # n_init=2: the second restart must run on the blocks rebuilt during the first.
    params = dict(n_init=2, max_iter=8, tol=0.0, random_state=0)
    params["n_clusters" if name == "KMeans" else "n_components"] = 3
    cls = getattr(dask_em, name)
    reference = cls(**params).fit(X, client=client)
    tcp_cluster.wait_for_workers(2)
    with tcp_cluster.client() as cluster_client:
        thread, outcome = _fit_in_thread(lambda: cls(**params).fit(X, client=cluster_client))
        kill_worker_in_iteration(cluster_client, iteration=3)
        thread.join(timeout=300)
    assert outcome and not isinstance(outcome[0], BaseException), outcome
    for attr in ("means_", "covariances_", "weights_", "cluster_centers_", "inertia_", "n_iter_"):
        if hasattr(reference, attr):
            assert np.array_equal(getattr(outcome[0], attr), getattr(reference, attr)), attr
