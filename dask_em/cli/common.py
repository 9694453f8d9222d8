"""What every subcommand of ``dask-em`` shares: errors with their exit codes, output, checks of options, sessions.

Only the standard library is imported here at module level, so that
``dask-em --help`` answers at once; numpy, dask and the estimators are
imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

PROG = "dask-em"


class UsageError(Exception):
    """Bad arguments or input: exit code 2."""

    exit_code = 2


class NotAvailableError(Exception):
    """A subcommand or model whose implementation is not in this installation: exit code 1."""

    exit_code = 1


# -- small helpers -------------------------------------------------------------


def plain_json(value: Any) -> Any:
    """Numpy arrays and scalars as lists and numbers; non-finite floats as None."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, np.generic):
        return plain_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(payload: dict[str, Any]) -> None:
    json.dump(plain_json(payload), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def note(args: argparse.Namespace, text: str) -> None:
    """A human message on standard error, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


BOUNDS = (
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


def check_options(args: argparse.Namespace) -> None:
    """Exit 2 at once, naming the option and its value, for numbers no fit can use."""
    for attribute, option, minimum, _ in BOUNDS:
        value = getattr(args, attribute, None)
        if isinstance(value, (int, float)) and not (value >= minimum):  # also catches NaN
            kind = "an integer" if isinstance(value, int) else "a number"
            raise UsageError(f"{option} must be {kind} >= {minimum}, got {value}")


def check_output(output: str | None, overwrite: bool) -> None:
    """Exit 2 before the fit when a local ``--output`` exists or cannot be written."""
    from ..data import is_local_path, local_path

    if not output or not is_local_path(output):
        return
    path = os.path.abspath(local_path(output))
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"output {output!r} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write output {output!r}: {parent!r} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {output!r}: directory {parent!r} is not writable")


def check_address(address: str | None) -> None:
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


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class Session:
    """Where one command runs (None: this process), said in one line unless quiet."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._context: Any = None
        self.client: Any = None

    def __enter__(self) -> Any:
        from ..cluster import SCHEDULER_ENV, session_client
        from ..executor import where

        address = getattr(self.args, "scheduler", None) or os.environ.get(SCHEDULER_ENV)
        check_address(address)
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


def require(module: str, what: str) -> Any:
    """Import ``dask_em.<module>`` or say that ``what`` is not available."""
    import importlib

    try:
        return importlib.import_module(f"dask_em.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"dask_em.{module}":
            raise NotAvailableError(f"{what} is not available in this installation (dask_em.{module} is missing)")
        raise


def save_model(estimator: Any, path: str, overwrite: bool) -> None:
    from ..data import is_local_path, local_path

    io = require("storage.io", "saving a model")
    local = local_path(path)
    if os.path.exists(local) and is_local_path(path):
        if not overwrite:
            raise UsageError(f"output {path!r} already exists; pass --overwrite to replace it")
        import shutil

        shutil.rmtree(local) if os.path.isdir(local) else os.remove(local)
    io.save(estimator, path)


def load_model(path: str) -> Any:
    from ..data.files import check_exists

    check_exists(path, "model")
    io = require("storage.io", "loading a model")
    return io.load(path)


def fitted_summary(estimator: Any) -> dict[str, Any]:
    state = estimator.fitted_state() if hasattr(estimator, "fitted_state") else {}
    return {"model": type(estimator).__name__, "params": estimator.get_params(), "fitted": state}


def print_fit_text(estimator: Any, seconds: float, output: str | None) -> None:
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


def print_tree(value: Any, indent: int = 0) -> None:
    import numpy as np

    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                print(f"{pad}{key}:")
                print_tree(item, indent + 2)
            else:
                text = str(plain_json(item) if isinstance(item, (np.ndarray, np.generic)) else item)
                if len(text) > 100:
                    text = text[:97] + "..."
                print(f"{pad}{key}: {text}")
    else:
        print(f"{pad}{value}")


def parse_int_list(text: str, option: str) -> list[int]:
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
