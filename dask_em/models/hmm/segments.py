"""One long sequence split into segments: exact Baum-Welch and Viterbi across blocks.

A sequence longer than a block is cut into segments at block (chunk)
boundaries; each segment is one engine block (:class:`SegmentPart`). The
forward pass of a segment depends only on the state distribution entering
it, and its backward pass only on the backward message leaving it, so an
iteration takes two passes over the data:

1. **Transfer operators** (:class:`TransferPass`). Each segment computes
   the K x K product of its normalised ``transmat @ diag(b_t)`` matrices
   (the first segment of a sequence starts with ``diag(b_0)``), with the
   logarithm of the scales kept apart: :func:`transfer_operator`. Viterbi
   uses the same decomposition in the max-plus semiring
   (:func:`max_plus_operator`).
2. On the client, a scan over the segments of each sequence
   (:func:`segment_messages`, K x K work per segment) gives every segment
   its exact entering forward message (the filtered state distribution
   at the last step of the previous segment), its leaving backward message
   and its exact share of the log-likelihood.
3. **Statistics** (:meth:`SegmentedHMM.e_step`). Each segment runs the
   ordinary scaled forward-backward from its entering distribution, with
   the leaving message folded into the emission probabilities of its last
   step, and adds the expected transition across its left boundary. The
   statistics are those of forward-backward over the whole sequence, to
   rounding.

The alternative, statistics conditioned on every entering and leaving
state in one pass, costs K forward and K backward recursions and K^2 times
the statistics per step; measured in ``benchmarks/RESULTS.md`` it is slower
than reading the data twice for every model we ship, so it is not used.

Memory per task is bounded by the segment: its values, its emission
log-probabilities and posteriors (n_steps x K), never the sequence.
Blocks of whole sequences fitted together with segments (mixed inputs)
take the ordinary one-pass E-step of the model in pass 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numba import njit

from .._gaussian import exp_nonpos
from ...contract import Stats, hooks
from ..stacked import Stacked, StackedParams
from .recursions import forward_backward, size_tags, viterbi


# --------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------


class SegmentPart(tuple):
    """One segment of a long sequence: ``(values, lengths)`` with ``lengths == [n_steps]``.

    Attributes
    ----------
    segment : int
        Index of the segment in the fit's :class:`SegmentTable`.
    first : bool
        Whether the segment starts its sequence.
    """

    def __new__(cls, values: np.ndarray, lengths: np.ndarray, segment: int = 0, first: bool = False) -> SegmentPart:
        obj = super().__new__(cls, (values, lengths))
        obj.segment = int(segment)
        obj.first = bool(first)
        return obj

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.segment, self.first)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SegmentPart, self.__getnewargs__())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # values, then length and segment index: content hashes see all three
        values, lengths = self
        flat = np.concatenate([np.asarray(values, dtype=np.float64).ravel(),
                               np.asarray(lengths, dtype=np.float64), [float(self.segment)]])
        return flat if dtype is None else flat.astype(dtype)


@dataclass(frozen=True)
class SegmentTable:
    """Where the segments of the long sequences are.

    Attributes
    ----------
    sequence : ndarray of int64, shape (n_segments,)
        Which sequence (index among all sequences) each segment belongs to;
        the segments of a sequence are consecutive and in order.
    first : ndarray of bool, shape (n_segments,)
        Whether the segment starts its sequence (its forward recursion
        starts from ``startprob``).
    """

    sequence: np.ndarray
    first: np.ndarray

    def __len__(self) -> int:
        return len(self.sequence)

    def chains(self) -> list[np.ndarray]:
        """Segment indices of every segmented sequence, in order."""
        starts = np.flatnonzero(self.first)
        ends = np.r_[starts[1:], len(self.first)]
        return [np.arange(a, b) for a, b in zip(starts, ends)]


# --------------------------------------------------------------------------
# Compiled kernels
# --------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def transfer_operator(logB, transmat, first, out, k_tag):  # pragma: no cover - compiled
    """Normalised product of ``transmat @ diag(b_t)`` over the steps of a segment.

    Parameters
    ----------
    logB : ndarray of shape (n_steps, n_components)
        Emission log-probabilities of the segment.
    transmat : ndarray of shape (n_components, n_components)
    first : bool
        The segment starts its sequence: the first factor is ``diag(b_0)``
        (the start probabilities are applied on the client).
    out : ndarray of shape (n_components, n_components)
        Output: the product divided by the sum of its entries.
    k_tag : tuple
        Of length n_components to compile with that size as a constant
        (unrolled K x K x K loops); empty otherwise.

    Returns
    -------
    float
        Logarithm of the factor the product was divided by (-inf when the
        segment is impossible under the parameters).
    """
    T = logB.shape[0]
    K = len(k_tag) if len(k_tag) > 0 else logB.shape[1]
    b = np.empty(K)
    tmp = np.empty((K, K))
    log_scale = 0.0
    prod = 1.0
    for t in range(T):
        mx = logB[t, 0]
        for k in range(1, K):
            if logB[t, k] > mx:
                mx = logB[t, k]
        if not (mx > -np.inf) or mx == np.inf:
            return -np.inf
        log_scale += mx
        for k in range(K):
            b[k] = exp_nonpos(logB[t, k] - mx)
        if t == 0:
            for i in range(K):
                for j in range(K):
                    if first:
                        out[i, j] = b[j] if i == j else 0.0
                    else:
                        out[i, j] = transmat[i, j] * b[j]
        else:
            for i in range(K):
                for j in range(K):
                    acc = 0.0
                    for m in range(K):
                        acc += out[i, m] * transmat[m, j]
                    tmp[i, j] = acc * b[j]
            for i in range(K):
                for j in range(K):
                    out[i, j] = tmp[i, j]
        c = 0.0
        for i in range(K):
            for j in range(K):
                c += out[i, j]
        if not c > 0.0:
            return -np.inf
        inv = 1.0 / c
        for i in range(K):
            for j in range(K):
                out[i, j] *= inv
        # the scales multiplied together, through log only when leaving a safe range
        prod *= c
        if prod < 1e-150 or prod > 1e150:
            log_scale += math.log(prod)
            prod = 1.0
    return log_scale + math.log(prod)


@njit(nogil=True, cache=True)
def max_plus_operator(logB, log_transmat, first, out):  # pragma: no cover - compiled
    """Max-plus product of ``log_transmat + logB[t]`` over the steps of a segment.

    ``out[i, j]`` is the largest log-probability of a path through the
    segment that enters from state i (the state at the last step of the
    previous segment; for a first segment, the state at step 0) and ends
    in state j, minus the returned shift (its largest entry is 0).
    """
    T, K = logB.shape
    tmp = np.empty((K, K))
    shift = 0.0
    for t in range(T):
        if t == 0:
            for i in range(K):
                for j in range(K):
                    if first:
                        out[i, j] = logB[0, j] if i == j else -np.inf
                    else:
                        out[i, j] = log_transmat[i, j] + logB[0, j]
        else:
            for i in range(K):
                for j in range(K):
                    best = -np.inf
                    for m in range(K):
                        v = out[i, m] + log_transmat[m, j]
                        if v > best:
                            best = v
                    tmp[i, j] = best + logB[t, j]
            for i in range(K):
                for j in range(K):
                    out[i, j] = tmp[i, j]
        mx = -np.inf
        for i in range(K):
            for j in range(K):
                if out[i, j] > mx:
                    mx = out[i, j]
        if not (mx > -np.inf) or mx == np.inf:
            return -np.inf
        shift += mx
        for i in range(K):
            for j in range(K):
                out[i, j] -= mx
    return shift


# --------------------------------------------------------------------------
# Messages (on the client)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Messages:
    """What each segment needs from the others for exact statistics.

    Attributes
    ----------
    enter : ndarray of shape (n_segments, n_components)
        Filtered state distribution at the last step of the previous
        segment (unused for a first segment).
    leave : ndarray of shape (n_segments, n_components)
        Backward message at the last step of the segment, normalised to sum
        to one (uniform for a last segment).
    loglik : ndarray of shape (n_segments,)
        Each segment's share of the log-likelihood,
        ``log p(x_segment | x_before)``.
    """

    enter: np.ndarray
    leave: np.ndarray
    loglik: np.ndarray


def segment_messages(table: SegmentTable, ops: np.ndarray, log_scales: np.ndarray, startprob: np.ndarray) -> Messages:
    """Forward and backward scans over the segments of each sequence.

    Parameters
    ----------
    table : SegmentTable
    ops : ndarray of shape (n_segments, n_components, n_components)
        Normalised transfer operators (:func:`transfer_operator`).
    log_scales : ndarray of shape (n_segments,)
    startprob : ndarray of shape (n_components,)

    Returns
    -------
    Messages
    """
    S, K = ops.shape[0], ops.shape[1]
    enter = np.zeros((S, K))
    leave = np.full((S, K), 1.0 / K)
    loglik = np.full(S, -np.inf)
    for chain in table.chains():
        f = np.asarray(startprob, dtype=np.float64)
        for s in chain:
            enter[s] = f
            v = f @ ops[s]
            c = v.sum()
            if not (c > 0 and np.isfinite(log_scales[s])):
                loglik[chain] = -np.inf
                break
            loglik[s] = math.log(c) + log_scales[s]
            f = v / c
        g = np.full(K, 1.0 / K)
        for s in chain[::-1]:
            leave[s] = g
            g = ops[s] @ g
            total = g.sum()
            g = g / total if total > 0 else np.full(K, 1.0 / K)
    return Messages(enter, leave, loglik)


def viterbi_ends(table: SegmentTable, ops: np.ndarray, shifts: np.ndarray, log_startprob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max-plus scan: the Viterbi state at the last step of every segment.

    Returns
    -------
    end_state : ndarray of int64, shape (n_segments,)
    enter : ndarray of shape (n_segments, n_components)
        Best log-probability of the sequence so far ending in each state at
        the last step of the previous segment (``log_startprob`` for a first
        segment), shifted by its maximum.
    logp : ndarray of shape (n_sequences_segmented,)
        Log-probability of the best path of every segmented sequence.
    """
    S, K = ops.shape[0], ops.shape[1]
    end_state = np.zeros(S, dtype=np.int64)
    enter = np.zeros((S, K))
    logps = []
    for chain in table.chains():
        delta = np.asarray(log_startprob, dtype=np.float64)
        total = 0.0
        deltas = []
        for s in chain:
            enter[s] = delta
            deltas.append(delta)
            new = (delta[:, None] + ops[s]).max(axis=0)
            mx = new.max()
            total += mx + shifts[s]
            delta = new - mx
        j = int(np.argmax(delta))
        logps.append(total + delta[j])
        for pos in range(len(chain) - 1, -1, -1):
            s = chain[pos]
            end_state[s] = j
            j = int(np.argmax(deltas[pos] + ops[s][:, j]))
    return end_state, enter, np.array(logps)


# --------------------------------------------------------------------------
# Per-segment work (on the workers)
# --------------------------------------------------------------------------


def _segment_logB(model: Any, part: SegmentPart, params: Any) -> tuple[np.ndarray, int]:
    logB, bad = model.log_emission(np.asarray(part[0]), params)
    return np.ascontiguousarray(logB, dtype=np.float64), int(bad)


def segment_posteriors(model: Any, part: SegmentPart, params: Any, first: bool, enter: np.ndarray,
                       leave: np.ndarray) -> tuple[np.ndarray, Stats]:
    """Exact posteriors of one segment and its Markov-chain statistics.

    ``sum_trans`` includes the expected transition from the previous
    segment's last step into this one; ``sum_start`` is zero unless the
    segment starts its sequence.
    """
    K = model.n_components
    startprob = np.asarray(params.startprob, dtype=np.float64)
    transmat = np.ascontiguousarray(params.transmat, dtype=np.float64)
    logB, bad = _segment_logB(model, part, params)
    pred = startprob if first else enter @ transmat
    with np.errstate(divide="ignore"):
        logB[-1] += np.log(leave)
    gamma = np.empty_like(logB)
    sum_start = np.zeros(K)
    sum_trans = np.zeros((K, K))
    ok = forward_backward(logB, np.array([len(logB)], dtype=np.int64), np.ascontiguousarray(pred), transmat,
                          gamma, sum_start, sum_trans)
    if not first and np.isfinite(ok):
        # the transition across the left boundary: enter(i) A_ij gamma_0(j) / pred(j)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(pred > 0, gamma[0] / pred, 0.0)
        sum_trans += enter[:, None] * transmat * ratio[None, :]
        sum_start[:] = 0.0
    return gamma, {"n_invalid": np.array(float(bad)), "sum_start": sum_start, "sum_trans": sum_trans,
                   "finite": np.array(np.isfinite(ok))}


def segment_viterbi(model: Any, part: SegmentPart, params: Any, first: bool, enter: np.ndarray, end_state: int) -> np.ndarray:
    """Viterbi states of one segment, given the best scores entering it and its last state."""
    logB, _ = _segment_logB(model, part, params)
    with np.errstate(divide="ignore"):
        log_start = np.log(params.startprob)
        log_transmat = np.log(params.transmat)
    start = log_start if first else (enter[:, None] + log_transmat).max(axis=0)
    keep = logB[-1, end_state]
    logB[-1] = -np.inf
    logB[-1, end_state] = keep
    states = np.empty(len(logB), dtype=np.int64)
    viterbi(logB, np.array([len(logB)], dtype=np.int64), np.ascontiguousarray(start),
            np.ascontiguousarray(log_transmat), states)
    return states


# --------------------------------------------------------------------------
# Engine models
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferPass:
    """Pass 1: the transfer operator of every segment, for R parameter sets at once.

    ``e_step(block, members)`` returns ``ops (R, S, K, K)`` and
    ``log_scales (R, S)`` filled at this segment's index (zeros elsewhere,
    so the engine's sum gathers them); blocks of whole sequences return
    zeros. With ``max_plus`` the operators are Viterbi's.
    """

    model: Any
    n_segments: int
    max_plus: bool = False

    def e_step(self, block: Any, members: tuple[Any, ...]) -> Stats:
        R, S, K = len(members), self.n_segments, self.model.n_components
        ops = np.zeros((R, S, K, K))
        scales = np.zeros((R, S))
        if isinstance(block, SegmentPart):
            first = bool(block.first)
            for r, params in enumerate(members):
                logB, _ = _segment_logB(self.model, block, params)
                # a kernel stopping at an impossible step leaves the rest of ``out`` as it was
                out = np.full((K, K), -np.inf if self.max_plus else 0.0)
                if self.max_plus:
                    with np.errstate(divide="ignore"):
                        log_a = np.ascontiguousarray(np.log(params.transmat), dtype=np.float64)
                    scales[r, block.segment] = max_plus_operator(logB, log_a, first, out)
                else:
                    a = np.ascontiguousarray(params.transmat, dtype=np.float64)
                    scales[r, block.segment] = transfer_operator(logB, a, first, out, size_tags(K, 1)[0])
                ops[r, block.segment] = out
        return {"n": np.array(0.0), "loglik": np.array(0.0), "ops": ops, "log_scales": scales}

    def m_step(self, stats: Stats, params: Any) -> Any:  # pragma: no cover - never fitted
        raise NotImplementedError("TransferPass only computes operators")


@dataclass(frozen=True)
class SegmentParams:
    """HMM parameters with the messages every segment needs (pass 2's parameters)."""

    params: Any
    messages: Messages


@dataclass(frozen=True)
class DecodeParams:
    """HMM parameters with what every segment needs for its part of the Viterbi path.

    ``end_state (S,)``: the state at the last step of each segment;
    ``enter (S, K)``: best scores entering it; ``logp (S,)``: the best
    path's log-probability on first segments, 0 elsewhere.
    """

    params: Any
    end_state: np.ndarray
    enter: np.ndarray
    logp: np.ndarray


def _messages(model: Any, table: SegmentTable, members: tuple[Any, ...],
              run_pass: Callable[[Any, Any], Stats]) -> list[Messages]:
    stats = run_pass(TransferPass(model, len(table)), tuple(members))
    return [segment_messages(table, stats["ops"][r], stats["log_scales"][r], np.asarray(p.startprob, dtype=float))
            for r, p in enumerate(members)]


@dataclass(frozen=True)
class SegmentedHMM:
    """An HMM model whose blocks may be segments of long sequences (two passes per iteration).

    The engine calls :meth:`prepare_e_step` before every E-step pass: it
    runs pass 1 (:class:`TransferPass`) and the scans on the client and
    returns the parameters with every segment's messages. ``m_step`` is the
    wrapped model's, so checkpoints hold plain HMM parameters.
    """

    model: Any
    table: SegmentTable = field(default_factory=lambda: SegmentTable(np.zeros(0, np.int64), np.zeros(0, bool)))

    @property
    def n_components(self) -> int:
        return self.model.n_components

    def prepare_e_step(self, params: Any, run_pass: Callable[[Any, Any], Stats]) -> SegmentParams:
        """Pass 1 and the scans: ``params`` with the messages of every segment."""
        return SegmentParams(params, _messages(self.model, self.table, (params,), run_pass)[0])

    def e_step(self, block: Any, params: SegmentParams) -> Stats:
        """Exact statistics of a segment given its messages; the model's E-step for other blocks.

        Given plain parameters (no messages), every block is taken as
        sequences of its own: not the exact statistics of a segment, but
        what a check of parameter shapes on one block needs.
        """
        if not isinstance(params, SegmentParams):
            return self.model.e_step(tuple(block), params)
        if not isinstance(block, SegmentPart):
            return self.model.e_step(block, params.params)
        p, msg, s = params.params, params.messages, block.segment
        gamma, stats = segment_posteriors(self.model, block, p, bool(block.first), msg.enter[s], msg.leave[s])
        finite = bool(stats.pop("finite"))
        stats["n"] = np.array(float(len(gamma)))
        stats["loglik"] = np.array(msg.loglik[s] if finite else -np.inf)
        stats.update(self.model.emission_stats(np.asarray(block[0]), gamma, p))
        return stats

    def m_step(self, stats: Stats, params: Any) -> Any:
        return self.model.m_step(stats, params.params if isinstance(params, SegmentParams) else params)

    # accelerated EM extrapolates the wrapped model's parameters, under its constraints
    def param_constraints(self, params: Any) -> Any:
        return hooks(self.model).param_constraints(params)

    def complete_params(self, params: Any) -> Any:
        return hooks(self.model).complete_params(params)

    # inference on blocks that may be segments --------------------------------
    def posteriors(self, block: Any, params: SegmentParams) -> tuple[np.ndarray, Stats]:
        """Exact posterior state probabilities of a block (a segment given its messages)."""
        if not isinstance(block, SegmentPart):
            return self.model.posteriors(block, params.params)
        msg, s = params.messages, block.segment
        gamma, stats = segment_posteriors(self.model, block, params.params, bool(block.first), msg.enter[s], msg.leave[s])
        stats["loglik"] = np.array(msg.loglik[s] if bool(stats.pop("finite")) else -np.inf)
        return gamma, stats

    def log_likelihood(self, block: Any, params: SegmentParams) -> float:
        """A block's share of the log-likelihood (a segment's comes from the scan)."""
        if not isinstance(block, SegmentPart):
            return self.model.log_likelihood(block, params.params)
        return float(params.messages.loglik[block.segment])

    def prepare_decode(self, params: Any, run_pass: Callable[[Any, Any], Stats]) -> DecodeParams:
        """Max-plus pass and scan: the Viterbi state at the end of every segment."""
        stats = run_pass(TransferPass(self.model, len(self.table), max_plus=True), (params,))
        with np.errstate(divide="ignore"):
            log_start = np.log(np.asarray(params.startprob, dtype=np.float64))
        end_state, enter, logps = viterbi_ends(self.table, stats["ops"][0], stats["log_scales"][0], log_start)
        share = np.zeros(len(self.table))
        share[np.flatnonzero(self.table.first)] = logps
        return DecodeParams(params, end_state, enter, share)

    def decode(self, block: Any, params: DecodeParams) -> tuple[float, np.ndarray]:
        """Viterbi states of a block; a segmented sequence's log-probability is reported by its first segment."""
        if not isinstance(block, SegmentPart):
            return self.model.decode(block, params.params)
        s = block.segment
        states = segment_viterbi(self.model, block, params.params, bool(block.first), params.enter[s], int(params.end_state[s]))
        return float(params.logp[s]), states

    def describe_invalid(self, n: int) -> str:
        return self.model.describe_invalid(n)


@dataclass(frozen=True)
class SegmentedStackedHMM(Stacked):
    """R parameter sets side by side (restarts) over blocks that may be segments.

    ``model`` is a :class:`SegmentedHMM`; pass 1 computes the operators of
    every member in one pass.
    """

    def prepare_e_step(self, params: StackedParams, run_pass: Callable[[Any, Any], Stats]) -> StackedParams:
        inner = self.model
        members = tuple(m.params if isinstance(m, SegmentParams) else m for m in params.members)
        messages = _messages(inner.model, inner.table, members, run_pass)
        return StackedParams(tuple(SegmentParams(m, msg) for m, msg in zip(members, messages)), params.loglik)


__all__ = [
    "DecodeParams",
    "Messages",
    "SegmentParams",
    "SegmentPart",
    "SegmentTable",
    "SegmentedHMM",
    "SegmentedStackedHMM",
    "TransferPass",
    "max_plus_operator",
    "segment_messages",
    "segment_posteriors",
    "segment_viterbi",
    "transfer_operator",
    "viterbi_ends",
]
