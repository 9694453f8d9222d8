"""What every HMM shares: blocks, the Markov chain's M-step, the three-pass path and the fused E-step.

A block is one partition of a sequence collection: a tuple ``(values,
lengths)`` where ``values`` holds the concatenated observations of whole
sequences (shape (n_steps, n_features), or (n_steps,) for symbols) and
``lengths`` the length of each sequence. The E-step of such a block is exact on its own; a sequence longer than a block
is cut into segments fitted with :mod:`dask_em.models.hmm.segments`.

An emission model subclasses :class:`HMMModel` and supplies its parameter
class, the hooks of the three-pass path (``log_emission``,
``emission_stats``), the Python side of its fused kernel (``_kernel_data``,
``_kernel``, ``_stat_arrays``), ``m_step`` (calling
:meth:`_HMMBase._markov_m_step`) and ``sample_emission``.

The M-steps follow hmmlearn's maximum a posteriori updates exactly
(Dirichlet pseudo-counts ``startprob_prior``/``transmat_prior`` and each
emission's priors), so both libraries agree to rounding from the same
initial parameters. Where hmmlearn would produce a zero row or a NaN for a
state with no posterior mass, these models keep that state's previous
parameters instead: a state that is never visited keeps its previous
transition row (and emission parameters), so every row of ``transmat``
stays a valid distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ...contract import Stats
from .recursions import forward_backward, size_tags, viterbi


def _prior(value: Any) -> Any:
    """A JSON-able prior: a float, or nested lists for an array."""
    arr = np.asarray(value, dtype=float)
    return float(arr) if arr.ndim == 0 else arr.tolist()


def _block_parts(block: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(values, lengths)`` of a block as arrays."""
    values, lengths = block
    return np.asarray(values), np.asarray(lengths, dtype=np.int64)


def _as_float_2d(values: np.ndarray) -> np.ndarray:
    """Values as a contiguous float64 (n_steps, n_features) array."""
    X = values if values.ndim == 2 else values.reshape(-1, 1)
    return np.ascontiguousarray(X, dtype=np.float64)


def _chain_stats(n_steps: int, loglik: float, n_invalid: int, sum_start: np.ndarray, sum_trans: np.ndarray) -> Stats:
    """The statistics every HMM E-step returns: steps, log-likelihood, invalid steps, Markov-chain sums."""
    return {
        "n": np.array(float(n_steps)),
        "loglik": np.array(loglik),
        "n_invalid": np.array(float(n_invalid)),
        "sum_start": sum_start,
        "sum_trans": sum_trans,
    }


#: How accelerated EM (:mod:`dask_em.accelerate`) may move the Markov chain's fields; each emission adds its own.
MARKOV_CONSTRAINTS: dict[str, str] = {"startprob": "simplex", "transmat": "simplex"}


def _f64(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


@dataclass(frozen=True)
class HMMParams:
    """``startprob`` (K,) and ``transmat`` (K, K) of every HMM; each emission's class adds its fields after these."""

    startprob: np.ndarray
    transmat: np.ndarray


@dataclass(frozen=True)
class _HMMBase:
    """What the HMMs share: forward-backward, Viterbi and the Markov-chain M-step.

    ``e_step`` here is the three-pass path (emission log-probabilities,
    forward-backward, statistics): the reference the fused E-step of
    :class:`HMMModel` is tested against.
    """

    n_components: int = 1
    startprob_prior: Any = 1.0
    transmat_prior: Any = 1.0
    params: tuple[str, ...] = ()

    #: The parameter class of the model (a frozen dataclass).
    params_class: ClassVar[type] = object

    # hooks -------------------------------------------------------------
    def log_emission(self, values: np.ndarray, params: Any) -> tuple[np.ndarray, int]:
        """Emission log-probabilities (n_steps, n_components) and the number of invalid rows."""
        raise NotImplementedError

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: Any) -> Stats:
        """The emission statistics of a block from its posteriors ``gamma`` (n_steps, n_components)."""
        raise NotImplementedError

    def describe_invalid(self, n: int) -> str:
        """What was wrong with ``n`` invalid steps, and what to try."""
        raise NotImplementedError

    def sample_emission(self, params: Any, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One observation for every state of ``states``."""
        raise NotImplementedError

    # contract ------------------------------------------------------------
    def init_params(self, sample: Any, rng: np.random.Generator) -> Any:
        raise NotImplementedError(
            "HMM parameters are initialised by the estimators (GaussianHMM, CategoricalHMM, PoissonHMM, GMMHMM)"
        )

    def posteriors(self, block: Any, params: Any) -> tuple[np.ndarray, Stats]:
        """Posterior state probabilities of a block and its Markov-chain statistics."""
        values, lengths = _block_parts(block)
        logB, n_invalid = self.log_emission(values, params)
        K = self.n_components
        gamma = np.empty_like(logB)
        sum_start = np.zeros(K)
        sum_trans = np.zeros((K, K))
        loglik = forward_backward(logB, lengths, _f64(params.startprob), _f64(params.transmat), gamma, sum_start,
                                  sum_trans)
        return gamma, _chain_stats(len(logB), loglik, n_invalid, sum_start, sum_trans)

    def e_step(self, block: Any, params: Any) -> Stats:
        """Expected sufficient statistics of one partition (the three-pass path).

        Returns
        -------
        dict
            ``n`` (steps), ``loglik``, ``n_invalid``, ``sum_start (K,)``,
            ``sum_trans (K, K)`` and the emission statistics of the model.
        """
        values, lengths = _block_parts(block)
        gamma, stats = self.posteriors((values, lengths), params)
        stats.update(self.emission_stats(values, gamma, params))
        return stats

    def log_likelihood(self, block: Any, params: Any) -> float:
        """Total log-likelihood of a block (forward pass only is not cheaper here)."""
        return float(self.posteriors(block, params)[1]["loglik"])

    def decode(self, block: Any, params: Any) -> tuple[float, np.ndarray]:
        """Viterbi path of every sequence of a block and its summed log-probability."""
        values, lengths = _block_parts(block)
        logB, _ = self.log_emission(values, params)
        states = np.empty(len(logB), dtype=np.int64)
        with np.errstate(divide="ignore"):
            logp = viterbi(logB, lengths, np.log(params.startprob), np.log(params.transmat), states)
        return float(logp), states

    def sample(self, params: Any, n_samples: int, rng: np.random.Generator,
               currstate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One sequence of ``n_samples`` steps: observations and states."""
        K = self.n_components
        states = np.empty(n_samples, dtype=np.int64)
        state = rng.choice(K, p=params.startprob) if currstate is None else int(currstate)
        cdf = np.cumsum(params.transmat, axis=1)
        u = rng.random(n_samples)
        for t in range(n_samples):
            if t > 0:
                state = min(int(np.searchsorted(cdf[state], u[t], side="right")), K - 1)
            states[t] = state
        return self.sample_emission(params, states, rng), states

    def _markov_m_step(self, stats: Stats, params: Any) -> dict[str, np.ndarray]:
        out = {"startprob": params.startprob, "transmat": params.transmat}
        if "startprob" in self.params:
            sp = np.maximum(np.asarray(self.startprob_prior) - 1 + stats["sum_start"], 0)
            sp = np.where(params.startprob == 0, 0, sp)
            total = sp.sum()
            out["startprob"] = sp / total if total > 0 else params.startprob
        if "transmat" in self.params:
            tm = np.maximum(np.asarray(self.transmat_prior) - 1 + stats["sum_trans"], 0)
            tm = np.where(params.transmat == 0, 0, tm)
            rows = tm.sum(axis=1, keepdims=True)
            # a state never left keeps its previous row (hmmlearn leaves zeros)
            out["transmat"] = np.where(rows > 0, tm / np.where(rows > 0, rows, 1), params.transmat)
        return out


@dataclass(frozen=True)
class HMMModel(_HMMBase):
    """An HMM whose E-step is one fused compiled pass (:func:`~.recursions.fused_e_step`).

    An emission supplies the Python side of its kernel: :meth:`_kernel_data`
    (the block's values as its compiled pieces read them), :meth:`_kernel`
    (the kernel tuple from the parameters), :meth:`_stat_arrays` (its
    zeroed statistics, in the order its ``stats`` piece adds to them) and
    ``_fused_e_step``, its module's cached entry point.
    """

    #: The emission module's cached entry point of the fused E-step.
    _fused_e_step: ClassVar[Any] = None

    def _kernel_data(self, values: np.ndarray) -> np.ndarray:
        return _as_float_2d(values)

    def _kernel(self, params: Any, data: np.ndarray) -> Any:
        raise NotImplementedError

    def _stat_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _finish_kernel_stats(self, stats: Stats) -> Stats:
        """Statistics as the kernel left them, completed (e.g. a symmetric matrix from its lower triangle)."""
        return stats

    def e_step(self, block: Any, params: Any) -> Stats:
        """The statistics of :meth:`_HMMBase.e_step` (the three-pass path) in one fused compiled pass."""
        values, lengths = _block_parts(block)
        data = self._kernel_data(values)
        K = self.n_components
        kernel = self._kernel(params, data)
        emission = self._stat_arrays(data)
        sum_start, sum_trans = np.zeros(K), np.zeros((K, K))
        loglik, bad = self._fused_e_step(
            kernel, data, lengths, _f64(params.startprob), _f64(params.transmat), tuple(emission.values()),
            sum_start, sum_trans, *size_tags(K, data.shape[1] if data.ndim == 2 else 1),
        )
        stats = _chain_stats(len(data), loglik, bad, sum_start, sum_trans)
        stats.update(emission)
        return self._finish_kernel_stats(stats)


__all__ = ["HMMModel", "HMMParams"]
