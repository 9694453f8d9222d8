"""Runs of consecutive blocks in one task: the same sums bit for bit, one block in memory at a time.

``dask-em.tasks-per-thread`` sets how many tasks a pass has per thread: a
huge value gives one task per block (the layout before runs), a tiny one a
single task over all blocks.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from dask_em.data import array_blocks, as_dask_array
from dask_em.engine import BLOCK_HASHES, expected_stats, prepare_blocks, run_length
from dask_em.models.gmm import GaussianMixtureModel
from dask_em.stats import TreeSum, add_stats

ONE_BLOCK_A_TASK = 1e9  # tasks per thread: more than any block count here
LAYOUTS = (ONE_BLOCK_A_TASK, 1.0, 1e-6)  # one block a task, a few blocks a task, one task


def _reference_tree(parts, split_every):
    level = list(parts)
    while len(level) > 1:
        level = [add_stats(*level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_tree_sum_pairs_as_the_tree_and_aligned_subtrees_are_its_nodes(split_every):
    rng = np.random.default_rng(split_every)
    for n in [*range(1, 40), 67, 513]:
        parts = [{"a": rng.standard_normal(2) * 10.0 ** rng.integers(-8, 9)} for _ in range(n)]
        expected = _reference_tree(parts, split_every)["a"]
        for length in (1, split_every, split_every**2, split_every**3):
            nodes = []
            for start in range(0, n, length):
                tree = TreeSum(split_every)
                for part in parts[start : start + length]:
                    tree.push(part)
                nodes.append(tree.result())
            assert np.array_equal(_reference_tree(nodes, split_every)["a"], expected), (n, length)


def test_tasks_per_pass_follow_the_threads_not_the_blocks():
    for split_every in (2, 3, 8):
        for threads in (1, 2, 64):
            target = 4 * threads
            for n in (1, 7, 100, 10_000, 100_000, 10_000_000):
                length = run_length(n, split_every, threads)
                assert split_every ** round(math.log(length, split_every)) == length
                tasks = math.ceil(n / length)
                if math.ceil(n / split_every) < target:  # too few blocks to group
                    assert length == 1
                else:
                    assert target <= tasks < split_every * target


def _gmm():
    model = GaussianMixtureModel(n_components=3, covariance_type="full")
    params = model.init_params(np.random.default_rng(0).standard_normal((300, 3)), np.random.default_rng(1))
    return model, params


def _passes(model, blocks, params, client, split_every, hash_blocks=False):
    out = []
    for per_thread in LAYOUTS:
        with dask.config.set({"dask-em.tasks-per-thread": per_thread}):
            out.append(expected_stats(model, blocks, params, client, split_every, hash_blocks=hash_blocks))
    return out


def _assert_identical(results):
    first = results[0]
    for other in results[1:]:
        assert set(other) == set(first)
        for key in first:
            if key == BLOCK_HASHES:
                assert other[key] == first[key]
            else:
                assert np.array_equal(np.asarray(other[key]), np.asarray(first[key])), key


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """37 blocks of 23 rows, the last one shorter."""
    X = np.random.default_rng(2).standard_normal((37 * 23 - 9, 3)) * [1.0, 1e3, 1e-3]
    path = str(tmp_path_factory.mktemp("runs") / "x.zarr")
    z = zarr.open(path, mode="w", shape=X.shape, chunks=(23, 3), dtype="f8")
    z[:] = X
    return path


@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_runs_are_bit_identical_to_one_task_per_block(client, store, split_every):
    model, params = _gmm()
    streamed = array_blocks(as_dask_array(store), client, persist=False)
    results = _passes(model, streamed, params, client, split_every, hash_blocks=True)
    assert len(results[0][BLOCK_HASHES]) == 37
    _assert_identical(results)
    persisted = array_blocks(as_dask_array(store), client, persist=True)
    in_process = prepare_blocks(store, None)
    _assert_identical(
        results
        + _passes(model, persisted, params, client, split_every, hash_blocks=True)
        + _passes(model, in_process, params, None, split_every, hash_blocks=True)
    )


def test_runs_are_bit_identical_for_scattered_blocks(client, store):
    model, params = _gmm()
    X = np.asarray(zarr.open(store, mode="r")[:])
    scattered = prepare_blocks(as_dask_array(X, chunk_rows=23, client=client), client)
    kept_scattered = array_blocks(as_dask_array(X, chunk_rows=23, client=client), client, persist=False)
    in_process = array_blocks(as_dask_array(X, chunk_rows=23), None, persist=False)
    _assert_identical(
        _passes(model, scattered, params, client, 3)
        + _passes(model, kept_scattered, params, client, 3)
        + _passes(model, in_process, params, None, 3)
    )


def test_runs_are_bit_identical_for_sequences_and_groups(client):
    from dask_em.data.groups import grouped_blocks
    from dask_em.models.hmm import GaussianHMMModel, GaussianHMMParams
    from dask_em.models.random_effects import RandomEffectsModel
    from dask_em.data.sequences import sequence_blocks

    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 40, 60)
    values = rng.standard_normal((int(lengths.sum()), 3))
    hmm = GaussianHMMModel(n_components=2)
    hmm_params = GaussianHMMParams(
        np.array([0.6, 0.4]), np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[-1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]),
        np.ones((2, 3)),
    )
    g = np.repeat(np.arange(50), rng.integers(2, 9, 50))
    X = np.column_stack([np.ones(len(g)), rng.standard_normal(len(g))])
    y = X @ [1.0, 2.0] + rng.standard_normal(50)[g] + rng.standard_normal(len(g))
    mixed = RandomEffectsModel("ml")
    for kept in (True, False):  # scattered, and read from Dask arrays in the task
        src = (values, X, y) if kept else (da.from_array(values, chunks=50), da.from_array(X, chunks=70), da.from_array(y, chunks=70))
        sequences = sequence_blocks(src[0], lengths, client=client, n_partitions=11)
        groups = grouped_blocks(src[1], src[2], g, client=client, n_partitions=13)
        mixed_params = mixed.init_params(groups.compute(groups.parts[0])[0], rng)
        _assert_identical(_passes(hmm, sequences, hmm_params, client, 2, hash_blocks=True))
        _assert_identical(_passes(mixed, groups, mixed_params, client, 3))


# A model that records, per thread, which of the blocks it has seen are still alive.
_seen = threading.local()


@dataclasses.dataclass(frozen=True)
class _BlocksAlive:
    def e_step(self, block, params):
        refs = getattr(_seen, "refs", None)
        if refs is None:
            refs = _seen.refs = []
        alive = sum(ref() is not None for ref in refs)
        refs[:] = [ref for ref in refs if ref() is not None] + [weakref.ref(block)]
        return {"n": np.array(len(block)), "loglik": np.array(0.0), "most_alive": np.array(float(alive))}

    def m_step(self, stats, params):
        return params


def test_a_run_reads_one_block_at_a_time(client, store):
    """Every block read before the current one in the same worker thread is already freed."""
    blocks = array_blocks(as_dask_array(store), client, persist=False)
    with dask.config.set({"dask-em.tasks-per-thread": 1e-6}):  # one task reads all 37 blocks
        stats = expected_stats(_BlocksAlive(), blocks, None, client, 2)
    assert int(stats["n"]) == 37 * 23 - 9
    assert float(stats["most_alive"]) == 0.0
