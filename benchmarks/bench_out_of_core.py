"""Out-of-core fits: data several times larger than the cluster's memory.

A LocalCluster of ``--workers`` single-threaded workers, each limited to
``--memory-limit``, fits a Gaussian mixture (diag and full covariances)
and a Gaussian HMM (diag) to a Zarr dataset at least ``--ratio`` times the
total worker memory, written beforehand with
:func:`dask_em.datasets.make_blobs_zarr` (Zarr's default codec, zstd).

What is checked and reported:

- no worker process is killed or restarted (worker pids before and after);
- nothing spills (worker spill buffers and their disk-write counters) and
  no worker pauses;
- the peak resident memory of every process (each worker and this process,
  which also runs the scheduler) stays under its limit;
- seconds per EM iteration as a ratio to one plain read pass over the same
  Zarr data on the same cluster (``da.from_zarr(...).sum().compute()``),
  read passes interleaved with the fits. Worker CPU seconds per pass are
  reported too: on a shared machine they are steadier than wall time.

Initial parameters are the true mixture's weights and means with unit
covariances (no initialisation pass is timed). The HMM reads the same
values, renamed into a Zarr sequence store (``values`` + ``lengths``) of
equal-length sequences: i.i.d. mixture draws are a valid sample of an HMM
whose transition rows all equal the weights.

Run::

    python benchmarks/bench_out_of_core.py --size-gib 8 --workers 2 --memory-limit 1GiB

The dataset is deleted at the end unless ``--keep``; an existing dataset
of the right shape at ``--path`` is reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import dask
import dask.array as da
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memwatch import Watch, merge_peaks, spill_state, worker_logs_problems, worker_pids  # noqa: E402

GIB = 2**30
MIB = 2**20


def parse_size(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def read_pass(client: Any, path: str, component: str, pids: dict[str, int]) -> Watch:
    """One plain read of every chunk, summed: the floor an iteration is compared to."""
    X = da.from_zarr(path, component=component)
    with Watch(pids) as w:
        client.compute(X.sum()).result()
    return w


def queued_sampler(client: Any) -> Any:
    """Most root tasks held back in the scheduler's queue during a phase (root-task queuing at work)."""
    import threading

    state = {"max_queued": 0, "max_processing_per_worker": 0}
    stop = threading.Event()

    def probe(dask_scheduler: Any) -> tuple[int, int]:
        busy = max((len(ws.processing) for ws in dask_scheduler.workers.values()), default=0)
        return len(dask_scheduler.queued), busy

    def loop() -> None:
        while not stop.is_set():
            try:
                q, p = client.run_on_scheduler(probe)
                state["max_queued"] = max(state["max_queued"], q)
                state["max_processing_per_worker"] = max(state["max_processing_per_worker"], p)
            except Exception:
                pass
            stop.wait(0.25)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def finish() -> dict[str, int]:
        stop.set()
        thread.join()
        return state

    return finish


def timed_fit(
    client: Any,
    model: Any,
    data: Any,
    params: Any,
    n_iter: int,
    pids: dict[str, int],
) -> tuple[list[float], list[Watch], dict[str, int]]:
    """``n_iter`` EM iterations through :func:`dask_em.fit_em`, one Watch per iteration."""
    from dask_em.engine import fit_em

    watches: list[Watch] = []
    seconds: list[float] = []
    current: list[Watch] = []

    def start_next() -> None:
        w = Watch(pids)
        w.__enter__()
        current.append(w)

    def on_iteration(info: Any) -> None:
        w = current.pop()
        w.__exit__(None, None, None)
        watches.append(w)
        seconds.append(info.seconds)
        if info.iteration < n_iter:
            start_next()

    finish = queued_sampler(client)
    start_next()
    fit_em(model, data, params, max_iter=n_iter, tol=0.0, client=client, callbacks=[on_iteration],
           warn_not_converged=False)
    while current:
        current.pop().__exit__(None, None, None)
    return seconds, watches, finish()


def gmm_params(truth: dict[str, Any], covariance_type: str) -> Any:
    from dask_em.models.gmm import GMMParams, precisions_cholesky_from_covariances

    K, D = np.shape(truth["means"])
    cov = np.ones((K, D)) if covariance_type == "diag" else np.tile(np.eye(D), (K, 1, 1))
    return GMMParams(
        weights=np.asarray(truth["weights"], np.float64),
        means=np.asarray(truth["means"], np.float64),
        covariances=cov,
        precisions_cholesky=precisions_cholesky_from_covariances(cov, covariance_type),
    )


def hmm_setup(truth: dict[str, Any], n_states: int) -> tuple[Any, Any]:
    from dask_em import GaussianHMM

    K, D = n_states, np.shape(truth["means"])[1]
    est = GaussianHMM(n_components=K, covariance_type="diag")
    model = est._make_model(D)
    from dask_em.models.hmm import GaussianHMMParams

    weights = np.asarray(truth["weights"][:K], np.float64)
    weights /= weights.sum()
    params = GaussianHMMParams(
        startprob=weights.copy(),
        transmat=np.tile(weights, (K, 1)),
        means=np.asarray(truth["means"][:K], np.float64),
        covars=np.ones((K, D)),
    )
    return model, params


def as_sequence_store(path: str, seq_len: int) -> None:
    """Turn the blobs group into a sequence store: X -> values, plus lengths."""
    import zarr

    if not os.path.exists(os.path.join(path, "values")):
        os.rename(os.path.join(path, "X"), os.path.join(path, "values"))
    group = zarr.open_group(path, mode="r+")
    n = int(group["values"].shape[0])
    lengths = np.full(n // seq_len, seq_len, dtype=np.int64)
    if n % seq_len:
        lengths = np.r_[lengths, n % seq_len]
    if "lengths" in group:
        del group["lengths"]
    group.create_array("lengths", data=lengths)


def summarise(name: str, seconds: list[float], watches: list[Watch], reads: list[Watch], queue: dict[str, int]) -> dict[str, Any]:
    read_wall = float(np.median([w.seconds for w in reads]))
    read_cpu = float(np.median([sum(w.cpu_seconds.values()) for w in reads]))
    it_wall = float(np.median(seconds))
    it_cpu = float(np.median([sum(w.cpu_seconds.values()) for w in watches]))
    return {
        "model": name,
        "iteration_seconds": [round(s, 3) for s in seconds],
        "read_pass_seconds": [round(w.seconds, 3) for w in reads],
        "ratio_wall": round(it_wall / read_wall, 3),
        "worker_cpu_per_iteration": round(it_cpu, 2),
        "worker_cpu_per_read_pass": round(read_cpu, 2),
        "ratio_cpu": round(it_cpu / read_cpu, 3),
        "peak_rss_mib": {k: round(v / MIB, 1) for k, v in merge_peaks(watches + reads).items()},
        "scheduler_queue": queue,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gib", type=float, default=8.0, help="in-memory size of the dataset (float64)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="1GiB", help="per worker")
    p.add_argument("--n-features", type=int, default=16)
    p.add_argument("--n-components", type=int, default=8)
    p.add_argument("--hmm-states", type=int, default=4)
    p.add_argument("--chunk-mib", type=float, default=32.0, help="in-memory size of one Zarr chunk")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=32768, help="HMM sequence length (divides the chunk rows)")
    p.add_argument("--path", default="/tmp/dask_em_ooc/blobs.zarr")
    p.add_argument("--keep", action="store_true", help="keep the dataset")
    p.add_argument("--only", default="diag,full,hmm", help="comma-separated subset of diag,full,hmm")
    p.add_argument("--ratio", type=float, default=4.0, help="least dataset size / total worker memory")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from distributed import Client, LocalCluster

    from dask_em.datasets import load_truth, make_blobs_zarr
    from dask_em.data.sequences import sequence_blocks

    limit = parse_size(args.memory_limit)
    D, K = args.n_features, args.n_components
    chunk_rows = int(args.chunk_mib * MIB // (8 * D))
    chunk_rows -= chunk_rows % args.seq_len if chunk_rows >= args.seq_len else 0
    n_chunks = math.ceil(args.size_gib * GIB / (chunk_rows * D * 8))
    n = n_chunks * chunk_rows
    total_limit = args.workers * limit
    if n * D * 8 < args.ratio * total_limit:
        raise SystemExit(f"dataset of {n * D * 8 / GIB:.2f} GiB is under {args.ratio}x the workers' {total_limit / GIB:.2f} GiB")
    only = set(args.only.split(","))
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_out_of_core.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "workers": args.workers,
        "memory_limit_mib": limit / MIB,
        "n_samples": n,
        "n_features": D,
        "chunk_rows": chunk_rows,
        "n_chunks": n_chunks,
        "in_memory_gib": round(n * D * 8 / GIB, 3),
        "load_average_at_start": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "runs": [],
    }
    # Defaults kept on purpose (spill at 70%, pause at 80%, terminate at 95%):
    # the checks prove they are never reached.
    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=limit,
        host="127.0.0.1", dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        pids = worker_pids(client)
        watch_pids = {**{f"worker {i}": pid for i, pid in enumerate(pids.values())}, "client+scheduler": os.getpid()}
        path = args.path
        reuse = False
        if os.path.exists(path):
            try:
                t = load_truth(path)
                reuse = t["n_samples"] == n and t["n_features"] == D and t["chunk_rows"] == chunk_rows
            except Exception:
                reuse = False
        if not reuse:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            t0 = time.perf_counter()
            make_blobs_zarr(path, n, D, K, chunk_rows=chunk_rows, covariance_type="diag", random_state=0,
                            labels=False, client=client)
            results["write_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"wrote {n} x {D} ({n * D * 8 / GIB:.2f} GiB) in {results['write_seconds']} s", flush=True)
        truth = load_truth(path)
        component = "values" if os.path.exists(os.path.join(path, "values")) else "X"
        results["on_disk_gib"] = round(dir_bytes(path) / GIB, 3)
        results["data_over_worker_memory"] = round(n * D * 8 / total_limit, 2)
        print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)

        try:
            # warm-up: numba kernels loaded in the workers, page cache state as for every later pass
            read_pass(client, path, component, watch_pids)
            for ct in ("diag", "full"):
                if ct not in only:
                    continue
                if component != "X":
                    os.rename(os.path.join(path, "values"), os.path.join(path, "X"))
                    component = "X"
                from dask_em.models.gmm import GaussianMixtureModel

                model = GaussianMixtureModel(K, ct)
                reads = [read_pass(client, path, "X", watch_pids)]
                seconds, watches, queue = timed_fit(client, model, path, gmm_params(truth, ct), args.iters, watch_pids)
                reads.append(read_pass(client, path, "X", watch_pids))
                run = summarise(f"GaussianMixture {ct} K={K}", seconds, watches, reads, queue)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
            if "hmm" in only:
                as_sequence_store(path, args.seq_len)
                component = "values"
                model, params = hmm_setup(truth, args.hmm_states)
                blocks = sequence_blocks(path, client=client, n_partitions=n_chunks, dtype=np.float64, persist=False)
                results["hmm_partitions"] = len(blocks.parts)
                results["hmm_sequences"] = int(len(blocks.lengths))
                reads = [read_pass(client, path, "values", watch_pids)]
                seconds, watches, queue = timed_fit(client, model, blocks, params, args.iters, watch_pids)
                reads.append(read_pass(client, path, "values", watch_pids))
                run = summarise(f"GaussianHMM diag K={args.hmm_states}", seconds, watches, reads, queue)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
        finally:
            after = worker_pids(client)
            results["workers_restarted"] = sorted(set(pids.items()) ^ set(after.items()))
            results["spill"] = spill_state(client)
            results["log_problems"] = worker_logs_problems(client)
            results["load_average_at_end"] = os.getloadavg()
    results["limit_mib"] = limit / MIB
    worst = max((v for r in results["runs"] for k, v in r["peak_rss_mib"].items() if k.startswith("worker")), default=0)
    results["worst_worker_peak_mib"] = worst
    results["ok"] = (
        not results["workers_restarted"]
        and all(s["spilled_bytes"] == 0 and s["disk_write_count"] == 0 and not s["paused"] for s in results["spill"].values())
        and worst < limit / MIB
    )
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
