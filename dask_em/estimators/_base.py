"""What every scikit-learn style estimator of dask-em shares."""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import string
import warnings
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator

from ..accelerate import make_accelerator
from ..data import Blocks, as_dask_array, weighted_blocks
from ..data.arrays import _check_array_meta
from ..errors import ConvergenceWarning, InvalidDataError, NotFittedError
from ..executor import map_row_slices
from ..storage.format import register_class

#: Rules for hyper-parameters many estimators share: (kind, minimum, None allowed).
#: ``_check_params`` applies those an estimator has; its own checks add the rest.
_COMMON_PARAMS: dict[str, tuple[str, float, bool]] = {
    "n_components": ("int", 1, False),
    "n_clusters": ("int", 1, False),
    "n_init": ("int", 1, False),
    "n_init_iter": ("int", 0, False),
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


_ACCELERATE_DOC = """accelerate : {None, "squarem", "anderson"}, default=None
        ``"squarem"`` (Varadhan & Roland 2008) or ``"anderson"`` (Anderson
        acceleration, as in Henderson & Varadhan 2019) extrapolates the EM
        iterations (see :mod:`dask_em.accelerate`): the same optimum in a
        fraction of the passes where plain EM is slow, never a lower
        log-likelihood at any recorded step. None runs plain EM, which
        matches the reference libraries iteration by iteration."""

#: Descriptions many estimators share, written ``$name`` in their docstrings
#: (substituted when the class is created, as pandas' ``Substitution`` does;
#: a class adds its family's in a ``_docs`` dict).
SHARED_DOCS = {
    "accelerate": _ACCELERATE_DOC,
    "em_options": _ACCELERATE_DOC + """
    verbose : bool, default=False
        Print a progress line per iteration.""",
    "seed_em_options": """random_state : int or Generator, optional
    """ + _ACCELERATE_DOC + """
    verbose : bool, default=False
        Print a progress line per iteration.""",
    "n_passes_": """n_passes_ : int
        Passes over the data the last ``fit`` made: initialisation,
        restarts and refused extrapolations included.""",
    "fit_options": """client, checkpoint, checkpoint_every, resume, force
            Where to run (see :func:`dask_em.executor.where`; by default this
            process) and the fit's snapshots (:class:`Checkpointing`, see
            :func:`dask_em.fit_em`).""",
    "fit_returns": """Returns
        -------
        self

        Raises
        ------
        InvalidDataError
            For data that is not 2-D and numeric, or holds NaN or infinite values""",
}


def store_params(estimator: Any, values: dict[str, Any]) -> None:
    """Store ``__init__``'s arguments (``locals()``) under their names, as scikit-learn asks."""
    for name, value in values.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """A fit's snapshot options, as one object: ``fit``'s ``checkpoint``, ``checkpoint_every``, ``resume``, ``force``.

    Attributes
    ----------
    path : str, os.PathLike or None
        Zarr path or URL of the snapshots; None keeps none.
    every : int
        A snapshot every this many iterations (and at the end).
    resume : bool or None
        Resume from ``path`` if it holds a snapshot (None), always, or never.
    force : bool
        Resume even when the data or configuration differ from the snapshot's.
    """

    path: Any = None
    every: int = 1
    resume: bool | None = None
    force: bool = False

    def for_run(self, run: int, n_runs: int) -> Checkpointing:
        """The options of restart ``run`` of ``n_runs`` fitted apart: its own sub-group ``run-<run>``.

        A finished restart is then not recomputed on resume and an
        unfinished one continues where it stopped.
        """
        if self.path is None or n_runs == 1:
            return self
        return dataclasses.replace(self, path=f"{str(self.path).rstrip('/')}/run-{run}")

    def fit_em_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`dask_em.fit_em` these options stand for."""
        return {"checkpoint": self.path, "checkpoint_every": self.every, "resume": self.resume, "force": self.force}


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
        for owner in (cls, *(f for f in vars(cls).values() if callable(f) and getattr(f, "__doc__", None))):
            if owner.__doc__ and "$" in owner.__doc__:
                owner.__doc__ = string.Template(owner.__doc__).safe_substitute(SHARED_DOCS, **getattr(cls, "_docs", {}))
        if "fit" in cls.__dict__:
            cls.fit = _counting_passes(cls.__dict__["fit"])
        if (cls.__module__ == "dask_em" or cls.__module__.startswith("dask_em.")) and not cls.__name__.startswith("_"):
            register_class(cls)

    def _check_params(self) -> None:
        """Refuse hyper-parameter values no fit accepts, before anything runs.

        Applies the shared rules of :data:`_COMMON_PARAMS` (type and range of
        ``n_components``, ``tol``, ``max_iter``, ...) and ``random_state``,
        then the estimator's own (:meth:`_fit_model`, the checks a fit runs
        before reading data). :func:`dask_em.load` and ``dask-em resume`` run
        it on every configuration read from a file.

        Raises
        ------
        ValueError
            Naming the parameter, its value and what is allowed.
        """
        self._check_ranges()
        params = self.get_params()
        if "accelerate" in params:
            make_accelerator(params["accelerate"], None)  # a bad name is an error before anything runs
        state = params.get("random_state")
        if not (state is None or isinstance(state, (np.random.Generator, np.random.RandomState))
                or (isinstance(state, numbers.Integral) and not isinstance(state, bool) and state >= 0)):
            raise ValueError(f"random_state must be None, a non-negative integer or a numpy Generator, got {state!r}")
        self._fit_model()  # the estimator's own checks: those of a fit before it reads data

    def _check_ranges(self, names: tuple[str, ...] | None = None, error: type[Exception] = ValueError) -> None:
        """Apply the rules of :data:`_COMMON_PARAMS` to the estimator's parameters (those in ``names``).

        Raises ``error`` naming the parameter, its value and what is allowed.
        """
        params = self.get_params()
        for name, (kind, minimum, none_ok) in _COMMON_PARAMS.items():
            if name not in params or (names is not None and name not in names) or (none_ok and params[name] is None):
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
                wanted = "a non-negative number" if minimum == 0 else f"a number >= {minimum:g}"
            if not ok:
                raise error(f"{name} must be {wanted}, got {value!r}")

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

    def _checked_input(self, X: Any, **check: Any) -> Any:
        """``X`` for a fitted estimator's per-row outputs: :func:`validate_in_memory` and the fitted width."""
        X = validate_in_memory(self, X, reset=False, **check)
        shape = getattr(X, "shape", None)
        if shape is not None and len(shape) == 2 and shape[1] != self.n_features_in_:
            raise InvalidDataError(
                f"X has {shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        return X

    #: The parameters of a fit, whose fields are the fitted attributes without their ``_``.
    _params_class: type

    @property
    def _fitted_params(self) -> Any:
        """The fitted parameters, read from the public fitted attributes (``field_`` for every field of
        :attr:`_params_class`, as float64 arrays).

        Nothing is kept beside them, so a fitted estimator, one read back
        by :func:`dask_em.load` (which holds only the public attributes)
        and one whose attributes were set by hand give the same. A field
        with a default may lack its attribute. An estimator whose
        attributes are not named after the fields (the factor models)
        overrides this.
        """
        fields = dataclasses.fields(self._params_class)
        self._check_fitted(fields[0].name + "_")
        return self._params_class(**{
            f.name: np.asarray(getattr(self, f.name + "_"), np.float64) for f in fields
            if hasattr(self, f.name + "_") or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        })

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    # -- the fit loop ---------------------------------------------------------
    # One loop for every estimator, as scikit-learn's ``BaseMixture.fit_predict``:
    # checks, where the fit runs, the blocks, restarts, ``fit_em``, the best run,
    # the convergence warning and the fitted attributes. Estimators supply the
    # hooks below; a public ``fit`` only names its arguments and calls ``_fit``.

    #: What ``tol`` is measured on: the log-likelihood per sample ("mean",
    #: scikit-learn) or in total ("total", hmmlearn).
    _tol_on = "mean"
    #: Restarts (``n_init``): "shared", every start a member of one stacked
    #: model for ``n_init_iter`` shared passes, the best continuing alone
    #: (:func:`shared_restarts`); or "apart", each fitted to the end with its
    #: own checkpoint sub-group (:meth:`Checkpointing.for_run`), the best kept.
    _restarts = "shared"
    #: :func:`validate_in_memory`'s checks of in-memory input; None for none.
    _input_checks: dict[str, Any] | None = {"ensure_all_finite": False, "ensure_min_samples": 2}
    #: The warning (formatted with ``self``) when the best run did not
    #: converge; None leaves it to :func:`dask_em.fit_em`'s own.
    _not_converged: str | None = None
    #: Rows of the sample the default initialisation reads.
    _init_rows = 10_000

    def _fit(
        self,
        X: Any,
        *,
        client: Any,
        checkpointing: Checkpointing,
        sample_weight: Any = None,
        online_passes: int = 0,
        **inputs: Any,
    ) -> Any:
        """Fit by EM: the loop every public ``fit`` runs (``inputs`` go to :meth:`_fit_data`)."""
        from ..engine import fit_em
        from ..executor import where

        model = self._fit_model()
        X = self._fit_input(X)
        self._init_logliks = None
        warm = self._warm()
        with where(client, data=X, verbose=bool(getattr(self, "verbose", False))) as active:
            blocks, model = self._fit_data(X, model, active, **inputs)
            data = blocks if sample_weight is None else weighted_blocks(blocks, sample_weight, active)
            rngs = run_rngs(getattr(self, "random_state", None), 1 if warm else self._n_runs())
            apart = self._restarts == "apart"
            best = best_model = None
            best_score = -math.inf
            for run, rng in enumerate(rngs if apart else rngs[:1]):
                run_checkpointing = checkpointing.for_run(run, len(rngs)) if apart else checkpointing
                model, start = self._start(model, blocks, data, [rng] if apart else rngs, active, run_checkpointing)
                result = fit_em(
                    model, data, start, client=active, random_state=rng, online_passes=online_passes,
                    checkpoint_meta=self.checkpoint_meta(), warn_not_converged=self._not_converged is None,
                    **self._em_options(blocks, active, run, len(rngs)), **run_checkpointing.fit_em_options(),
                )
                score = self._score_run(result, model, data, active)
                if best is None or score > best_score:
                    best, best_model, best_score = result, model, score
        self._warn_not_converged(best)
        self._set_result(best)
        self._set_fitted(best, best_model, blocks)
        return self

    def _warm(self) -> bool:
        """Whether this fit starts from the last one's parameters (``warm_start``, as scikit-learn)."""
        return bool(getattr(self, "warm_start", False)) and hasattr(self, "converged_")

    def _model(self) -> Any:
        """The model the hyper-parameters describe (None where it needs the data: see :meth:`_fit_data`)."""
        return None

    def _fit_model(self) -> Any:
        """The model, checked before any data is read (bad hyper-parameters fail first)."""
        return self._model()

    def _fit_input(self, X: Any) -> Any:
        """``X`` checked as :attr:`_input_checks` says (in memory only), ``n_features_in_`` recorded."""
        return X if self._input_checks is None else validate_in_memory(self, X, reset=True, **self._input_checks)

    def _fit_data(self, X: Any, model: Any, client: Any, **inputs: Any) -> tuple[Blocks, Any]:
        """The blocks the fit reads and the model (estimators whose model depends on the data build it here)."""
        from ..engine import prepare_blocks

        return prepare_blocks(X, client), model

    def _n_runs(self) -> int:
        """Number of restarts (``n_init``)."""
        return int(getattr(self, "n_init", 1))

    def _start(
        self, model: Any, blocks: Blocks, data: Any, rngs: list[np.random.Generator], client: Any,
        checkpointing: Checkpointing,
    ) -> tuple[Any, Any]:
        """``(model, start)`` of a run: the start is parameters, or a function ``fit_em`` calls unless it resumes.

        ``rngs`` holds one generator per start of the run (several for shared
        restarts). A warm start continues from the fitted parameters.
        """
        if self._warm():
            return model, self._fitted_params
        return model, self._restart_start(model, blocks, data, rngs, client)

    def _restart_start(
        self, model: Any, blocks: Blocks, data: Any, rngs: list[np.random.Generator], client: Any, first: Any = None
    ) -> Callable[[], Any]:
        """The best of one start per generator after ``n_init_iter`` shared passes over ``data``, deferred.

        The first start is ``first`` when given, else :meth:`_initial_params`;
        the others come from :meth:`_restart_params`. Deferred, so that a
        resumed fit skips all of it.
        """

        def start() -> Any:
            candidates = [self._initial_params(model, blocks, rngs[0], client) if first is None else first]
            candidates += [self._restart_params(model, blocks, rng, client) for rng in rngs[1:]]
            best, self._init_logliks = shared_restarts(
                model, data, candidates, n_iter=int(getattr(self, "n_init_iter", 0)), client=client,
                split_every=int(getattr(self, "split_every", 8)), verbose=bool(getattr(self, "verbose", False)),
            )
            return best

        return start

    def _initial_params(self, model: Any, blocks: Blocks, rng: np.random.Generator, client: Any) -> Any:
        """Initial parameters: by default ``model.init_params`` on a sample of :attr:`_init_rows` rows."""
        return model.init_params(blocks.sample(int(self._init_rows), rng), rng)

    def _restart_params(self, model: Any, blocks: Blocks, rng: np.random.Generator, client: Any) -> Any:
        """A further restart's start (by default as the first one's)."""
        return self._initial_params(model, blocks, rng, client)

    def _em_options(self, blocks: Blocks, client: Any, run: int, n_runs: int) -> dict[str, Any]:
        """:func:`dask_em.fit_em`'s options for run ``run``: tolerance, iterations, acceleration, ..."""
        return {
            "max_iter": int(self.max_iter), "tol": float(self.tol), "tol_on": self._tol_on,
            "split_every": int(getattr(self, "split_every", 8)), "verbose": bool(getattr(self, "verbose", False)),
            "accelerate": getattr(self, "accelerate", None),
        }

    def _score_run(self, result: Any, model: Any, data: Any, client: Any) -> float:
        """How good a run is (the best is kept): its lower bound by default."""
        return float(result.lower_bound)

    def _warn_not_converged(self, best: Any) -> None:
        if self._not_converged is not None and not best.converged and self.max_iter > 0:
            warnings.warn(self._not_converged.format(self=self), ConvergenceWarning, stacklevel=4)

    def _set_result(self, result: Any) -> None:
        """The fitted attributes every EM fit has: ``converged_``, ``n_iter_``, ``lower_bound_``, ``lower_bounds_``."""
        self.converged_ = bool(result.converged)
        self.n_iter_ = int(result.n_iter)
        self.lower_bound_ = float(result.lower_bound)
        self.lower_bounds_ = [float(v) for v in result.history]

    def _set_fitted(self, result: Any, model: Any, blocks: Blocks) -> None:
        """The estimator's own fitted attributes from the best run's result."""
        raise NotImplementedError

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
