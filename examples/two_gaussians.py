"""The two-Gaussian 1-D mixture that introduces EM in most tutorials.

Draws points from two normal distributions, fits a two-component Gaussian
mixture by EM, prints the fitted weights, means and standard deviations
next to the true ones, and writes a plot of the histogram with the fitted
component densities to ``two_gaussians.png`` (needs matplotlib; skipped
with a message without it).

Run: python examples/two_gaussians.py [--n-samples 100000] [--output two_gaussians.png]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import dask_em

TRUE_WEIGHTS = np.array([0.3, 0.7])
TRUE_MEANS = np.array([-2.0, 1.5])
TRUE_SDS = np.array([0.6, 1.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--output", default="two_gaussians.png")
    parser.add_argument("--small", action="store_true", help="a few thousand points (used by the tests)")
    args = parser.parse_args()
    n = 5_000 if args.small or os.environ.get("DASK_EM_EXAMPLE_SMALL") else args.n_samples

    rng = np.random.default_rng(0)
    labels = rng.choice(2, size=n, p=TRUE_WEIGHTS)
    x = rng.normal(TRUE_MEANS[labels], TRUE_SDS[labels]).reshape(-1, 1)

    gmm = dask_em.GaussianMixture(n_components=2, covariance_type="full", random_state=0, tol=1e-6)
    gmm.fit(x)
    order = np.argsort(gmm.means_[:, 0])
    weights = gmm.weights_[order]
    means = gmm.means_[order, 0]
    sds = np.sqrt(gmm.covariances_[order, 0, 0])
    print(f"EM converged: {gmm.converged_} after {gmm.n_iter_} iterations")
    print("component   weight (true)    mean (true)     sd (true)")
    for k in range(2):
        print(f"{k:9d}   {weights[k]:.3f} ({TRUE_WEIGHTS[k]:.1f})   {means[k]: .3f} ({TRUE_MEANS[k]: .1f})"
              f"   {sds[k]:.3f} ({TRUE_SDS[k]:.1f})")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot (pip install matplotlib)")
        return
    grid = np.linspace(x.min() - 0.5, x.max() + 0.5, 400)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(x[:, 0], bins=80, density=True, color="0.85", label="data")
    total = np.zeros_like(grid)
    for k in range(2):
        density = weights[k] * np.exp(-0.5 * ((grid - means[k]) / sds[k]) ** 2) / (sds[k] * np.sqrt(2 * np.pi))
        total += density
        ax.plot(grid, density, label=f"component {k}: mean {means[k]:.2f}, sd {sds[k]:.2f}")
    ax.plot(grid, total, "k--", label="mixture")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
