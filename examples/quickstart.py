"""Quickstart: fit a Gaussian mixture to a Zarr dataset on a LocalCluster.

Run with ``python examples/quickstart.py``; it takes a few seconds.
"""

import tempfile

from distributed import Client, LocalCluster

import dask_em
from dask_em.datasets import make_blobs_zarr

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(
        cluster
    ) as client:
        path = f"{tmp}/blobs.zarr"
        # 100,000 rows x 4 features from a 3-component mixture, in 4 Zarr chunks.
        truth = make_blobs_zarr(path, 100_000, 4, 3, chunk_rows=25_000, random_state=0, client=client)

        gmm = dask_em.GaussianMixture(n_components=3, random_state=0, verbose=1).fit(path)
        print("weights:", gmm.weights_.round(3), "true:", truth["weights"].round(3))
        print("converged:", gmm.converged_, "in", gmm.n_iter_, "iterations")
        labels = gmm.predict(path)  # lazy: a Dask array, nothing read yet
        print("first labels:", labels[:10].compute())
