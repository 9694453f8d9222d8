"""Compiled kernels shared by the Gaussian mixture E-steps.

:func:`normalize_columns` turns log-probabilities held transposed,
``(n_components, rows)``, into responsibilities and adds up the rows'
log-likelihoods. Both the single-model E-step
(:meth:`dask_em.models.gmm.GaussianMixtureModel.e_step`) and the stacked
E-step of model selection (:mod:`dask_em.select`) call it, so the two
compute responsibilities with the same arithmetic.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["exp_minus_top", "exp_reduced", "normalize_columns"]

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


@numba.njit(cache=True, fastmath={"contract"}, nogil=True, inline="always")
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


@numba.njit(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy", inline="always")
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


@numba.njit(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")
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


@numba.njit(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")
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
