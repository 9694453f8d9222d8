"""Scaling of a streamed EM iteration with the number of rows, on 1 and 2 workers.

One Zarr dataset (``make_blobs_zarr``, default codec) is written once; fits
read its first 1, 3, 10, 30 and 100 chunks (two orders of magnitude of N),
streamed from Zarr every iteration (``persist=False``), on LocalClusters of
one and two single-threaded workers with ``--memory-limit`` each. For each
size: median seconds per diag-GMM iteration (after one warm-up iteration)
and the peak resident memory of the workers.

The per-iteration fixed overhead is the intercept of a straight-line fit of
seconds against N; its parts are measured directly: building the graph,
one iteration on a single tiny block (graph + scheduling + reduction +
M-step), and the M-step alone.

Run::

    python benchmarks/bench_scaling.py            # writes benchmarks/scaling.png

matplotlib is needed for the plot (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memwatch import Watch, worker_pids  # noqa: E402

MIB = 2**20


def run_sizes(n_workers: int, path: str, sizes: list[int], chunk_rows: int, K: int, iters: int, limit: str) -> list[dict[str, Any]]:
    from distributed import Client, LocalCluster

    from dask_em.data import array_blocks, as_dask_array
    from dask_em.datasets import load_truth
    from dask_em.engine import expected_stats
    from dask_em.models.gmm import GaussianMixtureModel, GMMParams

    truth = load_truth(path)
    D = int(truth["n_features"])
    model = GaussianMixtureModel(K, "diag")
    params = GMMParams(truth["weights"], truth["means"], np.ones((K, D)), np.ones((K, D)))
    out = []
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=limit,
                      host="127.0.0.1", dashboard_address=":0") as cluster, Client(cluster) as client:
        pids = {f"worker {i}": p for i, p in enumerate(worker_pids(client).values())}
        X_all = as_dask_array(path)
        for n_chunks in sizes:
            X = X_all[: n_chunks * chunk_rows]
            t0 = time.perf_counter()
            blocks = array_blocks(X, client, persist=False)
            prep = time.perf_counter() - t0
            expected_stats(model, blocks, params, client)  # warm-up
            seconds, peaks = [], []
            for _ in range(iters):
                with Watch(pids) as w:
                    t = time.perf_counter()
                    stats = expected_stats(model, blocks, params, client)
                    model.m_step(stats, params)
                    seconds.append(time.perf_counter() - t)
                peaks.append(max(w.peaks.values()))
            row = {
                "workers": n_workers,
                "n_samples": int(X.shape[0]),
                "n_chunks": n_chunks,
                "seconds": [round(s, 4) for s in seconds],
                "median_seconds": float(np.median(seconds)),
                "peak_worker_rss_mib": round(max(peaks) / MIB, 1),
                "prepare_seconds": round(prep, 4),
            }
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def overhead_parts(path: str, K: int) -> dict[str, float]:
    """Fixed costs of one iteration, each measured alone on a 2-worker cluster."""
    import dask
    from distributed import Client, LocalCluster

    from dask_em.data import array_blocks, as_dask_array
    from dask_em.datasets import load_truth
    from dask_em.engine import expected_stats
    from dask_em.models.gmm import GaussianMixtureModel, GMMParams
    from dask_em.stats import add_stats

    truth = load_truth(path)
    D = int(truth["n_features"])
    model = GaussianMixtureModel(K, "diag")
    params = GMMParams(truth["weights"], truth["means"], np.ones((K, D)), np.ones((K, D)))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        X = as_dask_array(path)[:1024]
        blocks = array_blocks(X, client, persist=False)
        stats = expected_stats(model, blocks, params, client)
        tiny = []
        for _ in range(7):
            t = time.perf_counter()
            expected_stats(model, blocks, params, client)
            tiny.append(time.perf_counter() - t)
        m = []
        for _ in range(50):
            t = time.perf_counter()
            model.m_step(stats, params)
            m.append(time.perf_counter() - t)
        # graph building for 100 blocks (the largest size), without computing
        Xb = as_dask_array(path)
        b100 = array_blocks(Xb, client, persist=False)
        t = time.perf_counter()
        md, pd = dask.delayed(model, traverse=False), dask.delayed(params, traverse=False)
        level = [dask.delayed(lambda a, b, c: None, pure=True)(md, p, pd) for p in b100.parts]
        while len(level) > 1:
            level = [dask.delayed(add_stats, pure=True)(*level[i : i + 8]) for i in range(0, len(level), 8)]
        build = time.perf_counter() - t
    return {
        "one_tiny_block_iteration_s": float(np.median(tiny)),
        "m_step_s": float(np.median(m)),
        "graph_build_100_blocks_s": build,
    }


def plot(rows: list[dict[str, Any]], fits: dict[int, tuple[float, float]], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for w, style in ((1, "o-"), (2, "s-")):
        sel = [r for r in rows if r["workers"] == w]
        n = np.array([r["n_samples"] for r in sel], float)
        ax1.loglog(n, [r["median_seconds"] for r in sel], style, label=f"{w} worker{'s' if w > 1 else ''}")
        a, b = fits[w]
        grid = np.geomspace(n.min(), n.max(), 50)
        ax1.loglog(grid, a + b * grid, ":", color=ax1.lines[-1].get_color(),
                   label=f"fit {a:.2f} s + {b * 1e6:.2f} s per 1M rows")
        ax2.semilogx(n, [r["peak_worker_rss_mib"] for r in sel], style, label=f"{w} worker{'s' if w > 1 else ''}")
    ax1.set_xlabel("rows N (16 features, float64)")
    ax1.set_ylabel("seconds per iteration (diag GMM, K=8)")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    ax2.set_xlabel("rows N")
    ax2.set_ylabel("peak worker RSS (MiB)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    ax2.grid(True, alpha=0.3)
    fig.suptitle("Streamed from Zarr every iteration (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="/tmp/dask_em_scaling/blobs.zarr")
    p.add_argument("--chunk-rows", type=int, default=65536)
    p.add_argument("--sizes", default="1,3,10,30,100", help="numbers of chunks")
    p.add_argument("--n-components", type=int, default=8)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--memory-limit", default="1GiB")
    p.add_argument("--png", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling.png"))
    p.add_argument("--json", default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)

    from dask_em.datasets import make_blobs_zarr

    sizes = [int(s) for s in args.sizes.split(",")]
    n = max(sizes) * args.chunk_rows
    if not os.path.exists(args.path):
        os.makedirs(os.path.dirname(args.path), exist_ok=True)
        t = time.perf_counter()
        make_blobs_zarr(args.path, n, 16, args.n_components, chunk_rows=args.chunk_rows,
                        covariance_type="diag", labels=False, random_state=0)
        print(f"wrote {n} rows in {time.perf_counter() - t:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    for w in (1, 2):
        rows += run_sizes(w, args.path, sizes, args.chunk_rows, args.n_components, args.iters, args.memory_limit)
    fits = {}
    for w in (1, 2):
        sel = [r for r in rows if r["workers"] == w]
        b, a = np.polyfit([r["n_samples"] for r in sel], [r["median_seconds"] for r in sel], 1)
        fits[w] = (float(a), float(b))
    parts = overhead_parts(args.path, args.n_components)
    result = {
        "command": "python benchmarks/bench_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": rows,
        "linear_fit": {str(w): {"intercept_s": a, "seconds_per_million_rows": b * 1e6} for w, (a, b) in fits.items()},
        "overhead": parts,
        "load_average": [load0, os.getloadavg()],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    plot(rows, fits, args.png)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if not args.keep:
        shutil.rmtree(args.path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
