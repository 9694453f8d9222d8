"""How many clusters? A variational Gaussian mixture switches off the ones the data does not need.

Draws points from four Gaussian clusters, fits ``BayesianGaussianMixture``
with ten components and a Dirichlet-process prior of small concentration,
and prints the expected weight of every component: four carry the data,
the other six end with weights near zero. Then writes an HTML report with
the picture of the active components (needs matplotlib; skipped with a
message without it).

Run: python examples/active_components.py [--n-samples 200000] [--output vbgmm-report.html]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import dask_em

CENTERS = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--output", default="vbgmm-report.html")
    parser.add_argument("--small", action="store_true", help="a few thousand points (used by the tests)")
    args = parser.parse_args()
    n = 4_000 if args.small or os.environ.get("DASK_EM_EXAMPLE_SMALL") else args.n_samples

    rng = np.random.default_rng(0)
    labels = rng.integers(len(CENTERS), size=n)
    X = CENTERS[labels] + rng.normal(scale=0.8, size=(n, 2))

    vbgmm = dask_em.BayesianGaussianMixture(
        n_components=10,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=0.01,
        init_params="k-means++",
        max_iter=300,
        random_state=0,
    )
    vbgmm.fit(X)
    print(f"converged: {vbgmm.converged_} after {vbgmm.n_iter_} iterations, lower bound {vbgmm.lower_bound_:.6g}")
    print("component  weight   mean")
    for k in np.argsort(-vbgmm.weights_):
        print(f"{k:9d}  {vbgmm.weights_[k]:.4f}   {np.round(vbgmm.means_[k], 2)}")
    active = vbgmm.weights_ >= 1e-3
    print(f"{int(active.sum())} of {vbgmm.n_components} components are active (weight >= 0.001)")

    try:
        from dask_em.report import make_report

        written = make_report(vbgmm, args.output, data=X)
        print(f"wrote {args.output} and {len(written)} picture(s)")
    except ImportError as exc:
        print(f"no report: {exc}")


if __name__ == "__main__":
    main()
