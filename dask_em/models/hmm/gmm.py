"""The Gaussian-mixture emission of HMMs (hmmlearn's ``GMMHMM``): parameters, compiled pieces, M-step, sampling.

Each state k emits from a mixture of ``n_mix`` Gaussian components with
weights ``weights[k]``. The compiled pieces reuse the Gaussian emission's
(:mod:`.gaussian`) over the ``K * n_mix`` components, state-major
(component ``c = k * n_mix + m``): their log-densities (weights folded
into the normalising constants) give each state's log-probability by a
log-sum-exp over its components, and the within-state responsibilities
times the state posteriors weight the component moments.

Statistics: ``sum_post (K,)``, ``sum_post_mix (K, n_mix)``,
``sum_dx (K * n_mix, D)`` and ``sum_dx2 (K * n_mix, D)`` (spherical, diag)
or ``sum_dxdxT (K * n_mix, D, D)`` (full, tied), centred on the means
entering the iteration. hmmlearn's M-step takes its covariance statistics
about those same means (not the updated ones), so these are exactly its
``c_n``, and the two libraries agree to rounding from the same start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from .._gaussian import check_covariance_type, exp_nonpos, is_square, recenter_moments
from ...contract import Stats
from .base import MARKOV_CONSTRAINTS, HMMModel, HMMParams, _as_float_2d
from .gaussian import (
    _cholesky,
    component_logdens,
    component_moments,
    describe_non_finite,
    diag_terms,
    load_steps,
    log_densities,
    symmetrize_lower,
    weighted_moments,
    whitening,
    zero_invalid,
)
from .recursions import _shift_exp, _sum, _valid_weights, fused_e_step, register_emission


@dataclass(frozen=True)
class GMMHMMParams(HMMParams):
    """Parameters of an HMM with Gaussian-mixture emissions: those of :class:`.base.HMMParams` and

    Attributes
    ----------
    weights : ndarray of shape (n_components, n_mix)
    means : ndarray of shape (n_components, n_mix, n_features)
    covars : ndarray
        (n_components, n_mix) spherical, (n_components, n_mix, n_features)
        diag, (n_components, n_mix, n_features, n_features) full,
        (n_components, n_features, n_features) tied (one matrix per state,
        shared by its components, as in hmmlearn).
    """

    weights: np.ndarray
    means: np.ndarray
    covars: np.ndarray


class GMMDiagKernel(NamedTuple):
    """Diagonal components (C = K * n_mix): means, ``-0.5 / variances`` (C, D), log weights + normalising constants."""

    means: np.ndarray
    half_prec: np.ndarray
    log_norm: np.ndarray
    n_mix: int


class GMMFullKernel(NamedTuple):
    """Full components: means (C, D), inverse Cholesky factors (C, D, D), log weights + normalising constants."""

    means: np.ndarray
    whiten: np.ndarray
    log_norm: np.ndarray
    n_mix: int


# -- compiled pieces --------------------------------------------------------


@njit(nogil=True, cache=True)
def _work(kernel, X, max_len, k_tag, d_tag):  # pragma: no cover - compiled
    D, C = X.shape[1], kernel.means.shape[0]
    # transposed values, valid steps, valid weights, whitened coordinate, weighted
    # differences, component log-densities then responsibilities, component weights
    return (np.empty((D, max_len)), np.empty(max_len, dtype=np.bool_), np.empty(max_len), np.empty(max_len),
            np.empty(max_len), np.empty((C, max_len)), np.empty(max_len))


@njit(nogil=True, cache=True)
def _mix(LC, ET, W, L, K, M):  # pragma: no cover - compiled
    """``ET[k] = log sum_m exp(LC[kM + m])``; ``LC`` becomes the within-state responsibilities."""
    for k in range(K):
        base = k * M
        row = ET[k]
        for t in range(L):
            W[t] = LC[base, t]
        for m in range(1, M):
            lc = LC[base + m]
            for t in range(L):
                v = lc[t]
                W[t] = v if v > W[t] else W[t]
        for t in range(L):
            row[t] = 0.0
        for m in range(M):
            lc = LC[base + m]
            for t in range(L):
                e = exp_nonpos(lc[t] - W[t]) if W[t] > -np.inf else 0.0
                lc[t] = e
                row[t] += e
        for t in range(L):
            s = row[t]
            if s > 0.0:
                inv = 1.0 / s
                for m in range(M):
                    LC[base + m, t] *= inv
                row[t] = W[t] + math.log(s)
            else:
                row[t] = -np.inf


@njit(nogil=True, cache=True)
def _probs(kernel, X, start, L, work, ET, mx, k_tag, d_tag):  # pragma: no cover - compiled
    XT, valid, LC = work[0], work[1], work[5]
    K = len(k_tag) if len(k_tag) > 0 else ET.shape[0]
    n_bad = load_steps(X, start, L, XT, valid, d_tag)
    component_logdens(kernel, XT, L, work[3], LC, (), d_tag)
    _mix(LC, ET, work[6], L, K, kernel.n_mix)
    if n_bad:
        zero_invalid(ET, L, valid, K)
    return _shift_exp(ET, L, mx, k_tag), n_bad


@njit(nogil=True, cache=True)
def _stats(kernel, X, start, L, GT, work, n_bad, stats, k_tag, d_tag):  # pragma: no cover - compiled
    K = len(k_tag) if len(k_tag) > 0 else GT.shape[0]
    M = kernel.n_mix
    sum_post, sum_post_mix, sum_dx, second = stats
    for k in range(K):
        g = _valid_weights(GT[k], work[1], L, n_bad, work[2])
        sum_post[k] += _sum(g, L)
        for m in range(M):
            # posterior of state k times the responsibility of its component m
            c = k * M + m
            r, W = work[5][c], work[6]
            for t in range(L):
                W[t] = g[t] * r[t]
            sum_post_mix[k, m] += _sum(W, L)
            component_moments(kernel, W, work[0], L, c, work[4], sum_dx, second, d_tag)


register_emission(GMMDiagKernel, _work, _probs, _stats)
register_emission(GMMFullKernel, _work, _probs, _stats)


@njit(nogil=True, cache=True)
def _fused(*args):  # pragma: no cover - compiled; cached with this module (see .recursions)
    return fused_e_step(*args)


def _logsumexp_groups(LC: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
    """Per state (groups of M columns of ``LC (n, K M)``): log-sum-exp (n, K) and responsibilities (n, K M)."""
    n, C = LC.shape
    G = LC.reshape(n, C // M, M)
    top = G.max(axis=2, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(under="ignore"):
        E = np.exp(G - safe)
    total = E.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(total) + safe
        resp = np.where(total > 0, E / total, 0.0)
    return logp[:, :, 0], resp.reshape(n, C)


@dataclass(frozen=True)
class GMMHMMModel(HMMModel):
    """HMM with Gaussian-mixture emissions and hmmlearn's priors.

    ``covars_prior``/``covars_weight`` None take hmmlearn's defaults for
    the covariance type (which make the M-step the maximum-likelihood one
    for full, tied and diag covariances).
    """

    n_mix: int = 1
    covariance_type: str = "diag"
    weights_prior: Any = 1.0
    means_prior: Any = 0.0
    means_weight: Any = 0.0
    covars_prior: Any = None
    covars_weight: Any = None
    params: tuple[str, ...] = ("startprob", "transmat", "weights", "means", "covars")

    params_class = GMMHMMParams
    _fused_e_step = staticmethod(_fused)

    def __post_init__(self) -> None:
        check_covariance_type(self.covariance_type)
        if not isinstance(self.n_mix, (int, np.integer)) or isinstance(self.n_mix, bool) or self.n_mix < 1:
            raise ValueError(f"n_mix must be an integer >= 1, got {self.n_mix!r}")

    @property
    def _square(self) -> bool:
        return is_square(self.covariance_type)

    def param_constraints(self, params: GMMHMMParams) -> dict[str, str]:
        """How accelerated EM may move each parameter (see :mod:`dask_em.accelerate`)."""
        return {**MARKOV_CONSTRAINTS, "weights": "simplex", "covars": "spd" if self._square else "positive"}

    def component_covars(self, covars: np.ndarray, n_features: int) -> np.ndarray:
        """Covariances of the K * n_mix components: (C, D) variances, or (C, D, D) matrices (full, tied)."""
        K, M, D = self.n_components, self.n_mix, n_features
        covars = np.asarray(covars, dtype=np.float64)
        if self.covariance_type == "tied":
            return np.repeat(covars, M, axis=0)
        if self.covariance_type == "spherical":
            return np.repeat(covars.reshape(K * M, 1), D, axis=1)
        return covars.reshape((K * M, D) if self.covariance_type == "diag" else (K * M, D, D))

    def _component_terms(self, params: GMMHMMParams, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means (C, D), precisions (C, D) or whitening matrices (C, D, D), log weights + normalising constants (C,)."""
        M = self.n_mix
        means = np.ascontiguousarray(np.asarray(params.means, dtype=np.float64).reshape(-1, n_features))
        covs = self.component_covars(params.covars, n_features)
        if self._square:
            labels = [f"{c // M} (mixture component {c % M})" for c in range(len(covs))]
            scale, log_norm = whitening(covs, labels)
        else:
            scale, log_norm = diag_terms(covs)
        with np.errstate(divide="ignore"):
            log_norm = log_norm + np.log(np.asarray(params.weights, dtype=np.float64).ravel())
        return means, scale, np.ascontiguousarray(log_norm)

    # -- fused E-step ----------------------------------------------------------
    def _kernel(self, params: GMMHMMParams, data: np.ndarray) -> GMMDiagKernel | GMMFullKernel:
        means, scale, log_norm = self._component_terms(params, data.shape[1])
        if self._square:
            return GMMFullKernel(means, scale, log_norm, int(self.n_mix))
        return GMMDiagKernel(means, -0.5 * scale, log_norm, int(self.n_mix))

    def _stat_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        K, M, D = self.n_components, self.n_mix, data.shape[1]
        second = {"sum_dxdxT": np.zeros((K * M, D, D))} if self._square else {"sum_dx2": np.zeros((K * M, D))}
        return {"sum_post": np.zeros(K), "sum_post_mix": np.zeros((K, M)), "sum_dx": np.zeros((K * M, D)), **second}

    def _finish_kernel_stats(self, stats: Stats) -> Stats:
        if self._square:
            symmetrize_lower(stats["sum_dxdxT"])
        return stats

    # -- three-pass path ---------------------------------------------------------
    def _component_log_densities(self, X: np.ndarray, params: GMMHMMParams) -> tuple[np.ndarray, np.ndarray]:
        means, scale, log_norm = self._component_terms(params, X.shape[1])
        ct = "full" if self._square else "diag"
        LC, _ = log_densities(X, means, ct, None if self._square else scale, scale if self._square else None, log_norm)
        return LC, np.isfinite(X).all(axis=1)

    def log_emission(self, values: np.ndarray, params: GMMHMMParams) -> tuple[np.ndarray, int]:
        X = _as_float_2d(values)
        LC, finite = self._component_log_densities(X, params)
        logB, _ = _logsumexp_groups(LC, self.n_mix)
        logB[~finite] = 0.0
        return logB, int(len(X) - finite.sum())

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: GMMHMMParams) -> Stats:
        X = _as_float_2d(values)
        K, M = self.n_components, self.n_mix
        LC, finite = self._component_log_densities(X, params)
        _, resp = _logsumexp_groups(LC, M)
        g = np.where(finite[:, None], gamma, 0.0)
        weights = np.repeat(g, M, axis=1) * resp
        means = np.asarray(params.means, dtype=np.float64).reshape(K * M, -1)
        sum_dx, second = weighted_moments(X, weights, means, self._square)
        return {"sum_post": g.sum(axis=0), "sum_post_mix": weights.sum(axis=0).reshape(K, M), "sum_dx": sum_dx,
                ("sum_dxdxT" if self._square else "sum_dx2"): second}

    def recenter_stats(self, stats: Stats, old: GMMHMMParams, new: GMMHMMParams) -> Stats:
        """Statistics centred on ``old.means`` moved to ``new.means`` (for online EM)."""
        D = np.shape(old.means)[-1]
        d = (np.asarray(old.means, np.float64) - np.asarray(new.means, np.float64)).reshape(-1, D)
        flat = dict(stats, _weight=np.asarray(stats["sum_post_mix"]).ravel())
        out = recenter_moments(flat, d, weight="_weight", first="sum_dx", outer="sum_dxdxT", square="sum_dx2")
        out.pop("_weight")
        return out

    # -- M-step --------------------------------------------------------------------
    def covar_priors(self, n_features: int) -> tuple[Any, Any]:
        """``(covars_prior, covars_weight)`` with hmmlearn's defaults for None."""
        M, D, ct = self.n_mix, n_features, self.covariance_type
        default = {"full": (0.0, -(1.0 + D + 1.0)), "tied": (0.0, -(M + D + 1.0)), "diag": (-1.5, 0.0),
                   "spherical": (-(M + 2.0) / 2.0, 0.0)}[ct]
        prior = default[0] if self.covars_prior is None else self.covars_prior
        weight = default[1] if self.covars_weight is None else self.covars_weight
        return prior, weight

    def m_step(self, stats: Stats, params: GMMHMMParams) -> GMMHMMParams:
        """hmmlearn's MAP update; states and components without posterior mass keep their parameters."""
        out = self._markov_m_step(stats, params)
        K, M = self.n_components, self.n_mix
        m0 = np.asarray(params.means, dtype=np.float64)
        D = m0.shape[2]
        post, N = stats["sum_post"], stats["sum_post_mix"]
        seen = N > 0
        weights = params.weights
        if "weights" in self.params:
            a1 = np.broadcast_to(np.asarray(self.weights_prior, dtype=np.float64), (K, M)) - 1
            w_d = (post + a1.sum(axis=1))[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                new = (N + a1) / w_d
            weights = np.where(w_d > 0, new, params.weights)
        lam = np.broadcast_to(np.asarray(self.means_weight, dtype=np.float64), (K, M))
        mus = np.broadcast_to(np.asarray(self.means_prior, dtype=np.float64), (K, M, D))
        S1 = stats["sum_dx"].reshape(K, M, D)
        means = m0
        if "means" in self.params:
            with np.errstate(divide="ignore", invalid="ignore"):
                new = m0 + (lam[..., None] * (mus - m0) + S1) / (N + lam)[..., None]
            means = np.where(seen[..., None], new, m0)
        covars = params.covars
        if "covars" in self.params:
            covars = self._covars_m_step(stats, params, means, mus, lam, D)
        return GMMHMMParams(out["startprob"], out["transmat"], weights, means, covars)

    def _covars_m_step(self, stats: Stats, params: GMMHMMParams, means: np.ndarray, mus: np.ndarray,
                       lam: np.ndarray, D: int) -> np.ndarray:
        K, M, ct = self.n_components, self.n_mix, self.covariance_type
        N, post = stats["sum_post_mix"], stats["sum_post"]
        seen = N > 0
        prior, weight = self.covar_priors(D)
        cm = means - mus
        with np.errstate(divide="ignore", invalid="ignore"):
            if ct == "diag":
                alphas = np.broadcast_to(np.asarray(prior, dtype=np.float64), (K, M, D))
                betas = np.broadcast_to(np.asarray(weight, dtype=np.float64), (K, M, D))
                c_n = lam[..., None] * cm**2 + 2 * betas + stats["sum_dx2"].reshape(K, M, D)
                c_d = N[..., None] + 1 + 2 * (alphas + 1)
                return np.where(seen[..., None], c_n / c_d, params.covars)
            if ct == "spherical":
                alphas = np.broadcast_to(np.asarray(prior, dtype=np.float64), (K, M))
                betas = np.broadcast_to(np.asarray(weight, dtype=np.float64), (K, M))
                c_n = lam * (cm**2).sum(axis=2) + 2 * betas + stats["sum_dx2"].reshape(K, M, D).sum(axis=2)
                c_d = D * (N + 1) + 2 * (alphas + 1)
                return np.where(seen, c_n / c_d, params.covars)
            outer = cm[..., :, None] * cm[..., None, :]
            S2 = stats["sum_dxdxT"].reshape(K, M, D, D)
            if ct == "full":
                psis = np.broadcast_to(np.asarray(prior, dtype=np.float64), (K, M, D, D))
                nus = np.broadcast_to(np.asarray(weight, dtype=np.float64), (K, M))
                c_n = psis.transpose(0, 1, 3, 2) + lam[..., None, None] * outer + S2
                c_d = (N + 1 + nus + D + 1)[..., None, None]
                covars = np.where(seen[..., None, None], c_n / c_d, params.covars)
                mats, labels = covars.reshape(K * M, D, D), [f"{c // M} (mixture component {c % M})" for c in range(K * M)]
            else:
                psis = np.broadcast_to(np.asarray(prior, dtype=np.float64), (K, D, D))
                nus = np.broadcast_to(np.asarray(weight, dtype=np.float64), (K,))
                c_n = np.einsum("ij,ijkl->ikl", lam, outer) + psis.transpose(0, 2, 1) + S2.sum(axis=1)
                c_d = (post + M + nus + D + 1)[:, None, None]
                covars = np.where((post > 0)[:, None, None], c_n / c_d, params.covars)
                mats, labels = covars, list(range(K))
        # here, on the client, rather than as a worker's traceback in the next E-step
        for cov, label in zip(mats, labels):
            _cholesky(cov, label)
        return covars

    def describe_invalid(self, n: int) -> str:
        return describe_non_finite(n, "Gaussian-mixture HMMs")

    def sample_emission(self, params: GMMHMMParams, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        K, M = self.n_components, self.n_mix
        means = np.asarray(params.means, dtype=np.float64)
        D = means.shape[2]
        covs = self.component_covars(params.covars, D)
        if not self._square:
            covs = np.array([np.diag(c) for c in covs])
        cdf = np.cumsum(params.weights, axis=1)
        mix = np.minimum((cdf[states] <= rng.random(len(states))[:, None]).sum(axis=1), M - 1)
        comp = states * M + mix
        X = np.empty((len(states), D))
        for c in range(K * M):
            idx = np.flatnonzero(comp == c)
            if len(idx):
                X[idx] = rng.multivariate_normal(means.reshape(K * M, D)[c], covs[c], size=len(idx))
        return X


__all__ = ["GMMHMMModel", "GMMHMMParams"]
