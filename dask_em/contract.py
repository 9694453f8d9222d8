"""The contract between a model and the engine: what a model must have, and what it may add.

A model is a small frozen dataclass holding its configuration (JSON-able
fields only). Its parameters are another frozen dataclass whose fields are
numpy arrays. The three required methods (:class:`EMModel`) are pure
numpy: no Dask inside.

The optional hooks are declared here once, with their defaults
(:class:`ModelHooks`). A model may define any of them, inheriting from
:class:`ModelHooks` or not: a plug-in that inherits from nothing keeps
working, because the engine and its helpers never look a hook up by name
themselves; they call ``hooks(model).<hook>(...)``, which gives the model's
own method where it has one and the default declared here otherwise.

This module imports nothing from dask-em: the engine, the models, the data
layer and the storage layer all import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar, cast, runtime_checkable

import numpy as np

__all__ = ["EMModel", "HOOKS", "ModelHooks", "Stats", "Weighted", "hooks", "split_weights", "with_log_prior"]

#: Sufficient statistics of one block: every value is a SUM over the block.
Stats = dict[str, np.ndarray]

P = TypeVar("P")


@runtime_checkable
class EMModel(Protocol[P]):
    """What ``fit_em`` needs from a model.

    ``e_step`` must return the keys ``"n"`` (observations in the block) and
    ``"loglik"`` (total log-likelihood of the block under ``params``), plus
    the model's own sufficient statistics, all as sums so that the
    statistics of two blocks combine by addition. It may also return
    ``"n_invalid"``: the number of values outside the model's support; the
    engine raises :class:`dask_em.errors.InvalidDataError` after the pass
    if any block reports a positive count, with the message of
    :meth:`ModelHooks.describe_invalid`.
    """

    def init_params(self, sample: Any, rng: np.random.Generator) -> P:
        """Initial parameters from a small in-memory sample of the data."""
        ...

    def e_step(self, block: Any, params: P) -> Stats:
        """Expected sufficient statistics of one block under ``params``."""
        ...

    def m_step(self, stats: Stats, params: P) -> P:
        """New parameters from the statistics summed over all blocks."""
        ...


class ModelHooks:
    """The optional hooks of a model, each with the default the engine uses when a model lacks it.

    Inheriting is optional (see :func:`hooks`); a model overrides only the
    hooks it needs. Every hook is pure: it returns new values and never
    changes the model, the statistics or the parameters it is given.
    """

    def describe_invalid(self, n_invalid: int) -> str:
        """The message of the error raised when blocks counted ``n_invalid`` values outside the support.

        Say what was wrong and what to do ("3 values are negative; counts
        must be non-negative integers").
        """
        return f"{n_invalid} values are outside the model's support"

    def finish_stats(self, stats: Stats, params: Any) -> Stats:
        """Complete the statistics summed over all blocks, before the M-step and the monitor see them.

        For a log-likelihood that is not a sum over blocks (a prior, REML's
        log-determinant of a summed matrix). Default: unchanged.
        """
        return stats

    def prepare_e_step(self, params: Any, run_pass: Callable[..., Stats]) -> Any:
        """The parameters the E-step pass is given, after passes of the model's own.

        ``run_pass(pass_model, pass_params)`` runs one pass over the same
        blocks (one compute, summed in the same tree) and returns its
        statistics; a segmented HMM computes its segments' transfer
        operators this way. Default: ``params``, no extra pass.
        """
        return params

    def param_constraints(self, params: Any) -> Mapping[str, str]:
        """The constraint of each parameter field for accelerated EM (:mod:`dask_em.accelerate`).

        Default: the parameter class's ``constraints`` mapping, or none
        (every floating field ``"real"``). Override when the kinds depend
        on the model's configuration (e.g. a covariance type).
        """
        return cast(Mapping[str, str], getattr(type(params), "constraints", {}))

    def complete_params(self, params: Any) -> Any:
        """Recompute the ``"derived"`` fields (e.g. Cholesky factors) after an extrapolation. Default: unchanged."""
        return params

    def recenter_stats(self, stats: Stats, old: Any, new: Any) -> Stats:
        """Statistics centred on ``old`` parameters re-expressed around ``new`` ones (online EM).

        ``stats`` are per-observation averages (``"n"`` is 1). Needed by a
        model whose E-step centres its moments on the current parameters.
        Default: unchanged.
        """
        return stats


#: The names of the optional hooks.
HOOKS = frozenset(name for name in vars(ModelHooks) if not name.startswith("_"))

_DEFAULTS = ModelHooks()


def with_log_prior(stats: Stats, log_prior: float) -> Stats:
    """``stats`` with ``loglik`` raised by ``log_prior`` (the log posterior MAP-EM increases).

    The ``finish_stats`` of a model with a prior; the data's log-likelihood
    alone is kept under ``"loglik_data"``.
    """
    loglik = float(stats["loglik"])
    return {**stats, "loglik_data": np.array(loglik), "loglik": np.array(loglik + log_prior)}


class _PlugIn:
    """A model that does not inherit :class:`ModelHooks`: its own hooks, the defaults for the others."""

    __slots__ = ("_model",)

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        if name not in HOOKS:
            raise AttributeError(f"{name!r} is not an optional hook of the model contract ({sorted(HOOKS)})")
        own = getattr(self._model, name, None)
        return own if own is not None else getattr(_DEFAULTS, name)


def hooks(model: Any) -> ModelHooks:
    """The optional hooks of ``model``: its own where it defines them, the declared defaults otherwise."""
    if isinstance(model, ModelHooks):
        return model
    return cast(ModelHooks, _PlugIn(model))


class Weighted(NamedTuple):
    """A block of rows travelling with the rows' weights (``fit(X, sample_weight=...)``).

    An E-step that takes weights multiplies every row's contribution to
    every sum (``n`` and ``loglik`` included) by its weight, so that an
    integer weight is the same as repeating the row.
    """

    data: Any
    weights: np.ndarray


def split_weights(block: Any) -> tuple[Any, np.ndarray | None]:
    """The rows of ``block`` and their weights (None when unweighted)."""
    if isinstance(block, Weighted):
        return block.data, np.asarray(block.weights, dtype=np.float64)
    return block, None
