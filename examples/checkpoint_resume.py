"""Fit, interrupt, resume: a checkpointed Gaussian mixture ends exactly where it would have.

A long fit on preemptible machines dies now and then. With ``checkpoint=``
every iteration leaves a Zarr snapshot; running the same ``fit`` again picks
up from the last one, and the result is bit-identical to a fit that was
never interrupted.

Run::

    python examples/checkpoint_resume.py [--checkpoint PATH] [--n-samples N]

The checkpoint may also be an fsspec URL such as ``s3://bucket/fit.zarr``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import warnings

import numpy as np

import dask_em
from dask_em import GaussianMixture
from dask_em import checkpoint_iteration
from dask_em.cluster import get_client

SETTINGS = dict(n_components=3, covariance_type="full", tol=0.0, random_state=42)


def make_data(n_samples: int) -> np.ndarray:
    """Three Gaussian clusters in 3-D."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [-4.0, 3.0, 2.0]])
    return centers[rng.choice(3, n_samples)] + rng.normal(size=(n_samples, 3))


def doomed_fit(scheduler: str, checkpoint: str, n_samples: int, max_iter: int) -> None:
    """The fit that will be killed: a separate process on the same cluster."""
    from distributed import Client

    warnings.simplefilter("ignore")
    with Client(scheduler) as client:
        GaussianMixture(**SETTINGS, max_iter=max_iter).fit(make_data(n_samples), client=client, checkpoint=checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint path or URL (default: a temporary directory)")
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--max-iter", type=int, default=12)
    args = parser.parse_args()

    X = make_data(args.n_samples)
    workdir = tempfile.mkdtemp(prefix="dask-em-example-")
    checkpoint = args.checkpoint or f"{workdir}/fit.zarr"
    settings = dict(SETTINGS, max_iter=args.max_iter)
    warnings.simplefilter("ignore", dask_em.errors.ConvergenceWarning)  # tol=0 runs every iteration

    with get_client() as client:
        # 1. The fit we want to reproduce, without interruption.
        reference = GaussianMixture(**settings).fit(X, client=client)

        # 2. The same fit with a checkpoint, in another process, killed with
        #    SIGKILL (as a pre-emption would) once 5 iterations are on disk.
        process = multiprocessing.get_context("spawn").Process(
            target=doomed_fit, args=(client.scheduler.address, checkpoint, args.n_samples, args.max_iter)
        )
        process.start()
        while (checkpoint_iteration(checkpoint) or 0) < 5 and process.is_alive():
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        print(f"killed; the checkpoint holds iteration {checkpoint_iteration(checkpoint)}")

        # 3. Run the same fit again: it resumes from the checkpoint.
        resumed = GaussianMixture(**settings).fit(X, client=client, checkpoint=checkpoint)
        info = dask_em.describe(checkpoint)
        print(f"resumed and finished at iteration {info['iteration']}, log-likelihood {info['loglik']:.6f}")

        same = all(
            np.asarray(getattr(resumed, name)).tobytes() == np.asarray(getattr(reference, name)).tobytes()
            for name in ("weights_", "means_", "covariances_", "lower_bound_", "n_iter_")
        )
        print(f"bit-identical: {same}")

        # 4. Save the fitted model in the same format; load it and predict.
        model_path = f"{workdir}/model.zarr"
        dask_em.save(resumed, model_path)
        labels = dask_em.load(model_path).predict(X[:5])
        print(f"saved to {model_path}; the loaded model predicts {labels.tolist()} for the first rows")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
