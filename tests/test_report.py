"""Reports: the pictures are rendered, are valid PNGs of real size, and the page shows them."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import dask_em  # noqa: E402
from dask_em.report import make_report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: str) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk, after checking the signature."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


def check_images(paths: list[str], html_path: str, names: list[str]) -> None:
    """Each expected picture exists, is a PNG of sensible size and is referenced by the page."""
    assert [os.path.basename(p).rsplit("-", 1)[1] for p in paths] == [f"{n}.png" for n in names]
    with open(html_path, encoding="utf-8") as fh:
        page = fh.read()
    for path in paths:
        width, height = png_size(path)
        assert width >= 300 and height >= 200, (path, width, height)
        assert os.path.getsize(path) > 5_000, path
        assert f'src="{os.path.basename(path)}"' in page
    # Readable by an image decoder, with several distinct colours (not a blank canvas).
    import matplotlib.image

    pixels = matplotlib.image.imread(paths[-1])
    assert pixels.shape[0] == png_size(paths[-1])[1]
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1])[::7], axis=0)) > 20


@pytest.fixture(scope="module")
def mixture_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, 0.0], [1.0, 6.0, 3.0]])
    return np.vstack([rng.normal(m, 0.5 + 0.4 * i, size=(600, 3)) for i, m in enumerate(means)])


@pytest.fixture(scope="module")
def gmm(client, mixture_data):
    return dask_em.GaussianMixture(3, covariance_type="full", random_state=0).fit(mixture_data, client=client)


@pytest.fixture(scope="module")
def hmm_data() -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    transmat = np.array([[0.9, 0.08, 0.02], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    # three features, as hmmlearn's own tests (tests/peer): their compiled kernels are shared
    means = np.array([[1.0, -1.0, 1.0], [3.0, 1.0, -1.5], [-2.0, 4.0, 0.5]])
    states = [0]
    for _ in range(1_199):
        states.append(rng.choice(3, p=transmat[states[-1]]))
    X = means[np.array(states)] + 0.6 * rng.standard_normal((1_200, 3))
    return X, [500, 700]


@pytest.fixture(scope="module")
def hmm(client, hmm_data):
    X, lengths = hmm_data
    return dask_em.GaussianHMM(3, covariance_type="full", random_state=0, n_iter=30).fit(X, lengths, client=client)


def test_cli_report_of_saved_gmm_with_data(gmm, mixture_data, tmp_path):
    """One real subprocess: load the saved model, sample the .npy data, write page and PNGs."""
    model = str(tmp_path / "gmm.zarr")
    dask_em.save(gmm, model)
    data = str(tmp_path / "X.npy")
    np.save(data, mixture_data)
    output = str(tmp_path / "out" / "report.html")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "dask_em.cli", "report", model, "--data", data, "--sample-size", "1000",
         "--output", output, "--json", "--quiet"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output"] == output
    check_images(result["images"], output, ["convergence", "projection"])


def test_make_report_gmm_in_process_from_path(gmm, mixture_data, client, tmp_path):
    model = str(tmp_path / "gmm.zarr")
    dask_em.save(gmm, model)
    output = str(tmp_path / "gmm.html")
    written = make_report(model, output, data=mixture_data, sample_size=800, client=client)
    check_images(written, output, ["convergence", "projection"])
    page = open(output, encoding="utf-8").read()
    assert "weights_" in page and "means_" in page and "n_iter_" in page


def test_make_report_without_data_shows_components(gmm, tmp_path):
    output = str(tmp_path / "nodata.html")
    written = make_report(gmm, output)
    check_images(written, output, ["convergence", "projection"])


def test_make_report_hmm_with_sequences(hmm, hmm_data, client, tmp_path):
    X, lengths = hmm_data
    model = str(tmp_path / "hmm.zarr")
    dask_em.save(hmm, model)
    output = str(tmp_path / "hmm" / "report.html")
    written = make_report(model, output, data=X, lengths=lengths, sample_size=600, client=client)
    check_images(written, output, ["convergence", "projection", "transitions", "sequence"])
    page = open(output, encoding="utf-8").read()
    assert "transmat_" in page and "startprob_" in page


def test_make_report_embeds_images(hmm, tmp_path):
    output = str(tmp_path / "embedded.html")
    written = make_report(hmm, output, embed=True)
    assert [os.path.basename(p) for p in written] == [
        "embedded-convergence.png", "embedded-projection.png", "embedded-transitions.png"
    ]
    page = open(output, encoding="utf-8").read()
    assert page.count('src="data:image/png;base64,') == 3


def test_make_report_rejects_bad_arguments(gmm, tmp_path):
    with pytest.raises(ValueError, match="sample_size"):
        make_report(gmm, str(tmp_path / "r.html"), sample_size=0)
    with pytest.raises(ValueError, match="not fitted"):
        make_report(dask_em.GaussianMixture(2), str(tmp_path / "r.html"))


def test_missing_matplotlib_is_a_clear_error(gmm, tmp_path, monkeypatch):
    import dask_em.report as report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(report.MissingDependencyError, match="pip install"):
        report.make_report(gmm, str(tmp_path / "r.html"))
