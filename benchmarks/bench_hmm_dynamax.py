"""dynamax's GaussianHMM (diagonal) on bench_hmm.py's default data, for its table.

dynamax (JAX, CPU) is not a dependency of dask-em; run this with an
environment that has it (``pip install dynamax``) and with this
repository's ``benchmarks`` directory importable:

    python benchmarks/bench_hmm_dynamax.py [--n-seq 1000] [--length 1000] [--iters 5]

Same data and initial parameters as ``bench_hmm.py`` (1,000 sequences of
1,000 steps, K=5, D=4). Seconds per EM iteration are (fit of ``iters + 1``
iterations minus fit of 1) / ``iters`` after a warm-up fit that compiles;
the whole call is the fit of ``iters`` iterations, compilation excluded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hmm import make_data  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-seq", type=int, default=1000)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--states", type=int, default=5)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from dynamax.hidden_markov_model import DiagonalGaussianHMM

    K, D = args.states, args.features
    X, lengths, init = make_data(args.n_seq, args.length, K, D)
    emissions = jnp.asarray(X.reshape(args.n_seq, args.length, D))
    hmm = DiagonalGaussianHMM(K, D)

    def fit(n_iter: int) -> tuple[float, float]:
        params, props = hmm.initialize(
            jax.random.PRNGKey(0), method="prior",
            initial_probs=jnp.asarray(init["startprob"]), transition_matrix=jnp.asarray(init["transmat"]),
            emission_means=jnp.asarray(init["means"]), emission_scale_diags=jnp.sqrt(jnp.asarray(init["covars"])),
        )
        wall, cpu = time.perf_counter(), time.process_time()
        params, lps = hmm.fit_em(params, props, emissions, num_iters=n_iter, verbose=False)
        jax.block_until_ready(lps)
        return time.perf_counter() - wall, time.process_time() - cpu

    fit(2)  # compiles
    one = fit(1)
    many = fit(args.iters + 1)
    whole = fit(args.iters)
    print(f"load average {os.getloadavg()}; jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"dynamax DiagonalGaussianHMM: {(many[0] - one[0]) / args.iters:.3f} s/iter wall, "
          f"{(many[1] - one[1]) / args.iters:.3f} CPU s/iter; whole call of {args.iters} iterations "
          f"{whole[0]:.3f} s wall, {whole[1]:.3f} CPU s")


if __name__ == "__main__":
    main()
