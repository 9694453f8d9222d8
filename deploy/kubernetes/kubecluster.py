"""A dask-em fit from Python on a cluster made by the Dask Kubernetes operator.

Needs ``pip install dask-kubernetes`` where this runs, the operator in the
Kubernetes cluster (see deploy/README.md), and the dask-em image pushed to
a registry the cluster can pull from.
"""

from dask_kubernetes.operator import KubeCluster
from distributed import Client

from dask_em import GaussianMixture

IMAGE = "registry.example.com/dask-em:0.1.0"

cluster = KubeCluster(
    name="dask-em",
    image=IMAGE,
    n_workers=4,
    # The pod's memory, and a worker memory limit a little under it.
    resources={"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "1", "memory": "4Gi"}},
    worker_command=["dask", "worker", "--nthreads", "1", "--memory-limit", "3.5GiB"],
    env={"OMP_NUM_THREADS": "1"},
)
try:
    with Client(cluster) as client:
        gmm = GaussianMixture(n_components=8, random_state=0, verbose=1)
        # Data and checkpoint in an object store every pod can reach.
        gmm.fit("s3://bucket/X.zarr", client=client, checkpoint="s3://bucket/fit.zarr")
        print(gmm.weights_, gmm.lower_bound_)
finally:
    cluster.close()
