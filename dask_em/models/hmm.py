"""Hidden Markov models fitted by Baum-Welch: pure models, compiled kernels.

A block is one partition of a sequence collection: a tuple ``(values,
lengths)`` where ``values`` holds the concatenated observations of whole
sequences (shape (n_steps, n_features), or (n_steps,) for symbols) and
``lengths`` the length of each sequence. The E-step of such a block is
exact on its own; a sequence longer than a block is cut into segments
fitted with :mod:`dask_em.models.hmm_segments`.

The E-step of a block is one compiled call (numba, GIL released) that
loops over its sequences and, per sequence, fuses the emission
log-probabilities, the scaled forward-backward recursions and the
statistics, reusing buffers sized for the longest sequence:
:func:`diag_e_step` (diagonal and spherical Gaussian), :func:`full_e_step`
(full and tied Gaussian), :func:`categorical_e_step` and
:func:`poisson_e_step`. The three-pass path (emission log-probabilities of
the whole block, :func:`forward_backward`, then the statistics) remains for
posteriors, scores and as the reference the fused kernels are tested
against. In both, at each step the emission log-probabilities are shifted
by their maximum before ``exp`` and the forward variables are normalised to
sum to one, so a sequence of a million steps neither underflows nor
overflows. Transition statistics are accumulated step by step (no
T x K x K array); the log-likelihood comes from the scale factors of the
same pass.

The M-step follows hmmlearn's maximum a posteriori updates exactly
(Dirichlet pseudo-counts ``startprob_prior``/``transmat_prior``,
``covars_prior``/``covars_weight``, ``means_prior``/``means_weight``), so
both libraries agree to rounding from the same initial parameters. Where
hmmlearn would produce a zero row or a NaN for a state with no posterior
mass, these models keep that state's previous parameters instead: a state
that is never visited keeps its previous transition row (and emission
parameters), so every row of ``transmat`` stays a valid distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

from ._gaussian import exp_reduced
from ..errors import InvalidDataError
from ..contract import Stats
from .stacked import Stacked as StackedHMM  # restarts sharing passes (one generic wrapper)
from .stacked import StackedParams

COVARIANCE_TYPES = ("spherical", "diag", "full", "tied")
LOG_2PI = math.log(2.0 * math.pi)
#: Rows per sub-block for the BLAS parts of the E-step (cache-sized).
SUB_BLOCK = 4096
#: Added to the diagonal of a full covariance whose Cholesky factorisation
#: fails (a state left with too few steps), as hmmlearn does.
CHOLESKY_JITTER = 1e-7


# --------------------------------------------------------------------------
# Compiled kernels
# --------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def forward_backward(logB, lengths, startprob, transmat, gamma, sum_start, sum_trans):  # pragma: no cover - compiled
    """Scaled forward-backward over the sequences of one block.

    Parameters
    ----------
    logB : ndarray of shape (n_steps, n_components)
        Emission log-probabilities; overwritten with the shifted
        probabilities ``exp(logB - max_k logB)``.
    lengths : ndarray of int64, shape (n_sequences,)
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    gamma : ndarray of shape (n_steps, n_components)
        Output: posterior state probabilities.
    sum_start : ndarray of shape (n_components,)
        Accumulated (added to) with the posteriors of the first steps.
    sum_trans : ndarray of shape (n_components, n_components)
        Accumulated with the expected transition counts.

    Returns
    -------
    float
        Total log-likelihood of the block (-inf if some sequence is impossible).
    """
    T, K = logB.shape
    scale = np.empty(T)
    beta = np.empty(K)
    newbeta = np.empty(K)
    tmp = np.empty(K)
    loglik = 0.0
    start = 0
    for s in range(lengths.shape[0]):
        end = start + lengths[s]
        # shift by the per-step maximum before exp: no overflow, and the
        # largest state always gets probability one
        for t in range(start, end):
            mx = -np.inf
            for k in range(K):
                if logB[t, k] > mx:
                    mx = logB[t, k]
            if not (mx > -np.inf) or mx == np.inf:
                return -np.inf
            loglik += mx
            for k in range(K):
                logB[t, k] = math.exp(logB[t, k] - mx)
        # forward, normalised at every step
        c = 0.0
        for k in range(K):
            a = startprob[k] * logB[start, k]
            gamma[start, k] = a
            c += a
        if not c > 0.0:
            return -np.inf
        scale[start] = c
        for k in range(K):
            gamma[start, k] /= c
        loglik += math.log(c)
        for t in range(start + 1, end):
            c = 0.0
            for j in range(K):
                acc = 0.0
                for i in range(K):
                    acc += gamma[t - 1, i] * transmat[i, j]
                acc *= logB[t, j]
                gamma[t, j] = acc
                c += acc
            if not c > 0.0:
                return -np.inf
            scale[t] = c
            inv = 1.0 / c
            for j in range(K):
                gamma[t, j] *= inv
            loglik += math.log(c)
        # backward; gamma[t] holds alpha until it is turned into a posterior
        for k in range(K):
            beta[k] = 1.0
        for t in range(end - 2, start - 1, -1):
            inv = 1.0 / scale[t + 1]
            for j in range(K):
                tmp[j] = logB[t + 1, j] * beta[j] * inv
            norm = 0.0
            for i in range(K):
                acc = 0.0
                a_i = gamma[t, i]
                for j in range(K):
                    v = transmat[i, j] * tmp[j]
                    acc += v
                    sum_trans[i, j] += a_i * v
                newbeta[i] = acc
                g = a_i * acc
                gamma[t, i] = g
                norm += g
            for i in range(K):
                beta[i] = newbeta[i]
            if norm > 0.0:
                inv = 1.0 / norm
                for i in range(K):
                    gamma[t, i] *= inv
        for k in range(K):
            sum_start[k] += gamma[start, k]
        start = end
    return loglik


@njit(nogil=True, cache=True)
def viterbi(logB, lengths, log_startprob, log_transmat, states):  # pragma: no cover - compiled
    """Most likely state path of every sequence; returns the summed log-probability."""
    T, K = logB.shape
    delta = np.empty(K)
    new = np.empty(K)
    total = 0.0
    start = 0
    for s in range(lengths.shape[0]):
        end = start + lengths[s]
        back = np.empty((end - start, K), dtype=np.int64)
        for k in range(K):
            delta[k] = log_startprob[k] + logB[start, k]
        for t in range(start + 1, end):
            for j in range(K):
                best = -np.inf
                arg = 0
                for i in range(K):
                    v = delta[i] + log_transmat[i, j]
                    if v > best:
                        best = v
                        arg = i
                new[j] = best + logB[t, j]
                back[t - start, j] = arg
            for j in range(K):
                delta[j] = new[j]
        best = -np.inf
        arg = 0
        for k in range(K):
            if delta[k] > best:
                best = delta[k]
                arg = k
        total += best
        states[end - 1] = arg
        for t in range(end - 1, start, -1):
            arg = back[t - start, arg]
            states[t - 1] = arg
        start = end
    return total


@njit(nogil=True, cache=True)
def _diag_logpdf(X, means, precisions, log_norm, out):  # pragma: no cover - compiled
    """Diagonal Gaussian log-densities, fused; returns the number of non-finite rows."""
    T, D = X.shape
    K = means.shape[0]
    bad = 0
    for t in range(T):
        ok = True
        for d in range(D):
            if not math.isfinite(X[t, d]):
                ok = False
        if not ok:
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
        ok = True
        for d in range(D):
            if not math.isfinite(X[t, d]):
                ok = False
        if not ok:
            continue
        for k in range(K):
            g = gamma[t, k]
            for d in range(D):
                dx = X[t, d] - means[k, d]
                v = g * dx
                sum_dx[k, d] += v
                sum_dx2[k, d] += v * dx



# Exponential of non-positive numbers in a form LLVM vectorises (no libm
# call): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial
# of degree 13 (truncation < 0.05 ulp), 2^n written into the exponent bits.
# Within 1 ulp of libm's exp on [-708, 0]; 0 below -708 (no subnormals).
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: 1.5 * 2**52: adding it rounds to an integer held in the low mantissa bits.
_ROUND_SHIFT = 6755399441055744.0


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
def _exp_nonpos(x):  # pragma: no cover - compiled
    """``exp(x)`` for ``x <= 0``; 0 below -708."""
    kd = x * _LOG2E + _ROUND_SHIFT
    ki = _f64_bits(kd)
    kd -= _ROUND_SHIFT
    r = x - kd * _LN2_HI - kd * _LN2_LO
    y = exp_reduced(r) * _bits_f64((ki + 1023) << 52)
    return y if x >= -708.0 else 0.0


# Sums over time steps: reassociation lets LLVM use several vector
# accumulators (the order is fixed by the compiled code, so results are
# reproducible run to run).
@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _sum(a, n):  # pragma: no cover - compiled
    acc = 0.0
    for t in range(n):
        acc += a[t]
    return acc


@njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dot(a, b, n):  # pragma: no cover - compiled
    acc = 0.0
    for t in range(n):
        acc += a[t] * b[t]
    return acc


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
def diag_e_step(X, lengths, startprob, transmat, means, precisions, log_norm,
                sum_start, sum_trans, sum_post, sum_dx, sum_dx2, k_tag, d_tag):  # pragma: no cover - compiled
    """Fused E-step of a diagonal-Gaussian HMM over the sequences of one block.

    One compiled call per block loops over its sequences. For each
    sequence: emission log-densities (vectorised over time steps), shifted
    by their per-step maximum and exponentiated; the scaled forward
    recursion; the scaled backward recursion with the posterior of each
    step; then all statistics as vectorised sums over the steps. Buffers
    are sized for the longest sequence, allocated once per call and reused
    for every sequence; no (n_steps, n_components) array of the whole block
    is materialised.

    Parameters
    ----------
    X : ndarray of shape (n_steps, n_features)
    lengths : ndarray of int64, shape (n_sequences,)
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    means, precisions : ndarray of shape (n_components, n_features)
    log_norm : ndarray of shape (n_components,)
        ``-0.5 * (D log(2 pi) + sum_d log(covars[k, d]))``.
    sum_start, sum_post : ndarray of shape (n_components,)
    sum_trans : ndarray of shape (n_components, n_components)
    sum_dx, sum_dx2 : ndarray of shape (n_components, n_features)
        Accumulated (added to): ``sum_t gamma[t, k] (x[t] - means[k])`` and
        its square, centred on each state's mean so that data far from
        the origin loses no precision. Steps with non-finite values
        contribute nothing to them.
    k_tag, d_tag : tuple
        Tuples of length n_components and n_features: the kernel is
        compiled for these sizes as constants, so its small loops are
        fully unrolled. Empty tuples: sizes taken from the arrays.

    Returns
    -------
    loglik : float
        Total log-likelihood of the block (-inf if some sequence is impossible).
    n_invalid : int
        Number of steps with non-finite values (their emission
        probability is taken as one in every state).
    """
    K = len(k_tag) if len(k_tag) > 0 else means.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else X.shape[1]
    max_len = _max_length(lengths)
    XT = np.empty((D, max_len))
    valid = np.empty(max_len, dtype=np.bool_)
    GV = np.empty(max_len)
    # emission log-densities, then shifted probabilities, then backward terms
    ET = np.empty((K, max_len))
    AT = np.empty((K, max_len))
    GT = np.empty((K, max_len))
    mx = np.empty(max_len)
    scale = np.empty(max_len)
    prev = np.empty(K)
    cur = np.empty(K)
    beta = np.empty(K)
    tmp = np.empty(K)
    trans_T = np.ascontiguousarray(transmat.T)
    half_prec = -0.5 * precisions
    # sum over steps of alpha_t[i] * tmp_{t+1}[j]; times transmat[i, j] at the end
    xi = np.zeros((K, K))
    # [log-likelihood, product of scale factors taken through log only when it leaves a safe range]
    acc = np.array([0.0, 1.0])
    bad = 0
    start = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
        # ---- emission probabilities, time along the fast axis
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
        for k in range(K):
            row = ET[k]
            lk = log_norm[k]
            for t in range(L):
                row[t] = lk
            for d in range(D):
                m = means[k, d]
                h = half_prec[k, d]
                xd = XT[d]
                for t in range(L):
                    diff = xd[t] - m
                    row[t] += h * diff * diff
        if n_bad:
            # invalid steps: probability one in every state, no emission statistics
            bad += n_bad
            for t in range(L):
                if not valid[t]:
                    for d in range(D):
                        XT[d, t] = 0.0
                    for k in range(K):
                        ET[k, t] = 0.0
        shift = _shift_exp(ET, L, mx, k_tag)
        if not math.isfinite(shift):
            return -np.inf, bad
        acc[0] += shift
        if not _scaled_posteriors(ET, L, startprob, transmat, trans_T, AT, GT, scale, prev, cur, beta, tmp,
                                  xi, acc, k_tag):
            return -np.inf, bad
        # ---- statistics, as sums over the steps of the sequence
        for k in range(K):
            g = GT[k]
            sum_start[k] += g[0]
            sum_post[k] += _sum(g, L)
            g = _valid_weights(g, valid, L, n_bad, GV)
            for d in range(D):
                s1, s2 = _centred_moments(g, XT[d], means[k, d], L)
                sum_dx[k, d] += s1
                sum_dx2[k, d] += s2
        start += L
    return _finish(acc, transmat, xi, sum_trans), bad


@njit(nogil=True, cache=True)
def _valid_weights(g, valid, L, n_bad, out):  # pragma: no cover - compiled
    """``g`` with the weights of invalid steps set to zero (into ``out``); ``g`` itself when all are valid."""
    if n_bad == 0:
        return g
    for t in range(L):
        out[t] = g[t] if valid[t] else 0.0
    return out


@njit(nogil=True, cache=True)
def _shift_exp(ET, L, mx, k_tag):  # pragma: no cover - compiled
    """Turn the log-probabilities ``ET[:, :L]`` into ``exp(ET - max_k ET)``; returns the summed maxima."""
    K = len(k_tag) if len(k_tag) > 0 else ET.shape[0]
    for t in range(L):
        mx[t] = ET[0, t]
    for k in range(1, K):
        row = ET[k]
        for t in range(L):
            v = row[t]
            mx[t] = v if v > mx[t] else mx[t]
    shift = 0.0
    for t in range(L):
        shift += mx[t]
    if not math.isfinite(shift):
        return shift
    for k in range(K):
        row = ET[k]
        for t in range(L):
            row[t] = _exp_nonpos(row[t] - mx[t])
    return shift


@njit(nogil=True, cache=True)
def _scaled_posteriors(ET, L, startprob, transmat, trans_T, AT, GT, scale, prev, cur, beta, tmp,
                       xi, acc, k_tag):  # pragma: no cover - compiled
    """Scaled forward-backward of one sequence from its shifted emission probabilities.

    ``ET[:, :L]`` holds emission probabilities divided by a per-step
    constant (time along the fast axis); on return ``GT[:, :L]`` holds
    the posteriors, ``AT`` the normalised forward variables, and
    ``ET[:, 1:L]`` the backward factors ``b_t beta_t / c_t``, whose
    products with ``AT[:, :-1]`` are added to ``xi`` (times the transition
    matrix: the expected transition counts). ``acc`` is ``[loglik, running
    product of scale factors]``, updated. Returns False if the sequence is
    impossible under the parameters.
    """
    K = len(k_tag) if len(k_tag) > 0 else ET.shape[0]
    loglik = acc[0]
    prod = acc[1]
    # forward, normalised at every step
    c = 0.0
    for k in range(K):
        a = startprob[k] * ET[k, 0]
        prev[k] = a
        c += a
    if not c > 0.0:
        return False
    scale[0] = c
    for k in range(K):
        prev[k] /= c
        AT[k, 0] = prev[k]
    if c < 1e-100:
        loglik += math.log(c)
    else:
        prod *= c
    for t in range(1, L):
        for j in range(K):
            cur[j] = 0.0
        for i in range(K):
            a = prev[i]
            for j in range(K):
                cur[j] += a * transmat[i, j]
        c = 0.0
        for j in range(K):
            v = cur[j] * ET[j, t]
            cur[j] = v
            c += v
        if not c > 0.0:
            return False
        scale[t] = c
        inv = 1.0 / c
        for j in range(K):
            v = cur[j] * inv
            prev[j] = v
            AT[j, t] = v
        if c < 1e-100:
            loglik += math.log(c)
        else:
            prod *= c
            if prod < 1e-150 or prod > 1e150:
                loglik += math.log(prod)
                prod = 1.0
    # backward; ET[:, t] becomes b_t * beta_t / c_t, the xi factor
    for k in range(K):
        beta[k] = 1.0
        GT[k, L - 1] = AT[k, L - 1]
    for t in range(L - 2, -1, -1):
        inv = 1.0 / scale[t + 1]
        for j in range(K):
            v = ET[j, t + 1] * beta[j] * inv
            tmp[j] = v
            ET[j, t + 1] = v
        for i in range(K):
            beta[i] = 0.0
        for j in range(K):
            v = tmp[j]
            for i in range(K):
                beta[i] += trans_T[j, i] * v
        norm = 0.0
        for k in range(K):
            v = AT[k, t] * beta[k]
            GT[k, t] = v
            norm += v
        if norm > 0.0:
            inv = 1.0 / norm
            for k in range(K):
                GT[k, t] *= inv
    for k in range(K):
        a = AT[k]
        for j in range(K):
            xi[k, j] += _dot(a, ET[j, 1:], L - 1)
    acc[0] = loglik
    acc[1] = prod
    return True


@njit(nogil=True, cache=True)
def _max_length(lengths):  # pragma: no cover - compiled
    """Length of the longest sequence: the size of the per-sequence buffers."""
    m = 0
    for s in range(lengths.shape[0]):
        if lengths[s] > m:
            m = lengths[s]
    return m


@njit(nogil=True, cache=True)
def _finish(acc, transmat, xi, sum_trans):  # pragma: no cover - compiled
    """Add the expected transition counts ``transmat * xi``; return the block's log-likelihood."""
    K = xi.shape[0]
    for i in range(K):
        for j in range(K):
            sum_trans[i, j] += transmat[i, j] * xi[i, j]
    return acc[0] + math.log(acc[1])


@njit(nogil=True, cache=True)
def categorical_e_step(x, lengths, startprob, transmat, log_emission, sum_start, sum_trans, sum_obs,
                       k_tag):  # pragma: no cover - compiled
    """Fused E-step of a categorical HMM over the sequences of one block.

    The shifted emission probabilities depend only on the symbol, so they
    come from a (n_components, n_features + 1) table built once per call
    (the last column, all ones, for invalid symbols): no ``exp`` per step.

    Parameters
    ----------
    x : ndarray of float64, shape (n_steps,)
    lengths : ndarray of int64, shape (n_sequences,)
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    log_emission : ndarray of shape (n_components, n_features)
    sum_start : ndarray of shape (n_components,)
    sum_trans : ndarray of shape (n_components, n_components)
    sum_obs : ndarray of shape (n_components, n_features)
        Accumulated (added to).
    k_tag : tuple
        Of length n_components to compile with that size as a constant; empty otherwise.

    Returns
    -------
    loglik : float
        Total log-likelihood of the block (-inf if some sequence is impossible).
    n_invalid : int
        Number of symbols that are not integers in 0..n_features-1 (their
        emission probability is one in every state; they add nothing to ``sum_obs``).
    """
    K = len(k_tag) if len(k_tag) > 0 else log_emission.shape[0]
    M = log_emission.shape[1]
    max_len = _max_length(lengths)
    table = np.ones((K, M + 1))
    sym_max = np.zeros(M + 1)
    for m in range(M):
        mxm = log_emission[0, m]
        for k in range(1, K):
            if log_emission[k, m] > mxm:
                mxm = log_emission[k, m]
        sym_max[m] = mxm
        for k in range(K):
            table[k, m] = _exp_nonpos(log_emission[k, m] - mxm) if mxm > -np.inf else 0.0
    sym = np.empty(max_len, dtype=np.int64)
    ET = np.empty((K, max_len))
    AT = np.empty((K, max_len))
    GT = np.empty((K, max_len))
    scale = np.empty(max_len)
    prev, cur, beta, tmp = np.empty(K), np.empty(K), np.empty(K), np.empty(K)
    trans_T = np.ascontiguousarray(transmat.T)
    xi = np.zeros((K, K))
    acc = np.array([0.0, 1.0])
    bad = 0
    start = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
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
            return -np.inf, bad
        acc[0] += shift
        for k in range(K):
            row = ET[k]
            probs = table[k]
            for t in range(L):
                row[t] = probs[sym[t]]
        if not _scaled_posteriors(ET, L, startprob, transmat, trans_T, AT, GT, scale, prev, cur, beta, tmp,
                                  xi, acc, k_tag):
            return -np.inf, bad
        for k in range(K):
            g = GT[k]
            obs = sum_obs[k]
            sum_start[k] += g[0]
            for t in range(L):
                m = sym[t]
                if m < M:
                    obs[m] += g[t]
        start += L
    return _finish(acc, transmat, xi, sum_trans), bad


@njit(nogil=True, cache=True)
def poisson_e_step(X, lengths, startprob, transmat, log_lambdas, lambdas, sum_start, sum_trans, sum_post,
                   sum_x, k_tag, d_tag):  # pragma: no cover - compiled
    """Fused E-step of a Poisson HMM over the sequences of one block.

    Parameters
    ----------
    X : ndarray of float64, shape (n_steps, n_features)
    lengths : ndarray of int64, shape (n_sequences,)
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    log_lambdas, lambdas : ndarray of shape (n_components, n_features)
        Rates and their logarithms (-inf for a zero rate).
    sum_start, sum_post : ndarray of shape (n_components,)
    sum_trans : ndarray of shape (n_components, n_components)
    sum_x : ndarray of shape (n_components, n_features)
        Accumulated (added to).
    k_tag, d_tag : tuple
        As in :func:`diag_e_step`: sizes as compile-time constants, or empty.

    Returns
    -------
    loglik : float
        Total log-likelihood of the block (-inf if some sequence is impossible).
    n_invalid : int
        Number of steps with a count that is negative, fractional or not
        finite. Such a step has probability one in every state; as in the
        three-pass path its finite values still enter ``sum_x`` (non-finite
        ones as 0).
    """
    K = len(k_tag) if len(k_tag) > 0 else lambdas.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else X.shape[1]
    max_len = _max_length(lengths)
    # log(v!) of small counts from a table (the same lgamma values, computed once)
    n_table = 1024
    table = np.empty(n_table)
    for v in range(n_table):
        table[v] = math.lgamma(v + 1.0)
    XT = np.empty((D, max_len))
    lg = np.empty(max_len)
    valid = np.empty(max_len, dtype=np.bool_)
    ET = np.empty((K, max_len))
    AT = np.empty((K, max_len))
    GT = np.empty((K, max_len))
    mx = np.empty(max_len)
    scale = np.empty(max_len)
    prev, cur, beta, tmp = np.empty(K), np.empty(K), np.empty(K), np.empty(K)
    trans_T = np.ascontiguousarray(transmat.T)
    xi = np.zeros((K, K))
    acc = np.array([0.0, 1.0])
    neg_sum = np.empty(K)
    for k in range(K):
        c = 0.0
        for d in range(D):
            c -= lambdas[k, d]
        neg_sum[k] = c
    bad = 0
    start = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
        n_bad = 0
        for t in range(L):
            ok = True
            g = 0.0
            for d in range(D):
                v = X[start + t, d]
                if v >= 0 and v == math.floor(v) and math.isfinite(v):
                    if v < n_table:
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
            bad += n_bad
            for t in range(L):
                if not valid[t]:
                    for k in range(K):
                        ET[k, t] = 0.0
        shift = _shift_exp(ET, L, mx, k_tag)
        if not math.isfinite(shift):
            return -np.inf, bad
        acc[0] += shift
        if not _scaled_posteriors(ET, L, startprob, transmat, trans_T, AT, GT, scale, prev, cur, beta, tmp,
                                  xi, acc, k_tag):
            return -np.inf, bad
        for k in range(K):
            g = GT[k]
            sum_start[k] += g[0]
            sum_post[k] += _sum(g, L)
            for d in range(D):
                sum_x[k, d] += _dot(g, XT[d], L)
        start += L
    return _finish(acc, transmat, xi, sum_trans), bad


@njit(nogil=True, cache=True)
def full_e_step(X, lengths, startprob, transmat, whiten, means, log_norm, sum_start, sum_trans, sum_post,
                sum_dx, sum_dxdxT, k_tag, d_tag):  # pragma: no cover - compiled
    """Fused E-step of a full- or tied-covariance Gaussian HMM over the sequences of one block.

    The log-density of state k is ``log_norm[k] - 0.5 |whiten[k] (x - means[k])|^2``,
    computed one whitened coordinate at a time over the steps of a sequence
    (only the lower triangle of ``whiten[k]`` is read). The statistics are
    centred on each state's mean, so data far from the origin loses no
    precision in them.

    Parameters
    ----------
    X : ndarray of float64, shape (n_steps, n_features)
    lengths : ndarray of int64, shape (n_sequences,)
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    whiten : ndarray of shape (n_components, n_features, n_features)
        Inverse of the lower Cholesky factor of each state's covariance
        (the same matrix for every state when tied).
    means : ndarray of shape (n_components, n_features)
    log_norm : ndarray of shape (n_components,)
        ``-0.5 D log(2 pi) - sum(log(diag(cholesky(covars[k]))))``.
    sum_start, sum_post : ndarray of shape (n_components,)
    sum_trans : ndarray of shape (n_components, n_components)
    sum_dx : ndarray of shape (n_components, n_features)
        ``sum_t gamma[t, k] (x[t] - means[k])``.
    sum_dxdxT : ndarray of shape (n_components, n_features, n_features)
        ``sum_t gamma[t, k] (x[t] - means[k]) (x[t] - means[k])^T``.
        Accumulated (added to).
    k_tag, d_tag : tuple
        As in :func:`diag_e_step`: sizes as compile-time constants, or empty.

    Returns
    -------
    loglik : float
        Total log-likelihood of the block (-inf if some sequence is impossible).
    n_invalid : int
        Number of steps with non-finite values (probability one in every
        state; nothing added to ``sum_dx`` or ``sum_dxdxT``).
    """
    K = len(k_tag) if len(k_tag) > 0 else whiten.shape[0]
    D = len(d_tag) if len(d_tag) > 0 else X.shape[1]
    max_len = _max_length(lengths)
    XT = np.empty((D, max_len))
    Y = np.empty(max_len)
    GX = np.empty(max_len)
    GV = np.empty(max_len)
    valid = np.empty(max_len, dtype=np.bool_)
    ET = np.empty((K, max_len))
    AT = np.empty((K, max_len))
    GT = np.empty((K, max_len))
    mx = np.empty(max_len)
    scale = np.empty(max_len)
    prev, cur, beta, tmp = np.empty(K), np.empty(K), np.empty(K), np.empty(K)
    trans_T = np.ascontiguousarray(transmat.T)
    xi = np.zeros((K, K))
    acc = np.array([0.0, 1.0])
    bad = 0
    start = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
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
        for k in range(K):
            row = ET[k]
            lk = log_norm[k]
            for t in range(L):
                row[t] = lk
            # row -= 0.5 * |W_k x - W_k mu_k|^2, one whitened coordinate at a time (the
            # whitened difference loses only |W_k x| eps: no pass to centre x first)
            for d in range(D):
                sd = 0.0
                for e in range(d + 1):
                    sd -= whiten[k, d, e] * means[k, e]
                for t in range(L):
                    Y[t] = sd
                for e in range(d + 1):
                    w = whiten[k, d, e]
                    xe = XT[e]
                    for t in range(L):
                        Y[t] += w * xe[t]
                for t in range(L):
                    row[t] -= 0.5 * Y[t] * Y[t]
        if n_bad:
            bad += n_bad
            for t in range(L):
                if not valid[t]:
                    for k in range(K):
                        ET[k, t] = 0.0
        shift = _shift_exp(ET, L, mx, k_tag)
        if not math.isfinite(shift):
            return -np.inf, bad
        acc[0] += shift
        if not _scaled_posteriors(ET, L, startprob, transmat, trans_T, AT, GT, scale, prev, cur, beta, tmp,
                                  xi, acc, k_tag):
            return -np.inf, bad
        for k in range(K):
            g = GT[k]
            sum_start[k] += g[0]
            sum_post[k] += _sum(g, L)
            g = _valid_weights(g, valid, L, n_bad, GV)
            for d in range(D):
                xd = XT[d]
                m = means[k, d]
                for t in range(L):
                    GX[t] = g[t] * (xd[t] - m)
                s1 = _sum(GX, L)
                sum_dx[k, d] += s1
                # sum GX (x_e - m_e) without a pass to centre x_e: GX is already
                # centred, so the subtraction loses only about |m_e| / sd eps
                for e in range(d + 1):
                    sum_dxdxT[k, d, e] += _dot(GX, XT[e], L) - means[k, e] * s1
        start += L
    for k in range(K):
        for d in range(D):
            for e in range(d):
                sum_dxdxT[k, e, d] = sum_dxdxT[k, d, e]
    return _finish(acc, transmat, xi, sum_trans), bad


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


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianHMMParams:
    """Parameters of a Gaussian HMM.

    Attributes
    ----------
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    means : ndarray of shape (n_components, n_features)
    covars : ndarray
        (n_components,) spherical, (n_components, n_features) diag,
        (n_components, n_features, n_features) full, (n_features, n_features) tied.
    """

    startprob: np.ndarray
    transmat: np.ndarray
    means: np.ndarray
    covars: np.ndarray


@dataclass(frozen=True)
class CategoricalHMMParams:
    """Parameters of a categorical HMM: emissionprob of shape (n_components, n_features)."""

    startprob: np.ndarray
    transmat: np.ndarray
    emissionprob: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"startprob": "simplex", "transmat": "simplex", "emissionprob": "simplex"}


@dataclass(frozen=True)
class PoissonHMMParams:
    """Parameters of a Poisson HMM: lambdas of shape (n_components, n_features)."""

    startprob: np.ndarray
    transmat: np.ndarray
    lambdas: np.ndarray

    #: How accelerated EM may move each field (:mod:`dask_em.accelerate`).
    constraints: ClassVar[dict[str, str]] = {"startprob": "simplex", "transmat": "simplex", "lambdas": "positive"}


def _prior(value: Any) -> Any:
    """A JSON-able prior: a float, or nested lists for an array."""
    arr = np.asarray(value, dtype=float)
    return float(arr) if arr.ndim == 0 else arr.tolist()


#: Largest sizes for which the fused kernel is compiled with constant sizes.
_MAX_TAGGED_COMPONENTS, _MAX_TAGGED_FEATURES = 16, 32


def _size_tags(n_components: int, n_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tuples whose lengths give the fused kernel its sizes as compile-time constants.

    Small sizes get a specialised compilation (cached on disk) with fully
    unrolled inner loops; larger ones share one compilation with sizes
    read from the arrays.
    """
    if n_components <= _MAX_TAGGED_COMPONENTS and n_features <= _MAX_TAGGED_FEATURES:
        return (0,) * n_components, (0,) * n_features
    return (), ()


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


def _block_parts(block: Any) -> tuple[np.ndarray, np.ndarray]:
    values, lengths = block
    return np.asarray(values), np.asarray(lengths, dtype=np.int64)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _HMMBase:
    """What the three HMMs share: forward-backward and the Markov-chain M-step."""

    n_components: int = 1
    startprob_prior: Any = 1.0
    transmat_prior: Any = 1.0
    params: tuple[str, ...] = ()

    # hooks -------------------------------------------------------------
    def log_emission(self, values: np.ndarray, params: Any) -> tuple[np.ndarray, int]:
        """Emission log-probabilities (n_steps, n_components) and the number of invalid rows."""
        raise NotImplementedError

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: Any) -> Stats:
        raise NotImplementedError

    def describe_invalid(self, n: int) -> str:
        raise NotImplementedError

    # contract ------------------------------------------------------------
    def init_params(self, sample: Any, rng: np.random.Generator) -> Any:
        raise NotImplementedError(
            "HMM parameters are initialised by the estimators (GaussianHMM, CategoricalHMM, PoissonHMM)"
        )

    def posteriors(self, block: Any, params: Any) -> tuple[np.ndarray, Stats]:
        """Posterior state probabilities of a block and its Markov-chain statistics."""
        values, lengths = _block_parts(block)
        logB, n_invalid = self.log_emission(values, params)
        K = self.n_components
        gamma = np.empty_like(logB)
        sum_start = np.zeros(K)
        sum_trans = np.zeros((K, K))
        loglik = forward_backward(
            logB, lengths, np.ascontiguousarray(params.startprob, dtype=np.float64),
            np.ascontiguousarray(params.transmat, dtype=np.float64), gamma, sum_start, sum_trans,
        )
        stats = {
            "n": np.array(float(len(logB))),
            "loglik": np.array(loglik),
            "n_invalid": np.array(float(n_invalid)),
            "sum_start": sum_start,
            "sum_trans": sum_trans,
        }
        return gamma, stats

    def e_step(self, block: Any, params: Any) -> Stats:
        """Expected sufficient statistics of one partition.

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
            logp = viterbi(
                logB, lengths, np.log(params.startprob), np.log(params.transmat), states
            )
        return float(logp), states

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
class GaussianHMMModel(_HMMBase):
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

    def __post_init__(self) -> None:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}"
            )

    def param_constraints(self, params: GaussianHMMParams) -> dict[str, str]:
        """How accelerated EM may move each parameter (see :mod:`dask_em.accelerate`)."""
        square = self.covariance_type in ("full", "tied")
        return {"startprob": "simplex", "transmat": "simplex", "covars": "spd" if square else "positive"}

    def full_covars(self, covars: np.ndarray, n_features: int) -> np.ndarray:
        """Covariances as (K, D, D) matrices whatever the covariance type."""
        K, D = self.n_components, n_features
        if self.covariance_type == "full":
            return np.asarray(covars)
        if self.covariance_type == "tied":
            return np.tile(covars, (K, 1, 1))
        if self.covariance_type == "diag":
            return np.array([np.diag(c) for c in covars])
        return np.asarray(covars).reshape(K, 1, 1) * np.eye(D)

    def _diag_terms(self, params: GaussianHMMParams, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """Precisions (K, D) and log normalising constants (K,) of diag/spherical covariances."""
        K, D = self.n_components, n_features
        cov = np.asarray(params.covars, dtype=np.float64)
        cov = np.broadcast_to(cov.reshape(K, -1), (K, D))
        cov = np.maximum(cov, np.finfo(float).tiny)
        log_norm = -0.5 * (D * LOG_2PI + np.log(cov).sum(axis=1))
        return np.ascontiguousarray(1.0 / cov), log_norm

    def _whitening(self, params: GaussianHMMParams, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """Inverse lower Cholesky factors (K, D, D) and log normalising constants (K,) of full/tied covariances."""
        K, D = self.n_components, n_features
        covs = self.full_covars(params.covars, D)
        whiten = np.empty((K, D, D))
        log_norm = np.empty(K)
        for k in range(K):
            chol = _cholesky(covs[k], k)
            whiten[k] = np.linalg.inv(chol)
            log_norm[k] = -0.5 * (D * LOG_2PI) - np.log(np.diag(chol)).sum()
        return whiten, log_norm

    def e_step(self, block: Any, params: GaussianHMMParams) -> Stats:
        """Expected sufficient statistics of one partition.

        One fused compiled pass: :func:`diag_e_step` for diagonal and
        spherical covariances, :func:`full_e_step` for full and tied ones.
        """
        if self.covariance_type not in ("diag", "spherical"):
            return self._full_e_step(block, params)
        values, lengths = _block_parts(block)
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        K, D = self.n_components, X.shape[1]
        precisions, log_norm = self._diag_terms(params, D)
        sum_start, sum_post = np.zeros(K), np.zeros(K)
        sum_trans = np.zeros((K, K))
        sum_dx, sum_dx2 = np.zeros((K, D)), np.zeros((K, D))
        loglik, bad = diag_e_step(
            X, lengths, np.ascontiguousarray(params.startprob, dtype=np.float64),
            np.ascontiguousarray(params.transmat, dtype=np.float64),
            np.ascontiguousarray(params.means, dtype=np.float64), precisions, log_norm,
            sum_start, sum_trans, sum_post, sum_dx, sum_dx2, *_size_tags(K, D),
        )
        return {
            "n": np.array(float(len(X))),
            "loglik": np.array(loglik),
            "n_invalid": np.array(float(bad)),
            "sum_start": sum_start,
            "sum_trans": sum_trans,
            "sum_post": sum_post,
            "sum_dx": sum_dx,
            "sum_dx2": sum_dx2,
        }

    def _full_e_step(self, block: Any, params: GaussianHMMParams) -> Stats:
        """Fused E-step of full and tied covariances (:func:`full_e_step`)."""
        values, lengths = _block_parts(block)
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        K, D = self.n_components, X.shape[1]
        means = np.asarray(params.means, dtype=np.float64)
        whiten, log_norm = self._whitening(params, D)
        sum_start, sum_post = np.zeros(K), np.zeros(K)
        sum_trans = np.zeros((K, K))
        sum_dx, sum_dxdxT = np.zeros((K, D)), np.zeros((K, D, D))
        loglik, bad = full_e_step(
            X, lengths, np.ascontiguousarray(params.startprob, dtype=np.float64),
            np.ascontiguousarray(params.transmat, dtype=np.float64), whiten, np.ascontiguousarray(means),
            log_norm, sum_start, sum_trans, sum_post, sum_dx, sum_dxdxT, *_size_tags(K, D),
        )
        return {
            "n": np.array(float(len(X))),
            "loglik": np.array(loglik),
            "n_invalid": np.array(float(bad)),
            "sum_start": sum_start,
            "sum_trans": sum_trans,
            "sum_post": sum_post,
            "sum_dx": sum_dx,
            "sum_dxdxT": sum_dxdxT,
        }

    def log_emission(self, values: np.ndarray, params: GaussianHMMParams) -> tuple[np.ndarray, int]:
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        means = np.asarray(params.means, dtype=np.float64)
        K, D = means.shape
        out = np.empty((len(X), K))
        if self.covariance_type in ("diag", "spherical"):
            precisions, log_norm = self._diag_terms(params, D)
            bad = _diag_logpdf(X, means, precisions, log_norm, out)
            return out, int(bad)
        whiten, log_norm = self._whitening(params, D)
        finite = np.isfinite(X).all(axis=1)
        bad = int(len(X) - finite.sum())
        if bad:
            X = np.where(finite[:, None], X, 0.0)
        for k in range(K):
            for lo in range(0, len(X), SUB_BLOCK):
                Y = (X[lo : lo + SUB_BLOCK] - means[k]) @ whiten[k].T
                out[lo : lo + SUB_BLOCK, k] = log_norm[k] - 0.5 * np.einsum("ij,ij->i", Y, Y)
        if bad:
            out[~finite] = 0.0
        return out, bad

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: GaussianHMMParams) -> Stats:
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        K, D = gamma.shape[1], X.shape[1]
        means = np.asarray(params.means, dtype=np.float64)
        stats = {"sum_post": gamma.sum(axis=0)}
        if self.covariance_type in ("diag", "spherical"):
            sum_dx = np.zeros((K, D))
            sum_dx2 = np.zeros((K, D))
            _diag_sums(X, gamma, means, sum_dx, sum_dx2)
            stats["sum_dx"], stats["sum_dx2"] = sum_dx, sum_dx2
            return stats
        # steps with non-finite values add nothing (as in the fused kernel)
        finite = np.isfinite(X).all(axis=1)
        sum_dx = np.zeros((K, D))
        sum_dxdxT = np.zeros((K, D, D))
        for lo in range(0, len(X), SUB_BLOCK):
            ok = finite[lo : lo + SUB_BLOCK]
            Xs, Gs = X[lo : lo + SUB_BLOCK][ok], gamma[lo : lo + SUB_BLOCK][ok]
            for k in range(K):
                dX = Xs - means[k]
                G = dX * Gs[:, k : k + 1]
                sum_dx[k] += G.sum(axis=0)
                sum_dxdxT[k] += G.T @ dX
        stats["sum_dx"], stats["sum_dxdxT"] = sum_dx, sum_dxdxT
        return stats

    def recenter_stats(self, stats: Stats, old: GaussianHMMParams, new: GaussianHMMParams) -> Stats:
        """Statistics centred on ``old.means`` moved to ``new.means`` (for online EM)."""
        from .gmm import recenter_moments

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
        return (
            f"{n} time steps contain NaN or infinite values; Gaussian HMMs need finite "
            "observations. Remove or impute them (e.g. interpolate within each sequence)."
        )

    def sample_emission(self, params: GaussianHMMParams, states: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        D = params.means.shape[1]
        covs = self.full_covars(params.covars, D)
        X = np.empty((len(states), D))
        for k in range(self.n_components):
            idx = np.flatnonzero(states == k)
            if len(idx):
                X[idx] = rng.multivariate_normal(params.means[k], covs[k], size=len(idx))
        return X


@dataclass(frozen=True)
class CategoricalHMMModel(_HMMBase):
    """HMM with categorical emissions over symbols ``0 .. n_features - 1``.

    Statistics: ``sum_obs (K, n_features)``, the expected count of each
    symbol in each state.
    """

    n_features: int = 2
    emissionprob_prior: Any = 1.0
    params: tuple[str, ...] = ("startprob", "transmat", "emissionprob")

    @staticmethod
    def _symbols(values: np.ndarray) -> np.ndarray:
        x = np.asarray(values)
        if x.ndim == 2:
            x = x[:, 0] if x.shape[1] == 1 else x.ravel()
        return np.ascontiguousarray(x, dtype=np.float64)

    def e_step(self, block: Any, params: CategoricalHMMParams) -> Stats:
        """Expected sufficient statistics of one partition, one fused pass (:func:`categorical_e_step`)."""
        values, lengths = _block_parts(block)
        x = self._symbols(values)
        K = self.n_components
        with np.errstate(divide="ignore"):
            log_e = np.log(np.asarray(params.emissionprob, dtype=np.float64))
        sum_start, sum_trans = np.zeros(K), np.zeros((K, K))
        sum_obs = np.zeros((K, self.n_features))
        loglik, bad = categorical_e_step(
            x, lengths, np.ascontiguousarray(params.startprob, dtype=np.float64),
            np.ascontiguousarray(params.transmat, dtype=np.float64), np.ascontiguousarray(log_e),
            sum_start, sum_trans, sum_obs, _size_tags(K, 1)[0],
        )
        return {
            "n": np.array(float(len(x))),
            "loglik": np.array(loglik),
            "n_invalid": np.array(float(bad)),
            "sum_start": sum_start,
            "sum_trans": sum_trans,
            "sum_obs": sum_obs,
        }

    def log_emission(self, values: np.ndarray, params: CategoricalHMMParams) -> tuple[np.ndarray, int]:
        x = self._symbols(values)
        with np.errstate(divide="ignore"):
            log_e = np.log(np.asarray(params.emissionprob, dtype=np.float64))
        out = np.empty((len(x), self.n_components))
        bad = _categorical_logpmf(x, log_e, out)
        return out, int(bad)

    def emission_stats(self, values: np.ndarray, gamma: np.ndarray, params: CategoricalHMMParams) -> Stats:
        x = np.asarray(values)
        if x.ndim == 2:
            x = x[:, 0] if x.shape[1] == 1 else x.ravel()
        sum_obs = np.zeros((self.n_components, self.n_features))
        _categorical_sums(np.ascontiguousarray(x, dtype=np.float64), gamma, sum_obs)
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


@dataclass(frozen=True)
class PoissonHMMModel(_HMMBase):
    """HMM with independent Poisson counts per feature.

    Statistics: ``sum_post (K,)`` and ``sum_x (K, D)``.
    """

    lambdas_prior: Any = 0.0
    lambdas_weight: Any = 0.0
    params: tuple[str, ...] = ("startprob", "transmat", "lambdas")

    def e_step(self, block: Any, params: PoissonHMMParams) -> Stats:
        """Expected sufficient statistics of one partition, one fused pass (:func:`poisson_e_step`)."""
        values, lengths = _block_parts(block)
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        K, D = self.n_components, X.shape[1]
        lam = np.ascontiguousarray(params.lambdas, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_lam = np.log(lam)
        sum_start, sum_post = np.zeros(K), np.zeros(K)
        sum_trans, sum_x = np.zeros((K, K)), np.zeros((K, D))
        loglik, bad = poisson_e_step(
            X, lengths, np.ascontiguousarray(params.startprob, dtype=np.float64),
            np.ascontiguousarray(params.transmat, dtype=np.float64), log_lam, lam,
            sum_start, sum_trans, sum_post, sum_x, *_size_tags(K, D),
        )
        return {
            "n": np.array(float(len(X))),
            "loglik": np.array(loglik),
            "n_invalid": np.array(float(bad)),
            "sum_start": sum_start,
            "sum_trans": sum_trans,
            "sum_post": sum_post,
            "sum_x": sum_x,
        }

    def log_emission(self, values: np.ndarray, params: PoissonHMMParams) -> tuple[np.ndarray, int]:
        X = values if values.ndim == 2 else values.reshape(-1, 1)
        X = np.ascontiguousarray(X, dtype=np.float64)
        lam = np.asarray(params.lambdas, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_lam = np.log(lam)
        out = np.empty((len(X), self.n_components))
        bad = _poisson_logpmf(X, log_lam, lam, out)
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


def params_class(model: Any) -> type:
    """The parameter dataclass of an HMM model."""
    if isinstance(model, GaussianHMMModel):
        return GaussianHMMParams
    if isinstance(model, CategoricalHMMModel):
        return CategoricalHMMParams
    return PoissonHMMParams


__all__ = [
    "CategoricalHMMModel",
    "CategoricalHMMParams",
    "GaussianHMMModel",
    "GaussianHMMParams",
    "PoissonHMMModel",
    "PoissonHMMParams",
    "StackedHMM",
    "StackedParams",
    "categorical_e_step",
    "diag_e_step",
    "forward_backward",
    "full_e_step",
    "poisson_e_step",
    "viterbi",
]
