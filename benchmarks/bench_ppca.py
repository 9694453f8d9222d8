"""Out-of-core PPCA on a Zarr array larger than the workers' memory.

Writes a synthetic low-rank-plus-noise array chunk by chunk (never whole in
memory), starts a LocalCluster of small workers, times a plain read pass
(``da.from_zarr(path).sum().compute()``) and then PPCA iterations on the
same cluster, and reports seconds per iteration as a ratio to the read
pass, with the peak memory of the workers. The data is deleted at the end.

Usage::

    python benchmarks/bench_ppca.py --gib 2 --features 64 --components 5 --iters 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from distributed import Client, LocalCluster

from dask_em.estimators.factor import PPCA


def write_data(path: str, n_rows: int, n_features: int, n_components: int, chunk_rows: int) -> np.ndarray:
    """Write ``x = W z + noise`` chunk by chunk; return W."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(n_features, n_components)) * np.linspace(3.0, 1.0, n_components)
    arr = zarr.create_array(path, shape=(n_rows, n_features), chunks=(chunk_rows, n_features), dtype="f8")
    for start in range(0, n_rows, chunk_rows):
        rows = min(chunk_rows, n_rows - start)
        block_rng = np.random.default_rng([1, start])
        arr[start : start + rows] = block_rng.normal(size=(rows, n_components)) @ W.T + block_rng.normal(size=(rows, n_features))
    return W


def worker_memory(client: Client) -> float:
    """Largest managed+unmanaged process memory among the workers, in bytes."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return max(w["metrics"]["memory"] for w in info.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the array in GiB")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=131072)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="512MiB")
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary directory)")
    args = parser.parse_args()

    n_rows = int(args.gib * 2**30 / (8 * args.features))
    base = Path(tempfile.mkdtemp(prefix="bench-ppca-", dir=args.dir))
    path = str(base / "X.zarr")
    try:
        start = time.perf_counter()
        write_data(path, n_rows, args.features, args.components, args.chunk_rows)
        print(f"wrote {n_rows} x {args.features} float64 ({args.gib:.2f} GiB) in {time.perf_counter() - start:.1f} s")
        with LocalCluster(
            n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
            host="127.0.0.1", dashboard_address=":0",
        ) as cluster, Client(cluster) as client:
            peak = [0.0]
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], worker_memory(client))
                    except Exception:
                        pass
                    time.sleep(0.2)

            watcher = threading.Thread(target=poll, daemon=True)
            watcher.start()
            reads = []
            for _ in range(2):
                t0 = time.perf_counter()
                da.from_zarr(path).sum().compute()
                reads.append(time.perf_counter() - t0)
            read = min(reads)
            seconds: list[float] = []
            model = PPCA(args.components, max_iter=args.iters, tol=0.0, init_sample=20_000, random_state=0)
            t0 = time.perf_counter()
            model.fit(path, client=client)
            total = time.perf_counter() - t0
            stop.set()
            watcher.join()
        per_iter = total / max(model.n_iter_, 1)
        print(f"read pass: {read:.2f} s (best of {len(reads)}: {', '.join(f'{r:.2f}' for r in reads)})")
        print(f"PPCA: {model.n_iter_} iterations in {total:.2f} s (incl. init sample) = {per_iter:.2f} s/iteration")
        print(f"ratio per iteration / read pass: {per_iter / read:.2f}")
        print(f"peak worker process memory: {peak[0] / 2**20:.0f} MiB (limit {args.memory_limit} each)")
        print(f"log-likelihood per row: {model.lower_bounds_}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
