"""Overhead of a checkpoint every iteration on the GaussianMixture benchmark.

1,000,000 x 16 float64, K=8, full covariances, 10 iterations, on a local
cluster: the same fit without and with ``checkpoint_every=1``, alternated
``--repeats`` times; the ratio of median wall times is reported.

Run::

    python benchmarks/bench_checkpoint.py [--n-samples 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--n-components", type=int, default=8)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint-dir", default=None, help="where snapshots go (default: a temporary directory)")
    args = parser.parse_args()

    import dask.array as da

    from dask_em import GaussianMixture
    from dask_em.cluster import get_client
    from dask_em.data import array_blocks

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=5.0, size=(args.n_components, args.n_features))
    X = centers[rng.choice(args.n_components, args.n_samples)] + rng.normal(size=(args.n_samples, args.n_features))
    workdir = args.checkpoint_dir or tempfile.mkdtemp(prefix="dask-em-bench-")
    with get_client() as client:
        blocks = array_blocks(da.from_array(X, chunks=(62_500, -1)), client, persist=True)
        del X
        settings = dict(max_iter=args.max_iter, tol=0.0, random_state=0, init_params="random_from_data")
        GaussianMixture(args.n_components, **settings).fit(blocks, client=client)  # warm up workers
        times: dict[str, list[float]] = {"without": [], "with": []}
        for repeat in range(args.repeats):
            for mode in ("without", "with"):
                checkpoint = f"{workdir}/fit-{repeat}.zarr" if mode == "with" else None
                start = time.perf_counter()
                GaussianMixture(args.n_components, **settings).fit(blocks, client=client, checkpoint=checkpoint, checkpoint_every=1)
                times[mode].append(time.perf_counter() - start)
                print(f"repeat {repeat} {mode:7s} checkpoint: {times[mode][-1]:.3f} s", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"median without {without:.3f} s, with checkpoint_every=1 {with_:.3f} s, ratio {with_ / without:.3f}")


if __name__ == "__main__":
    main()
