"""Online (stepwise) EM on running sufficient statistics, for any model of the contract.

Cappé & Moulines (2009), "On-line expectation-maximization algorithm for
latent data models", J. R. Statist. Soc. B 71(3): keep a running average
``s`` of the per-observation expected statistics and take the M-step from
it. After the E-step of a batch of ``n_batch`` observations under the
current parameters::

    s <- (1 - g_t) s + g_t * stats(batch) / n_batch
    params <- m_step(s * n_batch)

The first batch sets ``s`` (``g = 1``); the t-th update after it
(t = 0, 1, 2, ...) uses the step size ``g_t = (t + 2) ** -alpha`` with
``alpha`` in (0.5, 1], the range in which stepwise EM converges (the
steps sum to infinity, their squares do not). ``alpha = 1`` makes ``s``
the plain mean of all the batches' statistics (each batch weighs the same,
whatever the parameters it was computed under); smaller values forget the
statistics of early, poor parameters faster. The default 0.6 is near the
lower end Cappé & Moulines and Liang & Klein (2009) found to work best.

Statistics that are not sums of numbers (such as k-means' farthest
rows, where empty clusters move) are not averaged: the M-step gets the
latest batch's. The M-step sees ``s`` scaled to the size of the latest batch: the
maximum-likelihood M-steps depend only on ratios of sums, so the scale
matters only for pseudo-counts and priors, whose weight is then that of a
prior against one batch.

Statistics some models take about a parameter-dependent point (Gaussian
mixtures about their mixture mean, the missing-data normal about its
mean) are moved to the new parameters' point after every M-step through
the model's optional ``recenter_stats(stats, old, new)`` hook, so the
running average always sums statistics taken about the same point.

:class:`OnlineEM` holds the state of a stream; :func:`online_passes` runs
whole passes over shuffled groups of blocks, the warm start of
``fit_em(online_passes=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .data import Blocks
from .contract import EMModel, Stats, hooks
from .monitor import count_pass, counting_passes

__all__ = ["OnlineEM", "online_passes", "step_size"]

#: Default exponent of the step sizes ``(t + 2) ** -alpha``.
DEFAULT_ALPHA = 0.6

#: Keys of an E-step that describe the batch rather than sum over its observations' latent data.
_NOT_AVERAGED = ("n", "n_invalid")


def _is_numeric(value: object) -> bool:
    return isinstance(value, (np.ndarray, np.generic, int, float)) and np.asarray(value).dtype.kind in "fiub"


def step_size(t: int, alpha: float) -> float:
    """``(t + 2) ** -alpha``: the weight of the statistics of the t-th update after the first batch."""
    return float((t + 2.0) ** -alpha)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, or a ValueError naming the range stepwise EM needs."""
    if not (isinstance(alpha, (int, float, np.floating)) and not isinstance(alpha, bool) and 0.5 < alpha <= 1.0):
        raise ValueError(
            f"the step-size exponent alpha must be in (0.5, 1] (steps (t + 2) ** -alpha must sum to "
            f"infinity while their squares do not), got {alpha!r}; 0.6 is a good default"
        )
    return float(alpha)


@dataclass(frozen=True)
class OnlineEM:
    """The state of stepwise EM over a stream of batches.

    Parameters
    ----------
    model : EMModel
        Any model of the contract.
    params : object
        The current parameters (the next batch's E-step runs under them).
    alpha : float
        Step-size exponent in (0.5, 1].
    stats : dict or None
        Running per-observation statistics, about ``params``' reference
        point; None before the first batch.
    n_updates : int
        Batches absorbed so far.
    n_seen : float
        Observations absorbed so far (a row seen twice counts twice).
    loglik : float
        Running average (same steps) of the log-likelihood per observation
        of the batches under the parameters that entered them: a noisy,
        lagging estimate of the current fit's mean log-likelihood.
    """

    model: Any
    params: Any
    alpha: float = DEFAULT_ALPHA
    stats: Stats | None = None
    n_updates: int = 0
    n_seen: float = 0.0
    loglik: float = float("nan")

    def update(self, batch_stats: Stats) -> OnlineEM:
        """The state after absorbing the summed E-step statistics of one batch.

        ``batch_stats`` must come from ``model.e_step`` under ``self.params``
        (summed over the batch's blocks, checked and finished as the engine
        does).
        """
        n_batch = float(batch_stats["n"])
        if not n_batch > 0:
            return self
        mean, latest = {}, {}
        for key, value in batch_stats.items():
            if key in _NOT_AVERAGED:
                continue
            if _is_numeric(value):
                mean[key] = np.asarray(value, np.float64) / n_batch
            else:  # not a sum (e.g. k-means' farthest rows): the latest batch's
                latest[key] = value
        loglik = float(mean["loglik"])
        if self.stats is None:
            stats, g = mean, 1.0
        else:
            g = step_size(self.n_updates - 1, self.alpha)
            stats = {k: (1.0 - g) * self.stats[k] + g * mean[k] for k in mean}
            loglik = (1.0 - g) * self.loglik + g * loglik
        scaled = {k: v * n_batch for k, v in stats.items()} | latest
        scaled["n"] = np.array(n_batch)
        new = self.model.m_step(scaled, self.params)
        stats = hooks(self.model).recenter_stats(stats | {"n": np.array(1.0)}, self.params, new)
        stats.pop("n", None)
        return replace(
            self, params=new, stats=stats, n_updates=self.n_updates + 1, n_seen=self.n_seen + n_batch, loglik=loglik
        )

    def partial_fit(self, blocks: Blocks, client: Any = None, split_every: int = 8) -> OnlineEM:
        """One pass over ``blocks`` (one batch): its E-step under ``params``, then :meth:`update`."""
        from .engine import expected_stats

        return self.update(expected_stats(self.model, blocks, self.params, client, split_every))


def online_passes(
    model: EMModel,
    blocks: Blocks,
    params: Any,
    *,
    passes: int,
    n_batches: int = 20,
    alpha: float = DEFAULT_ALPHA,
    rng: np.random.Generator,
    client: Any = None,
    split_every: int = 8,
    callback: Callable[[OnlineEM], None] | None = None,
) -> OnlineEM:
    """Stepwise EM over ``passes`` passes of ``blocks``, in shuffled groups of blocks.

    Every pass shuffles the blocks (with ``rng``) and cuts them into
    ``min(n_batches, n_blocks)`` groups of consecutive shuffled blocks;
    each group is one batch, one ``compute``. A pass therefore reads the
    data once, and its parameters move ``n_batches`` times instead of once:
    on large data one or two such passes come close to the batch optimum,
    which batch EM then reaches in few iterations.

    Each online pass counts as one pass in ``n_passes_`` (it reads every
    block once), not as ``n_batches``.

    Returns
    -------
    OnlineEM
        The final state; ``.params`` continues as batch EM's start.
    """
    if passes < 0:
        raise ValueError(f"online_passes must be a non-negative integer, got {passes!r}")
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches!r}")
    state = OnlineEM(model, params, check_alpha(alpha))
    n_parts = len(blocks.parts)
    groups = min(int(n_batches), n_parts)
    for _ in range(int(passes)):
        order = rng.permutation(n_parts)
        with counting_passes() as batches:
            for chunk in np.array_split(order, groups):
                batch = replace(blocks, parts=[blocks.parts[i] for i in chunk])
                state = state.partial_fit(batch, client, split_every)
                if callback is not None:
                    callback(state)
        count_pass(1 - batches.n)  # the groups together read the data once: one pass for n_passes_
    return state
