"""Bounded memory on data several times larger than a worker's memory limit.

A dedicated LocalCluster (two single-threaded workers with a small memory
limit) streams a Zarr dataset of about 1 GiB in memory through a
Gaussian-mixture iteration and an out-of-core ``dask-em predict`` to Zarr.
The workers' spill, pause and target thresholds are switched off, so the
only safety net left is the nanny's kill at 95% of the limit: a worker
whose memory grew with the data would be restarted, and the peak resident
memory of every worker process (the kernel's high-water mark) would pass
the limit. The data repeats one small mixture sample, so it is quick to
write and compresses well on disk; its size in memory is what counts.
"""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

psutil = pytest.importorskip("psutil")

MIB = 2**20
#: Per-worker limit: a warm worker (numpy, numba kernels, zarr) uses about 200 MiB.
MEMORY_LIMIT = 320 * MIB
N_FEATURES = 16
CHUNK_ROWS = 32_768  # 4 MiB blocks of float64
N_CHUNKS = 256  # 1 GiB in memory: 3.2 times one worker's limit
N_COMPONENTS = 4


def _peak_rss(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), else its current RSS."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss


def _reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _tile_block(block_id: int, base: np.ndarray, rows: int) -> np.ndarray:
    reps = -(-rows // len(base))
    return np.tile(base, (reps, 1))[:rows]


@pytest.fixture(scope="module")
def small_cluster():
    settings = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": 0.95,
    }
    with dask.config.set(settings):
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit=MEMORY_LIMIT,
            host="127.0.0.1", dashboard_address=":0",
        ) as cluster, Client(cluster, set_as_default=False) as client:
            yield client


@pytest.fixture(scope="module")
def big_zarr(tmp_path_factory, small_cluster):
    """About 1 GiB of float64 rows in Zarr (default codec), written on the cluster."""
    from dask_em.datasets import make_blobs

    base, _labels, truth = make_blobs(1024, N_FEATURES, N_COMPONENTS, covariance_type="diag", random_state=0)
    path = str(tmp_path_factory.mktemp("ooc") / "big.zarr")
    base_d = dask.delayed(base, traverse=False)  # one key, not a copy per task
    blocks = [
        da.from_delayed(dask.delayed(_tile_block)(i, base_d, CHUNK_ROWS), shape=(CHUNK_ROWS, N_FEATURES), dtype=np.float64)
        for i in range(N_CHUNKS)
    ]
    X = da.concatenate(blocks)
    small_cluster.compute(da.to_zarr(X, path, component="X", compute=False)).result()
    return path, base, truth


def _worker_pids(client) -> dict[str, int]:
    return dict(client.run(os.getpid))


def _run_bounded(client, func):
    """Run ``func()``; return its value and every worker's peak RSS during it."""
    pids = _worker_pids(client)
    for pid in pids.values():
        _reset_peak(pid)
    value = func()
    peaks = {addr: _peak_rss(pid) for addr, pid in pids.items()}
    assert _worker_pids(client) == pids, "a worker was restarted (killed over its memory limit?)"
    return value, peaks


def test_gmm_iteration_streams_in_bounded_memory(small_cluster, big_zarr):
    from dask_em import GaussianMixture
    from dask_em.errors import ConvergenceWarning

    path, base, truth = big_zarr
    nbytes = N_CHUNKS * CHUNK_ROWS * N_FEATURES * 8
    assert nbytes > 3 * MEMORY_LIMIT
    gm = GaussianMixture(
        N_COMPONENTS, covariance_type="diag", max_iter=1, tol=0,
        weights_init=truth["weights"], means_init=truth["means"],
        precisions_init=1.0 / np.asarray(truth["covariances"]),
    )
    with pytest.warns(ConvergenceWarning):  # one iteration does not converge
        _, peaks = _run_bounded(small_cluster, lambda: gm.fit(path, client=small_cluster))
    assert max(peaks.values()) < MEMORY_LIMIT, {a: p / MIB for a, p in peaks.items()}
    # Every repeat of the sample contributes the same statistics: the fit on
    # 1 GiB equals one iteration on the 1024 base rows.
    ref = GaussianMixture(
        N_COMPONENTS, covariance_type="diag", max_iter=1, tol=0,
        weights_init=truth["weights"], means_init=truth["means"],
        precisions_init=1.0 / np.asarray(truth["covariances"]),
    )
    with pytest.warns(ConvergenceWarning):
        ref.fit(base, client=small_cluster)
    np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-8)


def test_cli_predict_writes_zarr_out_of_core(small_cluster, big_zarr, tmp_path):
    import zarr

    from dask_em import GaussianMixture, save
    from dask_em.cli import main

    path, base, truth = big_zarr
    gm = GaussianMixture(N_COMPONENTS, covariance_type="diag", max_iter=2, random_state=0).fit(base, client=small_cluster)
    model = str(tmp_path / "model.zarr")
    save(gm, model)
    out = str(tmp_path / "labels.zarr")
    address = small_cluster.scheduler.address
    code, peaks = _run_bounded(
        small_cluster,
        lambda: main(["predict", model, path, "--output", out, "--scheduler", address, "--quiet"]),
    )
    assert code == 0
    assert max(peaks.values()) < MEMORY_LIMIT, {a: p / MIB for a, p in peaks.items()}
    labels = zarr.open_array(out, mode="r")
    assert labels.shape == (N_CHUNKS * CHUNK_ROWS,)
    expected = gm.predict(base)
    first, last = labels[:CHUNK_ROWS], labels[-CHUNK_ROWS:]
    reps = -(-CHUNK_ROWS // len(base))
    np.testing.assert_array_equal(first, np.tile(expected, reps)[:CHUNK_ROWS])
    np.testing.assert_array_equal(last, first)
