"""The genetic-linkage example of Dempster, Laird & Rubin (1977), as a plug-in model.

197 animals fall into four phenotypes with counts (125, 18, 20, 34) and
cell probabilities (1/2 + t/4, (1 - t)/4, (1 - t)/4, t/4). The first cell
mixes two latent cells with probabilities 1/2 and t/4; EM splits its count
between them (E-step) and estimates t from the completed counts (M-step).
The maximum-likelihood estimate is t = 0.6268.

Run: python examples/genetic_linkage.py
"""

from __future__ import annotations

import dataclasses

import numpy as np

import dask_em


@dataclasses.dataclass(frozen=True)
class LinkageParams:
    theta: np.ndarray  # 0-d array: the linkage parameter t


@dataclasses.dataclass(frozen=True)
class Linkage:
    """Rows of the data are counts of the four phenotypes (any split into rows works)."""

    def init_params(self, sample, rng):
        return LinkageParams(np.array(0.5))

    def e_step(self, block, params):
        t = float(params.theta)
        y = np.asarray(block, dtype=np.float64).sum(axis=0)
        p = np.array([0.5 + t / 4, (1 - t) / 4, (1 - t) / 4, t / 4])
        return {
            "n": np.array(y.sum()),
            "loglik": np.array(y @ np.log(p)),  # up to the multinomial constant
            "sum_t_cells": np.array(y[0] * (t / 4) / (0.5 + t / 4) + y[3]),  # expected counts with prob ~ t
            "sum_1mt_cells": np.array(y[1] + y[2]),  # counts with prob ~ (1 - t)
            "n_invalid": np.array(float((block < 0).sum())),
        }

    def m_step(self, stats, params):
        a, b = stats["sum_t_cells"], stats["sum_1mt_cells"]
        return LinkageParams(np.array(a / (a + b)))

    def describe_invalid(self, n):
        return f"{n} counts are negative; counts must be non-negative"


def main() -> float:
    data = np.array([[125.0, 18.0, 20.0, 34.0]])
    result = dask_em.fit_em(
        Linkage(),
        data,
        max_iter=50,
        tol=1e-10,
        tol_on="total",
        callbacks=[lambda info: print(f"iteration {info.iteration:2d}  t = {float(info.params.theta):.6f}  "
                                      f"loglik = {info.loglik:.8f}")],
    )
    theta = float(result.params.theta)
    print(f"converged: {result.converged} after {result.n_iter} iterations; t = {theta:.4f} (published 0.6268)")
    return theta


if __name__ == "__main__":
    main()
