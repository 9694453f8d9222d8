"""The Poisson emission of HMMs (independent counts per feature): parameters, compiled pieces, M-step, sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
from numba import njit

from ...contract import Stats
from .base import MARKOV_CONSTRAINTS, HMMModel, HMMParams, _as_float_2d
from .recursions import _dot, _shift_exp, _sum, fused_e_step, register_emission

#: Counts whose log-factorial the fused E-step reads from a table.
_N_TABLE = 1024


@dataclass(frozen=True)
class PoissonHMMParams(HMMParams):
    """Parameters of a Poisson HMM: lambdas of shape (n_components, n_features)."""

    lambdas: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {**MARKOV_CONSTRAINTS, "lambdas": "positive"}


class PoissonKernel(NamedTuple):
    """Rates and their logarithms (-inf for a zero rate), both (n_components, n_features)."""

    log_lambdas: np.ndarray
    lambdas: np.ndarray


# -- compiled pieces --------------------------------------------------------


@njit(nogil=True, cache=True)
def _work(kernel, X, max_len, k_tag, d_tag):  # pragma: no cover - compiled
    lambdas = kernel.lambdas
    K, D = lambdas.shape
    # log(v!) of small counts from a table (the same lgamma values, computed once)
    table = np.empty(_N_TABLE)
    for v in range(_N_TABLE):
        table[v] = math.lgamma(v + 1.0)
    neg_sum = np.empty(K)
    for k in range(K):
        c = 0.0
        for d in range(D):
            c -= lambdas[k, d]
        neg_sum[k] = c
    return table, neg_sum, np.empty((D, max_len)), np.empty(max_len), np.empty(max_len, dtype=np.bool_)


@njit(nogil=True, cache=True)
def _probs(kernel, X, start, L, work, ET, mx, k_tag, d_tag):  # pragma: no cover - compiled
    table, neg_sum, XT, lg, valid = work
    log_lambdas = kernel.log_lambdas
    K = len(k_tag) if len(k_tag) > 0 else log_lambdas.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else X.shape[1]
    n_bad = 0
    for t in range(L):
        ok = True
        g = 0.0
        for d in range(D):
            v = X[start + t, d]
            if v >= 0 and v == math.floor(v) and math.isfinite(v):
                if v < _N_TABLE:
                    g += table[int(v)]
                else:
                    g += math.lgamma(v + 1.0)
                XT[d, t] = v
            else:
                ok = False
                XT[d, t] = v if math.isfinite(v) else 0.0
        valid[t] = ok
        lg[t] = g
        if not ok:
            n_bad += 1
    for k in range(K):
        row = ET[k]
        c = neg_sum[k]
        for t in range(L):
            row[t] = c - lg[t]
        for d in range(D):
            ll = log_lambdas[k, d]
            xd = XT[d]
            if ll > -np.inf:
                for t in range(L):
                    row[t] += xd[t] * ll
            else:
                # zero rate: a positive count is impossible, a zero one costs nothing
                for t in range(L):
                    if xd[t] > 0:
                        row[t] = -np.inf
    if n_bad:
        for t in range(L):
            if not valid[t]:
                for k in range(K):
                    ET[k, t] = 0.0
    return _shift_exp(ET, L, mx, k_tag), n_bad


@njit(nogil=True, cache=True)
def _stats(kernel, X, start, L, GT, work, n_bad, stats, k_tag, d_tag):  # pragma: no cover - compiled
    XT = work[2]
    sum_post, sum_x = stats
    K = len(k_tag) if len(k_tag) > 0 else GT.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else X.shape[1]
    for k in range(K):
        g = GT[k]
        sum_post[k] += _sum(g, L)
        for d in range(D):
            # as in the three-pass path, an invalid step's finite values still enter (non-finite ones as 0)
            sum_x[k, d] += _dot(g, XT[d], L)


register_emission(PoissonKernel, _work, _probs, _stats)


@njit(nogil=True, cache=True)
def _fused(*args):  # pragma: no cover - compiled; cached with this module (see .recursions)
    return fused_e_step(*args)


@njit(nogil=True, cache=True)
def _poisson_logpmf(X, log_lambdas, lambdas, out):  # pragma: no cover - compiled
    """Poisson log-probabilities (product over features); returns the number of invalid rows."""
    T, D = X.shape
    K = lambdas.shape[0]
    bad = 0
    for t in range(T):
        ok = True
        lg = 0.0
        for d in range(D):
            v = X[t, d]
            if not (v >= 0 and v == math.floor(v) and math.isfinite(v)):
                ok = False
            else:
                lg += math.lgamma(v + 1.0)
        if not ok:
            bad += 1
            for k in range(K):
                out[t, k] = 0.0
            continue
        for k in range(K):
            acc = -lg
            for d in range(D):
                v = X[t, d]
                if v > 0:
                    acc += v * log_lambdas[k, d]
                acc -= lambdas[k, d]
            out[t, k] = acc
    return bad


@dataclass(frozen=True)
class PoissonHMMModel(HMMModel):
    """HMM with independent Poisson counts per feature.

    Statistics: ``sum_post (K,)`` and ``sum_x (K, D)``.
    """

    lambdas_prior: Any = 0.0
    lambdas_weight: Any = 0.0
    params: tuple[str, ...] = ("startprob", "transmat", "lambdas")

    params_class = PoissonHMMParams
    _fused_e_step = staticmethod(_fused)

    def _kernel(self, params: PoissonHMMParams, data: np.ndarray) -> PoissonKernel:
        lam = np.ascontiguousarray(params.lambdas, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return PoissonKernel(np.log(lam), lam)

    def _stat_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        return {"sum_post": np.zeros(self.n_components), "sum_x": np.zeros((self.n_components, data.shape[1]))}

    def log_emission(self, values: np.ndarray, params: PoissonHMMParams) -> tuple[np.ndarray, int]:
        X = _as_float_2d(values)
        kernel = self._kernel(params, X)
        out = np.empty((len(X), self.n_components))
        bad = _poisson_logpmf(X, kernel.log_lambdas, kernel.lambdas, out)
        return out, int(bad)

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: PoissonHMMParams) -> Stats:
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.where(np.isfinite(X), X, 0.0).astype(np.float64, copy=False)
        return {"sum_post": gamma.sum(axis=0), "sum_x": gamma.T @ X}

    def m_step(self, stats: Stats, params: PoissonHMMParams) -> PoissonHMMParams:
        out = self._markov_m_step(stats, params)
        lambdas = params.lambdas
        if "lambdas" in self.params:
            post = stats["sum_post"]
            seen = post > 0
            alphas, betas = np.asarray(self.lambdas_prior), np.asarray(self.lambdas_weight)
            n = post.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                y_bar = stats["sum_x"] / post[:, None]
                new = (alphas + n * y_bar) / (betas + n)
            lambdas = np.where(seen[:, None], new, params.lambdas)
        return PoissonHMMParams(out["startprob"], out["transmat"], lambdas)

    def describe_invalid(self, n: int) -> str:
        return (
            f"{n} time steps contain counts that are negative, fractional, NaN or infinite; "
            "Poisson HMMs need non-negative integer counts."
        )

    def sample_emission(self, params: PoissonHMMParams, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.poisson(params.lambdas[states])


__all__ = ["PoissonHMMModel", "PoissonHMMParams"]
