"""Compiled kernels of the Gaussian mixture E-step (:mod:`.gmm`).

The full-covariance E-step of a whole block is one call
(:func:`_e_step_full`): sub-blocks of a few hundred centred rows held
transposed, Mahalanobis terms from register tiles of the Cholesky factors
of the precisions (skipping their zero triangle), responsibilities by
:func:`dask_em.models._gaussian.normalize_columns` and weighted Gram
matrices from tiles of their upper triangle, every loop along rows. The
other types use :func:`_log_prob_shared`; model selection reuses
:func:`_weigh_rows` for its stacked E-step.
"""

from __future__ import annotations

import numba
import numpy as np

from ._gaussian import normalize_columns


def full_kernel_rows(n_features: int) -> int:
    """Rows per sub-block of :func:`_e_step_full`: its transposed centred rows
    (about 32 KiB) stay in the L1 cache while the kernels sweep them once per
    component. Measured on one core, K=8, D=16: 256 rows 10-20% faster than 1,024."""
    return int(min(2048, max(128, 2**12 // padded(n_features))))


def padded(n_features: int) -> int:
    """Features rounded up to a multiple of 4 (the full E-step's unrolling)."""
    return -(-n_features // 4) * 4


# Compiled per-row kernels. Re-association lets the inner sums over features
# use SIMD; it never drops NaN/inf checks (no "nnan"/"ninf" flags).
_FAST = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True)
def _transpose_into(X, center, start, n, Yt):  # pragma: no cover - compiled
    """Yt[j, i] = X[start + i, j] - center[j] for ``i < n``: centred rows, transposed."""
    D = center.shape[0]
    for j in range(D):  # feature by feature: strided loads vectorise (gathers), stores are contiguous
        c = center[j]
        for i in range(n):
            Yt[j, i] = X[start + i, j] - c


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _log_prob_full(Yt, n, L, offsets, row_end, const, outT, Zt):  # pragma: no cover - compiled
    """outT[k, i] = const[k] - |L_k^T y_i - offsets[k]|^2 / 2 for transposed rows ``Yt``.

    ``L`` (K, P, P) and ``offsets`` (K, P) are zero-padded to a multiple of
    4 (so are the rows of ``Yt``); ``Zt`` is scratch of (4, n). The loops
    run along rows, in SIMD lanes; each pass over the rows adds 4 features'
    terms to 4 whitened coordinates at once, which keeps the products in
    registers (about twice the rate of one BLAS product with 16 columns
    followed by the squared norms). Rows of ``L`` past ``row_end`` of a
    group of columns are zero (the triangle of a Cholesky factor) and are
    skipped.
    """
    K = L.shape[0]
    P = L.shape[1]
    for k in range(K):
        for i in range(n):
            outT[k, i] = 0.0
        for j in range(0, P, 4):
            o0 = offsets[k, j]
            o1 = offsets[k, j + 1]
            o2 = offsets[k, j + 2]
            o3 = offsets[k, j + 3]
            for i in range(n):
                Zt[0, i] = -o0
                Zt[1, i] = -o1
                Zt[2, i] = -o2
                Zt[3, i] = -o3
            for a in range(0, row_end[j // 4], 4):
                l00 = L[k, a, j]
                l01 = L[k, a, j + 1]
                l02 = L[k, a, j + 2]
                l03 = L[k, a, j + 3]
                l10 = L[k, a + 1, j]
                l11 = L[k, a + 1, j + 1]
                l12 = L[k, a + 1, j + 2]
                l13 = L[k, a + 1, j + 3]
                l20 = L[k, a + 2, j]
                l21 = L[k, a + 2, j + 1]
                l22 = L[k, a + 2, j + 2]
                l23 = L[k, a + 2, j + 3]
                l30 = L[k, a + 3, j]
                l31 = L[k, a + 3, j + 1]
                l32 = L[k, a + 3, j + 2]
                l33 = L[k, a + 3, j + 3]
                for i in range(n):
                    y0 = Yt[a, i]
                    y1 = Yt[a + 1, i]
                    y2 = Yt[a + 2, i]
                    y3 = Yt[a + 3, i]
                    Zt[0, i] += (l00 * y0 + l10 * y1) + (l20 * y2 + l30 * y3)
                    Zt[1, i] += (l01 * y0 + l11 * y1) + (l21 * y2 + l31 * y3)
                    Zt[2, i] += (l02 * y0 + l12 * y1) + (l22 * y2 + l32 * y3)
                    Zt[3, i] += (l03 * y0 + l13 * y1) + (l23 * y2 + l33 * y3)
            for i in range(n):
                z0 = Zt[0, i]
                z1 = Zt[1, i]
                z2 = Zt[2, i]
                z3 = Zt[3, i]
                outT[k, i] += (z0 * z0 + z1 * z1) + (z2 * z2 + z3 * z3)
        c = const[k]
        for i in range(n):
            outT[k, i] = c - 0.5 * outT[k, i]


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _moments_full(respT, Yt, n, Wt, sum_resp, sum_x, sum_xxT):  # pragma: no cover - compiled
    """Add the weighted sums of transposed rows ``Yt`` (first ``n`` columns).

    ``sum_resp[k] += sum_i r_ki``, ``sum_x[k] += sum_i r_ki y_i``,
    ``sum_xxT[k] += sum_i r_ki y_i y_i^T``. Each entry is a reduction along
    rows (SIMD lanes); the Gram matrix goes by tiles of 2 x 4 entries (6
    loads for 8 multiply-adds) over its upper triangle, mirrored: about
    60% of the products of a full Gram matrix. ``Yt`` has zero rows from
    D up to a multiple of 4; ``Wt`` is scratch of the same shape.
    """
    K = respT.shape[0]
    D = sum_x.shape[1]
    P = Yt.shape[0]
    for k in range(K):
        s = 0.0
        for i in range(n):
            s += respT[k, i]
        sum_resp[k] += s
        for a in range(P):
            s = 0.0
            for i in range(n):
                w = respT[k, i] * Yt[a, i]
                Wt[a, i] = w
                s += w
            if a < D:
                sum_x[k, a] += s
        for a in range(0, D, 2):
            for b in range(a - a % 4, D, 4):
                s00 = s01 = s02 = s03 = 0.0
                s10 = s11 = s12 = s13 = 0.0
                for i in range(n):
                    w0 = Wt[a, i]
                    w1 = Wt[a + 1, i]
                    y0 = Yt[b, i]
                    y1 = Yt[b + 1, i]
                    y2 = Yt[b + 2, i]
                    y3 = Yt[b + 3, i]
                    s00 += w0 * y0
                    s01 += w0 * y1
                    s02 += w0 * y2
                    s03 += w0 * y3
                    s10 += w1 * y0
                    s11 += w1 * y1
                    s12 += w1 * y2
                    s13 += w1 * y3
                _add_sym4(sum_xxT, k, a, b, D, s00, s01, s02, s03)
                _add_sym4(sum_xxT, k, a + 1, b, D, s10, s11, s12, s13)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_sym4(S, k, a, b, D, s0, s1, s2, s3):  # pragma: no cover - compiled
    """Add s0..s3 at S[k, a, b..b+3] and mirrored, where on or above the diagonal and inside D."""
    if a < D:
        _add_sym(S, k, a, b, D, s0)
        _add_sym(S, k, a, b + 1, D, s1)
        _add_sym(S, k, a, b + 2, D, s2)
        _add_sym(S, k, a, b + 3, D, s3)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_sym(S, k, a, b, D, s):  # pragma: no cover - compiled
    if a <= b < D:
        S[k, a, b] += s
        if b != a:
            S[k, b, a] += s


@numba.njit(cache=True, nogil=True)
def _e_step_full(X, rows, center, L, offsets, row_end, const, Yt, resp_buf, Zt, Wt, bounds, top, total,
                 scale_bits, spare, bad, loglik, sum_resp, sum_x, sum_xxT):  # pragma: no cover - compiled
    """The full-covariance E-step of a block, sub-block by sub-block of ``rows``.

    Adds to the statistics and ``loglik[0]``; returns the number of rows
    left out (NaN or infinite values, or overflowing densities), the number
    of non-finite values in them and whether any was finite (overflow).
    """
    N = X.shape[0]
    D = center.shape[0]
    K = L.shape[0]
    n_bad = 0
    n_invalid = 0
    overflow = False
    for start in range(0, N, rows):
        n = min(rows, N - start)
        _transpose_into(X, center, start, n, Yt)
        respT = resp_buf[: K * n].reshape((K, n))
        _log_prob_full(Yt, n, L, offsets, row_end, const, respT, Zt)
        if normalize_columns(respT, n, bounds, top, total, scale_bits, spare, bad, loglik):
            for i in range(n):
                if not bad[0, i]:
                    continue
                n_bad += 1
                finite = True
                for j in range(D):
                    if not np.isfinite(X[start + i, j]):
                        n_invalid += 1
                        finite = False
                overflow = overflow or finite
                for k in range(K):
                    respT[k, i] = 0.0
                for j in range(Yt.shape[0]):
                    Yt[j, i] = 0.0
        _moments_full(respT, Yt, n, Wt, sum_resp, sum_x, sum_xxT)
    return n_bad, n_invalid, overflow


@numba.njit(cache=True, fastmath=_FAST, nogil=True)
def _log_prob_shared(Z, offsets, scale, const, outT):  # pragma: no cover - compiled
    """outT[k, i] = const[k] - sum_j scale[k, j] (Z[i, j] - offsets[k, j])^2 / 2."""
    K, n = outT.shape
    D = Z.shape[1]
    for i in range(n):
        for k in range(K):
            s = 0.0
            for j in range(D):
                v = Z[i, j] - offsets[k, j]
                s += scale[k, j] * v * v
            outT[k, i] = const[k] - 0.5 * s


@numba.njit(cache=True, nogil=True)
def _weigh_rows(respT, Y, W):  # pragma: no cover - compiled
    """W[i, kD + j] = respT[k, i] * Y[i, j]: every component's weighted rows side by side."""
    K, n = respT.shape
    D = Y.shape[1]
    for i in range(n):
        for k in range(K):
            r = respT[k, i]
            for j in range(D):
                W[i, k * D + j] = r * Y[i, j]
