"""Impute a table with missing values stored in Zarr, without loading it into memory.

Writes a table of correlated measurements with 15% of its entries missing
to a Zarr store, fits ``dask_em.MultivariateNormal`` by EM directly on the
store (NaN marks a missing value), writes the imputed table to a second
Zarr store lazily (block by block), and reports how close the imputed
values are to the hidden truth compared with filling in column means.

Run: python examples/impute_table.py [--n-samples 2000000] [--n-features 12] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import dask.array as da
import numpy as np
import zarr

import dask_em


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2_000_000)
    parser.add_argument("--n-features", type=int, default=12)
    parser.add_argument("--missing", type=float, default=0.15)
    parser.add_argument("--workdir", default=None, help="where the Zarr stores go (default: a temporary directory)")
    parser.add_argument("--small", action="store_true", help="20,000 rows (used by the tests)")
    args = parser.parse_args()
    n = 20_000 if args.small or os.environ.get("DASK_EM_EXAMPLE_SMALL") else args.n_samples
    d = args.n_features
    workdir = args.workdir or tempfile.mkdtemp(prefix="dask-em-impute-")
    chunk = min(n, 250_000)

    # A table generated block by block: truth, and the same with holes.
    rng = np.random.default_rng(0)
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    shift = rng.normal(size=d) * 3
    truth = da.random.default_rng(1).standard_normal((n, d), chunks=(chunk, d)) @ (A + np.eye(d)) + shift
    holes = da.random.default_rng(2).random((n, d), chunks=(chunk, d)) < args.missing
    table_path = os.path.join(workdir, "table.zarr")
    truth_path = os.path.join(workdir, "truth.zarr")
    da.to_zarr(truth, truth_path, overwrite=True)
    da.to_zarr(da.where(holes, np.nan, da.from_zarr(truth_path)), table_path, overwrite=True)
    print(f"wrote {n} x {d} table with {args.missing:.0%} missing entries to {table_path}")

    model = dask_em.MultivariateNormal(tol=1e-6, max_iter=200)
    model.fit(table_path)
    print(f"EM converged: {model.converged_} after {model.n_iter_} iterations, "
          f"observed-data log-likelihood per row {model.lower_bound_:.4f}")

    imputed_path = os.path.join(workdir, "imputed.zarr")
    imputed = model.impute(table_path)  # lazy: nothing is computed yet
    da.to_zarr(imputed.rechunk((chunk, d)), imputed_path, overwrite=True)
    print(f"wrote the imputed table to {imputed_path}")

    table = da.from_zarr(table_path)
    missing = da.isnan(table)
    hidden = da.from_zarr(truth_path)
    means = da.nanmean(table, axis=0)
    err_em = da.sqrt(da.sum(da.where(missing, (da.from_zarr(imputed_path) - hidden) ** 2, 0)) / missing.sum())
    err_mean = da.sqrt(da.sum(da.where(missing, (means - hidden) ** 2, 0)) / missing.sum())
    err_em, err_mean = da.compute(err_em, err_mean)
    print(f"root mean squared error on the missing entries: EM conditional means {err_em:.4f}, "
          f"column means {err_mean:.4f}")
    assert zarr.open(imputed_path, mode="r").shape == (n, d)


if __name__ == "__main__":
    main()
