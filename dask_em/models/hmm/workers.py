"""Per-block functions the HMM estimators map over partitions (run on the workers).

They live beside the models (pure numpy, no scikit-learn), so a worker
running them imports only :mod:`dask_em.models`. ``part`` is a block of
sequences (see :mod:`.base`); ``seq`` one sequence of a Dask bag.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidDataError


def part_posteriors(part: Any, model: Any, params: Any) -> np.ndarray:
    """Posterior state probabilities (n_steps, n_components) of a block."""
    return model.posteriors(part, params)[0]


def part_score(part: Any, model: Any, params: Any) -> float:
    """Log-likelihood of a block."""
    return model.log_likelihood(part, params)


def part_viterbi_states(part: Any, model: Any, params: Any) -> np.ndarray:
    """Viterbi states of a block."""
    return model.decode(part, params)[1]


def part_viterbi_logp(part: Any, model: Any, params: Any) -> float:
    """Summed log-probability of the Viterbi paths of a block."""
    return model.decode(part, params)[0]


def part_max(part: Any) -> float:
    """Largest value of a block (-inf when empty): the number of symbols of a categorical HMM."""
    values = np.asarray(part[0])
    return float(np.nanmax(values)) if values.size else -np.inf


def seq_block(seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """One sequence as a block: values (n_steps, n_features) and its length."""
    values = np.asarray(seq)
    if values.ndim not in (1, 2):
        raise InvalidDataError(
            f"each sequence must be a 1-D or 2-D array (n_steps, n_features), got shape {values.shape}"
        )
    values = values.reshape(-1, 1) if values.ndim == 1 else values
    return values, np.array([len(values)], dtype=np.int64)


def seq_predict(seq: Any, model: Any, params: Any) -> np.ndarray:
    """Viterbi states of one sequence."""
    return model.decode(seq_block(seq), params)[1]


def seq_predict_proba(seq: Any, model: Any, params: Any) -> np.ndarray:
    """Posterior state probabilities of one sequence."""
    return model.posteriors(seq_block(seq), params)[0]


def seq_score(seq: Any, model: Any, params: Any) -> float:
    """Log-likelihood of one sequence."""
    return model.log_likelihood(seq_block(seq), params)


def seq_viterbi_logp(seq: Any, model: Any, params: Any) -> float:
    """Log-probability of the Viterbi path of one sequence."""
    return model.decode(seq_block(seq), params)[0]


__all__ = [
    "part_max",
    "part_posteriors",
    "part_score",
    "part_viterbi_logp",
    "part_viterbi_states",
    "seq_block",
    "seq_predict",
    "seq_predict_proba",
    "seq_score",
    "seq_viterbi_logp",
]
