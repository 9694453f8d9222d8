"""What every scikit-learn style estimator of dask-em shares."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numbers

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator

from ..accelerate import make_accelerator
from ..storage.format import register_class
from ..data import as_dask_array
from ..data.arrays import _check_array_meta
from ..errors import InvalidDataError, NotFittedError
from ..executor import map_row_slices

#: Rules for hyper-parameters many estimators share: (kind, minimum, None allowed).
#: ``_check_params`` applies those an estimator has; its own checks add the rest.
_COMMON_PARAMS: dict[str, tuple[str, float, bool]] = {
    "n_components": ("int", 1, False),
    "n_clusters": ("int", 1, False),
    "n_init": ("int", 1, False),
    "n_mix": ("int", 1, False),
    "max_iter": ("int", 0, False),
    "n_iter": ("int", 0, True),
    "init_max_iter": ("int", 1, False),
    "init_sample": ("int", 1, False),
    "split_every": ("int", 2, False),
    "verbose_interval": ("int", 1, False),
    "tol": ("real", 0, False),
    "reg_covar": ("real", 0, False),
    "min_covar": ("real", 0, False),
    "alpha": ("real", 0, False),
}


def _counting_passes(fit: Callable[..., Any]) -> Callable[..., Any]:
    """``fit`` that also sets ``n_passes_``: every pass over the data it made, initialisation included."""
    import functools

    from ..monitor import counting_passes

    @functools.wraps(fit)
    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        with counting_passes() as count:
            out = fit(self, *args, **kwargs)
        self.n_passes_ = count.n
        return out

    return counted


class EMEstimator(BaseEstimator):
    """Base class: a scikit-learn estimator (``get_params``/``set_params``, tags, ``clone``).

    Subclasses list their hyper-parameters as keyword arguments of
    ``__init__`` and store each under the same name, as scikit-learn asks.
    Fitted attributes end with ``_``.
    """

    #: scikit-learn's kind of estimator ("clusterer", "density_estimator", ...).
    _estimator_type: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register dask-em's own public estimators, the classes files may name.

        A subclass defined outside ``dask_em`` is registered only when its
        author calls :func:`dask_em.register_class`.
        """
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = _counting_passes(cls.__dict__["fit"])
        if (cls.__module__ == "dask_em" or cls.__module__.startswith("dask_em.")) and not cls.__name__.startswith("_"):
            register_class(cls)

    def _check_params(self) -> None:
        """Refuse hyper-parameter values no fit accepts, before anything runs.

        Applies the shared rules of :data:`_COMMON_PARAMS` (type and range of
        ``n_components``, ``tol``, ``max_iter``, ...) and ``random_state``;
        estimators extend it with their own checks. :func:`dask_em.load` and
        ``dask-em resume`` run it on every configuration read from a file.

        Raises
        ------
        ValueError
            Naming the parameter, its value and what is allowed.
        """
        params = self.get_params()
        for name, (kind, minimum, none_ok) in _COMMON_PARAMS.items():
            if name not in params or (none_ok and params[name] is None):
                continue
            if name == "n_init" and isinstance(params[name], str) and params[name] == "auto":  # scikit-learn's KMeans
                continue
            value = params[name]
            if kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
                wanted = f"an integer >= {minimum:g}"
            else:
                ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
                      and np.isfinite(value) and value >= minimum)
                wanted = f"a finite number >= {minimum:g}"
            if not ok:
                raise ValueError(f"{name} must be {wanted}, got {value!r}")
        if "accelerate" in params:
            make_accelerator(params["accelerate"], None)  # a bad name is an error before anything runs
        state = params.get("random_state")
        if not (state is None or isinstance(state, (np.random.Generator, np.random.RandomState))
                or (isinstance(state, numbers.Integral) and not isinstance(state, bool) and state >= 0)):
            raise ValueError(f"random_state must be None, a non-negative integer or a numpy Generator, got {state!r}")

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags (``clone`` and ``Pipeline`` ask for them)."""
        tags = super().__sklearn_tags__()
        if tags.estimator_type is None:
            tags.estimator_type = self._estimator_type
        tags.target_tags.required = False
        # NaN marks a missing entry for these estimators, so scikit-learn's checks expect it accepted
        tags.input_tags.allow_nan = bool(getattr(self, "_nan_is_missing", False))
        return tags

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            name
            for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters of this estimator, by name."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> EMEstimator:
        """Set hyper-parameters by name and return the estimator."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid parameters are {sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items() if name != "self"
        }
        changed = []
        for name, value in self.get_params().items():
            default = defaults.get(name, inspect.Parameter.empty)
            same = default is value or (
                not isinstance(value, np.ndarray) and not isinstance(default, np.ndarray) and default == value
            )
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    #: Where the data of the current fit was read from (set by the command
    #: line, which records it so that ``dask-em resume CHECKPOINT`` needs no input).
    _data_source: dict[str, Any] | None = None

    def checkpoint_meta(self) -> dict[str, Any]:
        """The estimator's class and hyper-parameters, recorded in checkpoints."""
        cls = type(self)
        meta = {"estimator": f"{cls.__module__}.{cls.__qualname__}", "config": self.get_params()}
        if self._data_source:
            meta["source"] = dict(self._data_source)
        return meta

    def fitted_state(self) -> dict[str, Any]:
        """Fitted attributes that are numbers or numpy arrays (for saving)."""
        state = {}
        for name, value in vars(self).items():
            if name.endswith("_") and not name.startswith("_"):
                if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
                    state[name] = value
                elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                    state[name] = value
        return state


def run_checkpoint(checkpoint: str | None, run: int) -> str | None:
    """Where restart ``run`` of a fit with ``n_init`` restarts keeps its snapshots.

    Every restart has its own sub-group, so a finished restart is not
    recomputed on resume and an unfinished one continues where it stopped.
    """
    if checkpoint is None:
        return None
    return f"{str(checkpoint).rstrip('/')}/run-{run}"


def run_rngs(random_state: int | np.random.Generator | None, n_runs: int) -> list[np.random.Generator]:
    """One independent generator per restart, derived from ``random_state``.

    Each restart has its own stream, so a restart resumed from a checkpoint
    (which skips its initialisation) does not shift the draws of the next.
    """
    if isinstance(random_state, np.random.Generator):
        seed = np.random.SeedSequence(int(random_state.integers(2**63)))
    elif isinstance(random_state, np.random.RandomState):
        seed = np.random.SeedSequence(int(random_state.randint(2**31)))
    else:
        seed = np.random.SeedSequence(random_state)
    return [np.random.default_rng(child) for child in seed.spawn(n_runs)]


def check_n_samples(n_samples: int) -> None:
    """Raise scikit-learn's error for a ``sample(n_samples)`` request of fewer than one row."""
    if n_samples < 1:
        raise ValueError(
            f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least one sample; pass n_samples >= 1"
        )


def map_rows(
    X: Any,
    func: Callable[..., np.ndarray],
    *args: Any,
    n_columns: int | None,
    dtype: Any = np.float64,
) -> np.ndarray | da.Array:
    """Apply a per-row function to ``X``, lazily when ``X`` is out of core.

    Parameters
    ----------
    X : array-like, dask array, zarr array or path
        The rows.
    func : callable
        ``func(block, *args)`` returning one row of output per input row,
        of shape (n_rows, n_columns) or (n_rows,) when ``n_columns`` is None.
    n_columns : int or None
        Number of output columns, or None for a 1-D output.

    Returns
    -------
    ndarray or dask.array.Array
        A numpy result for numpy input; a lazy Dask array (nothing computed)
        for Dask, Zarr or path input.
    """
    if not is_out_of_core(X):
        X = np.asarray(X)
        _check_array_meta(X.shape, X.dtype)
        return np.asarray(map_row_slices(func, X if X.dtype.kind == "f" else X.astype(np.float64), *args))
    X = as_dask_array(X)
    if n_columns is None:
        return X.map_blocks(func, *args, drop_axis=1, dtype=dtype, meta=np.empty((0,), dtype))
    return X.map_blocks(func, *args, chunks=(X.chunks[0], (n_columns,)), dtype=dtype, meta=np.empty((0, 0), dtype))


def is_out_of_core(X: Any) -> bool:
    """Whether ``X`` is read block by block (Dask array, Zarr array, path or URL)."""
    return isinstance(X, (str, da.Array)) or hasattr(X, "__fspath__") or _is_zarr(X)


def validate_in_memory(estimator: Any, X: Any, *, reset: bool, **check: Any) -> Any:
    """scikit-learn's input checks for in-memory ``X``; out-of-core input is returned as it is.

    In memory, ``X`` becomes a 2-D float32 or float64 array (integers become
    float64), with scikit-learn's messages for 1-D, empty, sparse, complex
    or non-finite input; ``reset`` records ``n_features_in_`` and
    ``feature_names_in_`` (fit), else checks them (predict). Out-of-core
    input is checked block by block inside the passes instead. ``check``
    goes to :func:`sklearn.utils.validation.check_array` (e.g.
    ``ensure_all_finite=False`` where NaN means missing).
    """
    if is_out_of_core(X):
        return X
    from sklearn.utils.validation import validate_data

    try:
        return validate_data(estimator, X, reset=reset, dtype=[np.float64, np.float32], **check)
    except InvalidDataError:
        raise
    except ValueError as exc:  # scikit-learn's message, as the library's own error type
        raise InvalidDataError(str(exc)) from None


def _is_zarr(X: Any) -> bool:
    return type(X).__module__.startswith("zarr")


def shared_restarts(
    model: Any,
    blocks: Any,
    candidates: list[Any],
    *,
    n_iter: int,
    client: Any,
    split_every: int = 8,
    verbose: bool = False,
    stacked: Any = None,
) -> tuple[Any, np.ndarray | None]:
    """The best of several starting points after ``n_iter`` EM iterations run in shared passes.

    Every candidate is a member of one :class:`~dask_em.models.stacked.Stacked`
    model: an iteration of all of them is one pass over the data. The
    member with the highest log-likelihood (under the parameters that
    entered the last pass) is returned, after its last M-step, with every
    member's log-likelihood; the caller continues it alone to convergence.
    One candidate, or ``n_iter <= 0``, runs nothing and returns the first.
    ``stacked`` replaces the plain :class:`~dask_em.models.stacked.Stacked`
    wrapper of ``model`` (e.g. one over segments of long HMM sequences).
    """
    from ..engine import fit_em
    from ..models.stacked import Stacked, StackedParams

    if len(candidates) == 1 or n_iter <= 0:
        return candidates[0], None
    result = fit_em(
        stacked if stacked is not None else Stacked(model), blocks, StackedParams(tuple(candidates)),
        max_iter=int(n_iter), tol=0.0, tol_on="total",
        split_every=split_every, client=client, verbose=verbose, warn_not_converged=False,
    )
    return result.params.best(), np.asarray(result.params.loglik, dtype=float)
