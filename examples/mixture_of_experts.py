"""A piecewise-linear function learnt by a mixture of linear experts (a normalised RBF network).

Draws noisy points of ``y = |x - 1| - |x + 1|`` (three linear pieces),
fits ``MixtureOfExperts`` with three Gaussian-gated linear experts, and
prints each expert's line and gate next to the truth and the error of the
prediction ``E[y | x]``. Then fits a mixture of linear regressions (constant
gates, latent-class regression as R's flexmix) to two crossing lines, where
which line a point follows does not depend on ``x``.

Run: python examples/mixture_of_experts.py [--n-samples 200000]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from distributed import Client

import dask_em


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--small", action="store_true", help="a few thousand points (used by the tests)")
    args = parser.parse_args()
    n = 3_000 if args.small or os.environ.get("DASK_EM_EXAMPLE_SMALL") else args.n_samples
    rng = np.random.default_rng(0)
    # One small in-process cluster for both fits (a fit without a client would start its own).
    with Client(processes=False, dashboard_address=":0") as client:
        fit_both(n, rng, client)


def fit_both(n: int, rng: np.random.Generator, client: Client) -> None:
    """The two fits and their printouts."""
    x = rng.uniform(-4, 4, size=(n, 1))
    y = np.abs(x[:, 0] - 1) - np.abs(x[:, 0] + 1) + 0.1 * rng.normal(size=n)
    experts = dask_em.MixtureOfExperts(n_components=3, random_state=0, tol=1e-6, max_iter=300).fit(x, y, client=client)
    print(f"MixtureOfExperts: {experts.n_iter_} iterations, converged {experts.converged_}")
    print("expert  gate centre  gate sd   line                 (true: y = 2 left of -1, -2x between, -2 right of 1)")
    for k in np.argsort(experts.means_[:, 0]):
        sd = float(np.sqrt(experts.covariances_[k, 0, 0]))
        print(f"{k:6d}  {experts.means_[k, 0]:11.2f}  {sd:7.2f}   "
              f"y = {experts.coef_[k, 0, 0]: .3f} x {experts.intercept_[k, 0]:+.3f}")
    grid = np.linspace(-3.5, 3.5, 8)[:, None]
    truth = np.abs(grid[:, 0] - 1) - np.abs(grid[:, 0] + 1)
    print(f"largest |E[y | x] - truth| on {len(grid)} points: {np.abs(experts.predict(grid) - truth).max():.3f}")

    x = rng.uniform(0, 10, size=(n, 1))
    first = rng.random(n) < 0.3
    y = np.where(first, 5 + 2 * x[:, 0], 20 - x[:, 0]) + rng.normal(size=n)
    lines = dask_em.MixtureOfLinearRegressions(n_components=2, n_init=2, random_state=0, tol=1e-6).fit(x, y, client=client)
    print(f"MixtureOfLinearRegressions: {lines.n_iter_} iterations")
    for k in np.argsort(lines.weights_):
        print(f"  weight {lines.weights_[k]:.3f}: y = {lines.coef_[k, 0, 0]: .3f} x {lines.intercept_[k, 0]:+.3f}, "
              f"noise sd {np.sqrt(lines.noise_variance_[k, 0]):.3f}")
    print("  (true: weight 0.3, y = 2 x + 5; weight 0.7, y = -x + 20; noise sd 1)")


if __name__ == "__main__":
    main()
