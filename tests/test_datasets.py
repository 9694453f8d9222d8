"""The synthetic-data helper: deterministic, parallel, and true to its parameters."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zarr

from dask_em.datasets import load_truth, make_blobs, make_blobs_zarr, true_params
from dask_em.engine import IterationInfo
from dask_em.progress import Progress, format_seconds


def test_zarr_rows_equal_in_memory_rows_on_a_cluster(client, tmp_path):
    path = str(tmp_path / "blobs.zarr")
    truth = make_blobs_zarr(path, 10_001, 3, 4, chunk_rows=1_000, random_state=5, client=client)
    X, labels, expected = make_blobs(10_001, 3, 4, chunk_rows=1_000, random_state=5)
    group = zarr.open_group(path, mode="r")
    assert group["X"].chunks == (1_000, 3)
    np.testing.assert_array_equal(group["X"][...], X)
    np.testing.assert_array_equal(group["labels"][...], labels)
    stored = load_truth(path)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(stored[name], expected[name])
        np.testing.assert_array_equal(truth[name], expected[name])
    assert stored["covariance_type"] == "full" and stored["random_state"] == 5


def test_same_seed_same_data_whatever_the_scheduler(tmp_path):
    a = make_blobs_zarr(str(tmp_path / "a.zarr"), 3_000, 2, 2, chunk_rows=500, random_state=1)
    make_blobs_zarr("memory://blobs-b.zarr", 3_000, 2, 2, chunk_rows=500, random_state=1)
    xa = zarr.open_group(a["path"], mode="r")["X"][...]
    xb = zarr.open_group("memory://blobs-b.zarr", mode="r")["X"][...]
    np.testing.assert_array_equal(xa, xb)
    other, _, _ = make_blobs(3_000, 2, 2, chunk_rows=500, random_state=2)
    assert not np.array_equal(xa, other)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_sample_moments_match_the_true_parameters(covariance_type):
    X, labels, truth = make_blobs(40_000, 3, 3, covariance_type=covariance_type, random_state=3)
    assert X.shape == (40_000, 3) and labels.shape == (40_000,)
    np.testing.assert_allclose(np.bincount(labels) / len(labels), truth["weights"], atol=0.01)
    shapes = {"full": (3, 3, 3), "tied": (3, 3), "diag": (3, 3), "spherical": (3,)}
    assert np.shape(truth["covariances"]) == shapes[covariance_type]
    for k in range(3):
        Xk = X[labels == k]
        np.testing.assert_allclose(Xk.mean(axis=0), truth["means"][k], atol=0.05)
        cov = np.cov(Xk.T)
        expected = {
            "full": lambda: truth["covariances"][k],
            "tied": lambda: truth["covariances"],
            "diag": lambda: np.diag(truth["covariances"][k]),
            "spherical": lambda: truth["covariances"][k] * np.eye(3),
        }[covariance_type]()
        np.testing.assert_allclose(cov, expected, atol=0.08)


def test_float32_and_bad_arguments(tmp_path):
    X, _, _ = make_blobs(100, 2, 2, dtype=np.float32)
    assert X.dtype == np.float32
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        make_blobs(100, 2, 0)
    with pytest.raises(ValueError, match="covariance_type"):
        true_params(2, 2, covariance_type="banana")
    path = str(tmp_path / "x.zarr")
    make_blobs_zarr(path, 10, 2, 1, random_state=0)
    with pytest.raises(Exception):
        make_blobs_zarr(path, 10, 2, 1, random_state=0)  # exists and overwrite=False
    make_blobs_zarr(path, 20, 2, 1, random_state=0, overwrite=True)
    assert zarr.open_group(path, mode="r")["X"].shape == (20, 2)


def _info(i, seconds=0.5, change=-1.0):
    return IterationInfo(iteration=i, loglik=-10.0 * i, value=-1.0 + 0.1 * i, change=change,
                         seconds=seconds, params=None, max_iter=10)


def test_progress_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress(stream=out)
    assert progress.mode == "lines"
    progress(_info(1, change=float("inf")))
    progress(_info(2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in out.getvalue()
    assert lines[1].startswith("iter  2/10") and "s/it" in lines[1] and "eta 4.0s" in lines[1]


def test_progress_rewrites_in_place_in_a_terminal():
    out = io.StringIO()
    progress = Progress(stream=out, mode="tty")
    progress(_info(1))
    progress(_info(2))
    text = out.getvalue()
    assert text.count("\x1b[1A") == 1 and text.endswith("\n")
    assert format_seconds(125) == "2m05s" and format_seconds(7300) == "2h02m"
