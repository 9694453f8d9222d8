"""Fits on real ``dask scheduler`` / ``dask worker`` processes, with failures.

Each test starts its own scheduler and workers on 127.0.0.1 with random
ports (see ``_cluster_utils``) and compares with the same fit on the
session's LocalCluster: the results must be equal bit for bit, also after
a worker was killed with SIGKILL in the middle of an iteration.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from _cluster_utils import SlowMixture, kill_first_marked, make_tls_files, start_cluster, wait_for_marker

from dask_em import fit_em
from dask_em.errors import SchedulerLostError

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


def test_tls_cluster_equals_local_cluster(tmp_path, reference, monkeypatch):
    tls = make_tls_files(tmp_path / "certs")
    with start_cluster(tmp_path / "cluster", tls=tls) as cluster:
        assert cluster.address.startswith("tls://127.0.0.1:")
        with cluster.client() as client:
            result = _fit(client)
        # The same through the environment, as the command line does.
        monkeypatch.setenv("DASK_EM_TLS_CA_FILE", tls.ca_file)
        monkeypatch.setenv("DASK_EM_TLS_CERT", tls.cert)
        monkeypatch.setenv("DASK_EM_TLS_KEY", tls.key)
        from_env = fit_em(SlowMixture(), da.from_array(_data(), chunks=(CHUNK, -1)), max_iter=MAX_ITER,
                          tol=0.0, random_state=0, scheduler=cluster.address, warn_not_converged=False)
    _assert_same(result, reference)
    _assert_same(from_env, reference)


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


def test_scheduler_killed_mid_fit_then_resumed(tmp_path, reference):
    pytest.importorskip("dask_em.checkpoint")
    checkpoint = str(tmp_path / "fit.zarr")
    model = SlowMixture(delay=DELAY / 2, marker_dir=str(tmp_path / "markers"), mark_at=3)
    with start_cluster(tmp_path / "first", n_workers=1, nanny=False) as cluster:
        thread = _kill_in_background(tmp_path / "markers", lambda: (
            wait_for_marker(tmp_path / "markers"), cluster.kill_scheduler()))
        with cluster.client() as client, pytest.raises(SchedulerLostError, match="resume"):
            _fit(client, model, checkpoint=checkpoint)
        thread.join(timeout=5)
    with start_cluster(tmp_path / "second", n_workers=1, nanny=False) as cluster, cluster.client() as client:
        result = _fit(client, model, checkpoint=checkpoint)
    assert result.resumed_from == 3
    _assert_same(result, reference)
