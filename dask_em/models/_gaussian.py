"""The Gaussian toolkit: covariance types and the arithmetic every Gaussian model shares.

One place for what the mixtures (:mod:`.gmm`, :mod:`.vbgmm`,
:mod:`.gmm_missing`, :mod:`.experts`), the HMM's Gaussian emission, model
selection, the datasets and the reports all need:

- the covariance types, the shapes of their parameters and how many free
  parameters they hold (:data:`COVARIANCE_TYPES`, :func:`covariance_shape`,
  :func:`n_covariance_parameters`, :func:`n_parameters`), and the
  conversions between them (:func:`to_full`, :func:`from_tied`,
  :func:`pooled_stats`);
- Cholesky factors of precisions and back, log-determinants
  (:func:`precisions_cholesky_from_covariances`, :func:`log_det_cholesky`,
  :func:`feature_precisions`);
- the centred statistics: zero sums, re-centring, data moments
  (:func:`zero_stats`, :func:`recenter_moments`, :func:`data_moments`);
- the one exp and normalisation kernel (:func:`exp_reduced`,
  :func:`exp_nonpos`, :func:`normalize_columns`, :func:`normalize_rows`,
  :func:`logsumexp_rows`), compiled, used by every mixture's responsibilities
  and by the HMMs' recursions.

Adding a covariance type means adding it here (the tables at the top and
the branches of these functions) and to the compiled E-step of
:mod:`.gmm_kernels`.

Parameter layouts follow scikit-learn: with ``K`` components and ``D``
features, covariances are (K, D, D) for ``full``, (D, D) for ``tied``,
(K, D) for ``diag`` and (K,) for ``spherical``; the Cholesky factors of
the precisions have the same shapes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.linalg
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

from ..errors import DaskEMError
from ..contract import Stats

__all__ = [
    "COVARIANCE_TYPES",
    "CUTOFF",
    "EPS10",
    "LOG_2PI",
    "IllConditionedCovarianceError",
    "check_covariance_type",
    "component_shape",
    "covariance_error_message",
    "covariance_shape",
    "covariances_from_precisions_cholesky",
    "data_moments",
    "exp_minus_top",
    "exp_nonpos",
    "exp_reduced",
    "feature_precisions",
    "from_full",
    "from_tied",
    "inverse_and_logdet",
    "is_square",
    "log_det_cholesky",
    "logsumexp_rows",
    "moments_from_full",
    "n_covariance_parameters",
    "n_parameters",
    "one_covariance_from_data",
    "normalize_columns",
    "normalize_rows",
    "pooled_stats",
    "precisions_cholesky_from_covariances",
    "precisions_cholesky_from_precisions",
    "precisions_from_cholesky",
    "recenter_moments",
    "sample_moments",
    "second_moment_key",
    "to_full",
    "zero_stats",
]

#: The covariance types, in scikit-learn's order.
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: ``log(2 pi)``, of every Gaussian normalising constant.
LOG_2PI = math.log(2.0 * math.pi)

#: Added to responsibility sums before dividing by them (scikit-learn's
#: ``10 * eps``): an empty component gives finite parameters.
EPS10 = 10 * np.finfo(np.float64).eps

# One covariance matrix per component, or one shared by all.
_SQUARE = frozenset(("full", "tied"))


class IllConditionedCovarianceError(DaskEMError, ValueError):
    """A covariance matrix is not positive definite even with ``reg_covar``."""


def covariance_error_message(dtype: Any = np.float64) -> str:
    """scikit-learn's advice when a covariance cannot be factorised."""
    message = (
        "Fitting the mixture model failed because some components have ill-defined "
        "empirical covariance (for instance caused by singleton or collapsed samples). "
        "Try to decrease the number of components, increase reg_covar, or scale the "
        "input data."
    )
    if np.dtype(dtype) == np.float32:
        message += " The numerical accuracy can also be improved by passing float64 data instead of float32."
    return message


# -- types, shapes, counts ------------------------------------------------------


def check_covariance_type(covariance_type: Any) -> str:
    """``covariance_type`` if it is one of :data:`COVARIANCE_TYPES`.

    Raises
    ------
    ValueError
        Naming the value and the valid ones.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    return covariance_type


def is_square(covariance_type: str) -> bool:
    """Whether the type holds covariance matrices (``full``, ``tied``), not variances."""
    return covariance_type in _SQUARE


def component_shape(covariance_type: str, n_features: int) -> tuple[int, ...]:
    """Shape of one covariance of the type: (D, D) for full and tied, (D,) for diag, () for spherical.

    Also the shape of a prior's scale (``covariance_prior``).
    """
    D = int(n_features)
    return {"full": (D, D), "tied": (D, D), "diag": (D,), "spherical": ()}[covariance_type]


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple[int, ...]:
    """Shape of the covariances (and precision factors) of ``n_components`` components."""
    if covariance_type == "tied":
        return component_shape("tied", n_features)
    return (int(n_components), *component_shape(covariance_type, n_features))


def n_covariance_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Free parameters of the covariances (scikit-learn's count)."""
    K, D = int(n_components), int(n_features)
    return {"full": K * D * (D + 1) // 2, "tied": D * (D + 1) // 2, "diag": K * D, "spherical": K}[covariance_type]


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a Gaussian mixture: covariances, means and ``K - 1`` weights (as scikit-learn counts them)."""
    K, D = int(n_components), int(n_features)
    return int(n_covariance_parameters(covariance_type, K, D) + K * D + K - 1)


def second_moment_key(covariance_type: str) -> str:
    """The statistic holding second moments: ``"sum_xxT"`` for matrices, ``"sum_xx"`` for variances."""
    return "sum_xxT" if is_square(covariance_type) else "sum_xx"


def to_full(covariances: Any, covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    """Covariances of any type as (n_components, n_features, n_features) matrices.

    Raises
    ------
    ValueError
        For an unknown ``covariance_type``.
    """
    check_covariance_type(covariance_type)
    cov = np.asarray(covariances, np.float64)
    K, D = int(n_components), int(n_features)
    if covariance_type == "full":
        return cov.reshape(K, D, D)
    if covariance_type == "tied":
        return np.broadcast_to(cov.reshape(D, D), (K, D, D)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(v) for v in cov.reshape(K, D)])
    return np.stack([np.eye(D) * float(v) for v in cov.reshape(K)])


def from_full(covariances: Any, covariance_type: str) -> np.ndarray:
    """(K, D, D) covariance matrices in the layout of ``covariance_type`` (the inverse of
    :func:`to_full` on its image): the first matrix for tied, the diagonals for diag, the
    first diagonal entry for spherical (hmmlearn's reading of full-form covariances)."""
    cov = np.asarray(covariances, np.float64)
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return cov[0].copy()
    if covariance_type == "diag":
        return np.array([np.diag(c) for c in cov])
    return cov[:, 0, 0].copy()


def from_tied(cov: np.ndarray, covariance_type: str, n_components: int) -> np.ndarray:
    """One (D, D) covariance given to every component in the layout of ``covariance_type``."""
    K = int(n_components)
    if covariance_type == "tied":
        return cov
    if covariance_type == "full":
        return np.repeat(cov[None], K, axis=0)
    if covariance_type == "diag":
        return np.repeat(np.diag(cov)[None], K, axis=0)
    return np.full(K, np.diag(cov).mean())


def one_covariance_from_data(covariance: Any, covariance_type: str, n_features: int) -> Any:
    """A data covariance in the layout of one covariance of the type (a prior's default scale).

    Parameters
    ----------
    covariance : array-like
        The (D, D) data covariance, or the (D,) variances (enough for diag
        and spherical).

    Returns
    -------
    The (D, D) matrix for full and tied, the variances (D,) for diag, their
    mean (a float) for spherical.

    Raises
    ------
    ValueError
        If a full or tied type is given variances only.
    """
    cov = np.asarray(covariance, np.float64)
    if is_square(covariance_type):
        if cov.ndim != 2:
            raise ValueError("a full or tied covariance_prior default needs the (D, D) data covariance")
        return cov
    var = np.diag(cov) if cov.ndim == 2 else cov.reshape(int(n_features))
    return var if covariance_type == "diag" else float(var.mean())


# -- Cholesky factors and log-determinants ----------------------------------------------


def precisions_cholesky_from_covariances(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of the precisions, as scikit-learn computes them.

    Raises
    ------
    IllConditionedCovarianceError
        If a covariance is not positive definite.
    """
    covariances = np.asarray(covariances, np.float64)
    if is_square(covariance_type):
        square = covariances if covariance_type == "full" else covariances[None]
        out = np.empty_like(square)
        for k, cov in enumerate(square):
            try:
                chol = scipy.linalg.cholesky(cov, lower=True)
            except np.linalg.LinAlgError:
                raise IllConditionedCovarianceError(covariance_error_message()) from None
            # LAPACK's triangular inverse, not solve_triangular: that one is a
            # threaded BLAS call whose thread wake-up took 10-200 ms per small
            # matrix on a busy machine, against microseconds for the work.
            inverse, info = scipy.linalg.lapack.dtrtri(chol, lower=1)
            if info != 0:
                raise IllConditionedCovarianceError(covariance_error_message())
            out[k] = inverse.T
        return out if covariance_type == "full" else out[0]
    if np.any(~(covariances > 0.0)):
        raise IllConditionedCovarianceError(covariance_error_message())
    return 1.0 / np.sqrt(covariances)


def precisions_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factors of given precision matrices (for ``precisions_init``).

    Raises
    ------
    ValueError
        If a precision matrix is not symmetric positive definite.
    """
    precisions = np.asarray(precisions, np.float64)
    if is_square(covariance_type):
        square = precisions if covariance_type == "full" else precisions[None]
        out = np.empty_like(square)
        for k, prec in enumerate(square):
            if not np.allclose(prec, prec.T):
                raise ValueError(
                    f"The parameter '{covariance_type} precision' should be symmetric, positive-definite: "
                    f"precisions_init[{k}] is not symmetric"
                )
            try:
                out[k] = scipy.linalg.cholesky(prec, lower=True)
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"The parameter '{covariance_type} precision' should be symmetric, positive-definite: "
                    f"precisions_init[{k}] is not positive definite"
                ) from None
        return out if covariance_type == "full" else out[0]
    if np.any(~(precisions > 0.0)):
        raise ValueError(
            f"The parameter '{covariance_type} precision' should be positive: got min value {np.min(precisions)!r}"
        )
    return np.sqrt(precisions)


def covariances_from_precisions_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances implied by Cholesky factors of precisions."""
    prec_chol = np.asarray(prec_chol, np.float64)
    if covariance_type == "full":
        return np.stack([np.linalg.inv(p @ p.T) for p in prec_chol])
    if covariance_type == "tied":
        return np.linalg.inv(prec_chol @ prec_chol.T)
    return 1.0 / prec_chol**2


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices from their Cholesky factors (scikit-learn's ``precisions_``)."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """``log det`` of the precision Cholesky factors, i.e. ``-1/2 log det`` of the covariances.

    Returns
    -------
    ndarray of shape (n_components,), or a 0-d value for ``tied`` (one shared factor).
    """
    prec_chol = np.asarray(prec_chol, np.float64)
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


def inverse_and_logdet(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse and log-determinant of a symmetric positive-definite matrix, by its Cholesky factor.

    Raises
    ------
    numpy.linalg.LinAlgError
        If the matrix is not positive definite (callers add their advice).
    """
    chol = np.linalg.cholesky(matrix)
    inv_chol = np.linalg.inv(chol)
    return inv_chol.T @ inv_chol, 2.0 * float(np.log(np.diag(chol)).sum())


def feature_precisions(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """Per-feature precisions (n_components, n_features) of ``diag`` or ``spherical`` factors."""
    prec_chol = np.asarray(prec_chol, np.float64)
    if covariance_type == "diag":
        return prec_chol**2
    return np.repeat((prec_chol**2)[:, None], n_features, axis=1)


# -- centred statistics ---------------------------------------------------------


def zero_stats(covariance_type: str, n_components: int, n_features: int) -> Stats:
    """Zero sums of a Gaussian mixture's E-step: ``sum_resp`` (K,), ``sum_x`` (K, D) and the
    second moments (:func:`second_moment_key`): (K, D, D) for full, the
    unweighted total (D, D) for tied, (K, D) for diag and spherical."""
    K, D = int(n_components), int(n_features)
    stats = {"sum_resp": np.zeros(K), "sum_x": np.zeros((K, D))}
    if covariance_type == "full":
        stats["sum_xxT"] = np.zeros((K, D, D))
    elif covariance_type == "tied":
        stats["sum_xxT"] = np.zeros((D, D))
    else:
        stats["sum_xx"] = np.zeros((K, D))
    return stats


def moments_from_full(stats: Stats, covariance_type: str) -> Stats:
    """Statistics with per-component (K, D, D) ``sum_xxT`` in the layout of ``covariance_type``
    (:func:`zero_stats`): summed over components for tied, their diagonals as ``sum_xx`` for
    diag and spherical."""
    S = np.asarray(stats["sum_xxT"], np.float64)
    out = {"sum_resp": stats["sum_resp"], "sum_x": stats["sum_x"]}
    if covariance_type == "full":
        out["sum_xxT"] = S
    elif covariance_type == "tied":
        out["sum_xxT"] = S.sum(axis=0)
    else:
        out["sum_xx"] = np.diagonal(S, axis1=1, axis2=2).copy()
    return out


def pooled_stats(stats: Stats, covariance_type: str) -> Stats:
    """Pooled (tied) second moments from per-component ones (for empty-component fallback)."""
    if covariance_type == "tied":
        return stats
    if covariance_type == "full":
        total = np.asarray(stats["sum_xxT"]).sum(axis=0)
    else:
        total = np.diag(np.asarray(stats["sum_xx"]).sum(axis=0))
    return {"sum_resp": stats["sum_resp"], "sum_x": stats["sum_x"], "sum_xxT": total}


def recenter_moments(
    stats: Stats,
    d: np.ndarray,
    *,
    weight: str = "sum_resp",
    first: str = "sum_x",
    outer: str = "sum_xxT",
    square: str = "sum_xx",
) -> Stats:
    """Weighted moments taken about a point ``s`` re-expressed about ``c``, with ``d = s - c``.

    ``d`` is one point (D,) for all components or one per component (K, D).
    Exact: ``first + N d``, ``outer + first d' + d first' + N d d'`` and
    ``square + 2 d first + N d^2``, with ``N`` each component's ``weight``;
    an ``outer`` of shape (D, D) (a tied covariance) sums the terms over the
    components. Keys absent from ``stats`` are skipped, others pass through.
    """
    out = dict(stats)
    N = np.asarray(stats[weight], np.float64)
    S1 = np.asarray(stats[first], np.float64)
    d = np.broadcast_to(np.asarray(d, np.float64), S1.shape)
    out[first] = S1 + N[:, None] * d
    if outer in stats:
        cross = S1[:, :, None] * d[:, None, :]
        shift = cross + cross.transpose(0, 2, 1) + N[:, None, None] * d[:, :, None] * d[:, None, :]
        S2 = np.asarray(stats[outer], np.float64)
        out[outer] = S2 + (shift.sum(axis=0) if S2.ndim == 2 else shift)
    if square in stats:
        out[square] = np.asarray(stats[square], np.float64) + 2.0 * d * S1 + N[:, None] * (d * d)
    return out


def data_moments(stats: Stats, center: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the data from mixture statistics (summed over components).

    Works on the statistics of any responsibilities that sum to one per row
    (hard assignments, random ones, an E-step), so the data-derived prior
    defaults cost no pass of their own.

    Returns
    -------
    mean : ndarray of shape (n_features,)
    covariance : ndarray
        (n_features, n_features) for full and tied; the variances
        (n_features,) for diag and spherical. Denominator ``n - 1``.
    """
    n = float(np.asarray(stats["sum_resp"], np.float64).sum())
    total = np.asarray(stats["sum_x"], np.float64).sum(axis=0)
    offset = total / n
    denominator = max(n - 1.0, 1.0)
    if is_square(covariance_type):
        S = np.asarray(stats["sum_xxT"], np.float64)
        S = S.sum(axis=0) if covariance_type == "full" else S
        cov = (S - n * np.outer(offset, offset)) / denominator
        return offset + center, 0.5 * (cov + cov.T)
    S = np.asarray(stats["sum_xx"], np.float64).sum(axis=0)
    return offset + center, (S - n * offset * offset) / denominator


def sample_moments(sample: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (as :func:`data_moments`) of the finite rows of an in-memory sample."""
    sample = np.asarray(sample, np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if len(sample) < 2:
        raise ValueError("the data-derived prior defaults need at least two finite rows; give mean_prior and covariance_prior")
    mean = sample.mean(axis=0)
    if is_square(covariance_type):
        return mean, np.atleast_2d(np.cov(sample, rowvar=False))
    return mean, sample.var(axis=0, ddof=1)


# -- the exp and normalisation kernel (compiled) --------------------------------------------

# 1.5 * 2^52: adding it rounds a double to an integer held in its low bits.
_ROUND = 6755399441055744.0
_ROUND_BITS = 0x4338000000000000
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10

#: Differences below this give a responsibility of exactly 0: exp(-700) is
#: about 1e-304, noise, and zero keeps subnormal numbers (slow in every
#: later product) out of the sums.
CUTOFF = -700.0


@njit(cache=True, fastmath={"contract"}, nogil=True, inline="always")
def exp_reduced(r):  # pragma: no cover - compiled
    """``exp(r)`` for ``|r| <= ln 2 / 2``: the degree-13 Taylor polynomial
    (relative error about 2e-16), the core of every compiled exp here."""
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    return p * r + 1.0


@intrinsic
def _f64_bits(typingctx, x):  # pragma: no cover - compiled
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, i):  # pragma: no cover - compiled
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(nogil=True, cache=True, inline="always")
def exp_nonpos(x):  # pragma: no cover - compiled
    """``exp(x)`` for ``x <= 0`` (scalar, by :func:`exp_reduced`); 0 below -708."""
    kd = x * _LOG2E + _ROUND
    ki = _f64_bits(kd)
    kd -= _ROUND
    r = x - kd * _LN2_HI - kd * _LN2_LO
    y = exp_reduced(r) * _bits_f64((ki + 1023) << 52)
    return y if x >= -708.0 else 0.0


@njit(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy", inline="always")
def _exp_row(respT, k, top, total, n, scale_bits, spare):  # pragma: no cover - compiled
    """``respT[k, i] = exp(respT[k, i] - top[i])`` for ``i < n``, added to
    ``total[i]``; 0 where the difference is not above :data:`CUTOFF` (and
    for -inf and NaN).

    Written to vectorise along rows: a Cody-Waite reduction to
    ``|r| <= ln 2 / 2`` and a degree-13 Taylor polynomial (relative error
    about 2e-16), then ``2^k`` built from its bits in separate loops
    (``scale_bits`` and ``spare`` are scratch of ``n`` entries).
    """
    scale = scale_bits.view(np.float64)
    t_bits = spare.view(np.int64)
    for i in range(n):
        d = respT[k, i] - top[i]
        keep = d > CUTOFF
        dc = max(d, -708.0) if keep else 0.0
        t = dc * _LOG2E + _ROUND
        kf = t - _ROUND
        r = (dc - kf * _LN2_HI) - kf * _LN2_LO
        p = exp_reduced(r)
        respT[k, i] = p if keep else 0.0
        spare[i] = t
    for i in range(n):
        scale_bits[i] = (t_bits[i] - _ROUND_BITS + 1023) << 52
    for i in range(n):
        e = respT[k, i] * scale[i]
        respT[k, i] = e
        total[i] += e


@njit(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")
def exp_minus_top(x, top):  # pragma: no cover - compiled
    """``exp(x - top)`` elementwise by the normalisation's own exp (for tests).

    Parameters
    ----------
    x, top : ndarray of shape (n,)

    Returns
    -------
    ndarray of shape (n,)
        0 where ``x - top <= -700`` or is NaN.
    """
    n = x.shape[0]
    out = np.empty((1, n))
    for i in range(n):
        out[0, i] = x[i]
    _exp_row(out, 0, top, np.zeros(n), n, np.empty(n, np.int64), np.empty(n))
    return out[0]


@njit(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")
def normalize_columns(respT, n, bounds, top, total, scale_bits, spare, bad, loglik):  # pragma: no cover - compiled
    """Responsibilities in place of transposed log-probabilities, group by group.

    Group ``m`` (a mixture) owns the rows ``respT[bounds[m]:bounds[m + 1]]``;
    its first ``n`` columns (data rows) are normalised to sum to one, each
    entry ``exp(log_prob - max)`` divided by the column's sum, with
    entries below ``exp(-700)`` set to 0.

    Adds each group's log-likelihood of its rows to ``loglik[m]``; a row
    whose log-probabilities in a group are all -inf or NaN, or include
    +inf, is flagged in ``bad[m, i]``, left out of the sum and left as it
    is for the caller to zero. Returns the number of flags. ``top``,
    ``total``, ``scale_bits`` and ``spare`` are scratch of ``n`` entries.

    Everything runs along rows, in SIMD lanes whatever the number of
    components (see :func:`_exp_row`). The log-likelihood takes one log
    per 32 rows, of the product of their totals (each in [1, K]).
    """
    M = bounds.shape[0] - 1
    n_bad = 0
    for m in range(M):
        lo = bounds[m]
        hi = bounds[m + 1]
        for i in range(n):
            top[i] = -np.inf
            total[i] = 0.0
        for k in range(lo, hi):
            for i in range(n):
                v = respT[k, i]
                top[i] = v if v > top[i] else top[i]  # NaN never wins
        top_sum = 0.0
        for i in range(n):
            ok = np.isfinite(top[i])
            bad[m, i] = not ok
            top[i] = top[i] if ok else 0.0
            top_sum += top[i]
        for k in range(lo, hi):
            _exp_row(respT, k, top, total, n, scale_bits, spare)
        for i in range(n):
            top[i] = 1.0 / total[i]  # top is spent: it holds the inverse now
        for k in range(lo, hi):
            for i in range(n):
                respT[k, i] *= top[i]
        acc = 0.0
        prod = 1.0
        count = 0
        for i in range(n):
            if bad[m, i]:
                n_bad += 1
                continue
            prod *= total[i]
            count += 1
            if count == 32:
                acc += np.log(prod)
                prod = 1.0
                count = 0
        loglik[m] += top_sum + acc + np.log(prod)
    return n_bad


@njit(cache=True, nogil=True)
def normalize_rows(log_prob, row_loglik):  # pragma: no cover - compiled
    """Probabilities in place of log-probabilities held row by row (n, K), and each row's logsumexp.

    The row-major counterpart of :func:`normalize_columns`, for per-row
    outputs (``predict_proba``, ``score_samples``) and the smaller models;
    the same responsibilities within about 2e-16.

    A row whose log-probabilities are not finite (NaN or inf in the data)
    gets a NaN log-likelihood and is left as it is, for the caller to count.
    """
    n, K = log_prob.shape
    for i in range(n):
        top = -np.inf
        for k in range(K):
            if log_prob[i, k] > top:
                top = log_prob[i, k]
        if not np.isfinite(top):
            row_loglik[i] = np.nan
            continue
        total = 0.0
        for k in range(K):
            d = log_prob[i, k] - top
            e = exp_nonpos(d) if d > CUTOFF else 0.0
            log_prob[i, k] = e
            total += e
        inv = 1.0 / total
        for k in range(K):
            log_prob[i, k] *= inv
        row_loglik[i] = np.log(total) + top


def logsumexp_rows(log_prob: np.ndarray) -> np.ndarray:
    """``log sum_k exp(log_prob[i, k])`` of every row (n, K), by :func:`normalize_rows`.

    -inf for a row whose entries are all -inf; NaN for a row with NaN or +inf.
    """
    work = np.array(log_prob, np.float64, order="C", copy=True)
    out = np.empty(work.shape[0])
    nan_rows = np.isnan(work).any(axis=1)
    all_neg_inf = np.isneginf(work).all(axis=1)
    normalize_rows(work, out)
    out[all_neg_inf] = -np.inf
    out[nan_rows] = np.nan
    return out
