"""The HMM recursions, once: scaled forward-backward, Viterbi, and the fused E-step skeleton.

Two ways through a block of sequences share these recursions:

- the **three-pass path**: emission log-probabilities of the whole block
  (``model.log_emission``), :func:`forward_backward`, then the statistics
  from the posteriors (``model.emission_stats``). It serves posteriors,
  scores, segments, and is the reference the fused E-step is tested against;
- the **fused E-step** (:func:`fused_e_step`): one compiled call per block
  that loops over its sequences and, per sequence, asks the emission for
  its shifted emission probabilities, runs :func:`_scaled_posteriors`, and
  asks the emission to add its statistics from the posteriors. Buffers are
  sized for the longest sequence and reused; no (n_steps, n_components)
  array of the whole block is materialised.

An emission plugs into the fused E-step with three compiled pieces,
registered with :func:`register_emission` for the class of its *kernel*
(a ``NamedTuple`` of the arrays its pieces read)::

    work(kernel, data, max_len, k_tag, d_tag) -> tuple of buffers
    probs(kernel, data, start, L, work, ET, mx, k_tag, d_tag) -> (shift, n_invalid)
        ET[k, :L] := p(x_t | state k) / exp(m_t) for the L steps from ``start``;
        returns sum_t m_t (not finite: the sequence is impossible) and the
        number of invalid steps (given probability one in every state)
    stats(kernel, data, start, L, GT, work, n_invalid, stats, k_tag, d_tag)
        add the emission statistics from the posteriors GT[k, :L]

The skeleton is compiled once per kernel class (numba dispatches on the
type, through :func:`numba.extending.overload`), so the emission's loops
are compiled into it exactly as if written inline. It is cached on disk
through a three-line entry point in each emission's module
(``_fused``, ``@njit(cache=True)``), because numba keys a cached function
on its own file only: an edit to an emission's pieces then recompiles its
fused E-step. (After editing this file, clear the numba cache of the
emission modules: ``find dask_em -name "*.nbi" -delete``.)

In both paths the emission log-probabilities are shifted by their per-step
maximum before ``exp`` and the forward variables are normalised at every
step, so a sequence of a million steps neither underflows nor overflows.
Transition statistics are accumulated step by step (no T x K x K array);
the log-likelihood comes from the scale factors of the same pass.

``k_tag``/``d_tag`` are tuples whose lengths are the number of states and
features: small sizes are compiled as constants, so the short inner loops
are fully unrolled (see :func:`size_tags`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from numba import njit
from numba.extending import overload

from .._gaussian import exp_nonpos

#: Largest sizes for which the fused kernel is compiled with constant sizes.
_MAX_TAGGED_COMPONENTS, _MAX_TAGGED_FEATURES = 16, 32


def size_tags(n_components: int, n_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tuples whose lengths give the compiled kernels their sizes as compile-time constants.

    Small sizes get a specialised compilation (cached on disk) with fully
    unrolled inner loops; larger ones share one compilation with sizes
    read from the arrays.
    """
    if n_components <= _MAX_TAGGED_COMPONENTS and n_features <= _MAX_TAGGED_FEATURES:
        return (0,) * n_components, (0,) * n_features
    return (), ()


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
            row[t] = exp_nonpos(row[t] - mx[t])
    return shift


@njit(nogil=True, cache=True, inline="always")
def _add_scale(c, loglik, prod):  # pragma: no cover - compiled
    """A scale factor into ``(loglik, prod)``: multiplied into ``prod``, taken through log only when
    it or the product leaves a safe range."""
    if c < 1e-100:
        return loglik + math.log(c), prod
    prod *= c
    if prod < 1e-150 or prod > 1e150:
        return loglik + math.log(prod), 1.0
    return loglik, prod


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
    # also at the first step: many one-step sequences would otherwise underflow the product
    loglik, prod = _add_scale(c, loglik, prod)
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
        loglik, prod = _add_scale(c, loglik, prod)
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


# --------------------------------------------------------------------------
# The fused E-step skeleton and its emission pieces
# --------------------------------------------------------------------------

#: Compiled pieces of every emission, by the class of its kernel tuple.
_PIECES: dict[type, tuple[Any, Any, Any]] = {}


def register_emission(kernel_class: type, work: Callable, probs: Callable, stats: Callable) -> None:
    """Plug an emission into :func:`fused_e_step` (see the module docstring for the three pieces).

    The emission's module also defines the cached entry point its model
    calls: a ``@njit(nogil=True, cache=True)`` function of its own that
    returns ``fused_e_step(...)`` (see the module docstring).

    Parameters
    ----------
    kernel_class : type
        A ``typing.NamedTuple`` class: the arrays (and numbers) the pieces
        read, passed as the first argument of each.
    work, probs, stats : numba dispatchers
        The emission's compiled pieces (``@njit(nogil=True, cache=True)``).
    """
    _PIECES[kernel_class] = (work, probs, stats)


def _piece(kernel: Any, index: int) -> Any:
    pieces = _PIECES.get(getattr(kernel, "instance_class", None))
    return None if pieces is None else pieces[index]


def emission_work(kernel, data, max_len, k_tag, d_tag):  # pragma: no cover - compiled through the overload
    """The emission's buffers for sequences of up to ``max_len`` steps."""
    raise NotImplementedError("emission_work runs only inside compiled code")


def emission_probs(kernel, data, start, L, work, ET, mx, k_tag, d_tag):  # pragma: no cover - compiled
    """Shifted emission probabilities of one sequence into ``ET[:, :L]``: ``(shift, n_invalid)``."""
    raise NotImplementedError("emission_probs runs only inside compiled code")


def emission_stats(kernel, data, start, L, GT, work, n_invalid, stats, k_tag, d_tag):  # pragma: no cover - compiled
    """Add one sequence's emission statistics from its posteriors ``GT[:, :L]``."""
    raise NotImplementedError("emission_stats runs only inside compiled code")


@overload(emission_work, jit_options={"nogil": True})
def _emission_work(kernel, data, max_len, k_tag, d_tag):  # pragma: no cover - typing
    impl = _piece(kernel, 0)
    if impl is None:
        return None

    def work(kernel, data, max_len, k_tag, d_tag):
        return impl(kernel, data, max_len, k_tag, d_tag)

    return work


@overload(emission_probs, jit_options={"nogil": True})
def _emission_probs(kernel, data, start, L, work, ET, mx, k_tag, d_tag):  # pragma: no cover - typing
    impl = _piece(kernel, 1)
    if impl is None:
        return None

    def probs(kernel, data, start, L, work, ET, mx, k_tag, d_tag):
        return impl(kernel, data, start, L, work, ET, mx, k_tag, d_tag)

    return probs


@overload(emission_stats, jit_options={"nogil": True})
def _emission_stats(kernel, data, start, L, GT, work, n_invalid, stats, k_tag, d_tag):  # pragma: no cover - typing
    impl = _piece(kernel, 2)
    if impl is None:
        return None

    def add(kernel, data, start, L, GT, work, n_invalid, stats, k_tag, d_tag):
        impl(kernel, data, start, L, GT, work, n_invalid, stats, k_tag, d_tag)

    return add


@njit(nogil=True)
def fused_e_step(kernel, data, lengths, startprob, transmat, stats, sum_start, sum_trans,
                 k_tag, d_tag):  # pragma: no cover - compiled
    """Fused E-step of an HMM over the sequences of one block.

    Parameters
    ----------
    kernel : NamedTuple
        The emission's kernel (its class registered with :func:`register_emission`).
    data : ndarray
        The block's values in the form the emission reads (e.g. float64 of
        shape (n_steps, n_features), or (n_steps,) symbols).
    lengths : ndarray of int64, shape (n_sequences,)
    startprob : ndarray of shape (n_components,)
    transmat : ndarray of shape (n_components, n_components)
    stats : tuple of ndarray
        The emission's statistics, accumulated (added to).
    sum_start : ndarray of shape (n_components,)
    sum_trans : ndarray of shape (n_components, n_components)
        Accumulated with the posteriors of the first steps and the expected
        transition counts.
    k_tag, d_tag : tuple
        Sizes as compile-time constants (:func:`size_tags`), or empty.

    Returns
    -------
    loglik : float
        Total log-likelihood of the block (-inf if some sequence is impossible).
    n_invalid : int
        Number of invalid steps (outside the emission's support): their
        emission probability is one in every state.
    """
    K = len(k_tag) if len(k_tag) > 0 else startprob.shape[0]
    max_len = _max_length(lengths)
    work = emission_work(kernel, data, max_len, k_tag, d_tag)
    # shifted emission probabilities, then backward terms; forward variables; posteriors
    ET = np.empty((K, max_len))
    AT = np.empty((K, max_len))
    GT = np.empty((K, max_len))
    mx = np.empty(max_len)
    scale = np.empty(max_len)
    prev, cur, beta, tmp = np.empty(K), np.empty(K), np.empty(K), np.empty(K)
    trans_T = np.ascontiguousarray(transmat.T)
    # sum over steps of alpha_t[i] * tmp_{t+1}[j]; times transmat[i, j] at the end
    xi = np.zeros((K, K))
    # [log-likelihood, product of scale factors taken through log only when it leaves a safe range]
    acc = np.array([0.0, 1.0])
    bad = 0
    start = 0
    for s in range(lengths.shape[0]):
        L = lengths[s]
        shift, n_bad = emission_probs(kernel, data, start, L, work, ET, mx, k_tag, d_tag)
        bad += n_bad
        if not math.isfinite(shift):
            return -np.inf, bad
        acc[0] += shift
        if not _scaled_posteriors(ET, L, startprob, transmat, trans_T, AT, GT, scale, prev, cur, beta, tmp,
                                  xi, acc, k_tag):
            return -np.inf, bad
        for k in range(K):
            sum_start[k] += GT[k, 0]
        emission_stats(kernel, data, start, L, GT, work, n_bad, stats, k_tag, d_tag)
        start += L
    return _finish(acc, transmat, xi, sum_trans), bad


__all__ = [
    "emission_probs",
    "emission_stats",
    "emission_work",
    "forward_backward",
    "fused_e_step",
    "register_emission",
    "size_tags",
    "viterbi",
]
