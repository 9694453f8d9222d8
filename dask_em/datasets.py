"""Synthetic Gaussian-mixture data, in memory or written to Zarr in parallel.

Every block of rows is drawn from its own generator, seeded from
``(random_state, block index)``. The data therefore depends only on the seed
and ``chunk_rows``, never on which worker generated which block or in what
order, and :func:`make_blobs` with the same ``chunk_rows`` returns exactly
the rows that :func:`make_blobs_zarr` writes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .models._gaussian import check_covariance_type, to_full

__all__ = ["make_blobs", "make_blobs_zarr", "load_truth", "true_params"]

#: Rows per block when the caller does not choose: about 8 MiB of float64.
_DEFAULT_BLOCK_BYTES = 8 * 2**20


def true_params(
    n_features: int,
    n_components: int,
    *,
    covariance_type: str = "full",
    separation: float = 4.0,
    random_state: int | None = 0,
) -> dict[str, Any]:
    """Parameters of a random, well separated Gaussian mixture.

    Parameters
    ----------
    n_features : int
        Dimension of the data.
    n_components : int
        Number of mixture components.
    covariance_type : {"full", "tied", "diag", "spherical"}
        Shape of the covariances, with scikit-learn's array shapes.
    separation : float
        Typical distance between component means, in units of the
        components' standard deviation (which is about 1).
    random_state : int or None
        Seed of the parameters (the same seed gives the same mixture).

    Returns
    -------
    dict
        ``weights`` (K,), ``means`` (K, D), ``covariances`` (shape by
        ``covariance_type``) and ``covariance_type``.
    """
    _check_sizes(1, n_features, n_components)
    check_covariance_type(covariance_type)
    rng = np.random.default_rng(np.random.SeedSequence(random_state, spawn_key=(2**31,)))
    D, K = n_features, n_components
    # Weights kept away from zero so every component is visible in the data.
    weights = rng.dirichlet(np.full(K, 5.0))
    weights = 0.5 * weights + 0.5 / K
    means = rng.normal(scale=separation * math.sqrt(K) / 2.0, size=(K, D))

    def random_spd() -> np.ndarray:
        A = rng.normal(size=(D, D)) / math.sqrt(D)
        return 0.5 * (A @ A.T) + 0.5 * np.eye(D)

    if covariance_type == "full":
        covariances = np.stack([random_spd() for _ in range(K)])
    elif covariance_type == "tied":
        covariances = random_spd()
    elif covariance_type == "diag":
        covariances = rng.uniform(0.3, 1.5, size=(K, D))
    else:
        covariances = rng.uniform(0.3, 1.5, size=K)
    return {"weights": weights, "means": means, "covariances": covariances, "covariance_type": covariance_type}


def _cholesky_factors(truth: dict[str, Any]) -> np.ndarray:
    """Per-component lower Cholesky factors, shape (K, D, D)."""
    K, D = np.shape(truth["means"])
    return np.linalg.cholesky(to_full(truth["covariances"], truth["covariance_type"], K, D))


def _block_seed(random_state: int, block: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(random_state, spawn_key=(block,))


def _generate_block(
    block: int,
    n_rows: int,
    random_state: int,
    weights: np.ndarray,
    means: np.ndarray,
    factors: np.ndarray,
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and true labels of one block, from that block's own generator."""
    rng = np.random.default_rng(_block_seed(random_state, block))
    labels = rng.choice(len(weights), size=n_rows, p=weights)
    z = rng.standard_normal((n_rows, means.shape[1]))
    X = np.empty((n_rows, means.shape[1]), dtype=dtype)
    for k in range(len(weights)):
        rows = labels == k
        X[rows] = means[k] + z[rows] @ factors[k].T
    return X, labels.astype(np.int32)


def _row_chunks(n_samples: int, chunk_rows: int) -> tuple[int, ...]:
    full, rest = divmod(n_samples, chunk_rows)
    return (chunk_rows,) * full + ((rest,) if rest else ())


def _check_sizes(n_samples: int, n_features: int, n_components: int) -> None:
    for name, value in (("n_samples", n_samples), ("n_features", n_features), ("n_components", n_components)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _resolve_seed(random_state: int | None) -> int:
    if random_state is None:
        # Draw a seed once and record it, so the dataset can be regenerated.
        return int(np.random.SeedSequence().entropy % 2**63)
    if isinstance(random_state, (bool, np.bool_)) or int(random_state) != random_state or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer or None, got {random_state!r}")
    return int(random_state)


def _default_chunk_rows(n_samples: int, n_features: int) -> int:
    return int(max(1, min(n_samples, _DEFAULT_BLOCK_BYTES // (8 * n_features))))


def make_blobs(
    n_samples: int,
    n_features: int,
    n_components: int,
    *,
    covariance_type: str = "full",
    random_state: int | None = 0,
    chunk_rows: int | None = None,
    separation: float = 4.0,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A Gaussian-mixture sample in memory, for small data.

    Parameters
    ----------
    n_samples, n_features, n_components : int
        Size of the sample and of the mixture.
    covariance_type : {"full", "tied", "diag", "spherical"}
        Shape of the true covariances.
    random_state : int or None
        Seed; the same seed and ``chunk_rows`` give the same rows as
        :func:`make_blobs_zarr`.
    chunk_rows : int, optional
        Rows per generated block (see the module docstring).
    separation : float
        Typical distance between means in standard deviations.
    dtype : dtype
        float64 or float32.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,)
        Component of each row.
    truth : dict
        The mixture's parameters, as :func:`true_params` returns them.
    """
    _check_sizes(n_samples, n_features, n_components)
    seed = _resolve_seed(random_state)
    chunk_rows = int(chunk_rows or _default_chunk_rows(n_samples, n_features))
    truth = true_params(
        n_features, n_components, covariance_type=covariance_type, separation=separation, random_state=seed
    )
    factors = _cholesky_factors(truth)
    parts = [
        _generate_block(i, rows, seed, truth["weights"], truth["means"], factors, np.dtype(dtype))
        for i, rows in enumerate(_row_chunks(n_samples, chunk_rows))
    ]
    X = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    truth["random_state"] = seed
    return X, labels, truth


def make_blobs_zarr(
    path: str,
    n_samples: int,
    n_features: int,
    n_components: int,
    *,
    chunk_rows: int | None = None,
    covariance_type: str = "full",
    random_state: int | None = 0,
    separation: float = 4.0,
    dtype: Any = np.float64,
    labels: bool = True,
    client: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a Gaussian-mixture dataset to a Zarr group, block by block in parallel.

    Each block of ``chunk_rows`` rows is generated by the task that writes
    it, so no process ever holds more than one block per thread, whatever
    ``n_samples`` is.

    Parameters
    ----------
    path : str
        Local path or fsspec URL of the Zarr group to create. It holds
        ``X`` (n_samples, n_features), optionally ``labels`` (n_samples,),
        and the true parameters in the sub-group ``truth`` (arrays
        ``weights``, ``means``, ``covariances``; the rest in its attributes).
    n_samples, n_features, n_components : int
        Size of the data and of the mixture.
    chunk_rows : int, optional
        Rows per Zarr chunk and per generated block (about 8 MiB by default).
    covariance_type : {"full", "tied", "diag", "spherical"}
        Shape of the true covariances.
    random_state : int or None
        Seed. None draws one and records it in the attributes.
    separation : float
        Typical distance between means in standard deviations.
    dtype : dtype
        float64 or float32.
    labels : bool
        Also write the true component of each row.
    client : distributed.Client, optional
        Generate on this cluster. By default the current distributed client
        if there is one, else local threads. A ``memory://`` store is
        written with local threads (worker processes cannot see it).
    overwrite : bool
        Replace an existing group at ``path``.

    Returns
    -------
    dict
        The true parameters (``weights``, ``means``, ``covariances``,
        ``covariance_type``, ``random_state``) plus ``path``, ``n_samples``
        and ``chunk_rows``.

    Examples
    --------
    >>> truth = make_blobs_zarr("blobs.zarr", 1_000_000, 16, 8, chunk_rows=50_000, random_state=0)
    ... # doctest: +SKIP
    >>> dask_em.GaussianMixture(8).fit("blobs.zarr")  # doctest: +SKIP
    """
    import dask
    import dask.array as da
    import zarr

    _check_sizes(n_samples, n_features, n_components)
    seed = _resolve_seed(random_state)
    chunk_rows = int(chunk_rows or _default_chunk_rows(n_samples, n_features))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type (float32 or float64), got {dtype}")
    truth = true_params(
        n_features, n_components, covariance_type=covariance_type, separation=separation, random_state=seed
    )
    factors = _cholesky_factors(truth)

    group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
    # Every chunk is written (labels of one component are all 0): a missing chunk is refused on reading.
    every_chunk = {"write_empty_chunks": True}
    zX = group.create_array("X", shape=(n_samples, n_features), chunks=(chunk_rows, n_features), dtype=dtype,
                            config=every_chunk)
    zlabels = (group.create_array("labels", shape=(n_samples,), chunks=(chunk_rows,), dtype="int32",
                                  config=every_chunk) if labels else None)
    truth_group = group.create_group("truth")
    for name in ("weights", "means", "covariances"):
        truth_group.create_array(name, data=np.asarray(truth[name], dtype=np.float64))
    attrs = {
        "covariance_type": covariance_type,
        "random_state": seed,
        "n_samples": int(n_samples),
        "n_features": int(n_features),
        "n_components": int(n_components),
        "chunk_rows": chunk_rows,
        "separation": float(separation),
        "generator": "dask_em.datasets.make_blobs_zarr",
    }
    truth_group.attrs.update(attrs)
    group.attrs.update({"description": "synthetic Gaussian mixture", **attrs})

    row_chunks = _row_chunks(n_samples, chunk_rows)
    # The parameters enter the graph once, as one key each.
    w_d, m_d, f_d = (dask.delayed(a, traverse=False) for a in (truth["weights"], truth["means"], factors))
    blocks = [
        dask.delayed(_generate_block, pure=True, nout=2)(i, rows, seed, w_d, m_d, f_d, dtype)
        for i, rows in enumerate(row_chunks)
    ]
    X = da.concatenate(
        [da.from_delayed(b[0], shape=(rows, n_features), dtype=dtype) for b, rows in zip(blocks, row_chunks)]
    )
    sources, targets = [X], [zX]
    if zlabels is not None:
        y = da.concatenate([da.from_delayed(b[1], shape=(rows,), dtype=np.int32) for b, rows in zip(blocks, row_chunks)])
        sources.append(y)
        targets.append(zlabels)
    stored = da.store(sources, targets, lock=False, compute=False)
    if str(path).startswith("memory://"):
        dask.compute(stored, scheduler="threads")
    elif client is not None:
        client.gather(client.compute(stored))
    else:
        dask.compute(stored)
    return {**truth, "random_state": seed, "path": str(path), "n_samples": int(n_samples), "chunk_rows": chunk_rows}


def load_truth(path: str) -> dict[str, Any]:
    """The true parameters stored by :func:`make_blobs_zarr` at ``path``.

    Returns
    -------
    dict
        ``weights``, ``means``, ``covariances`` as numpy arrays and the
        recorded attributes (``covariance_type``, ``random_state``, ...).

    Raises
    ------
    KeyError
        If ``path`` holds no ``truth`` group.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r")
    if "truth" not in group:
        raise KeyError(f"{path!r} has no 'truth' group; it was not written by make_blobs_zarr")
    truth_group = group["truth"]
    out: dict[str, Any] = dict(truth_group.attrs)
    for name in ("weights", "means", "covariances"):
        out[name] = np.asarray(truth_group[name][...])
    return out
