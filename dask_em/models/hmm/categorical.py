"""The categorical emission of HMMs (symbols ``0 .. n_features - 1``): parameters, compiled pieces, M-step, sampling.

The shifted emission probabilities depend only on the symbol, so the fused
E-step reads them from a (n_components, n_features + 1) table built once
per call (the last column, all ones, for invalid symbols): no ``exp`` per
step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
from numba import njit

from .._gaussian import exp_nonpos
from ...contract import Stats
from .base import MARKOV_CONSTRAINTS, HMMModel, HMMParams
from .recursions import fused_e_step, register_emission


@dataclass(frozen=True)
class CategoricalHMMParams(HMMParams):
    """Parameters of a categorical HMM: emissionprob of shape (n_components, n_features)."""

    emissionprob: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {**MARKOV_CONSTRAINTS, "emissionprob": "simplex"}


class CategoricalKernel(NamedTuple):
    """Log emission probabilities (n_components, n_features)."""

    log_emission: np.ndarray


# -- compiled pieces --------------------------------------------------------


@njit(nogil=True, cache=True)
def _work(kernel, x, max_len, k_tag, d_tag):  # pragma: no cover - compiled
    log_emission = kernel.log_emission
    K = len(k_tag) if len(k_tag) > 0 else log_emission.shape[0]
    M = log_emission.shape[1]
    table = np.ones((K, M + 1))
    sym_max = np.zeros(M + 1)
    for m in range(M):
        mxm = log_emission[0, m]
        for k in range(1, K):
            if log_emission[k, m] > mxm:
                mxm = log_emission[k, m]
        sym_max[m] = mxm
        for k in range(K):
            table[k, m] = exp_nonpos(log_emission[k, m] - mxm) if mxm > -np.inf else 0.0
    return table, sym_max, np.empty(max_len, dtype=np.int64)


@njit(nogil=True, cache=True)
def _probs(kernel, x, start, L, work, ET, mx, k_tag, d_tag):  # pragma: no cover - compiled
    table, sym_max, sym = work
    K = len(k_tag) if len(k_tag) > 0 else table.shape[0]
    M = table.shape[1] - 1
    bad = 0
    shift = 0.0
    for t in range(L):
        v = x[start + t]
        if v >= 0 and v < M and v == math.floor(v):
            m = int(v)
        else:
            m = M
            bad += 1
        sym[t] = m
        shift += sym_max[m]
    if not math.isfinite(shift):
        return shift, bad
    for k in range(K):
        row = ET[k]
        probs = table[k]
        for t in range(L):
            row[t] = probs[sym[t]]
    return shift, bad


@njit(nogil=True, cache=True)
def _stats(kernel, x, start, L, GT, work, n_bad, stats, k_tag, d_tag):  # pragma: no cover - compiled
    sym = work[2]
    (sum_obs,) = stats
    K = len(k_tag) if len(k_tag) > 0 else GT.shape[0]
    M = sum_obs.shape[1]
    for k in range(K):
        g = GT[k]
        obs = sum_obs[k]
        for t in range(L):
            m = sym[t]
            if m < M:
                obs[m] += g[t]


register_emission(CategoricalKernel, _work, _probs, _stats)


@njit(nogil=True, cache=True)
def _fused(*args):  # pragma: no cover - compiled; cached with this module (see .recursions)
    return fused_e_step(*args)


@njit(nogil=True, cache=True)
def _categorical_logpmf(x, log_emission, out):  # pragma: no cover - compiled
    """Symbol log-probabilities; returns the number of invalid symbols."""
    T = x.shape[0]
    K, M = log_emission.shape
    bad = 0
    for t in range(T):
        v = x[t]
        if not (v >= 0 and v < M and v == math.floor(v)):
            bad += 1
            for k in range(K):
                out[t, k] = 0.0
            continue
        m = int(v)
        for k in range(K):
            out[t, k] = log_emission[k, m]
    return bad


@njit(nogil=True, cache=True)
def _categorical_sums(x, gamma, sum_obs):  # pragma: no cover - compiled
    T, K = gamma.shape
    M = sum_obs.shape[1]
    for t in range(T):
        v = x[t]
        if v >= 0 and v < M and v == math.floor(v):
            m = int(v)
            for k in range(K):
                sum_obs[k, m] += gamma[t, k]


@dataclass(frozen=True)
class CategoricalHMMModel(HMMModel):
    """HMM with categorical emissions over symbols ``0 .. n_features - 1``.

    Statistics: ``sum_obs (K, n_features)``, the expected count of each
    symbol in each state.
    """

    n_features: int = 2
    emissionprob_prior: Any = 1.0
    params: tuple[str, ...] = ("startprob", "transmat", "emissionprob")

    params_class = CategoricalHMMParams
    _fused_e_step = staticmethod(_fused)

    @staticmethod
    def _symbols(values: np.ndarray) -> np.ndarray:
        x = np.asarray(values)
        if x.ndim == 2:
            x = x[:, 0] if x.shape[1] == 1 else x.ravel()
        return np.ascontiguousarray(x, dtype=np.float64)

    @staticmethod
    def _log_emission(params: CategoricalHMMParams) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.ascontiguousarray(np.log(np.asarray(params.emissionprob, dtype=np.float64)))

    def _kernel_data(self, values: np.ndarray) -> np.ndarray:
        return self._symbols(values)

    def _kernel(self, params: CategoricalHMMParams, data: np.ndarray) -> CategoricalKernel:
        return CategoricalKernel(self._log_emission(params))

    def _stat_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        return {"sum_obs": np.zeros((self.n_components, self.n_features))}

    def log_emission(self, values: np.ndarray, params: CategoricalHMMParams) -> tuple[np.ndarray, int]:
        x = self._symbols(values)
        out = np.empty((len(x), self.n_components))
        bad = _categorical_logpmf(x, self._log_emission(params), out)
        return out, int(bad)

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: CategoricalHMMParams) -> Stats:
        sum_obs = np.zeros((self.n_components, self.n_features))
        _categorical_sums(self._symbols(values), gamma, sum_obs)
        return {"sum_obs": sum_obs}

    def m_step(self, stats: Stats, params: CategoricalHMMParams) -> CategoricalHMMParams:
        out = self._markov_m_step(stats, params)
        emission = params.emissionprob
        if "emissionprob" in self.params:
            e = np.maximum(np.asarray(self.emissionprob_prior) - 1 + stats["sum_obs"], 0)
            rows = e.sum(axis=1, keepdims=True)
            emission = np.where(rows > 0, e / np.where(rows > 0, rows, 1), params.emissionprob)
        return CategoricalHMMParams(out["startprob"], out["transmat"], emission)

    def describe_invalid(self, n: int) -> str:
        return (
            f"{n} symbols are not integers in 0..{self.n_features - 1} (negative, fractional, "
            f"NaN or too large); encode the symbols as 0..n_features-1 (e.g. with "
            "sklearn.preprocessing.LabelEncoder) or increase n_features."
        )

    def sample_emission(self, params: CategoricalHMMParams, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cdf = np.cumsum(params.emissionprob, axis=1)
        u = rng.random(len(states))
        sym = (cdf[states] <= u[:, None]).sum(axis=1)
        return np.minimum(sym, self.n_features - 1).reshape(-1, 1).astype(np.int64)


__all__ = ["CategoricalHMMModel", "CategoricalHMMParams"]
