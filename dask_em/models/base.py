"""The contract between a model and the engine.

A model is a small frozen dataclass holding its configuration (JSON-able
fields only). Its parameters are another frozen dataclass whose fields are
numpy arrays. The three methods are pure numpy: no Dask inside.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

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
    if any block reports a positive count.
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


def params_to_dict(params: Any) -> dict[str, np.ndarray]:
    """The fields of a parameter dataclass as a dict of numpy arrays."""
    return {f.name: np.asarray(getattr(params, f.name)) for f in dataclasses.fields(params)}


def params_from_dict(cls: type, arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild a parameter dataclass of type ``cls`` from a dict of arrays."""
    return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})


def model_config(model: Any) -> dict[str, Any]:
    """The JSON-able configuration of a model dataclass."""
    return dataclasses.asdict(model)
