"""A dask-em fit on Slurm with dask-jobqueue: workers are Slurm jobs.

Run this on a login node (or in a small long-running job); it submits
worker jobs, keeps as many as asked for, and fits with a checkpoint.
Workers retire by themselves before the wall time kills them
(``--lifetime``), staggered so they do not all leave at once, and
``adapt`` submits replacements; the scheduler moves their work elsewhere,
and the fit's result does not change.

If this script itself is stopped, run it again: the fit resumes from the
checkpoint.

Needs ``pip install dask-jobqueue``.
"""

from dask_jobqueue import SLURMCluster
from distributed import Client

from dask_em import GaussianMixture

DATA = "/scratch/project/X.zarr"
CHECKPOINT = "/scratch/project/fit.zarr"  # on a shared file system
OUTPUT = "/scratch/project/model.zarr"

#: Slurm wall time of one worker job, and how long before it a worker retires.
WALLTIME = "04:00:00"
LIFETIME, STAGGER = "225m", "5m"  # retire 10-15 minutes before the wall time


def make_cluster(**kwargs) -> SLURMCluster:
    """The worker jobs: one single-threaded worker process per core."""
    options = dict(
        queue="compute",
        account="project",
        cores=4,
        processes=4,
        memory="16GiB",  # per job; each worker gets a quarter as its memory limit
        walltime=WALLTIME,
        worker_extra_args=["--lifetime", LIFETIME, "--lifetime-stagger", STAGGER],
        local_directory="$TMPDIR",  # spill space on the node's local disk
    )
    options.update(kwargs)
    return SLURMCluster(**options)


def main() -> None:
    import dask_em

    cluster = make_cluster()
    cluster.adapt(minimum_jobs=2, maximum_jobs=8)  # replaces workers that retired
    try:
        with Client(cluster) as client:
            gmm = GaussianMixture(n_components=8, random_state=0, verbose=1)
            gmm.fit(DATA, client=client, checkpoint=CHECKPOINT)  # resumes if it exists
            dask_em.save(gmm, OUTPUT, overwrite=True)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
