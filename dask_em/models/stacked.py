"""Several parameter sets of one model fitted in the same passes over the data.

Restarts of EM differ only in their parameters, so their E-steps can share
the read of every block: :class:`Stacked` runs ``model.e_step`` once per
parameter set on the block it was given, and the engine sees one model
whose statistics are those of all the members side by side. An iteration
of R restarts is then one pass (one ``compute``, one tree reduction), not
R. The members' trajectories are exactly those of R separate fits from the
same starting parameters: each member's statistics are summed in the same
tree order and go through the same ``m_step``.

Used for shared restarts by the mixture estimators and the HMMs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import Stats

__all__ = ["Stacked", "StackedParams", "member_stats"]


@dataclass(frozen=True)
class StackedParams:
    """R parameter sets fitted side by side.

    Attributes
    ----------
    members : tuple
        The parameters of every member, in member order.
    loglik : ndarray of shape (R,)
        Each member's log-likelihood (the model's monitored objective) under
        the parameters that entered the last pass; empty before any pass.
        A member whose value was not finite gets ``-inf`` and is frozen.
    """

    members: tuple[Any, ...]
    loglik: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def best(self) -> Any:
        """The member with the highest ``loglik`` (the first member before any pass)."""
        if len(self.loglik) == 0:
            return self.members[0]
        return self.members[int(np.argmax(self.loglik))]


def member_stats(stats: Stats, r: int) -> Stats:
    """The statistics of member ``r`` as its own ``e_step`` returns them.

    The block's ``n`` is shared; the member's ``loglik`` comes from
    ``loglik_each``.
    """
    prefix = f"r{r}:"
    own = {key[len(prefix) :]: value for key, value in stats.items() if key.startswith(prefix)}
    own["n"] = stats["n"]
    own["loglik"] = np.asarray(stats["loglik_each"])[r]
    return own


@dataclass(frozen=True)
class Stacked:
    """Runs the E-step of ``model`` for every member of :class:`StackedParams` on each block.

    Parameters
    ----------
    model : EMModel
        Any model of the contract.

    Notes
    -----
    Statistics (sums over the block, R members):

    - ``n`` () : observations in the block (the same for every member),
    - ``r{r}:<name>`` : member ``r``'s own statistic ``<name>``,
    - ``loglik_each (R,)`` : each member's log-likelihood (``-inf`` if not finite),
    - ``loglik`` () : their sum while all are finite, else 0, so that one
      collapsed member does not stop the others (the engine refuses a
      non-finite total); each member's own value never decreases under
      EM, so neither does the sum,
    - ``n_invalid`` () : the largest count of any member (they see the same values).

    A member's optional ``finish_stats`` (e.g. adding a log prior) is
    applied to its summed statistics by :meth:`finish_stats`, as the engine
    would apply it to a single fit.
    """

    model: Any

    def init_params(self, sample: Any, rng: np.random.Generator) -> StackedParams:
        """One member from ``model.init_params``; stack several with :class:`StackedParams`."""
        return StackedParams((self.model.init_params(sample, rng),))

    def e_step(self, block: Any, params: StackedParams) -> Stats:
        """Every member's statistics of one block, read once."""
        out: Stats = {}
        each = np.empty(len(params.members))
        n_invalid = 0.0
        for r, member in enumerate(params.members):
            stats = dict(self.model.e_step(block, member))
            out["n"] = stats.pop("n")
            n_invalid = max(n_invalid, float(stats.pop("n_invalid", 0.0)))
            each[r] = float(stats.pop("loglik"))
            for key, value in stats.items():
                out[f"r{r}:{key}"] = value
        out["loglik_each"] = np.where(np.isfinite(each), each, -np.inf)
        out["loglik"] = np.array(each.sum() if np.all(np.isfinite(each)) else 0.0)
        out["n_invalid"] = np.array(n_invalid)
        return out

    def finish_stats(self, stats: Stats, params: StackedParams) -> Stats:
        """Each member's ``finish_stats`` on its summed statistics (when the model has one)."""
        finish = getattr(self.model, "finish_stats", None)
        if finish is None or params is None:
            return stats
        stats = dict(stats)
        each = np.array(stats["loglik_each"], dtype=np.float64)
        for r, member in enumerate(params.members):
            if not np.isfinite(each[r]):
                continue
            done = finish(member_stats(stats, r), member)
            each[r] = float(done.pop("loglik"))
            done.pop("n")
            for key, value in done.items():
                stats[f"r{r}:{key}"] = value
        stats["loglik_each"] = np.where(np.isfinite(each), each, -np.inf)
        stats["loglik"] = np.array(each.sum() if np.all(np.isfinite(each)) else 0.0)
        return stats

    def m_step(self, stats: Stats, params: StackedParams) -> StackedParams:
        """Every member's M-step; a member whose log-likelihood was not finite keeps its parameters."""
        each = np.asarray(stats["loglik_each"], dtype=np.float64)
        members = tuple(
            self.model.m_step(member_stats(stats, r), member) if np.isfinite(each[r]) else member
            for r, member in enumerate(params.members)
        )
        return StackedParams(members, each.copy())

    def describe_invalid(self, n_invalid: int) -> str:
        """The member model's message."""
        describe = getattr(self.model, "describe_invalid", None)
        return describe(n_invalid) if describe else f"{n_invalid} values are outside the model's support"
