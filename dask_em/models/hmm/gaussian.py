"""The Gaussian emission of HMMs: parameters, compiled pieces, M-step, sampling.

The compiled pieces work on any number of Gaussian components (the states
here; the states' mixture components in :mod:`.gmm`), with the steps of
one sequence along the fast axis:

- :func:`load_steps`: a sequence's values transposed to (n_features,
  n_steps), with its non-finite steps marked invalid (and zeroed);
- :func:`diag_logdens` / :func:`full_logdens`: log-densities of
  diagonal (and spherical) or whitened full (and tied) components;
- :func:`diag_moments` / :func:`full_moments`: a component's weighted
  sums of ``x - means[c]`` and of its squares or outer products, centred
  on the component's mean so that data far from the origin loses no
  precision (an offset of 3e7 gives the same variances as centred data);
- :func:`component_logdens` / :func:`component_moments`: the one or the
  other, chosen at compile time by the kernel's type (a kernel with
  ``whiten`` is full).

:class:`GaussianHMMModel` plugs them into the fused E-step
(:mod:`.recursions`) as the ``work``/``probs``/``stats`` pieces of two
kernels: :class:`DiagKernel` and :class:`FullKernel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numba import njit
from numba.extending import overload

from ...errors import InvalidDataError
from .._gaussian import LOG_2PI, check_covariance_type, is_square, recenter_moments, to_full
from ...contract import Stats
from .base import MARKOV_CONSTRAINTS, HMMModel, HMMParams, _as_float_2d
from .recursions import _dot, _shift_exp, _sum, _valid_weights, fused_e_step, register_emission

#: Rows per sub-block for the BLAS parts of the three-pass path (cache-sized).
SUB_BLOCK = 4096
#: Added to the diagonal of a full covariance whose Cholesky factorisation
#: fails (a state left with too few steps), as hmmlearn does.
CHOLESKY_JITTER = 1e-7


# --------------------------------------------------------------------------
# Covariances as the HMMs factorise them (types, shapes: :mod:`.._gaussian`)
# --------------------------------------------------------------------------


def _cholesky(cov: np.ndarray, state: int) -> np.ndarray:
    """Lower Cholesky factor of a covariance, regularised as hmmlearn does.

    A state left with fewer steps than features (short sequences, a
    constant feature) has a singular covariance: as hmmlearn, retry with
    :data:`CHOLESKY_JITTER` added to the diagonal, and say what to change
    when even that fails.
    """
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        try:
            chol = np.linalg.cholesky(cov + CHOLESKY_JITTER * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            chol = None
    if chol is None or not np.all(np.isfinite(chol)):
        with np.errstate(invalid="ignore"):
            eig = np.linalg.eigvalsh(cov).min() if np.all(np.isfinite(cov)) else np.nan
        raise InvalidDataError(
            f"the covariance of state {state} is not positive definite (smallest eigenvalue {eig:.3g}), "
            f"even with {CHOLESKY_JITTER:g} added to its diagonal: the state explains too few "
            "distinct observations. Try fewer n_components, a larger covars_prior, "
            "covariance_type='diag', or more data."
        )
    return chol


def diag_terms(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precisions (C, D) and log normalising constants (C,) of diagonal variances (C, D)."""
    cov = np.maximum(np.asarray(cov, dtype=np.float64), np.finfo(float).tiny)
    log_norm = -0.5 * (cov.shape[1] * LOG_2PI + np.log(cov).sum(axis=1))
    return np.ascontiguousarray(1.0 / cov), log_norm


def whitening(covs: np.ndarray, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse lower Cholesky factors (C, D, D) and log normalising constants (C,) of covariances (C, D, D).

    ``labels[c]`` names component c in the error of a covariance that is
    not positive definite (default: its index).
    """
    C, D = covs.shape[0], covs.shape[1]
    whiten = np.empty((C, D, D))
    log_norm = np.empty(C)
    for c in range(C):
        chol = _cholesky(covs[c], c if labels is None else labels[c])
        whiten[c] = np.linalg.inv(chol)
        log_norm[c] = -0.5 * (D * LOG_2PI) - np.log(np.diag(chol)).sum()
    return whiten, log_norm


# --------------------------------------------------------------------------
# Compiled pieces (any number of components C; steps along the fast axis)
# --------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def load_steps(X, start, L, XT, valid, d_tag):  # pragma: no cover - compiled
    """``XT[:, :L] = X[start:start + L].T``; non-finite steps marked invalid and zeroed. Returns their number."""
    D = len(d_tag) if len(d_tag) > 0 else X.shape[1]
    n_bad = 0
    for t in range(L):
        ok = True
        for d in range(D):
            v = X[start + t, d]
            XT[d, t] = v
            if not math.isfinite(v):
                ok = False
        valid[t] = ok
        if not ok:
            n_bad += 1
            for d in range(D):
                XT[d, t] = 0.0
    return n_bad


@njit(nogil=True, cache=True)
def zero_invalid(out, L, valid, n_rows):  # pragma: no cover - compiled
    """Invalid steps: log-probability 0 (probability one) in the first ``n_rows`` rows of ``out``."""
    for t in range(L):
        if not valid[t]:
            for c in range(n_rows):
                out[c, t] = 0.0


@njit(nogil=True, cache=True, inline="always")
def _start_row(out, log_norm, c, L):  # pragma: no cover - compiled
    """``out[c, :L] = log_norm[c]``: the row a component's per-feature terms are then added to."""
    row = out[c]
    lk = log_norm[c]
    for t in range(L):
        row[t] = lk
    return row


@njit(nogil=True, cache=True)
def diag_logdens(XT, L, means, half_prec, log_norm, out, c_tag, d_tag):  # pragma: no cover - compiled
    """``out[c, :L]``: log-densities of diagonal Gaussians (``half_prec = -0.5 / variances``)."""
    C = len(c_tag) if len(c_tag) > 0 else means.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else means.shape[1]
    for c in range(C):
        row = _start_row(out, log_norm, c, L)
        for d in range(D):
            m = means[c, d]
            h = half_prec[c, d]
            xd = XT[d]
            for t in range(L):
                diff = xd[t] - m
                row[t] += h * diff * diff


@njit(nogil=True, cache=True)
def full_logdens(XT, L, means, whiten, log_norm, Y, out, c_tag, d_tag):  # pragma: no cover - compiled
    """``out[c, :L]``: ``log_norm[c] - 0.5 |whiten[c] (x - means[c])|^2`` (lower triangle of ``whiten`` read)."""
    C = len(c_tag) if len(c_tag) > 0 else means.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else means.shape[1]
    for c in range(C):
        row = _start_row(out, log_norm, c, L)
        # one whitened coordinate at a time (the whitened difference loses
        # only |W_c x| eps: no pass to centre x first)
        for d in range(D):
            sd = 0.0
            for e in range(d + 1):
                sd -= whiten[c, d, e] * means[c, e]
            for t in range(L):
                Y[t] = sd
            for e in range(d + 1):
                w = whiten[c, d, e]
                xe = XT[e]
                for t in range(L):
                    Y[t] += w * xe[t]
            for t in range(L):
                row[t] -= 0.5 * Y[t] * Y[t]


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _centred_moments(g, x, m, n):  # pragma: no cover - compiled
    """``sum_t g[t] (x[t] - m)`` and ``sum_t g[t] (x[t] - m)**2``."""
    s1 = 0.0
    s2 = 0.0
    for t in range(n):
        dx = x[t] - m
        v = g[t] * dx
        s1 += v
        s2 += v * dx
    return s1, s2


@njit(nogil=True, cache=True)
def diag_moments(g, XT, L, means, c, sum_dx, sum_dx2, d_tag):  # pragma: no cover - compiled
    """Add ``sum_t g[t] (x[t] - means[c])`` and its square (per feature) to row c."""
    D = len(d_tag) if len(d_tag) > 0 else means.shape[1]
    for d in range(D):
        s1, s2 = _centred_moments(g, XT[d], means[c, d], L)
        sum_dx[c, d] += s1
        sum_dx2[c, d] += s2


@njit(nogil=True, cache=True)
def full_moments(g, XT, L, means, c, GX, sum_dx, sum_dxdxT, d_tag):  # pragma: no cover - compiled
    """Add ``sum_t g[t] (x[t] - means[c])`` and the lower triangle of its outer products to component c."""
    D = len(d_tag) if len(d_tag) > 0 else means.shape[1]
    for d in range(D):
        xd = XT[d]
        m = means[c, d]
        for t in range(L):
            GX[t] = g[t] * (xd[t] - m)
        s1 = _sum(GX, L)
        sum_dx[c, d] += s1
        # sum GX (x_e - m_e) without a pass to centre x_e: GX is already
        # centred, so the subtraction loses only about |m_e| / sd eps
        for e in range(d + 1):
            sum_dxdxT[c, d, e] += _dot(GX, XT[e], L) - means[c, e] * s1


def symmetrize_lower(S: np.ndarray) -> np.ndarray:
    """Matrices (..., D, D) whose upper triangles are copied from their lower ones (in place)."""
    lo, hi = np.triu_indices(S.shape[-1], 1)
    S[..., lo, hi] = S[..., hi, lo]
    return S


# -- the two kernels of the fused E-step ------------------------------------


class DiagKernel(NamedTuple):
    """Diagonal and spherical covariances: means, ``-0.5 / variances`` (K, D), log normalising constants (K,)."""

    means: np.ndarray
    half_prec: np.ndarray
    log_norm: np.ndarray


class FullKernel(NamedTuple):
    """Full and tied covariances: means (K, D), inverse Cholesky factors (K, D, D), log normalising constants."""

    means: np.ndarray
    whiten: np.ndarray
    log_norm: np.ndarray


@njit(nogil=True, cache=True)
def _gauss_work(kernel, X, max_len, k_tag, d_tag):  # pragma: no cover - compiled
    D = X.shape[1]
    # transposed values, valid steps, valid weights, whitened coordinate, weighted differences
    return (np.empty((D, max_len)), np.empty(max_len, dtype=np.bool_), np.empty(max_len), np.empty(max_len),
            np.empty(max_len))


def _is_full(kernel: Any) -> bool:
    """Whether a kernel type holds whitening matrices (full, tied) rather than diagonal precisions."""
    return "whiten" in getattr(kernel, "fields", ())


def component_logdens(kernel, XT, L, Y, out, c_tag, d_tag):  # pragma: no cover - compiled through the overload
    """``out[c, :L]``: the log-densities of the kernel's components (diagonal or full, by its type)."""
    raise NotImplementedError("component_logdens runs only inside compiled code")


def component_moments(kernel, g, XT, L, c, GX, sum_dx, second, d_tag):  # pragma: no cover - compiled
    """Add component c's weighted moments: :func:`diag_moments` or :func:`full_moments`, by the kernel's type."""
    raise NotImplementedError("component_moments runs only inside compiled code")


@overload(component_logdens, jit_options={"nogil": True})
def _component_logdens(kernel, XT, L, Y, out, c_tag, d_tag):  # pragma: no cover - typing
    if _is_full(kernel):
        def full(kernel, XT, L, Y, out, c_tag, d_tag):
            full_logdens(XT, L, kernel.means, kernel.whiten, kernel.log_norm, Y, out, c_tag, d_tag)

        return full

    def diag(kernel, XT, L, Y, out, c_tag, d_tag):
        diag_logdens(XT, L, kernel.means, kernel.half_prec, kernel.log_norm, out, c_tag, d_tag)

    return diag


@overload(component_moments, jit_options={"nogil": True})
def _component_moments(kernel, g, XT, L, c, GX, sum_dx, second, d_tag):  # pragma: no cover - typing
    if _is_full(kernel):
        def full(kernel, g, XT, L, c, GX, sum_dx, second, d_tag):
            full_moments(g, XT, L, kernel.means, c, GX, sum_dx, second, d_tag)

        return full

    def diag(kernel, g, XT, L, c, GX, sum_dx, second, d_tag):
        diag_moments(g, XT, L, kernel.means, c, sum_dx, second, d_tag)

    return diag


@njit(nogil=True, cache=True)
def _gauss_probs(kernel, X, start, L, work, ET, mx, k_tag, d_tag):  # pragma: no cover - compiled
    XT, valid = work[0], work[1]
    n_bad = load_steps(X, start, L, XT, valid, d_tag)
    component_logdens(kernel, XT, L, work[3], ET, k_tag, d_tag)
    if n_bad:
        zero_invalid(ET, L, valid, kernel.means.shape[0])
    return _shift_exp(ET, L, mx, k_tag), n_bad


@njit(nogil=True, cache=True)
def _gauss_stats(kernel, X, start, L, GT, work, n_bad, stats, k_tag, d_tag):  # pragma: no cover - compiled
    K = len(k_tag) if len(k_tag) > 0 else GT.shape[0]
    sum_post, sum_dx, second = stats
    for k in range(K):
        sum_post[k] += _sum(GT[k], L)
        g = _valid_weights(GT[k], work[1], L, n_bad, work[2])
        component_moments(kernel, g, work[0], L, k, work[4], sum_dx, second, d_tag)


register_emission(DiagKernel, _gauss_work, _gauss_probs, _gauss_stats)
register_emission(FullKernel, _gauss_work, _gauss_probs, _gauss_stats)


@njit(nogil=True, cache=True)
def _fused(*args):  # pragma: no cover - compiled; cached with this module (see .recursions)
    return fused_e_step(*args)


# -- the three-pass path -------------------------------------------------------


@njit(nogil=True, cache=True, inline="always")
def _finite_row(X, t):  # pragma: no cover - compiled
    """Whether every value of row ``t`` of ``X`` is finite."""
    for d in range(X.shape[1]):
        if not math.isfinite(X[t, d]):
            return False
    return True


@njit(nogil=True, cache=True)
def _diag_logpdf(X, means, precisions, log_norm, out):  # pragma: no cover - compiled
    """Diagonal Gaussian log-densities, fused; returns the number of non-finite rows."""
    T, D = X.shape
    K = means.shape[0]
    bad = 0
    for t in range(T):
        if not _finite_row(X, t):
            bad += 1
            for k in range(K):
                out[t, k] = 0.0
            continue
        for k in range(K):
            acc = 0.0
            for d in range(D):
                diff = X[t, d] - means[k, d]
                acc += diff * diff * precisions[k, d]
            out[t, k] = log_norm[k] - 0.5 * acc
    return bad


@njit(nogil=True, cache=True)
def _diag_sums(X, gamma, means, sum_dx, sum_dx2):  # pragma: no cover - compiled
    """Centred diagonal statistics of the three-pass path; rows with non-finite values are skipped."""
    T, D = X.shape
    K = gamma.shape[1]
    for t in range(T):
        if not _finite_row(X, t):
            continue
        for k in range(K):
            g = gamma[t, k]
            for d in range(D):
                dx = X[t, d] - means[k, d]
                v = g * dx
                sum_dx[k, d] += v
                sum_dx2[k, d] += v * dx


def log_densities(X: np.ndarray, means: np.ndarray, covariance_type: str, precisions: np.ndarray | None,
                  whiten: np.ndarray | None, log_norm: np.ndarray) -> tuple[np.ndarray, int]:
    """Log-densities (n_steps, C) of C Gaussian components and the number of non-finite rows (given 0)."""
    C = means.shape[0]
    out = np.empty((len(X), C))
    if covariance_type in ("diag", "spherical"):
        return out, int(_diag_logpdf(X, means, precisions, log_norm, out))
    finite = np.isfinite(X).all(axis=1)
    bad = int(len(X) - finite.sum())
    if bad:
        X = np.where(finite[:, None], X, 0.0)
    for c in range(C):
        for lo in range(0, len(X), SUB_BLOCK):
            Y = (X[lo : lo + SUB_BLOCK] - means[c]) @ whiten[c].T
            out[lo : lo + SUB_BLOCK, c] = log_norm[c] - 0.5 * np.einsum("ij,ij->i", Y, Y)
    if bad:
        out[~finite] = 0.0
    return out, bad


def weighted_moments(X: np.ndarray, weights: np.ndarray, means: np.ndarray, square: bool) -> tuple[np.ndarray, np.ndarray]:
    """Centred sums of the three-pass path: ``sum_t w[t, c] (x_t - means[c])`` and its outer products
    (``square``) or squares; rows with non-finite values add nothing."""
    C, D = weights.shape[1], X.shape[1]
    sum_dx = np.zeros((C, D))
    if not square:
        sum_dx2 = np.zeros((C, D))
        _diag_sums(X, weights, means, sum_dx, sum_dx2)
        return sum_dx, sum_dx2
    finite = np.isfinite(X).all(axis=1)
    sum_dxdxT = np.zeros((C, D, D))
    for lo in range(0, len(X), SUB_BLOCK):
        ok = finite[lo : lo + SUB_BLOCK]
        Xs, Ws = X[lo : lo + SUB_BLOCK][ok], weights[lo : lo + SUB_BLOCK][ok]
        for c in range(C):
            dX = Xs - means[c]
            G = dX * Ws[:, c : c + 1]
            sum_dx[c] += G.sum(axis=0)
            sum_dxdxT[c] += G.T @ dX
    return sum_dx, sum_dxdxT


def describe_non_finite(n: int, model: str) -> str:
    return (
        f"{n} time steps contain NaN or infinite values; {model} need finite "
        "observations. Remove or impute them (e.g. interpolate within each sequence)."
    )


# --------------------------------------------------------------------------
# Parameters and model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianHMMParams(HMMParams):
    """Parameters of a Gaussian HMM: those of :class:`.base.HMMParams` and

    Attributes
    ----------
    means : ndarray of shape (n_components, n_features)
    covars : ndarray
        (n_components,) spherical, (n_components, n_features) diag,
        (n_components, n_features, n_features) full, (n_features, n_features) tied.
    """

    means: np.ndarray
    covars: np.ndarray


@dataclass(frozen=True)
class GaussianHMMModel(HMMModel):
    """HMM with Gaussian emissions.

    Statistics: ``sum_post (K,)``, ``sum_dx (K, D)``, and ``sum_dx2 (K, D)``
    (spherical, diag) or ``sum_dxdxT (K, D, D)`` (full, tied): posterior
    weighted sums of ``x - means[k]`` and of its squares or outer
    products, centred on the means entering the iteration (as the mixtures
    centre theirs on a reference point), so that data far from the origin,
    such as an offset of 3e7, gives the same variances as centred data.
    """

    covariance_type: str = "diag"
    means_prior: Any = 0.0
    means_weight: Any = 0.0
    covars_prior: Any = 1e-2
    covars_weight: Any = 1.0
    params: tuple[str, ...] = ("startprob", "transmat", "means", "covars")

    params_class = GaussianHMMParams
    _fused_e_step = staticmethod(_fused)

    def __post_init__(self) -> None:
        check_covariance_type(self.covariance_type)

    @property
    def _square(self) -> bool:
        return is_square(self.covariance_type)

    def param_constraints(self, params: GaussianHMMParams) -> dict[str, str]:
        """How accelerated EM may move each parameter (see :mod:`dask_em.accelerate`)."""
        return {**MARKOV_CONSTRAINTS, "covars": "spd" if self._square else "positive"}

    def full_covars(self, covars: np.ndarray, n_features: int) -> np.ndarray:
        """Covariances as (K, D, D) matrices whatever the covariance type."""
        return to_full(covars, self.covariance_type, self.n_components, n_features)

    def _diag_terms(self, params: GaussianHMMParams, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """Precisions (K, D) and log normalising constants (K,) of diag/spherical covariances."""
        cov = np.asarray(params.covars, dtype=np.float64).reshape(self.n_components, -1)
        return diag_terms(np.broadcast_to(cov, (self.n_components, n_features)))

    def _whitening(self, params: GaussianHMMParams, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """Inverse lower Cholesky factors (K, D, D) and log normalising constants (K,) of full/tied covariances."""
        return whitening(self.full_covars(params.covars, n_features))

    # -- fused E-step ----------------------------------------------------------
    def _kernel(self, params: GaussianHMMParams, data: np.ndarray) -> DiagKernel | FullKernel:
        means = np.ascontiguousarray(params.means, dtype=np.float64)
        if self._square:
            return FullKernel(means, *self._whitening(params, data.shape[1]))
        precisions, log_norm = self._diag_terms(params, data.shape[1])
        return DiagKernel(means, -0.5 * precisions, log_norm)

    def _stat_arrays(self, data: np.ndarray) -> dict[str, np.ndarray]:
        K, D = self.n_components, data.shape[1]
        second = {"sum_dxdxT": np.zeros((K, D, D))} if self._square else {"sum_dx2": np.zeros((K, D))}
        return {"sum_post": np.zeros(K), "sum_dx": np.zeros((K, D)), **second}

    def _finish_kernel_stats(self, stats: Stats) -> Stats:
        if self._square:
            symmetrize_lower(stats["sum_dxdxT"])
        return stats

    # -- three-pass path ---------------------------------------------------------
    def log_emission(self, values: np.ndarray, params: GaussianHMMParams) -> tuple[np.ndarray, int]:
        X = _as_float_2d(values)
        means = np.asarray(params.means, dtype=np.float64)
        if self._square:
            whiten, log_norm = self._whitening(params, X.shape[1])
            return log_densities(X, means, self.covariance_type, None, whiten, log_norm)
        precisions, log_norm = self._diag_terms(params, X.shape[1])
        return log_densities(X, means, self.covariance_type, precisions, None, log_norm)

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: GaussianHMMParams) -> Stats:
        X = _as_float_2d(values)
        sum_dx, second = weighted_moments(X, gamma, np.asarray(params.means, dtype=np.float64), self._square)
        return {"sum_post": gamma.sum(axis=0), "sum_dx": sum_dx, ("sum_dxdxT" if self._square else "sum_dx2"): second}

    def recenter_stats(self, stats: Stats, old: GaussianHMMParams, new: GaussianHMMParams) -> Stats:
        """Statistics centred on ``old.means`` moved to ``new.means`` (for online EM)."""
        d = np.asarray(old.means, np.float64) - np.asarray(new.means, np.float64)
        return recenter_moments(stats, d, weight="sum_post", first="sum_dx", outer="sum_dxdxT", square="sum_dx2")

    def m_step(self, stats: Stats, params: GaussianHMMParams) -> GaussianHMMParams:
        """hmmlearn's MAP update; states without posterior mass keep their parameters.

        hmmlearn's formulas, rewritten for statistics centred on the
        previous means ``m0``: with ``delta = means - m0``,
        ``sum gamma (x - means)^2 = sum_dx2 - 2 delta sum_dx + post delta^2``
        (and the same with outer products), so no large raw moments are
        subtracted from each other.
        """
        out = self._markov_m_step(stats, params)
        post = stats["sum_post"]
        seen = post > 0
        mw, mp = np.asarray(self.means_weight), np.asarray(self.means_prior)
        m0 = np.asarray(params.means, dtype=np.float64)
        S1 = stats["sum_dx"]
        means = m0
        if "means" in self.params:
            with np.errstate(divide="ignore", invalid="ignore"):
                new = m0 + (mw * (mp - m0) + S1) / (mw + post[:, None])
            means = np.where(seen[:, None], new, m0)
        delta = means - m0
        covars = params.covars
        if "covars" in self.params:
            cp, cw = np.asarray(self.covars_prior), np.asarray(self.covars_weight)
            meandiff = means - mp
            ct = self.covariance_type
            if ct in ("spherical", "diag"):
                c_n = mw * meandiff**2 + stats["sum_dx2"] - 2 * delta * S1 + delta**2 * post[:, None]
                c_d = np.maximum(cw - 1, 0) + post[:, None]
                new = (cp + c_n) / np.maximum(c_d, 1e-5)
                if ct == "spherical":
                    new = new.mean(axis=1)
                    covars = np.where(seen, new, params.covars)
                else:
                    covars = np.where(seen[:, None], new, params.covars)
            else:
                D = means.shape[1]
                c_n = np.empty((len(post), D, D))
                for c in range(len(post)):
                    cross = np.outer(S1[c], delta[c])
                    c_n[c] = (
                        mw * np.outer(meandiff[c], meandiff[c])
                        + stats["sum_dxdxT"][c]
                        - cross
                        - cross.T
                        + np.outer(delta[c], delta[c]) * post[c]
                    )
                cvweight = np.maximum(cw - D, 0)
                if ct == "tied":
                    covars = (cp + c_n.sum(axis=0)) / (cvweight + post.sum())
                else:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        new = (cp + c_n) / (cvweight + post[:, None, None])
                    covars = np.where(seen[:, None, None], new, params.covars)
                # here, on the client, rather than as a worker's traceback in the next E-step
                for k, cov in enumerate(self.full_covars(covars, D)):
                    _cholesky(cov, k)
        return GaussianHMMParams(out["startprob"], out["transmat"], means, covars)

    def describe_invalid(self, n: int) -> str:
        return describe_non_finite(n, "Gaussian HMMs")

    def sample_emission(self, params: GaussianHMMParams, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        D = params.means.shape[1]
        covs = self.full_covars(params.covars, D)
        X = np.empty((len(states), D))
        for k in range(self.n_components):
            idx = np.flatnonzero(states == k)
            if len(idx):
                X[idx] = rng.multivariate_normal(params.means[k], covs[k], size=len(idx))
        return X


__all__ = ["GaussianHMMModel", "GaussianHMMParams"]
