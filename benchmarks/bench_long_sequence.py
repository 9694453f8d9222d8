"""One HMM sequence far larger than worker memory, fitted exactly in segments.

Writes one Gaussian HMM sequence of ``--steps`` steps x ``--n-features``
features to a Zarr sequence store (one sequence: ``lengths == [steps]``),
chunk by chunk, then on a LocalCluster of ``--workers`` single-threaded
workers limited to ``--memory-limit`` each:

- a plain read pass over the store (the floor an iteration is compared to);
- ``--iters`` Baum-Welch iterations of a diagonal GaussianHMM on the whole
  sequence cut into segments at chunk boundaries
  (:mod:`dask_em.models.hmm.segments`: a transfer-operator pass and a
  statistics pass per iteration, ``n_passes``);
- per-worker peak memory, spilled bytes, and worker restarts (the worker
  processes' pids before and after), so "no worker killed, nothing spilled"
  is checked, not assumed; and each worker's resident memory and large
  imports (scikit-learn, SciPy, pandas, numba, ...) after one iteration.

With ``--compare-workers`` the same is repeated on one worker for the
speed-up from 1 to 2 workers.

It also measures, on one segment in this process, the cost of the two
designs in the issue: two passes (transfer operators, then statistics)
against one pass of statistics conditioned on every entering and leaving
state, whose floor is K forward-backward sweeps plus K^2 times the
statistics (timed here as K fused E-steps, a lower bound).

Example::

    python benchmarks/bench_long_sequence.py --steps 80000000 --workers 2 --memory-limit 400MiB --iters 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from typing import Any

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _memwatch import Watch, merge_peaks, spill_state, worker_logs_problems, worker_pids  # noqa: E402

MIB = 2**20
K_TRUE = 3


@njit(cache=True)
def _walk(cdf: np.ndarray, u: np.ndarray, state: int) -> np.ndarray:  # pragma: no cover - compiled
    s = np.empty(len(u), dtype=np.int64)
    for t in range(len(u)):
        row = cdf[state]
        k = 0
        while k < len(row) - 1 and row[k] <= u[t]:
            k += 1
        state = k
        s[t] = k
    return s


def truth(D: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "startprob": np.full(K_TRUE, 1.0 / K_TRUE),
        "transmat": np.array([[0.98, 0.01, 0.01], [0.02, 0.96, 0.02], [0.01, 0.03, 0.96]]),
        "means": rng.normal(scale=3.0, size=(K_TRUE, D)),
    }


def write_sequence(path: str, steps: int, D: int, chunk_rows: int) -> float:
    """One sampled sequence, written chunk by chunk (bounded memory); returns seconds."""
    import zarr

    t0 = time.perf_counter()
    true = truth(D)
    cdf = np.cumsum(true["transmat"], axis=1)
    rng = np.random.default_rng(1)
    group = zarr.open_group(path, mode="w")
    values = group.create_array("values", shape=(steps, D), chunks=(chunk_rows, D), dtype=np.float64)
    group.create_array("lengths", data=np.array([steps], dtype=np.int64))
    state = 0
    for lo in range(0, steps, chunk_rows):
        n = min(chunk_rows, steps - lo)
        s = _walk(cdf, rng.random(n), state)
        state = int(s[-1])
        values[lo : lo + n] = true["means"][s] + rng.normal(size=(n, D))
    return time.perf_counter() - t0


def start_params(D: int) -> Any:
    from dask_em.models.hmm import GaussianHMMParams

    true = truth(D)
    rng = np.random.default_rng(2)
    return GaussianHMMParams(
        startprob=np.full(K_TRUE, 1.0 / K_TRUE),
        transmat=0.8 * np.eye(K_TRUE) + 0.2 / K_TRUE,
        means=true["means"] + rng.normal(scale=0.5, size=true["means"].shape),
        covars=np.ones((K_TRUE, D)),
    )


def read_pass(client: Any, blocks: Any, pids: dict[str, int]) -> Watch:
    """One plain read of every block (the same graph of reads as the fit), summed."""
    from dask_em.engine import expected_stats

    class ReadOnly:
        def e_step(self, block: Any, params: Any) -> dict[str, np.ndarray]:
            return {"n": np.array(float(len(block[0]))), "loglik": np.array(0.0), "s": np.asarray(block[0]).sum(axis=0)}

    with Watch(pids) as w:
        expected_stats(ReadOnly(), blocks, None, client)
    return w


def worker_footprint() -> dict[str, Any]:
    """Run in a worker: its resident MiB now and which large libraries it has imported."""
    import psutil

    heavy = ("sklearn", "scipy", "pandas", "pyarrow", "numba", "dask.array", "zarr")
    return {"rss_mib": round(psutil.Process().memory_info().rss / MIB, 1),
            "imported": [name for name in heavy if name in sys.modules]}


def design_costs(path: str, segment: int, D: int) -> dict[str, float]:
    """Seconds on one segment in this process: two-pass design vs the floor of the one-pass design."""
    import zarr

    from dask_em.models.hmm import GaussianHMMModel
    from dask_em.models.hmm.segments import SegmentedHMM, SegmentPart, SegmentTable, TransferPass

    X = np.asarray(zarr.open_group(path, mode="r")["values"][segment : 2 * segment])
    part = SegmentPart(X, np.array([len(X)]), 0, False)
    model = GaussianHMMModel(n_components=K_TRUE, covariance_type="diag")
    params = start_params(D)
    table = SegmentTable(np.zeros(1, np.int64), np.zeros(1, bool))
    seg = SegmentedHMM(model, table)
    ops = TransferPass(model, 1)

    def best(f: Any, repeats: int = 3) -> float:
        f()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_read = best(lambda: np.asarray(zarr.open_group(path, mode="r")["values"][segment : 2 * segment]))
    t_pass1 = best(lambda: ops.e_step(part, (params,)))
    sp = seg.prepare_e_step(params, lambda m, p: m.e_step(part, p))
    t_pass2 = best(lambda: seg.e_step(part, sp))
    t_fused = best(lambda: model.e_step((X, np.array([len(X)])), params))
    return {
        "segment_steps": len(X),
        "read_s": round(t_read, 4),
        "two_pass_transfer_s": round(t_pass1, 4),
        "two_pass_statistics_s": round(t_pass2, 4),
        "two_pass_total_with_two_reads_s": round(2 * t_read + t_pass1 + t_pass2, 4),
        "one_fused_e_step_s": round(t_fused, 4),
        "k_conditioned_floor_s": round(t_read + K_TRUE * t_fused, 4),
    }


def numerics(steps: int, D: int, chunk_rows: int) -> dict[str, Any]:
    """Log-likelihood of one ``steps``-long sequence: segments (operators + scan) against the serial forward pass.

    The sequence is generated chunk by chunk (never held whole), so 10^8
    steps fit in this process. Serial: the scaled forward recursion run
    through the chunks in order, carrying the filtered state distribution
    from one chunk into the next (the plain algorithm, no operators).
    Segments: each chunk's transfer operator and the scan of
    :func:`dask_em.models.hmm.segments.segment_messages`.
    """
    from dask_em.models.hmm import GaussianHMMModel, forward_backward
    from dask_em.models.hmm.segments import SegmentPart, SegmentTable, TransferPass, segment_messages

    true = truth(D)
    cdf = np.cumsum(true["transmat"], axis=1)
    rng = np.random.default_rng(3)
    model = GaussianHMMModel(n_components=K_TRUE, covariance_type="diag")
    params = start_params(D)
    n_seg = math.ceil(steps / chunk_rows)
    ops = np.empty((n_seg, K_TRUE, K_TRUE))
    scales = np.empty(n_seg)
    serial, f, state = 0.0, None, 0
    t0 = time.perf_counter()
    for i, lo in enumerate(range(0, steps, chunk_rows)):
        n = min(chunk_rows, steps - lo)
        s = _walk(cdf, rng.random(n), state)
        state = int(s[-1])
        X = true["means"][s] + rng.normal(size=(n, D))
        part = SegmentPart(X, np.array([n]), 0, i == 0)
        stats = TransferPass(model, 1).e_step(part, (params,))
        ops[i], scales[i] = stats["ops"][0, 0], stats["log_scales"][0, 0]
        logB, _ = model.log_emission(X, params)
        pred = params.startprob if f is None else f @ params.transmat
        gamma = np.empty_like(logB)
        serial += forward_backward(logB, np.array([n]), np.ascontiguousarray(pred), params.transmat, gamma,
                                   np.zeros(K_TRUE), np.zeros((K_TRUE, K_TRUE)))
        f = gamma[-1]  # filtered distribution at the chunk's last step
    table = SegmentTable(np.zeros(n_seg, np.int64), np.arange(n_seg) == 0)
    segmented = float(segment_messages(table, ops, scales, params.startprob).loglik.sum())
    return {
        "steps": steps,
        "segments": n_seg,
        "loglik_serial": serial,
        "loglik_segments": segmented,
        "relative_difference": abs(segmented - serial) / abs(serial),
        "finite": bool(np.isfinite(segmented)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(args: argparse.Namespace, n_workers: int, path: str) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from dask_em.engine import fit_em
    from dask_em.models.hmm import GaussianHMMModel
    from dask_em.models.hmm.segments import SegmentedHMM
    from dask_em.data.sequences import sequence_blocks

    import dask
    # here, not at the top: worker processes start by importing this script's
    # top level (multiprocessing's spawn), and that one imports dask.array
    from bench_out_of_core import parse_size, timed_fit

    limit = parse_size(args.memory_limit)
    # Dask's defaults: spill at 70%, pause at 80%, terminate at 95%. With
    # --no-pause, pausing is off: a worker whose unmanaged memory (imported
    # modules, compiled kernels) is already over 80% pauses and never resumes,
    # and the fit stalls (observed at 400 MiB); spilling and termination keep
    # their defaults either way, and the run reports what was spilled.
    settings: dict[str, Any] = {"distributed.worker.memory.pause": False} if args.no_pause else {}
    # One malloc arena per process: Zarr's I/O threads otherwise each grow an
    # arena of their own, and the worker's resident size with them.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    settings["distributed.nanny.pre-spawn-environ"] = {**environ, "MALLOC_ARENA_MAX": 1}
    with dask.config.set(settings), LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=limit,
        host="127.0.0.1", dashboard_address=":0",
    ) as cluster, Client(cluster) as client:
        pids = worker_pids(client)
        watch_pids = {f"worker {i}": pid for i, pid in enumerate(pids.values())}
        blocks = sequence_blocks(path, client=client, persist=False, segment_length=args.chunk_rows)
        model = SegmentedHMM(GaussianHMMModel(n_components=K_TRUE, covariance_type="diag"), blocks.segments)
        reads = [read_pass(client, blocks, watch_pids)]  # warm-up (page cache, imports)
        reads = [read_pass(client, blocks, watch_pids) for _ in range(args.reads)]
        # one warm-up iteration loads the compiled kernels in the workers
        result = fit_em(model, blocks, start_params(args.n_features), max_iter=1, tol=0.0, client=client,
                        warn_not_converged=False)
        footprint = client.run(worker_footprint)  # after one segmented iteration
        seconds, watches, queue = timed_fit(client, model, blocks, start_params(args.n_features), args.iters, watch_pids)
        spill = spill_state(client)
        problems = worker_logs_problems(client)
        after = worker_pids(client)
    read_s = float(np.median([w.seconds for w in reads]))
    it_s = float(np.median(seconds))
    return {
        "workers": n_workers,
        "segments": len(blocks.segments),
        "passes_per_iteration": result.n_passes,
        "read_pass_seconds": [round(w.seconds, 2) for w in reads],
        "iteration_seconds": [round(s, 2) for s in seconds],
        "iteration_over_read_pass": round(it_s / read_s, 2),
        "worker_cpu_per_iteration": round(float(np.median([sum(w.cpu_seconds.values()) for w in watches])), 2),
        "worker_cpu_per_read_pass": round(float(np.median([sum(w.cpu_seconds.values()) for w in reads])), 2),
        "worker_after_one_iteration": list(footprint.values()),
        "peak_rss_mib": {k: round(v / MIB, 1) for k, v in merge_peaks(watches + reads).items()},
        "spilled_bytes": {k: v["spilled_bytes"] for k, v in spill.items()},
        "disk_writes": {k: v["disk_write_count"] for k, v in spill.items()},
        "workers_restarted": sorted(set(pids.values()) ^ set(after.values())),
        "memory_log_lines": problems[:10],
        "scheduler_queue": queue,
    }


def _give_up(seconds: float) -> None:
    print(json.dumps({"error": f"gave up after {seconds:.0f} s (--timeout)", "load_average": os.getloadavg()}),
          flush=True)
    os._exit(3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=80_000_000)
    p.add_argument("--n-features", type=int, default=4)
    p.add_argument("--chunk-rows", type=int, default=250_000, help="rows per Zarr chunk = steps per segment")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="400MiB", help="per worker")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--reads", type=int, default=2, help="timed read passes")
    p.add_argument("--compare-workers", action="store_true", help="also run on one worker (speed-up)")
    p.add_argument("--path", default="/tmp/dask_em_long/sequence.zarr")
    p.add_argument("--keep", action="store_true", help="keep the store")
    p.add_argument("--no-pause", action="store_true",
                   help="turn off Dask's pause at 80%% of worker memory (see run())")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--timeout", type=float, default=3 * 3600,
                   help="seconds after which an unattended run gives up (exit code 3): a fit whose workers "
                        "stay paused waits forever")
    p.add_argument("--numerics", type=int, default=0, metavar="STEPS",
                   help="only compare the segmented and serial log-likelihood of one STEPS-long sequence (in process)")
    args = p.parse_args(argv)
    watchdog = threading.Timer(args.timeout, _give_up, (args.timeout,))
    watchdog.daemon = True
    watchdog.start()
    if args.numerics:
        out = numerics(args.numerics, args.n_features, args.chunk_rows)
        out["command"] = "python benchmarks/bench_long_sequence.py " + " ".join(sys.argv[1:] if argv is None else argv)
        out["load_average"] = os.getloadavg()
        print(json.dumps(out), flush=True)
        return 0

    D = args.n_features
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_long_sequence.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": args.steps,
        "n_features": D,
        "in_memory_gib": round(args.steps * D * 8 / 2**30, 3),
        "chunk_rows": args.chunk_rows,
        "memory_limit": args.memory_limit,
        "worker_pause": "off" if args.no_pause else "dask default (80%)",
        "load_average_at_start": os.getloadavg(),
        "runs": [],
    }
    path = args.path
    marker = os.path.join(path, f".written-{args.steps}-{D}-{args.chunk_rows}")
    if not os.path.exists(marker):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        results["write_seconds"] = round(write_sequence(path, args.steps, D, args.chunk_rows), 1)
        open(marker, "w").close()
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)
    results["design_costs_one_segment"] = design_costs(path, args.chunk_rows, D)
    print(json.dumps(results["design_costs_one_segment"]), flush=True)
    for n_workers in ([args.workers, 1] if args.compare_workers and args.workers != 1 else [args.workers]):
        out = run(args, n_workers, path)
        results["runs"].append(out)
        print(json.dumps(out), flush=True)
    if len(results["runs"]) == 2:
        a, b = results["runs"]
        results["speed_up_1_to_%d_workers" % a["workers"]] = round(
            float(np.median(b["iteration_seconds"])) / float(np.median(a["iteration_seconds"])), 2)
    results["load_average_at_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}), flush=True)
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
