"""The ``dask-em`` command.

Subcommands: ``demo``, ``fit``, ``resume``, ``predict``, ``score``,
``info``, ``select`` and ``report``; ``dask-em COMMAND --help`` shows an
example of each.

Exit codes: 0 on success, 2 for bad usage or bad input (unknown option,
missing file, data the model cannot take), 1 for any other failure, 130
when interrupted. Errors are one line on standard error; ``--debug`` shows
the traceback.

Heavy modules (numpy, dask, distributed, the estimators) are imported
inside the subcommands so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

PROG = "dask-em"

#: Short names of common models; every other estimator class of dask_em is
#: also reachable by its class name in kebab case (``poisson-mixture``).
ALIASES: dict[str, str] = {
    "gmm": "GaussianMixture",
    "vbgmm": "BayesianGaussianMixture",
    "kmeans": "KMeans",
    "hmm": "GaussianHMM",
    "mvn": "MultivariateNormal",
    "experts": "MixtureOfExperts",
    "linear-regressions": "MixtureOfLinearRegressions",
    "bayesnet": "DiscreteBayesianNetwork",
}


def _kebab(name: str) -> str:
    import re

    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def _models() -> dict[str, tuple[str, str | None]]:
    """Model names of ``dask-em fit``, from the estimator classes dask_em exports (nothing else).

    Read from the package's table of public names, so nothing is imported;
    the size parameter is found from the class when it is used.
    """
    from dask_em import _LAZY

    # RandomEffects needs a response and groups, which `dask-em fit` cannot give.
    classes = [n for n, module in _LAZY.items() if module.startswith("estimators.") and n != "RandomEffects"]
    models = {alias: (cls, None) for alias, cls in ALIASES.items() if cls in classes}
    models.update((_kebab(cls), (cls, None)) for cls in classes if cls not in ALIASES.values())
    return models


#: Model names of ``dask-em fit``: (class in dask_em, name of its size parameter or None to look it up).
MODELS: dict[str, tuple[str, str | None]] = _models()


class UsageError(Exception):
    """Bad arguments or input: exit code 2."""

    exit_code = 2


class NotAvailableError(Exception):
    """A subcommand or model whose implementation is not in this installation: exit code 1."""

    exit_code = 1


# -- small helpers -------------------------------------------------------------


def _to_jsonable(value: Any) -> Any:
    """Numpy arrays and scalars as lists and numbers; non-finite floats as None."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _print_json(payload: dict[str, Any]) -> None:
    json.dump(_to_jsonable(payload), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def _note(args: argparse.Namespace, text: str) -> None:
    """A human message on standard error, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _is_url(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def _local(spec: str) -> str:
    return spec[len("file://") :] if spec.startswith("file://") else spec


def _absolute(spec: str) -> str:
    """A local path made absolute (workers and later commands run elsewhere); URLs unchanged."""
    return spec if _is_url(spec) else os.path.abspath(_local(spec))


def _check_exists(spec: str, what: str = "input") -> None:
    """Exit 2 with a clear message when a local path does not exist."""
    if _is_url(spec):
        return
    import glob

    path = _local(spec)
    if any(ch in path for ch in "*?["):
        if not glob.glob(path):
            raise UsageError(f"{what} {spec!r}: no file matches this pattern")
    elif not os.path.exists(path):
        raise UsageError(f"{what} {spec!r} does not exist")


def _input_kind(spec: str) -> str:
    name = spec.lower().rstrip("/")
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    path = _local(spec)
    if not _is_url(spec) and os.path.isdir(path) and not os.path.exists(os.path.join(path, "zarr.json")):
        if any(f.endswith((".parquet", ".pq")) for f in os.listdir(path)):
            return "parquet"
    return "zarr"


def _read_npy_rows(path: str, start: int, stop: int) -> Any:
    import numpy as np

    return np.array(np.load(path, mmap_mode="r")[start:stop])


def read_input(spec: str, *, columns: str | None = None, chunk_rows: int | None = None) -> Any:
    """The data named on the command line, lazily.

    Parameters
    ----------
    spec : str
        A Zarr path or URL (an array, or a group holding ``X``), a ``.npy``
        file (read block by block through a memory map), or CSV/Parquet
        files (paths, directories or glob patterns) read with
        dask.dataframe.
    columns : str, optional
        Comma-separated columns of a CSV/Parquet input (default: every
        numeric column).
    chunk_rows : int, optional
        Rows per block for ``.npy`` input.

    Returns
    -------
    str or dask.array.Array
        The Zarr path itself (the estimators open it), or a Dask array.
    """
    _check_exists(spec)
    kind = _input_kind(spec)
    if kind == "zarr":
        return spec
    import dask
    import dask.array as da
    import numpy as np

    if kind == "npy":
        path = _local(spec)
        try:
            header = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise UsageError(f"cannot read {spec!r} as a .npy file: {exc}") from exc
        shape, dtype = header.shape, header.dtype
        if len(shape) != 2:
            raise UsageError(f"{spec!r} holds an array of shape {shape}; expected (n_samples, n_features)")
        if 0 in shape:
            raise UsageError(f"{spec!r} holds an empty array of shape {shape}; expected rows and columns of data")
        rows = chunk_rows or max(1024, (16 * 2**20) // max(shape[1] * dtype.itemsize, 1))
        parts = [
            da.from_delayed(
                dask.delayed(_read_npy_rows, pure=True)(os.path.abspath(path), lo, min(lo + rows, shape[0])),
                shape=(min(lo + rows, shape[0]) - lo, shape[1]),
                dtype=dtype,
            )
            for lo in range(0, shape[0], rows)
        ]
        return da.concatenate(parts)
    import dask.dataframe as dd

    wanted = [c.strip() for c in columns.split(",")] if columns else None
    try:
        if kind == "csv":
            frame = dd.read_csv(spec, sep="\t" if spec.lower().endswith(".tsv") else ",")
        else:
            frame = dd.read_parquet(spec)
    except (ValueError, KeyError) as exc:
        cause = exc.__cause__ or exc  # dask wraps pandas' parser error, which names the line
        raise UsageError(f"cannot read {spec!r}: {str(cause).strip().splitlines()[0]}") from exc
    if wanted is not None:
        unknown = [c for c in wanted if c not in frame.columns]
        if unknown:
            raise UsageError(
                f"--columns: {spec!r} has no column {unknown[0]!r}; its columns are {', '.join(map(str, frame.columns))}"
            )
        frame = frame[wanted]  # the order asked for (read_csv keeps the file's order)
    numeric = frame.select_dtypes(include="number")
    if kind == "csv":
        _check_text_in_numbers(frame, numeric, spec)
    if wanted is None:
        frame = numeric
    elif len(numeric.columns) != len(frame.columns):
        bad = sorted(set(frame.columns) - set(numeric.columns))
        raise UsageError(f"columns {bad} of {spec!r} are not numeric; choose numeric ones with --columns")
    if len(frame.columns) == 0:
        raise UsageError(f"{spec!r} has no numeric columns")
    # Row counts per partition make the chunks known (Parquet metadata or a
    # count of rows; the values are not parsed into memory together).
    return frame.to_dask_array(lengths=True).astype(np.float64)


def _check_text_in_numbers(frame: Any, numeric: Any, spec: str) -> None:
    """Exit 2 naming the value when a mostly numeric CSV column holds text (a bad row).

    Pandas would read such a column as text and it would be dropped
    silently. Only the rows dask read to infer the types are looked at.
    """
    import pandas as pd

    text_columns = [c for c in frame.columns if c not in numeric.columns]
    if not text_columns:
        return
    head = frame[text_columns].head(1000, npartitions=1, compute=True)
    for column in text_columns:
        values = head[column].dropna()
        as_numbers = pd.to_numeric(values, errors="coerce")
        bad = values[as_numbers.isna()]
        if len(bad) and as_numbers.notna().sum() > len(bad):
            raise UsageError(
                f"{spec!r}: column {column!r} holds {str(bad.iloc[0])!r} in data row {int(bad.index[0]) + 1} "
                "where numbers are expected; fix that row or leave the column out with --columns"
            )


def _as_dask_array(spec: str) -> Any:
    from .data import as_dask_array

    return as_dask_array(spec)


def _dask_em() -> Any:
    import dask_em

    return dask_em


def _estimator_class(name: str) -> tuple[type, str | None]:
    """The estimator class for a short model name or a class name of dask_em."""
    dask_em = _dask_em()
    class_name, size = MODELS.get(name, (name, None))
    cls = getattr(dask_em, class_name, None)
    if cls is None:
        import dask_em.estimators as estimators

        cls = getattr(estimators, class_name, None)
    if cls is None or not isinstance(cls, type):
        if name in MODELS:
            raise NotAvailableError(
                f"model {name!r} ({class_name}) is not available in this installation of dask-em "
                f"{dask_em.__version__}"
            )
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} or a class name of dask_em")
    if size is None:
        import inspect

        params = inspect.signature(cls.__init__).parameters
        size = next((p for p in ("n_components", "n_clusters") if p in params), None)
    return cls, size


#: Command-line options that must be at least a minimum: (attribute, option, minimum, integer).
_BOUNDS = (
    ("n_components", "-k/--n-components", 1, True),
    ("max_iter", "--max-iter", 0, True),
    ("n_init", "--n-init", 1, True),
    ("checkpoint_every", "--checkpoint-every", 1, True),
    ("tol", "--tol", 0, False),
    ("reg_covar", "--reg-covar", 0, False),
    ("n_samples", "--n-samples", 1, True),
    ("n_features", "--n-features", 1, True),
    ("chunk_rows", "--chunk-rows", 1, True),
)


def _check_options(args: argparse.Namespace) -> None:
    """Exit 2 at once, naming the option and its value, for numbers no fit can use."""
    for attribute, option, minimum, _ in _BOUNDS:
        value = getattr(args, attribute, None)
        if isinstance(value, (int, float)) and not (value >= minimum):  # also catches NaN
            kind = "an integer" if isinstance(value, int) else "a number"
            raise UsageError(f"{option} must be {kind} >= {minimum}, got {value}")


def _check_estimator(estimator: Any, n_samples: int | None, size: str | None) -> None:
    """The estimator's own checks of its hyper-parameters, and K against the rows, before any pass."""
    for hook in ("_check_parameters", "_validate", "_check_hyperparameters"):
        check = getattr(estimator, hook, None)
        if check is not None:
            try:
                check()
            except (TypeError, ValueError) as exc:
                raise UsageError(f"invalid parameters for {type(estimator).__name__}: {exc}") from exc
    if n_samples is None:
        return
    k = getattr(estimator, size, None) if size else None
    if n_samples < 2:
        raise UsageError(f"the input has {n_samples} row(s); a fit needs at least 2")
    if isinstance(k, int) and k > n_samples:
        raise UsageError(f"-k {k} is more than the {n_samples} rows of the input; choose K <= {n_samples}")


def _n_rows(X: Any) -> int | None:
    """Rows of a command-line input (lazy Dask array or Zarr path), without reading its values."""
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, str):
        import zarr

        try:
            node = zarr.open(_local(X), mode="r")
            shape = node.shape if isinstance(node, zarr.Array) else dict(node.arrays())["X"].shape
        except Exception:  # a sequence store or unreadable: the fit reads it and says what is wrong
            return None
    if shape is None or not shape or not isinstance(shape[0], (int,)) and not hasattr(shape[0], "__index__"):
        return None
    return int(shape[0])


def _check_output(output: str | None, overwrite: bool) -> None:
    """Exit 2 before the fit when a local ``--output`` exists or cannot be written."""
    if not output or _is_url(output):
        return
    path = os.path.abspath(_local(output))
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"output {output!r} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write output {output!r}: {parent!r} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {output!r}: directory {parent!r} is not writable")


def _check_address(address: str | None) -> None:
    """Exit 2 at once for a scheduler address that cannot be one (no 60 s wait for a connection)."""
    if not address:
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise UsageError(
            f"--scheduler {address!r} is not a scheduler address ({exc}); give one such as tcp://10.0.0.5:8786"
        ) from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _estimator_kwargs(cls: type, size_param: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Hyper-parameters given on the command line, checked against ``cls``."""
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs: dict[str, Any] = {}
    if args.n_components is not None:
        if size_param is None:
            raise UsageError(f"{cls.__name__} has no number of components; drop --n-components")
        kwargs[size_param] = args.n_components
    elif size_param is not None and size_param in accepted:
        raise UsageError(f"{cls.__name__} needs --n-components K (the number of components)")
    for option in ("covariance_type", "max_iter", "tol", "n_init", "reg_covar", "init_params", "random_state"):
        value = getattr(args, option, None)
        if value is None:
            continue
        if option not in accepted:
            raise UsageError(f"{cls.__name__} does not take --{option.replace('_', '-')}")
        kwargs[option] = value
    for item in args.param or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"--param expects NAME=VALUE, got {item!r}")
        if name not in accepted:
            raise UsageError(f"{cls.__name__} has no parameter {name!r}; it takes {', '.join(sorted(accepted))}")
        kwargs[name] = _parse_value(value)
    if "verbose" in accepted and not getattr(args, "quiet", False):
        kwargs.setdefault("verbose", 1)
    return kwargs


class _Session:
    """Where one command runs (None: this process), said in one line unless quiet."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._context: Any = None
        self.client: Any = None

    def __enter__(self) -> Any:
        from .cluster import SCHEDULER_ENV, session_client
        from .executor import where

        address = getattr(self.args, "scheduler", None) or os.environ.get(SCHEDULER_ENV)
        _check_address(address)
        quiet = getattr(self.args, "quiet", False)
        workers = getattr(self.args, "workers", None)
        tls = [getattr(self.args, name, None) for name in ("tls_ca_file", "tls_cert", "tls_key")]
        if any(tls) and not (tls[0] and tls[1]):
            raise UsageError("give --tls-ca-file and --tls-cert (and --tls-key if the key is a separate file)")
        security = tuple(tls) if any(tls) else None
        if workers is not None and address:
            raise UsageError(f"give --workers or --scheduler, not both (got --workers {workers} and {address!r})")
        if workers is not None and workers < 0:
            raise UsageError(f"--workers must be 0 (one per core) or more, got {workers}")
        client = session_client(workers) if workers is not None else None
        # the input is sized (Zarr metadata only) so data too large for this process gets workers
        data = getattr(self.args, "input", None)
        self._context = where(client, address, data=data, security=security, verbose=not quiet)
        try:
            self.client = self._context.__enter__()
        except OSError as exc:
            raise UsageError(f"cannot connect to the scheduler at {address!r}: {exc}") from exc
        return self.client

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)


def _compute(client: Any, *collections: Any) -> tuple[Any, ...]:
    from .executor import compute

    return compute(client, *collections)


def _require(module: str, what: str) -> Any:
    """Import ``dask_em.<module>`` or say that ``what`` is not available."""
    import importlib

    try:
        return importlib.import_module(f"dask_em.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"dask_em.{module}":
            raise NotAvailableError(f"{what} is not available in this installation (dask_em.{module} is missing)")
        raise


def _save(estimator: Any, path: str, overwrite: bool) -> None:
    io = _require("io", "saving a model")
    if os.path.exists(_local(path)) and not _is_url(path):
        if not overwrite:
            raise UsageError(f"output {path!r} already exists; pass --overwrite to replace it")
        import shutil

        shutil.rmtree(_local(path)) if os.path.isdir(_local(path)) else os.remove(_local(path))
    io.save(estimator, path)


def _load_model(path: str) -> Any:
    _check_exists(path, "model")
    io = _require("io", "loading a model")
    return io.load(path)


def _fitted_summary(estimator: Any) -> dict[str, Any]:
    state = estimator.fitted_state() if hasattr(estimator, "fitted_state") else {}
    return {"model": type(estimator).__name__, "params": estimator.get_params(), "fitted": state}


def _print_fit_text(estimator: Any, seconds: float, output: str | None) -> None:
    import numpy as np

    name = type(estimator).__name__
    n_iter = getattr(estimator, "n_iter_", "?")
    converged = getattr(estimator, "converged_", None)
    status = "converged" if converged else ("did not converge" if converged is not None else "")
    print(f"{name}: {n_iter} iterations in {seconds:.2f} s {status}".rstrip())
    for attr in ("lower_bound_", "inertia_"):
        if hasattr(estimator, attr):
            print(f"  {attr:<14} {float(getattr(estimator, attr)):.8g}")
    with np.printoptions(precision=4, suppress=True, linewidth=100, threshold=60):
        for attr in ("weights_", "startprob_", "means_", "cluster_centers_", "transmat_", "coef_", "intercept_"):
            if hasattr(estimator, attr):
                text = str(np.asarray(getattr(estimator, attr)))
                print(f"  {attr:<14} " + text.replace("\n", "\n" + " " * 17))
    if output:
        print(f"  saved to       {output}")


# -- subcommands -------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic mixture to Zarr and fit it, printing progress and the result."""
    import tempfile

    import numpy as np
    from scipy.optimize import linear_sum_assignment

    dask_em = _dask_em()
    if not hasattr(dask_em, "GaussianMixture"):
        raise NotAvailableError("the demo needs dask_em.GaussianMixture, which is not in this installation")
    from .datasets import make_blobs_zarr

    _check_options(args)
    _check_address(args.scheduler)
    n, d, k = args.n_samples, args.n_features, args.n_components
    if k > n:
        raise UsageError(f"--n-components {k} is more than --n-samples {n}")
    chunk_rows = args.chunk_rows or max(1, -(-n // 8))
    with tempfile.TemporaryDirectory(prefix="dask-em-demo-") as tmp, _Session(args) as client:
        path = args.path or os.path.join(tmp, "blobs.zarr")
        start = time.perf_counter()
        truth = make_blobs_zarr(
            path, n, d, k, chunk_rows=chunk_rows, covariance_type=args.covariance_type,
            random_state=args.random_state, separation=args.separation, client=client,
            overwrite=bool(args.path),
        )
        write_seconds = time.perf_counter() - start
        n_chunks = -(-n // chunk_rows)
        _note(
            args,
            f"dask-em demo: wrote {n:,} x {d} float64 ({n * d * 8 / 1e6:.1f} MB) to {path} "
            f"in {n_chunks} chunks of {chunk_rows:,} rows ({write_seconds:.2f} s)",
        )
        gmm = dask_em.GaussianMixture(
            n_components=k, covariance_type=args.covariance_type, max_iter=args.max_iter,
            tol=args.tol, random_state=args.random_state, verbose=0 if args.quiet else 1,
        )
        start = time.perf_counter()
        gmm.fit(path, client=client)
        seconds = time.perf_counter() - start
    # Components are found in any order: match them to the truth by their means.
    cost = np.linalg.norm(gmm.means_[:, None, :] - truth["means"][None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = rows[np.argsort(cols)]
    result = {
        "n_samples": n, "n_features": d, "n_components": k, "chunk_rows": chunk_rows,
        "write_seconds": write_seconds, "fit_seconds": seconds,
        "n_iter": int(gmm.n_iter_), "converged": bool(gmm.converged_), "lower_bound": float(gmm.lower_bound_),
        "weights": gmm.weights_[order], "true_weights": truth["weights"],
        "means": gmm.means_[order], "true_means": truth["means"],
        "max_mean_error": float(cost[order, np.arange(k)].max()),
        "max_weight_error": float(np.abs(gmm.weights_[order] - truth["weights"]).max()),
    }
    if args.json:
        _print_json(result)
        return 0
    print(
        f"GaussianMixture(n_components={k}, covariance_type={args.covariance_type!r}): "
        f"{gmm.n_iter_} iterations in {seconds:.2f} s, "
        f"{'converged' if gmm.converged_ else 'did not converge'}, "
        f"log-likelihood per sample {gmm.lower_bound_:.6f}"
    )
    print(f"{'component':>9}  {'weight':>7}  {'true':>7}  {'|mean - true mean|':>18}  mean (first 4 features)")
    for j in range(k):
        i = order[j]
        mean = np.array2string(gmm.means_[i][:4], precision=3, suppress_small=True)
        print(
            f"{j:>9}  {gmm.weights_[i]:7.4f}  {truth['weights'][j]:7.4f}  {cost[i, j]:18.4f}  {mean}"
        )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a model to INPUT and save it."""
    _check_options(args)
    _check_address(args.scheduler)
    _check_exists(args.input)
    cls, size = _estimator_class(args.model)
    kwargs = _estimator_kwargs(cls, size, args)
    _check_output(args.output, args.overwrite)
    X = read_input(args.input, columns=args.columns)
    try:
        estimator = cls(**kwargs)
        # Estimators whose hyper-parameters need more than a constructor check (a network's edges).
        if hasattr(estimator, "validate_params"):
            estimator.validate_params()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid parameters for {cls.__name__}: {exc}") from exc
    _check_estimator(estimator, _n_rows(X) if not args.lengths else None, size)
    fit_kwargs: dict[str, Any] = _column_names(estimator, args.columns)
    if args.checkpoint:
        # Absolute: snapshots are written and found again from this process's directory.
        checkpoint = _absolute(args.checkpoint)
        fit_kwargs.update(checkpoint=checkpoint, checkpoint_every=args.checkpoint_every)
        # Recorded in the snapshots, so `dask-em resume CHECKPOINT` finds the data again.
        estimator._data_source = {"input": _absolute(args.input), "columns": args.columns,
                                  "lengths": _absolute(args.lengths) if args.lengths else None}
    if args.lengths:
        fit_kwargs["lengths"] = _read_lengths(args.lengths)
    if args.targets:
        fit_kwargs["target_columns"] = _target_columns(cls, args.input, args.targets, args.columns)
        if estimator._data_source:
            estimator._data_source["targets"] = args.targets
    # scikit-learn style verbose lines go to stdout; here stdout is for results (--json)
    with _Session(args) as client, contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        estimator.fit(X, client=client, **fit_kwargs)
        seconds = time.perf_counter() - start
    if args.output:
        _save(estimator, args.output, args.overwrite)
    if args.json:
        _print_json({**_fitted_summary(estimator), "seconds": seconds, "output": args.output})
    else:
        _print_fit_text(estimator, seconds, args.output)
    return 0


def _column_names(estimator: Any, columns: str | None) -> dict[str, Any]:
    """``columns=`` for estimators whose ``fit`` names the variables of the columns (a Bayesian network)."""
    import inspect

    if columns and "columns" in inspect.signature(estimator.fit).parameters:
        return {"columns": [c.strip() for c in columns.split(",")]}
    return {}


def _target_columns(cls: type, spec: str, targets: str, columns: str | None) -> list[int]:
    """Positions of the ``--targets`` columns (indices, or names of CSV/Parquet columns) in the input."""
    import inspect

    if "target_columns" not in inspect.signature(cls.fit).parameters:
        raise UsageError(f"{cls.__name__} has no targets; drop --targets")
    items = [t.strip() for t in targets.split(",") if t.strip()]
    if all(t.lstrip("-").isdigit() for t in items):
        return [int(t) for t in items]
    if columns:
        names = [c.strip() for c in columns.split(",")]
    elif _input_kind(spec) in ("csv", "parquet"):
        import dask.dataframe as dd

        read = dd.read_csv if _input_kind(spec) == "csv" else dd.read_parquet
        names = [str(c) for c in read(spec).select_dtypes(include="number").columns]
    else:
        raise UsageError(f"--targets {targets!r}: name columns only for CSV/Parquet input; give column indices")
    missing = [t for t in items if t not in names]
    if missing:
        raise UsageError(f"--targets names {missing}, which are not numeric input columns {names}")
    return [names.index(t) for t in items]


def _read_lengths(spec: str) -> Any:
    import numpy as np

    _check_exists(spec, "lengths")
    if spec.lower().endswith(".npy"):
        return np.load(_local(spec))
    if spec.lower().endswith((".txt", ".csv")):
        return np.loadtxt(_local(spec), dtype=np.int64, ndmin=1)
    import zarr

    return np.asarray(zarr.open_array(spec, mode="r")[...])


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a fit from its checkpoint."""
    _check_options(args)
    _check_address(args.scheduler)
    _check_output(args.output, args.overwrite)
    _check_exists(args.checkpoint, "checkpoint")
    io = _require("io", "resuming")
    record = None
    for candidate in (args.checkpoint, args.checkpoint.rstrip("/") + "/run-0"):
        try:
            record = io.describe(candidate)
        except Exception:
            continue
        if record.get("kind") == "checkpoint":
            break
        record = None
    if record is None:
        raise UsageError(f"{args.checkpoint!r} is not a dask-em checkpoint")
    from .checkpoint import estimator_from_record  # the one rebuild, shared with load

    estimator = estimator_from_record(record.get("estimator"), record.get("config"),
                                      where=f"checkpoint {args.checkpoint}")
    if args.max_iter is not None:
        estimator.set_params(max_iter=args.max_iter)
    if "verbose" in estimator.get_params():
        estimator.set_params(verbose=0 if args.quiet else 1)
    source = record.get("source") or {}
    if args.input is None:
        if not source.get("input"):
            raise UsageError(
                f"{args.checkpoint!r} does not record where its data is (it was not started by "
                "'dask-em fit'); give the input: dask-em resume CHECKPOINT INPUT"
            )
        args.input, args.columns = source["input"], args.columns or source.get("columns")
    _check_exists(args.input)
    estimator._data_source = {**source, "input": _absolute(args.input)}
    fit_kwargs: dict[str, Any] = _column_names(estimator, args.columns)
    lengths = source.get("lengths")
    if lengths:
        fit_kwargs["lengths"] = _read_lengths(lengths)
    if source.get("targets"):
        fit_kwargs["target_columns"] = _target_columns(type(estimator), args.input, source["targets"], args.columns)
    X = read_input(args.input, columns=args.columns)
    _note(args, f"dask-em: resuming {type(estimator).__name__} from {args.checkpoint} "
                f"(iteration {record.get('iteration', '?')})")
    with _Session(args) as client, contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        estimator.fit(X, client=client, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                      resume=True, force=args.force, **fit_kwargs)
        seconds = time.perf_counter() - start
    if args.output:
        _save(estimator, args.output, args.overwrite)
    if args.json:
        _print_json({**_fitted_summary(estimator), "seconds": seconds, "output": args.output})
    else:
        _print_fit_text(estimator, seconds, args.output)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Write per-row predictions of a saved model to Zarr, out of core."""
    import dask.array as da

    _check_address(args.scheduler)
    _check_output(args.output, args.overwrite)
    estimator = _load_model(args.model)
    # Workers write the chunks: a relative path would land in their own directory.
    output = _absolute(args.output)
    # An HMM reads its Zarr sequence store (values + lengths) itself, partition by partition.
    sequences = hasattr(estimator, "transmat_")
    if sequences:
        _check_exists(args.input)
        X = args.input
    else:
        X = read_input(args.input, columns=args.columns)
    method = {"labels": "predict", "proba": "predict_proba", "score": "score_samples"}[args.what]
    if not hasattr(estimator, method):
        raise UsageError(f"{type(estimator).__name__} has no {method}; choose another --what")
    with _Session(args) as client:
        from .data import check_visible_to_workers

        if isinstance(X, str):
            check_visible_to_workers(X, client)
        check_visible_to_workers(os.path.dirname(output), client)
        X = _as_dask_array(X) if isinstance(X, str) and not sequences else X
        out = getattr(estimator, method)(X)
        if not isinstance(out, da.Array):
            out = da.from_array(out, chunks=(X.chunks[0],) + out.shape[1:] if hasattr(X, "chunks") else "auto")
        if len(set(out.chunks[0][:-1])) > 1:  # Zarr needs regular chunks
            out = out.rechunk({0: max(out.chunks[0])})
        start = time.perf_counter()
        stored = da.to_zarr(out, output, overwrite=args.overwrite, compute=False)
        _compute(client, stored)
        seconds = time.perf_counter() - start
    result = {"output": args.output, "what": args.what, "shape": list(out.shape), "dtype": str(out.dtype),
              "seconds": seconds}
    if args.json:
        _print_json(result)
    else:
        print(f"wrote {args.what} of shape {tuple(out.shape)} ({out.dtype}) to {args.output} in {seconds:.2f} s")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Mean log-likelihood per sample of INPUT under a saved model."""
    import dask.array as da

    estimator = _load_model(args.model)
    X = read_input(args.input, columns=args.columns)
    with _Session(args) as client:
        if hasattr(estimator, "score_samples"):
            X = X if not isinstance(X, str) else _as_dask_array(X)
            per_row = estimator.score_samples(X)
            if isinstance(per_row, da.Array):
                total, n = _compute(client, per_row.sum(), per_row.shape[0])
            else:
                total, n = float(per_row.sum()), per_row.shape[0]
            score = float(total) / n
        else:
            score = float(estimator.score(X, client=client))
            n = None
    if args.json:
        _print_json({"model": args.model, "input": args.input, "score": score, "n_samples": n})
    else:
        print(f"{score:.10g}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a saved model, a checkpoint or a dataset."""
    _check_exists(args.path, "path")
    description: dict[str, Any] | None = None
    reason = ""
    try:
        io = _require("io", "describing models")
        description = io.describe(args.path)
    except NotAvailableError:
        pass
    except Exception as exc:  # not a model or checkpoint: describe it as data below
        from .checkpoint import Location

        if Location(args.path).group_attrs() is not None:  # a dask-em file that is damaged or crafted
            raise
        reason = f" ({exc})"
    if description is None:
        description = _describe_data(args.path)
        if description is None:
            raise UsageError(f"{args.path!r} is neither a saved model, a checkpoint nor readable data{reason}")
    if args.json:
        _print_json(description)
    else:
        _print_tree(description)
    return 0


def _describe_data(spec: str) -> dict[str, Any] | None:
    kind = _input_kind(spec)
    if kind == "npy":
        import numpy as np

        arr = np.load(_local(spec), mmap_mode="r")
        return {"kind": "npy", "path": spec, "shape": list(arr.shape), "dtype": str(arr.dtype)}
    if kind != "zarr":
        return {"kind": kind, "path": spec}
    import zarr

    try:
        node = zarr.open(spec, mode="r")
    except Exception:
        return None
    if isinstance(node, zarr.Array):
        return {"kind": "zarr array", "path": spec, "shape": list(node.shape), "dtype": str(node.dtype),
                "chunks": list(node.chunks), "attributes": dict(node.attrs)}
    arrays = {
        name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks)}
        for name, a in node.arrays()
    }
    return {"kind": "zarr group", "path": spec, "arrays": arrays, "groups": sorted(n for n, _ in node.groups()),
            "attributes": dict(node.attrs)}


def _print_tree(value: Any, indent: int = 0) -> None:
    import numpy as np

    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                print(f"{pad}{key}:")
                _print_tree(item, indent + 2)
            else:
                text = str(_to_jsonable(item) if isinstance(item, (np.ndarray, np.generic)) else item)
                if len(text) > 100:
                    text = text[:97] + "..."
                print(f"{pad}{key}: {text}")
    else:
        print(f"{pad}{value}")


def cmd_select(args: argparse.Namespace) -> int:
    """Fit a grid of mixtures in shared passes and rank them by BIC."""
    select = _require("select", "model selection")
    _check_options(args)
    _check_address(args.scheduler)
    _check_output(args.output, args.overwrite)
    components = _parse_int_list(args.n_components, "--n-components")
    types = [t.strip() for t in args.covariance_type.split(",") if t.strip()]
    unknown = [t for t in types if t not in ("full", "tied", "diag", "spherical")]
    if unknown or not types:
        raise UsageError(
            f"--covariance-type takes full, tied, diag or spherical (comma-separated), got {args.covariance_type!r}"
        )
    X = read_input(args.input, columns=args.columns)
    with _Session(args) as client:
        result = select.select(
            X, n_components=components, covariance_types=types, n_init=args.n_init, max_iter=args.max_iter,
            tol=args.tol, reg_covar=args.reg_covar, random_state=args.random_state, client=client,
            verbose=not args.quiet,
        )
    if args.output:
        _save(result.best_estimator_, args.output, args.overwrite)
    if args.json:
        _print_json({"table": result.table, "best": result.table[0], "seconds": result.seconds,
                     "n_passes": result.n_passes, "output": args.output})
    else:
        print(result.summary())
        if args.output:
            print(f"best model saved to {args.output}")
    return 0


def _parse_int_list(text: str, option: str) -> list[int]:
    values: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                values.extend(range(int(lo), int(hi) + 1))
            elif part:
                values.append(int(part))
    except ValueError:
        raise UsageError(f"{option} expects integers such as '1-6' or '2,3,5', got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} expects positive integers such as '1-6' or '2,3,5', got {text!r}")
    return sorted(set(values))


def cmd_report(args: argparse.Namespace) -> int:
    """An HTML report with pictures of a saved model."""
    report = _require("report", "the report")
    report._matplotlib()  # before any work: a missing dependency is said at once
    if args.sample_size < 1:
        raise UsageError(f"--sample-size must be a positive integer, got {args.sample_size}")
    estimator = _load_model(args.model)
    X = read_input(args.data, columns=args.columns) if args.data else None
    lengths = _read_lengths(args.lengths) if args.lengths else None
    with _Session(args) if X is not None else _nullcontext() as client:
        written = report.make_report(estimator, args.output, data=X, lengths=lengths, sample_size=args.sample_size,
                                     embed=args.embed, title=f"{type(estimator).__name__}: {args.model}",
                                     client=client)
    if args.json:
        _print_json({"output": args.output, "images": written})
    else:
        print(f"wrote {args.output} with {len(written)} image(s): {', '.join(os.path.basename(p) for p in written)}")
    return 0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# -- the parser ----------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; shows defaults that say something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _common(p: argparse.ArgumentParser, *, scheduler: bool = True, json_output: bool = True) -> None:
    if scheduler:
        p.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="address of a Dask scheduler (default: $DASK_EM_SCHEDULER, else this process)")
        p.add_argument("--workers", metavar="N", type=int, default=None,
                       help="run on a LocalCluster of N worker processes (0: one per core) instead of in "
                            "this process (default: $DASK_EM_WORKERS, else this process on a thread pool)")
        tls = "PEM file for a tls:// scheduler (default: $DASK_EM_TLS_%s, else dask's distributed.comm.tls config)"
        p.add_argument("--tls-ca-file", metavar="PATH", default=None, help="CA certificate " + tls % "CA_FILE")
        p.add_argument("--tls-cert", metavar="PATH", default=None, help="client certificate " + tls % "CERT")
        p.add_argument("--tls-key", metavar="PATH", default=None, help="client private key " + tls % "KEY")
    if json_output:
        p.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or messages on standard error")
    # SUPPRESS: given after the subcommand it sets the flag, absent it leaves the top-level value.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of errors")


def _model_options(p: argparse.ArgumentParser, *, with_k: bool = True) -> None:
    if with_k:
        p.add_argument("-k", "--n-components", type=int, default=None, metavar="K",
                       help="number of components (clusters, states)")
    p.add_argument("--covariance-type", choices=["full", "tied", "diag", "spherical"], default=None)
    p.add_argument("--max-iter", type=int, default=None, help="maximum number of EM iterations")
    p.add_argument("--tol", type=float, default=None, help="convergence threshold on the log-likelihood")
    p.add_argument("--n-init", type=int, default=None, help="number of restarts; the best is kept")
    p.add_argument("--reg-covar", type=float, default=None, help="added to the diagonal of covariances")
    p.add_argument("--init-params", default=None, help="initialisation method (model dependent)")
    p.add_argument("--random-state", type=int, default=None, help="seed for a reproducible fit")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="any other hyper-parameter of the model (value parsed as JSON), repeatable")


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", default=None, help="comma-separated columns of a CSV/Parquet input")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dask-em``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Expectation-Maximization on data larger than memory, on Dask.",
        epilog=(
            "examples:\n"
            "  dask-em demo\n"
            "  dask-em fit gmm data.zarr -k 8 --output model.zarr\n"
            "  dask-em predict model.zarr data.zarr --output labels.zarr\n"
            "  dask-em select data.zarr --n-components 1-8 --covariance-type full,diag\n\n"
            "exit codes: 0 success, 2 bad usage or input, 1 other failure"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog="example:\n  " + example,
                              formatter_class=_Formatter)

    p = add("demo", "write a synthetic Gaussian mixture to Zarr and fit it on a LocalCluster",
            "dask-em demo --n-samples 1000000 --n-features 16 --n-components 8")
    p.add_argument("--n-samples", type=int, default=200_000)
    p.add_argument("--n-features", type=int, default=8)
    p.add_argument("--n-components", type=int, default=4)
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per Zarr chunk (default: n_samples / 8)")
    p.add_argument("--covariance-type", choices=["full", "tied", "diag", "spherical"], default="full")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--separation", type=float, default=2.5,
                   help="distance between component means in standard deviations")
    p.add_argument("--path", default=None, help="write the dataset here instead of a temporary directory")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = add("fit", "fit a model to data and save it to Zarr",
            "dask-em fit gmm data.zarr --n-components 8 --covariance-type diag --output model.zarr\n"
            "  dask-em fit kmeans points.parquet -k 5 --columns x,y --output km.zarr --json\n"
            "  dask-em fit hmm sequences.zarr -k 3 --checkpoint ckpt.zarr --output hmm.zarr\n"
            "models: " + ", ".join(MODELS) + " (or a class name of dask_em)")
    p.add_argument("model", help="gmm, kmeans, hmm, ... or a class name of dask_em")
    p.add_argument("input", help="Zarr path or URL, .npy file, or CSV/Parquet files")
    _model_options(p)
    _input_options(p)
    p.add_argument("--lengths", default=None, help="sequence lengths of an HMM input (.npy, .txt or Zarr)")
    p.add_argument("--targets", default=None, metavar="COLS",
                   help="experts, linear-regressions: the target columns (indices, or CSV/Parquet names); "
                        "default: a Zarr group's array 'y'")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="Zarr path or URL for resumable snapshots")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N")
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zarr", help="where to save the fitted model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _common(p)
    p.set_defaults(func=cmd_fit)

    p = add("resume", "continue a fit from the last snapshot of its checkpoint",
            "dask-em resume ckpt.zarr --output model.zarr\n"
            "  dask-em resume ckpt.zarr data.zarr --max-iter 200 --output model.zarr")
    p.add_argument("checkpoint", help="checkpoint of 'dask-em fit --checkpoint' or estimator.fit(checkpoint=...)")
    p.add_argument("input", nargs="?", default=None,
                   help="the data the fit started on (default: the input 'dask-em fit' recorded; "
                        "checked against the checkpoint's fingerprint)")
    p.add_argument("--max-iter", type=int, default=None, help="new iteration limit")
    p.add_argument("--force", action="store_true", help="resume even if data or settings differ")
    _input_options(p)
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N")
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zarr")
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_resume)

    p = add("predict", "write per-row predictions of a saved model to Zarr (out of core)",
            "dask-em predict model.zarr data.zarr --output labels.zarr\n"
            "  dask-em predict model.zarr data.zarr --what proba --output proba.zarr")
    p.add_argument("model", help="a model saved by 'dask-em fit'")
    p.add_argument("input", help="Zarr path or URL, .npy file, or CSV/Parquet files")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr")
    p.add_argument("--what", choices=["labels", "proba", "score"], default="labels",
                   help="labels (predict), proba (predict_proba) or score (score_samples)")
    p.add_argument("--overwrite", action="store_true")
    _input_options(p)
    _common(p)
    p.set_defaults(func=cmd_predict)

    p = add("score", "mean log-likelihood per sample of data under a saved model",
            "dask-em score model.zarr test.zarr --json")
    p.add_argument("model")
    p.add_argument("input")
    _input_options(p)
    _common(p)
    p.set_defaults(func=cmd_score)

    p = add("info", "describe a saved model, a checkpoint or a dataset", "dask-em info model.zarr --json")
    p.add_argument("path")
    _common(p, scheduler=False)
    p.set_defaults(func=cmd_info)

    p = add("select", "fit a grid of Gaussian mixtures in shared passes over the data, ranked by BIC",
            "dask-em select data.zarr --n-components 1-6 --covariance-type full,diag --output best.zarr")
    p.add_argument("input")
    p.add_argument("-k", "--n-components", default="1-6", help="numbers of components: '1-6' or '2,4,8'")
    p.add_argument("--covariance-type", default="full,tied,diag,spherical",
                   help="comma-separated covariance types")
    p.add_argument("--n-init", type=int, default=1, help="restarts per grid cell")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--reg-covar", type=float, default=1e-6)
    p.add_argument("--random-state", type=int, default=None)
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zarr", help="save the best model here")
    p.add_argument("--overwrite", action="store_true")
    _input_options(p)
    _common(p)
    p.set_defaults(func=cmd_select)

    p = add("report", "an HTML report with pictures (convergence, mixture projection, HMM transitions)",
            "dask-em report model.zarr --data data.zarr --output report.html\n"
            "  dask-em report hmm.zarr --data sequences.zarr --output hmm-report.html --embed")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html")
    p.add_argument("--data", default=None,
                   help="data to draw a sample from (projection; for an HMM, a decoded sequence)")
    p.add_argument("--lengths", default=None, help="sequence lengths of HMM --data (.npy, .txt or Zarr)")
    p.add_argument("--sample-size", "--n-sample", dest="sample_size", type=int, default=5000,
                   help="rows (HMM: steps) of the data sample, read from a few blocks")
    p.add_argument("--embed", action="store_true", help="embed the PNGs in the HTML (one self-contained file)")
    _input_options(p)
    _common(p)
    p.set_defaults(func=cmd_report)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dask-em")
    except Exception:
        return "unknown"


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _exit_code(exc: BaseException) -> int:
    code = getattr(exc, "exit_code", None)
    if code is not None:
        return int(code)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return 2
    try:
        from .errors import CheckpointError, InvalidDataError
    except Exception:  # pragma: no cover
        return 1
    return 2 if isinstance(exc, (InvalidDataError, CheckpointError)) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dask-em`` with ``argv`` (default: the process arguments); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging
    import warnings

    logger = logging.getLogger("distributed")
    saved = (warnings.showwarning, logger.level)
    if not args.debug:
        warnings.showwarning = _show_warning
        # Shutdown chatter of a LocalCluster is not the user's business.
        logger.setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return _exit_code(exc)
    finally:
        warnings.showwarning = saved[0]
        logger.setLevel(saved[1])


if __name__ == "__main__":
    sys.exit(main())
