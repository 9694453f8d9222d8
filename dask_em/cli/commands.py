"""The subcommands of ``dask-em``: ``demo``, ``fit``, ``resume``, ``predict``, ``score``, ``info``, ``select``, ``report``.

Imported only once the arguments are parsed (``dask-em --help`` does not
need it). Files are read by the data layer (:mod:`dask_em.data.files`),
models looked up in :mod:`.models`, saved models and checkpoints read by
:mod:`dask_em.storage`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

from ..data import absolute_path, as_dask_array
from ..data.files import check_exists, describe_file, n_rows, numeric_columns, read_input, read_lengths
from ..executor import compute
from .common import (
    NotAvailableError,
    Session,
    UsageError,
    check_address,
    check_options,
    check_output,
    fitted_summary,
    load_model,
    note,
    parse_int_list,
    parse_value,
    print_fit_text,
    print_json,
    print_tree,
    require,
    save_model,
)
from .models import estimator_class


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
        kwargs[name] = parse_value(value)
    if "verbose" in accepted and not getattr(args, "quiet", False):
        kwargs.setdefault("verbose", 1)
    return kwargs


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic mixture to Zarr and fit it, printing progress and the result."""
    import tempfile

    import numpy as np
    from scipy.optimize import linear_sum_assignment

    import dask_em

    if not hasattr(dask_em, "GaussianMixture"):
        raise NotAvailableError("the demo needs dask_em.GaussianMixture, which is not in this installation")
    from ..datasets import make_blobs_zarr

    check_options(args)
    check_address(args.scheduler)
    n, d, k = args.n_samples, args.n_features, args.n_components
    if k > n:
        raise UsageError(f"--n-components {k} is more than --n-samples {n}")
    chunk_rows = args.chunk_rows or max(1, -(-n // 8))
    with tempfile.TemporaryDirectory(prefix="dask-em-demo-") as tmp, Session(args) as client:
        path = args.path or os.path.join(tmp, "blobs.zarr")
        start = time.perf_counter()
        truth = make_blobs_zarr(
            path, n, d, k, chunk_rows=chunk_rows, covariance_type=args.covariance_type,
            random_state=args.random_state, separation=args.separation, client=client,
            overwrite=bool(args.path),
        )
        write_seconds = time.perf_counter() - start
        n_chunks = -(-n // chunk_rows)
        note(
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
        print_json(result)
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
    check_options(args)
    check_address(args.scheduler)
    check_exists(args.input)
    cls, size = estimator_class(args.model)
    kwargs = _estimator_kwargs(cls, size, args)
    check_output(args.output, args.overwrite)
    X = read_input(args.input, columns=args.columns)
    try:
        estimator = cls(**kwargs)
        # Estimators whose hyper-parameters need more than a constructor check (a network's edges).
        if hasattr(estimator, "validate_params"):
            estimator.validate_params()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid parameters for {cls.__name__}: {exc}") from exc
    _check_estimator(estimator, n_rows(X) if not args.lengths else None, size)
    fit_kwargs: dict[str, Any] = _column_names(estimator, args.columns)
    if args.checkpoint:
        # Absolute: snapshots are written and found again from this process's directory.
        checkpoint = absolute_path(args.checkpoint)
        fit_kwargs.update(checkpoint=checkpoint, checkpoint_every=args.checkpoint_every)
        # Recorded in the snapshots, so `dask-em resume CHECKPOINT` finds the data again.
        estimator._data_source = {"input": absolute_path(args.input), "columns": args.columns,
                                  "lengths": absolute_path(args.lengths) if args.lengths else None}
    if args.lengths:
        fit_kwargs["lengths"] = read_lengths(args.lengths)
    if args.targets:
        fit_kwargs["target_columns"] = _target_columns(cls, args.input, args.targets, args.columns)
        if estimator._data_source:
            estimator._data_source["targets"] = args.targets
    return _fit_and_report(args, estimator, X, fit_kwargs)


def _fit_and_report(args: argparse.Namespace, estimator: Any, X: Any, fit_kwargs: dict[str, Any]) -> int:
    """Fit where the options say, save to ``--output``, and print the result (``fit`` and ``resume``)."""
    # scikit-learn style verbose lines go to stdout; here stdout is for results (--json)
    with Session(args) as client, contextlib.redirect_stdout(sys.stderr):
        start = time.perf_counter()
        estimator.fit(X, client=client, **fit_kwargs)
        seconds = time.perf_counter() - start
    if args.output:
        save_model(estimator, args.output, args.overwrite)
    if args.json:
        print_json({**fitted_summary(estimator), "seconds": seconds, "output": args.output})
    else:
        print_fit_text(estimator, seconds, args.output)
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
    names = [c.strip() for c in columns.split(",")] if columns else numeric_columns(spec)
    if names is None:
        raise UsageError(f"--targets {targets!r}: name columns only for CSV/Parquet input; give column indices")
    missing = [t for t in items if t not in names]
    if missing:
        raise UsageError(f"--targets names {missing}, which are not numeric input columns {names}")
    return [names.index(t) for t in items]


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a fit from its checkpoint."""
    check_options(args)
    check_address(args.scheduler)
    check_output(args.output, args.overwrite)
    check_exists(args.checkpoint, "checkpoint")
    io = require("storage.io", "resuming")
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
    from ..storage.format import estimator_from_record  # the one rebuild, shared with load

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
    check_exists(args.input)
    estimator._data_source = {**source, "input": absolute_path(args.input)}
    fit_kwargs: dict[str, Any] = _column_names(estimator, args.columns)
    lengths = source.get("lengths")
    if lengths:
        fit_kwargs["lengths"] = read_lengths(lengths)
    if source.get("targets"):
        fit_kwargs["target_columns"] = _target_columns(type(estimator), args.input, source["targets"], args.columns)
    X = read_input(args.input, columns=args.columns)
    note(args, f"dask-em: resuming {type(estimator).__name__} from {args.checkpoint} "
                f"(iteration {record.get('iteration', '?')})")
    fit_kwargs.update(checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=True, force=args.force)
    return _fit_and_report(args, estimator, X, fit_kwargs)


def cmd_predict(args: argparse.Namespace) -> int:
    """Write per-row predictions of a saved model to Zarr, out of core."""
    import dask.array as da

    check_address(args.scheduler)
    check_output(args.output, args.overwrite)
    estimator = load_model(args.model)
    # Workers write the chunks: a relative path would land in their own directory.
    output = absolute_path(args.output)
    # An HMM reads its Zarr sequence store (values + lengths) itself, partition by partition.
    sequences = hasattr(estimator, "transmat_")
    if sequences:
        check_exists(args.input)
        X = args.input
    else:
        X = read_input(args.input, columns=args.columns)
    method = {"labels": "predict", "proba": "predict_proba", "score": "score_samples"}[args.what]
    if not hasattr(estimator, method):
        raise UsageError(f"{type(estimator).__name__} has no {method}; choose another --what")
    with Session(args) as client:
        from ..data import check_visible_to_workers

        if isinstance(X, str):
            check_visible_to_workers(X, client)
        check_visible_to_workers(os.path.dirname(output), client)
        X = as_dask_array(X) if isinstance(X, str) and not sequences else X
        out = getattr(estimator, method)(X)
        if not isinstance(out, da.Array):
            out = da.from_array(out, chunks=(X.chunks[0],) + out.shape[1:] if hasattr(X, "chunks") else "auto")
        if len(set(out.chunks[0][:-1])) > 1:  # Zarr needs regular chunks
            out = out.rechunk({0: max(out.chunks[0])})
        start = time.perf_counter()
        stored = da.to_zarr(out, output, overwrite=args.overwrite, compute=False)
        compute(client, stored)
        seconds = time.perf_counter() - start
    result = {"output": args.output, "what": args.what, "shape": list(out.shape), "dtype": str(out.dtype),
              "seconds": seconds}
    if args.json:
        print_json(result)
    else:
        print(f"wrote {args.what} of shape {tuple(out.shape)} ({out.dtype}) to {args.output} in {seconds:.2f} s")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Mean log-likelihood per sample of INPUT under a saved model."""
    import dask.array as da

    estimator = load_model(args.model)
    X = read_input(args.input, columns=args.columns)
    with Session(args) as client:
        if hasattr(estimator, "score_samples"):
            X = X if not isinstance(X, str) else as_dask_array(X)
            per_row = estimator.score_samples(X)
            if isinstance(per_row, da.Array):
                total, n = compute(client, per_row.sum(), per_row.shape[0])
            else:
                total, n = float(per_row.sum()), per_row.shape[0]
            score = float(total) / n
        else:
            score = float(estimator.score(X, client=client))
            n = None
    if args.json:
        print_json({"model": args.model, "input": args.input, "score": score, "n_samples": n})
    else:
        print(f"{score:.10g}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a saved model, a checkpoint or a dataset."""
    check_exists(args.path, "path")
    description: dict[str, Any] | None = None
    reason = ""
    try:
        io = require("storage.io", "describing models")
        description = io.describe(args.path)
    except NotAvailableError:
        pass
    except Exception as exc:  # not a model or checkpoint: describe it as data below
        from ..storage.location import Location

        if Location(args.path).group_attrs() is not None:  # a dask-em file that is damaged or crafted
            raise
        reason = f" ({exc})"
    if description is None:
        description = describe_file(args.path)
        if description is None:
            raise UsageError(f"{args.path!r} is neither a saved model, a checkpoint nor readable data{reason}")
    if args.json:
        print_json(description)
    else:
        print_tree(description)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Fit a grid of mixtures in shared passes and rank them by BIC."""
    select = require("select", "model selection")
    check_options(args)
    check_address(args.scheduler)
    check_output(args.output, args.overwrite)
    components = parse_int_list(args.n_components, "--n-components")
    types = [t.strip() for t in args.covariance_type.split(",") if t.strip()]
    unknown = [t for t in types if t not in ("full", "tied", "diag", "spherical")]
    if unknown or not types:
        raise UsageError(
            f"--covariance-type takes full, tied, diag or spherical (comma-separated), got {args.covariance_type!r}"
        )
    X = read_input(args.input, columns=args.columns)
    with Session(args) as client:
        result = select.select(
            X, n_components=components, covariance_types=types, n_init=args.n_init, max_iter=args.max_iter,
            tol=args.tol, reg_covar=args.reg_covar, random_state=args.random_state, client=client,
            verbose=not args.quiet,
        )
    if args.output:
        save_model(result.best_estimator_, args.output, args.overwrite)
    if args.json:
        print_json({"table": result.table, "best": result.table[0], "seconds": result.seconds,
                     "n_passes": result.n_passes, "output": args.output})
    else:
        print(result.summary())
        if args.output:
            print(f"best model saved to {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """An HTML report with pictures of a saved model."""
    report = require("report", "the report")
    report._matplotlib()  # before any work: a missing dependency is said at once
    if args.sample_size < 1:
        raise UsageError(f"--sample-size must be a positive integer, got {args.sample_size}")
    estimator = load_model(args.model)
    X = read_input(args.data, columns=args.columns) if args.data else None
    lengths = read_lengths(args.lengths) if args.lengths else None
    with Session(args) if X is not None else _nullcontext() as client:
        written = report.make_report(estimator, args.output, data=X, lengths=lengths, sample_size=args.sample_size,
                                     embed=args.embed, title=f"{type(estimator).__name__}: {args.model}",
                                     client=client)
    if args.json:
        print_json({"output": args.output, "images": written})
    else:
        print(f"wrote {args.output} with {len(written)} image(s): {', '.join(os.path.basename(p) for p in written)}")
    return 0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
