"""Seconds per EM iteration: DiscreteBayesianNetwork against pgmpy's ExpectationMaximization.

Two networks, each from the same initial CPDs in both libraries:

* ``small``: a binary latent L and four observed variables, L -> A (3
  states), L -> B (2), A -> C (2), L -> C, L -> D (3): the network of the
  parity tests; at most 36 distinct rows.
* ``lca``: latent class analysis, a latent class with 3 states and 8
  indicators of 3 states each (up to 6,561 distinct rows).

pgmpy drops every row with a missing value, so the side-by-side data has
none; dask-em is also timed with 5% of the values missing at random.

* pgmpy: ``get_parameters(max_iter=2)`` from the same CPDs, divided by 2
  (its set-up before the loop is small when every CPD is given; a
  difference of two runs was swamped by noise on a loaded machine).
* dask-em on a cluster: the estimator's model through ``dask_em.fit_em``
  on a 2-worker LocalCluster with the data persisted in 8 blocks; the
  median wall seconds of the iterations after the first, including the
  Dask round trip of the pass.
* dask-em in this process (the default a user gets: no client, Dask's
  thread pool, one thread per core): the estimator's own
  ``DiscreteBayesianNetwork(..., cpds_init=..., max_iter=iters, tol=0).fit(df)``
  as a whole call (wall and CPU seconds of this process, all threads), and
  per iteration the median of the iterations after the first of the same
  pass through ``fit_em`` with no client (wall, and CPU seconds between
  iterations).
* dask-em in one thread: ``e_step`` + ``m_step`` on the whole array, no Dask
  (the best of 3).

Run: python benchmarks/bench_bayesnet.py [--n-samples 1000000] [--networks small lca] [--iters 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings

import dask.array as da
import numpy as np
import pandas as pd
from sklearn.base import clone

from dask_em import DiscreteBayesianNetwork, fit_em
from dask_em.cluster import local_cluster
from dask_em.engine import prepare_blocks

NETWORKS = {
    "small": ([("L", "A"), ("L", "B"), ("A", "C"), ("L", "C"), ("L", "D")],
              {"L": 2, "A": 3, "B": 2, "C": 2, "D": 3}),
    "lca": ([("L", f"X{i}") for i in range(8)], {"L": 3, **{f"X{i}": 3 for i in range(8)}}),
}


def network(name: str):
    edges, cards = NETWORKS[name]
    observed = [v for v in cards if v != "L"]
    est = DiscreteBayesianNetwork(edges, latent={"L": cards["L"]}, cardinality={k: cards[k] for k in observed})
    return est._model(observed), observed


def simulate(name: str, n: int, missing: float = 0.0, seed: int = 0) -> pd.DataFrame:
    model, observed = network(name)
    truth = model.init_params(None, np.random.default_rng(5))
    rng = np.random.default_rng(seed)
    codes = model.sample(n, truth, rng)[:, 1:].astype(float)
    if missing:
        codes[rng.random(codes.shape) < missing] = np.nan
    return pd.DataFrame(codes, columns=observed)


def pgmpy_seconds_per_iteration(name: str, df: pd.DataFrame, init) -> tuple[float, float]:
    """Wall and CPU seconds per iteration of pgmpy's EM from the CPDs ``init``."""
    import pgmpy
    from pgmpy.estimators import ExpectationMaximization
    from pgmpy.factors.discrete import TabularCPD
    from pgmpy.models import DiscreteBayesianNetwork as PgmpyNetwork

    edges, cards = NETWORKS[name]
    pgmpy.config.SHOW_PROGRESS = False
    logging.getLogger("pgmpy").setLevel(logging.ERROR)
    parents = {v: [p for p, c in edges if c == v] for v in cards}
    times = {}
    for k in (2,):
        cpds = {v: TabularCPD(v, cards[v], init[v], evidence=parents[v] or None,
                              evidence_card=[cards[p] for p in parents[v]] or None) for v in cards}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            em = ExpectationMaximization(PgmpyNetwork(edges, latents={"L"}), df)
            start, cpu = time.perf_counter(), time.process_time()
            em.get_parameters(latent_card={"L": cards["L"]}, max_iter=k, init_cpds=cpds, atol=-1.0,
                              show_progress=False)
            times[k] = (time.perf_counter() - start, time.process_time() - cpu)
    return times[2][0] / 2, times[2][1] / 2


def in_process_seconds(name: str, model, df: pd.DataFrame, init_params, init, iters: int) -> dict[str, float]:
    """The default a user gets, no client: the estimator's whole call and per-iteration figures."""
    edges, cards = NETWORKS[name]
    observed = [v for v in cards if v != "L"]
    est = DiscreteBayesianNetwork(edges, latent={"L": cards["L"]}, cardinality={k: cards[k] for k in observed},
                                  cpds_init=init, max_iter=iters, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: "did not converge" is expected
        clone(est).set_params(max_iter=2).fit(df.iloc[:1000])  # warm: compilation is not part of the figure
        start, cpu = time.perf_counter(), time.process_time()
        est.fit(df)
    whole, whole_cpu = time.perf_counter() - start, time.process_time() - cpu
    # The same pass through fit_em with no client, for the time of each iteration.
    walls: list[float] = []
    cpus: list[float] = [time.process_time()]

    def record(info) -> None:
        walls.append(info.seconds)
        cpus.append(time.process_time())

    X = np.ascontiguousarray(df.to_numpy())
    fit_em(model, prepare_blocks(X, None), init_params, max_iter=iters, tol=0.0, client=None,
           warn_not_converged=False, callbacks=[record])
    steps = np.diff(cpus)
    return {"whole": whole, "whole_cpu": whole_cpu, "n_iter": est.n_iter_,
            "iter": statistics.median(walls[1:]), "iter_cpu": float(np.median(steps[1:]))}


def cluster_seconds(model, df: pd.DataFrame, init_params, client, iters: int) -> float:
    rows = -(-len(df) // 8)
    blocks = prepare_blocks(da.from_array(df.to_numpy(), chunks=(rows, -1)), client, persist=True)
    seconds: list[float] = []
    fit_em(model, blocks, init_params, max_iter=iters, tol=0.0, client=client, warn_not_converged=False,
           callbacks=[lambda info: seconds.append(info.seconds)])
    return statistics.median(seconds[1:])


def one_thread_seconds(model, df: pd.DataFrame, init_params, iters: int = 3) -> float:
    X = np.ascontiguousarray(df.to_numpy())
    params, times = init_params, []
    for _ in range(iters):
        start = time.perf_counter()
        params = model.m_step(model.e_step(X, params), params)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--iters", type=int, default=8)
    args = parser.parse_args()
    from distributed import Client

    print(f"load average before: {os.getloadavg()}")
    # Not the default client: the in-process figures must be what a user without a client gets
    # (a current client would run them on this cluster, shipping the data in every pass).
    with local_cluster() as cluster, Client(cluster, set_as_default=False) as client:
        for name in args.networks:
            model, _ = network(name)
            init_params = model.init_params(None, np.random.default_rng(1))
            init = {v: t.reshape(t.shape[0], -1) for v, t in zip(model.variables, model.split(init_params.values))}
            df = simulate(name, args.n_samples)
            ours = cluster_seconds(model, df, init_params, client, args.iters)
            missing = cluster_seconds(model, simulate(name, args.n_samples, 0.05), init_params, client, args.iters)
            thread = one_thread_seconds(model, df, init_params)
            here = in_process_seconds(name, model, df, init_params, init, args.iters)
            theirs, theirs_cpu = pgmpy_seconds_per_iteration(name, df, init)
            print(f"{name}: {args.n_samples:,} rows, {len(np.unique(df.to_numpy(), axis=0)):,} distinct")
            print(f"  dask-em in process (default, no client): whole fit {here['whole']:.3f} s "
                  f"(CPU {here['whole_cpu']:.3f} s) for {here['n_iter']} iterations; "
                  f"{here['iter']:.4f} s/iteration (CPU {here['iter_cpu']:.4f} s)")
            print(f"  dask-em, 2-worker LocalCluster: {ours:.3f} s/iteration (5% missing: {missing:.3f} s)")
            print(f"  dask-em, one thread, no Dask:   {thread:.4f} s/iteration")
            print(f"  pgmpy:                          {theirs:.3f} s/iteration (CPU {theirs_cpu:.3f} s)")
            print(f"  ratio pgmpy / dask-em per iteration: {theirs / here['iter']:.1f}x in process (default; "
                  f"CPU {theirs_cpu / here['iter_cpu']:.1f}x), {theirs / ours:.1f}x on the cluster, "
                  f"{theirs / thread:.1f}x in one thread; pgmpy per iteration / dask-em whole call per iteration: "
                  f"{theirs / (here['whole'] / here['n_iter']):.1f}x")
            print(f"  load average: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
