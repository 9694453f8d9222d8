"""Where a fit runs: in this process by default, on a cluster only when asked."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score

import dask_em
from dask_em.executor import describe, local_scheduler, where


@pytest.fixture(scope="module")
def blobs():
    X, _, _ = dask_em.datasets.make_blobs(4_000, 3, 3, random_state=0, separation=4.0)
    return np.asarray(X)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_fit_without_client_starts_no_process(blobs, capsys):
    before = _children()
    gmm = dask_em.GaussianMixture(3, random_state=0, max_iter=5, tol=0.0, verbose=1).fit(blobs)
    km = dask_em.KMeans(3, random_state=0, n_init=1, max_iter=5).fit(blobs)
    assert _children() <= before
    assert gmm.n_iter_ == 5 and km.cluster_centers_.shape == (3, 3)
    assert "dask-em: running in this process on" in capsys.readouterr().err


@pytest.mark.parametrize("estimator", [
    dask_em.GaussianMixture(3, covariance_type="full", random_state=0, max_iter=4, tol=0.0),
    dask_em.KMeans(3, random_state=0, n_init=1, max_iter=4, tol=0.0),
])
def test_in_process_equals_cluster_bit_for_bit(estimator, blobs, client):
    X = da.from_array(blobs, chunks=(700, -1))  # 6 blocks, a two-level tree with split_every=4
    estimator.set_params(split_every=4)
    here = clone(estimator).fit(X)
    there = clone(estimator).fit(X, client=client)
    names = ["weights_", "means_", "covariances_", "lower_bound_"] if hasattr(here, "weights_") else [
        "cluster_centers_", "inertia_"]
    for name in names:
        np.testing.assert_array_equal(getattr(here, name), getattr(there, name), err_msg=name)
    # numpy input: the same blocks in this process as scattered to the workers
    np.testing.assert_array_equal(clone(estimator).fit(blobs).predict(blobs),
                                  clone(estimator).fit(blobs, client=client).predict(blobs))


def test_dask_config_scheduler_is_honoured_even_with_a_current_client(blobs, client):
    calls = []

    def counting_get(*args, **kwargs):
        calls.append(1)
        return dask.get(*args, **kwargs)

    with client.as_current(), dask.config.set(scheduler=counting_get):
        assert local_scheduler() is counting_get
        with where() as active:
            assert active is None and "scheduler" in describe(active)
        dask_em.GaussianMixture(2, random_state=0, max_iter=3, tol=0.0).fit(blobs)
    assert len(calls) >= 3  # one pass per iteration, plus initialisation
    with dask.config.set(scheduler="synchronous"), where() as active:
        assert active is None
    with client.as_current(), where() as active:  # without the setting, the current client
        assert active is client


def test_blocks_on_a_cluster_stay_there(blobs, client):
    from dask_em.engine import prepare_blocks

    blocks = prepare_blocks(blobs, client)
    with where(data=blocks) as active:
        assert active is client


def _e_step_transitions(dask_scheduler, since: float = 0.0) -> int:
    # E-step tasks sent to run since `since`: counted by time, as the log is a bounded deque
    # (earlier tests' entries roll off), and by state, as their keys may still be released
    return sum(
        1 for key, _, finish, *_, stamp in dask_scheduler.transition_log
        if "e_step" in str(key) and finish == "processing" and stamp >= since
    )


def test_blocks_in_this_process_stay_here_with_a_current_client(blobs, client):
    from dask_em.engine import fit_em, prepare_blocks
    from dask_em.models.kmeans import KMeansModel, KMeansParams

    blocks = prepare_blocks(blobs, None)  # held in this process: never shipped in a pass's graph
    with client.as_current():
        with where(data=blocks) as active:
            assert active is None
        with where(data=blobs) as active:  # a plain array still goes to the current client
            assert active is client
        model = KMeansModel(3)
        start = KMeansParams(blobs[:3].copy(), np.array(np.inf))
        since = time.time()
        here = fit_em(model, blocks, start, max_iter=3, tol=0.0, warn_not_converged=False)
        reached = client.run_on_scheduler(_e_step_transitions, since=since)
    assert reached == 0  # no E-step task reached the cluster
    there = fit_em(model, blocks, start, max_iter=3, tol=0.0, warn_not_converged=False)
    np.testing.assert_array_equal(here.params.cluster_centers, there.params.cluster_centers)


def test_row_functions_use_the_thread_pool_on_large_in_memory_data():
    from dask_em.executor import map_row_slices

    X = np.arange(70_000 * 64, dtype=np.float64).reshape(70_000, 64)  # 34 MiB: three 16 MiB blocks
    sizes = []

    def row_sums(block, offset):
        sizes.append(len(block))
        return block.sum(axis=1) + offset

    np.testing.assert_array_equal(map_row_slices(row_sums, X, 1.0), X.sum(axis=1) + 1.0)
    assert len(sizes) == 3 and sum(sizes) == len(X)
    sizes.clear()
    np.testing.assert_array_equal(map_row_slices(row_sums, X[:100], 0.0), X[:100].sum(axis=1))
    assert sizes == [100]  # small data: one call


def test_local_map_keeps_order_takes_items_on_the_calling_thread_and_nests():
    import threading
    import time

    from dask_em.executor import local_map

    ran_on = []

    def slow_double(x):
        ran_on.append(threading.current_thread() is threading.main_thread())
        time.sleep(0.02)  # long enough for both threads to take items
        return 2 * x

    assert local_map(slow_double, list(range(8))) == [2 * x for x in range(8)]
    assert True in ran_on  # the caller took items rather than waiting for each result
    if (os.cpu_count() or 1) > 1:
        assert False in ran_on
    # a call nested inside a pool thread never waits for the (busy) pool
    nested = local_map(lambda x: sum(local_map(lambda y: x * y, list(range(4)))), list(range(6)))
    assert nested == [6 * x for x in range(6)]

    def fails_on_three(x):
        if x == 3:
            raise ValueError("item 3")
        return x

    with pytest.raises(ValueError, match="item 3"):
        local_map(fails_on_three, list(range(8)))


def _run_script(tmp_path, body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240,
        env={**os.environ, **(env or {})}, cwd=tmp_path,
    )


def test_plain_script_without_main_guard_runs_with_clean_stderr(tmp_path):
    proc = _run_script(tmp_path, """
        import numpy as np
        import dask_em
        X = np.random.default_rng(0).normal(size=(300, 2))
        gmm = dask_em.GaussianMixture(2, random_state=0).fit(X)
        print(gmm.n_iter_, len(dask_em.KMeans(2, random_state=0).fit(X).labels_))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.split()[1] == "300"


def test_asked_for_cluster_is_kept_for_the_process_and_closed_quietly(tmp_path):
    proc = _run_script(tmp_path, """
        import numpy as np
        import dask_em
        from dask_em.cluster import session_client

        if __name__ == "__main__":
            X = np.random.default_rng(0).normal(size=(300, 2))
            dask_em.GaussianMixture(2, random_state=0).fit(X)
            first = session_client()
            dask_em.KMeans(2, random_state=0, n_init=1).fit(X)
            assert session_client() is first
            print(len(first.scheduler_info()["workers"]))
    """, env={"DASK_EM_WORKERS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    assert proc.stderr == ""


def test_model_selection_with_joblib_processes(blobs):
    X = blobs[:600]
    search = GridSearchCV(dask_em.GaussianMixture(random_state=0, max_iter=20), {"n_components": [2, 3]},
                          n_jobs=2, cv=2)
    search.fit(X)
    assert search.best_params_["n_components"] in (2, 3)
    scores = cross_val_score(dask_em.KMeans(3, random_state=0, n_init=1), X, cv=3, n_jobs=2)
    assert scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.parametrize("cls", [dask_em.GaussianMixture, dask_em.KMeans, dask_em.GaussianHMM])
def test_estimators_pickle_and_clone(cls, blobs):
    fitted = cls(2, random_state=0, max_iter=3).fit(blobs[:400])
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(blobs[:50]), fitted.predict(blobs[:50]))
    fresh = clone(fitted)
    assert fresh.get_params() == cls(2, random_state=0, max_iter=3).get_params()
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(fresh))


def test_cli_workers_and_scheduler_together_is_a_usage_error(blobs, tmp_path):
    from test_cli import call

    np.save(tmp_path / "x.npy", blobs[:100])
    code, _, err = call("fit", "gmm", str(tmp_path / "x.npy"), "-k", "2", "--workers", "1",
                        "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "--workers or --scheduler" in err
